// Where an order is accepted. One transaction does everything the promise
// "never oversell, never lose an accepted order, never charge twice" needs:
//   1. price the lines from the catalog (bad input fails here, writing nothing);
//   2. claim the (customer, Idempotency-Key) pair, remembering a body hash;
//   3. hold the stock (all lines or none, first come first served);
//   4. store the order: pending, or rejected/out_of_stock at once;
//   5. for a pending order, record its payment and queue the charge.
// Only after COMMIT does the client get 202, so every 202 can be read back.
//
// Group commit: the OrderAcceptor gathers the accepts that arrive while a
// transaction is in flight and runs them as one batch through the same
// steps, each a multi-row statement. A commit (one WAL flush) is the price of
// a transaction, so a batch of 50 orders costs about what one did. Each order
// still gets its own answer: a batch mixes accepted, rejected, replayed and
// invalid orders, and a batch that fails as a whole is retried one order at
// a time, so no order pays for another's problem.
import { createHash } from 'node:crypto';
import { pricesOf } from '../catalog/products.ts';
import { AppError } from '../errors.ts';
import { reserveEach } from '../inventory/stock.ts';
import type { JobQueue } from '../messaging/queue.ts';
import type { Metrics } from '../observability/metrics.ts';
import { requestPayments } from '../payments/payments.ts';
import { DatabaseUnavailableError, type Database, type Queryable } from '../storage/database.ts';
import { newOrderId } from './ids.ts';
import { priceOrder, type PricedOrder, type RequestedLine } from './pricing.ts';
import { claimIdempotencyKeys, findOrders, insertOrders, type NewOrder, type Order } from './store.ts';

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

export type AcceptOutcome = { ok: true; result: AcceptResult } | { ok: false; error: AppError };

/**
 * Accepts a batch of orders in the caller's transaction. The (customer, key)
 * pairs must be distinct within the batch. Refusals that concern one order
 * (unknown SKU, reused key) are outcomes, not exceptions, so they roll back
 * nothing of the others; an exception means the whole batch failed.
 */
export async function acceptBatch(tx: Queryable, queue: JobQueue, requests: readonly AcceptRequest[]): Promise<AcceptOutcome[]> {
  const outcomes: (AcceptOutcome | undefined)[] = requests.map(() => undefined);

  // 1. Price every order from one read of the catalog.
  const prices = await pricesOf(tx, [...new Set(requests.flatMap((r) => r.order.items.map((i) => i.sku)))]);
  const candidates: { index: number; priced: PricedOrder; hash: string; orderId: string }[] = [];
  requests.forEach((request, index) => {
    try {
      candidates.push({ index, priced: priceOrder(request.order.items, prices), hash: hashRequest(request.order), orderId: newOrderId() });
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
  const held = await reserveEach(
    tx,
    fresh.map((c) => c.priced.lines),
  );
  const newOrders: NewOrder[] = fresh.map((c, i) => ({
    id: c.orderId,
    customerId: requests[c.index]!.customerId,
    status: held[i] ? 'pending' : 'rejected',
    rejectReason: held[i] ? null : 'out_of_stock',
    ...c.priced,
  }));
  const stored = await insertOrders(tx, newOrders);
  await requestPayments(
    tx,
    queue,
    fresh
      .filter((_, i) => held[i])
      .map((c) => ({ orderId: c.orderId, amountCents: c.priced.totalCents, currency: c.priced.currency, token: requests[c.index]!.order.payment.token })),
  );
  fresh.forEach((c, i) => (outcomes[c.index] = { ok: true, result: { order: stored[i]!, replayed: false } }));

  const replayed = await findOrders(
    tx,
    replays.map((r) => r.orderId),
  );
  for (const { index, orderId } of replays) {
    const order = replayed.get(orderId);
    if (!order) throw new Error(`idempotency key points at missing order ${orderId}`);
    outcomes[index] = { ok: true, result: { order, replayed: true } };
  }
  return outcomes.map((outcome) => {
    if (!outcome) throw new Error('acceptBatch left a request without an outcome');
    return outcome;
  });
}

export interface AcceptorOptions {
  /** How long a batch waits for company while another one is being committed. */
  windowMs?: number;
  maxBatch?: number;
  /** Batches committed at the same time (each holds a database connection). */
  maxInFlight?: number;
}

interface Waiting extends AcceptRequest {
  resolve(result: AcceptResult): void;
  reject(error: unknown): void;
}

/** Accepts orders with application-level group commit (see the top of this file). */
export class OrderAcceptor {
  readonly #db: Database;
  readonly #queue: JobQueue;
  readonly #metrics: Metrics;
  readonly #windowMs: number;
  readonly #maxBatch: number;
  readonly #maxInFlight: number;
  #waiting: Waiting[] = [];
  #inFlight = 0;
  #timer: NodeJS.Timeout | undefined;
  #scheduled = false;

  constructor(deps: { db: Database; queue: JobQueue; metrics: Metrics }, options: AcceptorOptions = {}) {
    this.#db = deps.db;
    this.#queue = deps.queue;
    this.#metrics = deps.metrics;
    this.#windowMs = options.windowMs ?? 1;
    this.#maxBatch = options.maxBatch ?? 64;
    this.#maxInFlight = options.maxInFlight ?? 2;
  }

  accept(customerId: string, idempotencyKey: string, order: PlaceOrder): Promise<AcceptResult> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ customerId, idempotencyKey, order, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#inFlight >= this.#maxInFlight || this.#scheduled) return;
    if (this.#waiting.length >= this.#maxBatch || this.#inFlight === 0) {
      // Nothing is committing: go now, after the requests already parsed in
      // this turn of the event loop have joined.
      this.#scheduled = true;
      setImmediate(() => this.#flush());
    } else if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.#flush(), this.#windowMs);
    }
  }

  #flush(): void {
    this.#scheduled = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    while (this.#waiting.length > 0 && this.#inFlight < this.#maxInFlight) {
      void this.#run(this.#takeBatch());
    }
  }

  /** Up to maxBatch requests, leaving a repeated (customer, key) for the next batch. */
  #takeBatch(): Waiting[] {
    const batch: Waiting[] = [];
    const later: Waiting[] = [];
    const keys = new Set<string>();
    for (const request of this.#waiting) {
      const pair = `${request.customerId}\u0000${request.idempotencyKey}`;
      if (batch.length >= this.#maxBatch || keys.has(pair)) later.push(request);
      else {
        keys.add(pair);
        batch.push(request);
      }
    }
    this.#waiting = later;
    return batch;
  }

  async #run(batch: Waiting[]): Promise<void> {
    this.#inFlight++;
    this.#metrics.acceptBatchSize.observe(batch.length);
    try {
      const outcomes = await this.#db.transaction((tx) => acceptBatch(tx, this.#queue, batch));
      outcomes.forEach((outcome, i) => (outcome.ok ? batch[i]!.resolve(outcome.result) : batch[i]!.reject(outcome.error)));
    } catch (error) {
      if (batch.length === 1 || error instanceof DatabaseUnavailableError) {
        for (const request of batch) request.reject(error);
      } else {
        // Something in the batch broke the transaction (a deadlock with
        // another process, a constraint): give each order its own.
        for (const request of batch) void this.#run([request]);
      }
    } finally {
      this.#inFlight--;
      if (this.#waiting.length > 0) this.#schedule();
    }
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
