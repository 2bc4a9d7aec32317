// Where an order is accepted. One transaction does everything the promise
// "never oversell, never lose an accepted order, never charge twice" needs,
// in the steps acceptBatch names:
//   1. price: price the lines from the catalog (bad input fails here,
//      writing nothing);
//   2. claimKeys: claim the (customer, Idempotency-Key) pair, remembering a
//      body hash, and lock the stock rows of the SKUs;
//   3. reserve: decide whose stock is held (all lines or none, first come
//      first served);
//   4. store: hold the stock, store the order (pending, or
//      rejected/out_of_stock at once) and open the payment of a pending one;
//   5. loadReplays: read the stored orders that repeated keys answer with.
// Only after COMMIT does the client get 202, so every 202 can be read back.
//
// Group commit (src/storage/group-commit.ts): the OrderAcceptor gathers the
// accepts that arrive while a transaction is in flight and runs them as one
// batch through the same steps, each a multi-row statement. A commit (one
// WAL flush) is the price of a transaction, so a batch of 50 orders costs
// about what one did. Each order still gets its own answer: a batch mixes
// accepted, rejected, replayed and invalid orders.
import { createHash } from 'node:crypto';
import { pricesOf, type Price } from '../catalog/products.ts';
import { AppError } from '../errors.ts';
import { allocate, holdStock, lockStock, type StockLine } from '../inventory/stock.ts';
import type { Metrics } from '../observability/metrics.ts';
import { activeCarrier, type TraceCarrier } from '../observability/tracing.ts';
import type { Database, Queryable, Transaction } from '../storage/database.ts';
import { GroupCommit, type GroupCommitOptions, type UnitOutcome } from '../storage/group-commit.ts';
import { newOrderId } from './ids.ts';
import type { PaymentPort } from './payment-port.ts';
import { DEFAULT_MONEY_LIMITS, priceOrder, type MoneyLimits, type PricedOrder, type RequestedLine } from './pricing.ts';
import {
  claimIdempotencyKeys,
  customerKey,
  findOrders,
  insertOrders,
  recordOrderEvents,
  type NewOrder,
  type NewOrderEvent,
  type Order,
} from './store.ts';

export interface PlaceOrder {
  items: RequestedLine[];
  payment: { token: string };
}

export interface AcceptRequest {
  customerId: string;
  idempotencyKey: string;
  order: PlaceOrder;
  /** The request's trace, which the order's charge continues (the batch runs in a trace of its own). */
  trace?: TraceCarrier;
}

export interface AcceptResult {
  order: Order;
  /** True when the key was seen before and the stored order is returned. */
  replayed: boolean;
}

// --- the steps ---------------------------------------------------------------
// Each step takes what the one before it produced and carries every request
// along with it, so no step indexes into the batch. price, sortClaims and
// reserve are pure (specs in accept.spec.ts); the others run statements.

/** A request the catalog could price: the order it would become, under a fresh id, and the hash of its body. */
export interface PricedRequest {
  request: AcceptRequest;
  priced: PricedOrder;
  hash: string;
  orderId: string;
}

/** A request answered with an error that concerns it alone (bad input, a reused key). */
export interface RefusedRequest {
  request: AcceptRequest;
  error: AppError;
}

/** A request whose key placed an order before, with the same body: it is answered with that order. */
export interface ReplayedRequest {
  request: AcceptRequest;
  orderId: string;
}

/** A request that becomes a new order: pending when its stock is held, else rejected/out_of_stock. */
export interface NewOrderRequest {
  request: AcceptRequest;
  order: NewOrder;
}

/** Step 1 (pure): prices each request from the catalog's prices; a request that cannot be priced is refused. */
export function price(
  requests: readonly AcceptRequest[],
  prices: ReadonlyMap<string, Price>,
  limits: MoneyLimits,
  newId: () => string = newOrderId,
): { priced: PricedRequest[]; refused: RefusedRequest[] } {
  const priced: PricedRequest[] = [];
  const refused: RefusedRequest[] = [];
  for (const request of requests) {
    try {
      priced.push({
        request,
        priced: priceOrder(request.order.items, prices, limits),
        hash: hashRequest(request.order),
        orderId: newId(),
      });
    } catch (error) {
      if (!(error instanceof AppError)) throw error;
      refused.push({ request, error });
    }
  }
  return { priced, refused };
}

/** Step 2: claims the requests' (customer, key) pairs; a pair claimed before answers with its order, or is refused if the body differs. */
async function claimKeys(tx: Queryable, priced: readonly PricedRequest[]): Promise<ReturnType<typeof sortClaims>> {
  const earlier = await claimIdempotencyKeys(
    tx,
    priced.map((p) => ({
      customerId: p.request.customerId,
      key: p.request.idempotencyKey,
      requestHash: p.hash,
      orderId: p.orderId,
    })),
  );
  return sortClaims(priced, earlier);
}

