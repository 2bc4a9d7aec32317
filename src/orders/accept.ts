// Where an order is accepted. One transaction does everything the promise
// "never oversell, never lose an accepted order, never charge twice" needs:
//   1. claim the (customer, Idempotency-Key) pair, remembering a body hash;
//   2. price the lines from the catalog;
//   3. hold the stock with conditional updates (all lines or none);
//   4. store the order: pending, or rejected/out_of_stock at once;
//   5. for a pending order, queue its payment.
// Only after COMMIT does the client get 202, so every 202 can be read back.
import { createHash } from 'node:crypto';
import { pricesOf } from '../catalog/products.ts';
import { AppError } from '../errors.ts';
import { reserve } from '../inventory/stock.ts';
import type { JobQueue } from '../messaging/queue.ts';
import { requestPayment } from '../payments/payments.ts';
import type { Database } from '../storage/database.ts';
import { newOrderId } from './ids.ts';
import { priceOrder, type RequestedLine } from './pricing.ts';
import { claimIdempotencyKey, getOrder, insertOrder, type Order } from './store.ts';

export interface PlaceOrder {
  items: RequestedLine[];
  payment: { token: string };
}

export interface AcceptResult {
  order: Order;
  /** True when the key was seen before and the stored order is returned. */
  replayed: boolean;
}

export async function acceptOrder(
  deps: { db: Database; queue: JobQueue },
  customerId: string,
  idempotencyKey: string,
  request: PlaceOrder,
): Promise<AcceptResult> {
  const requestHash = hashRequest(request);
  const outcome = await deps.db.transaction(async (tx) => {
    const orderId = newOrderId();
    const claim = await claimIdempotencyKey(tx, { customerId, key: idempotencyKey, requestHash, orderId });
    if (!claim.claimed) {
      if (claim.requestHash !== requestHash) {
        throw new AppError('idempotency_key_reused', `Idempotency-Key "${idempotencyKey}" was used for a different order; use a new key for a new order`);
      }
      return { orderId: claim.orderId, replayed: true };
    }

    const priced = priceOrder(request.items, await pricesOf(tx, request.items.map((i) => i.sku)));
    const reserved = await reserve(tx, priced.lines);
    await insertOrder(tx, {
      id: orderId,
      customerId,
      status: reserved ? 'pending' : 'rejected',
      rejectReason: reserved ? null : 'out_of_stock',
      ...priced,
    });
    if (reserved) {
      await requestPayment(tx, deps.queue, { orderId, amountCents: priced.totalCents, currency: priced.currency, token: request.payment.token });
    }
    return { orderId, replayed: false };
  });
  return { order: await getOrder(deps.db, outcome.orderId), replayed: outcome.replayed };
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
