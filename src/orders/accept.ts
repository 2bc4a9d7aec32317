// Where an order is accepted. One transaction does everything the promise
// "never oversell, never lose an accepted order, never charge twice" needs:
//   1. price the lines from the catalog (bad input fails here, writing nothing)
//      and lock the stock rows of the SKUs asked for;
//   2. claim the (customer, Idempotency-Key) pair, remembering a body hash;
//   3. hold the stock (all lines or none, first come first served);
//   4. store the order: pending, or rejected/out_of_stock at once;
//   5. for a pending order, record its payment and queue the charge.
// Only after COMMIT does the client get 202, so every 202 can be read back.
//
// Group commit (src/storage/group-commit.ts): the OrderAcceptor gathers the
// accepts that arrive while a transaction is in flight and runs them as one
// batch through the same steps, each a multi-row statement. A commit (one
// WAL flush) is the price of a transaction, so a batch of 50 orders costs
// about what one did. Each order still gets its own answer: a batch mixes
// accepted, rejected, replayed and invalid orders.
import { createHash } from 'node:crypto';
import { pricesOf } from '../catalog/products.ts';
import { AppError } from '../errors.ts';
import { allocate, holdStock, lockStock } from '../inventory/stock.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { Database, Queryable } from '../storage/database.ts';
import { GroupCommit, type GroupCommitOptions, type UnitOutcome } from '../storage/group-commit.ts';
import { newOrderId } from './ids.ts';
import type { PaymentPort } from './payment-port.ts';
import { DEFAULT_MONEY_LIMITS, priceOrder, type MoneyLimits, type PricedOrder, type RequestedLine } from './pricing.ts';
import { claimIdempotencyKeys, customerKey, findOrders, insertOrders, type NewOrder, type Order } from './store.ts';

export interface PlaceOrder {
  items: RequestedLine[];
  payment: { token: string };
}

export interface AcceptRequest {
  customerId: string;
  idempotencyKey: string;
  order: PlaceOrder;
}

export interface AcceptResult {
  order: Order;
  /** True when the key was seen before and the stored order is returned. */
  replayed: boolean;
}

/**
 * Accepts a batch of orders in the caller's transaction. The (customer, key)
 * pairs must be distinct within the batch. Refusals that concern one order
 * (unknown SKU, an amount outside the limits, reused key) are outcomes, not
 * exceptions, so they roll back nothing of the others; an exception means
 * the whole batch failed.
 */
export async function acceptBatch(
  tx: Queryable,
  payments: PaymentPort,
  requests: readonly AcceptRequest[],
  limits: MoneyLimits = DEFAULT_MONEY_LIMITS,
): Promise<UnitOutcome<AcceptResult>[]> {
  const outcomes: (UnitOutcome<AcceptResult> | undefined)[] = requests.map(() => undefined);

  // 1. Price every order from one read of the catalog, and lock the stock
  // rows in the same round trip (pipelined; see Queryable): the locks are
  // needed in step 3 whatever step 2 finds.
  const skus = [...new Set(requests.flatMap((r) => r.order.items.map((i) => i.sku)))];
  const [prices, available] = await Promise.all([pricesOf(tx, skus), lockStock(tx, skus)]);
  const candidates: { index: number; priced: PricedOrder; hash: string; orderId: string }[] = [];
  requests.forEach((request, index) => {
    try {
      candidates.push({ index, priced: priceOrder(request.order.items, prices, limits), hash: hashRequest(request.order), orderId: newOrderId() });
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      outcomes[index] = { ok: false, error };
    }
  });

  // 2. Claim the idempotency keys; a key seen before answers with its order.
  const earlier = await claimIdempotencyKeys(
    tx,
    candidates.map((c) => ({ customerId: requests[c.index]!.customerId, key: requests[c.index]!.idempotencyKey, requestHash: c.hash, orderId: c.orderId })),
  );
  const fresh: typeof candidates = [];
  const replays: { index: number; orderId: string }[] = [];
  candidates.forEach((candidate, i) => {
    const claim = earlier[i];
    if (claim === null || claim === undefined) return void fresh.push(candidate);
    if (claim.requestHash !== candidate.hash) {
      const key = requests[candidate.index]!.idempotencyKey;
      outcomes[candidate.index] = {
        ok: false,
        error: new AppError('idempotency_key_reused', `Idempotency-Key "${key}" was used for a different order; use a new key for a new order`),
      };
    } else {
      replays.push({ index: candidate.index, orderId: claim.orderId });
    }
  });

  // 3.–5. Hold stock, store the orders, queue the payments of the held ones.
  const { fits, toHold } = allocate(
    available,
    fresh.map((c) => c.priced.lines),
  );
  const newOrders: NewOrder[] = fresh.map((c, i) => ({
    id: c.orderId,
    customerId: requests[c.index]!.customerId,
    status: fits[i] ? 'pending' : 'rejected',
    rejectReason: fits[i] ? null : 'out_of_stock',
    ...c.priced,
  }));
  // The holds, orders, lines, payments and queued charges: pipelined, one round trip (see Queryable).
  const [stored] = await Promise.all([
    insertOrders(tx, newOrders),
    holdStock(tx, toHold),
    payments.open(
      tx,
      fresh
        .filter((_, i) => fits[i])
        .map((c) => ({ orderId: c.orderId, amountCents: c.priced.totalCents, currency: c.priced.currency, token: requests[c.index]!.order.payment.token })),
    ),
  ]);
  fresh.forEach((c, i) => (outcomes[c.index] = { ok: true, value: { order: stored[i]!, replayed: false } }));

  const replayed = await findOrders(
    tx,
    replays.map((r) => r.orderId),
  );
  for (const { index, orderId } of replays) {
    const order = replayed.get(orderId);
    if (!order) throw new Error(`idempotency key points at missing order ${orderId}`);
    outcomes[index] = { ok: true, value: { order, replayed: true } };
  }
  return outcomes.map((outcome) => {
    if (!outcome) throw new Error('acceptBatch left a request without an outcome');
    return outcome;
  });
}

/** Accepts orders with application-level group commit (see the top of this file). */
export class OrderAcceptor {
  readonly #group: GroupCommit<AcceptRequest, AcceptResult>;

  constructor(deps: { db: Database; payments: PaymentPort; metrics: Metrics; moneyLimits?: MoneyLimits }, options: GroupCommitOptions<AcceptRequest> = {}) {
    this.#group = new GroupCommit<AcceptRequest, AcceptResult>(
      deps.db,
      (tx, requests) => acceptBatch(tx, deps.payments, requests, deps.moneyLimits),
      {
        ...options,
        // A repeated key waits for the next batch, where it finds the claim committed and replays.
        keyOf: (request) => customerKey(request.customerId, request.idempotencyKey),
        onBatch: (size) => deps.metrics.acceptBatchSize.observe(size),
      },
    );
  }

  accept(customerId: string, idempotencyKey: string, order: PlaceOrder): Promise<AcceptResult> {
    return this.#group.submit({ customerId, idempotencyKey, order });
  }
}

/** A stable hash of the request: the same fields in any key order hash the same. */
export function hashRequest(request: PlaceOrder): string {
  return createHash('sha256').update(canonicalJson(request)).digest('base64url');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