/** Step 2's decision (pure), given per request the earlier claim of its pair (null: claimed now). */
export function sortClaims(
  priced: readonly PricedRequest[],
  earlier: readonly ({ orderId: string; requestHash: string } | null)[],
): { fresh: PricedRequest[]; replays: ReplayedRequest[]; refused: RefusedRequest[] } {
  const fresh: PricedRequest[] = [];
  const replays: ReplayedRequest[] = [];
  const refused: RefusedRequest[] = [];
  priced.forEach((candidate, i) => {
    const claim = earlier[i];
    if (claim === undefined) throw new Error('a claim answer is missing');
    if (claim === null) fresh.push(candidate);
    else if (claim.requestHash === candidate.hash) replays.push({ request: candidate.request, orderId: claim.orderId });
    else {
      const key = candidate.request.idempotencyKey;
      refused.push({
        request: candidate.request,
        error: new AppError(
          'idempotency_key_reused',
          `Idempotency-Key "${key}" was used for a different order; use a new key for a new order`,
        ),
      });
    }
  });
  return { fresh, replays, refused };
}

/**
 * Step 3 (pure): decides, first come first served under the locked stock
 * levels, which new orders get their stock (pending) and which do not
 * (rejected/out_of_stock), and what to hold per SKU.
 */
export function reserve(
  available: ReadonlyMap<string, number>,
  fresh: readonly PricedRequest[],
): { orders: NewOrderRequest[]; toHold: StockLine[] } {
  const { fits, toHold } = allocate(
    available,
    fresh.map((c) => c.priced.lines),
  );
  const orders = fresh.map((c, i): NewOrderRequest => ({
    request: c.request,
    order: {
      id: c.orderId,
      customerId: c.request.customerId,
      status: fits[i] ? 'pending' : 'rejected',
      rejectReason: fits[i] ? null : 'out_of_stock',
      ...c.priced,
    },
  }));
  return { orders, toHold };
}

/** Step 4: holds the stock, stores the orders and opens the payments of the pending ones, pipelined in one round trip (see Queryable). */
async function store(
  tx: Queryable,
  payments: PaymentPort,
  orders: readonly NewOrderRequest[],
  toHold: readonly StockLine[],
): Promise<Order[]> {
  const [stored] = await Promise.all([
    insertOrders(
      tx,
      orders.map((o) => o.order),
    ),
    recordOrderEvents(
      tx,
      orders.flatMap((o) => acceptEvents(o.order)),
    ),
    holdStock(tx, toHold),
    payments.open(
      tx,
      orders
        .filter((o) => o.order.status === 'pending')
        .map((o) => ({
          orderId: o.order.id,
          amountCents: o.order.totalCents,
          currency: o.order.currency,
          token: o.request.order.payment.token,
          trace: o.request.trace,
        })),
    ),
  ]);
  return stored;
}

/** Step 5: reads the orders that replayed requests answer with. */
async function loadReplays(
  tx: Queryable,
  replays: readonly ReplayedRequest[],
): Promise<{ request: AcceptRequest; order: Order }[]> {
  const found = await findOrders(
    tx,
    replays.map((r) => r.orderId),
  );
  return replays.map(({ request, orderId }) => {
    const order = found.get(orderId);
    if (!order) throw new Error(`idempotency key points at missing order ${orderId}`);
    return { request, order };
  });
}

/**
 * Accepts a batch of orders in the caller's transaction. The (customer, key)
 * pairs must be distinct within the batch. Refusals that concern one order
 * (unknown SKU, an amount outside the limits, reused key) are outcomes, not
 * exceptions, so they roll back nothing of the others; an exception means
 * the whole batch failed. Outcomes come in the order of the requests.
 */
export async function acceptBatch(
  tx: Transaction,
  payments: PaymentPort,
  requests: readonly AcceptRequest[],
  limits: MoneyLimits = DEFAULT_MONEY_LIMITS,
): Promise<UnitOutcome<AcceptResult>[]> {
  // The stock rows' locks are taken last, in the same round trip as the key
  // claims (pipelined; see Queryable, the claims first): from then on only
  // the writes and the COMMIT remain, so a hot SKU (a flash sale) is locked
  // for two round trips per batch instead of three. Prices are read before,
  // without a lock.
  const skus = (rs: readonly AcceptRequest[]) => [...new Set(rs.flatMap((r) => r.order.items.map((i) => i.sku)))];
  const priced = price(requests, await pricesOf(tx, skus(requests)), limits);
  const [claimed, available] = await Promise.all([
    claimKeys(tx, priced.priced),
    lockStock(tx, skus(priced.priced.map((p) => p.request))),
  ]);
  const reserved = reserve(available, claimed.fresh);
  // The writes, the replays' reads and the COMMIT in one round trip: the
  // stock rows are unlocked one round trip after they were locked. Every
  // check of the writes is the database's own (holdStock), so nothing read
  // from their answers can still call the batch off once COMMIT is sent
  // (see Transaction.commit).
  const [stored, replayed] = await tx.commit([
    store(tx, payments, reserved.orders, reserved.toHold),
    loadReplays(tx, claimed.replays),
  ]);

  const outcomes = new Map<AcceptRequest, UnitOutcome<AcceptResult>>();
  for (const { request, error } of [...priced.refused, ...claimed.refused]) outcomes.set(request, { ok: false, error });
  reserved.orders.forEach(({ request }, i) =>
    outcomes.set(request, { ok: true, value: { order: stored[i]!, replayed: false } }),
  );
  for (const { request, order } of replayed) outcomes.set(request, { ok: true, value: { order, replayed: true } });
  return requests.map((request) => {
    const outcome = outcomes.get(request);
    if (!outcome) throw new Error('acceptBatch left a request without an outcome');
    return outcome;
  });
}

/** The history a new order starts with: accepted, then its stock held or its rejection. */
function acceptEvents(order: NewOrder): NewOrderEvent[] {
  const accepted: NewOrderEvent = {
    orderId: order.id,
    type: 'accepted',
    detail: { totalCents: order.totalCents, currency: order.currency, customerId: order.customerId },
  };
  const lines = order.lines.map((l) => ({ sku: l.sku, quantity: l.quantity }));
  return order.status === 'pending'
    ? [accepted, { orderId: order.id, type: 'stock_held', detail: { lines } }]
    : [accepted, { orderId: order.id, type: 'rejected', detail: { reason: order.rejectReason, lines } }];
}

/** Accepts orders with application-level group commit (see the top of this file). */
export class OrderAcceptor {
  readonly #group: GroupCommit<AcceptRequest, AcceptResult>;

  constructor(
    deps: { db: Database; payments: PaymentPort; metrics: Metrics; moneyLimits?: MoneyLimits },
    options: GroupCommitOptions<AcceptRequest> = {},
  ) {
    this.#group = new GroupCommit<AcceptRequest, AcceptResult>(
      deps.db,
      (tx, requests) => acceptBatch(tx, deps.payments, requests, deps.moneyLimits),
      {
        ...options,
        // A repeated key waits for the next batch, where it finds the claim committed and replays.
        keyOf: (request) => customerKey(request.customerId, request.idempotencyKey),
        onBatch: (size) => deps.metrics.acceptBatchSize.observe(size),
        spanName: 'orders.accept batch',
      },
    );
  }

  accept(customerId: string, idempotencyKey: string, order: PlaceOrder): Promise<AcceptResult> {
    return this.#group.submit({ customerId, idempotencyKey, order, trace: activeCarrier() });
  }
}

/** A stable hash of the request: the same fields in any key order hash the same. */
export function hashRequest(request: PlaceOrder): string {
  return createHash('sha256')
    .update(placeOrderJson(request) ?? canonicalJson(request))
    .digest('base64url');
}

/**
 * canonicalJson of a request of exactly the shape the route's schema lets
 * through ({ items: [{ sku, quantity }], payment: { token } }), written
 * without sorting each object's keys; undefined for any other shape, which
 * canonicalJson then handles. It must produce canonicalJson's text to the
 * byte: the hashes of claimed keys are stored, and a replay compares them.
 */
function placeOrderJson(request: PlaceOrder): string | undefined {
  if (
    !hasKeys(request, 2) ||
    !Array.isArray(request.items) ||
    !hasKeys(request.payment, 1) ||
    typeof request.payment.token !== 'string'
  )
    return undefined;
  let items = '';
  for (const item of request.items) {
    if (
      !hasKeys(item, 2) ||
      typeof item.sku !== 'string' ||
      typeof item.quantity !== 'number' ||
      !Number.isFinite(item.quantity)
    )
      return undefined;
    items += `${items === '' ? '' : ','}{"quantity":${JSON.stringify(item.quantity)},"sku":${JSON.stringify(item.sku)}}`;
  }
  return `{"items":[${items}],"payment":{"token":${JSON.stringify(request.payment.token)}}}`;
}

/** A plain object with exactly `count` own enumerable keys (the named ones are checked by the caller). */
function hasKeys(value: unknown, count: number): boolean {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  let keys = 0;
  for (const key in value) if (Object.hasOwn(value, key)) keys++;
  return keys === count;
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}
