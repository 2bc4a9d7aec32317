// Moves orders through the state machine after they were accepted: the
// public functions other modules (the pay worker, the sweeper) use to drive
// an order. Each function runs inside the caller's transaction and locks the
// order row first, so the lock order is always order → stock → payment and
// concurrent cancels and payment results cannot deadlock or both win.
import { AppError } from '../errors.ts';
import { allocate, holdStock, lockStock, release } from '../inventory/stock.ts';
import type { Database, Queryable } from '../storage/database.ts';
import type { PaymentPort } from './payment-port.ts';
import {
  owesRefund,
  retryPayment,
  transition,
  transitionsOf,
  type OrderStatus,
  type RejectReason,
} from './state-machine.ts';
import { findOrder, getOrder, lockOrderStatuses, recordOrderEvents, setStatuses, type Order } from './store.ts';

// The reads other modules make of orders; their SQL stays private to store.ts.
export { lockOrderStatuses, pendingOrderStats, stalePendingOrders, statusesOf } from './store.ts';

/** Whether a transition happened, and the order's status after it (undefined: there is no such order). */
export interface Outcome {
  changed: boolean;
  status: OrderStatus | undefined;
}

async function lockOrder(tx: Queryable, orderId: string, customerId?: string): Promise<Order | undefined> {
  return findOrder(tx, orderId, customerId, { lock: true });
}

/**
 * Payment succeeded: each pending order becomes confirmed (its held stock is
 * now sold). For a batch of paid orders: lock them in id order, let the
 * state machine decide, move the ones it allows. `locked`: the statuses the
 * caller read when it locked these orders itself in this transaction
 * (lockOrderStatuses), which saves a round trip.
 */
export async function confirmOrders(
  tx: Queryable,
  orderIds: readonly string[],
  locked?: Map<string, OrderStatus>,
): Promise<Map<string, Outcome>> {
  const before = locked ?? (await lockOrderStatuses(tx, orderIds));
  const { from, to } = transitionsOf('confirm');
  const moving = orderIds.filter((id) => {
    const status = before.get(id);
    return status !== undefined && from.includes(status);
  });
  // Pipelined, one round trip (see Queryable).
  await Promise.all([
    setStatuses(tx, moving, to),
    recordOrderEvents(
      tx,
      moving.map((orderId) => ({ orderId, type: 'confirmed' })),
    ),
  ]);
  const moved = new Set(moving);
  return new Map(
    orderIds.map((id) => [
      id,
      moved.has(id) ? { changed: true, status: to } : { changed: false, status: before.get(id) },
    ]),
  );
}

/** Payment failed for good: a pending order is rejected and its stock released; `error` (the gateway's words) goes into its history. */
export async function rejectOrder(
  tx: Queryable,
  orderId: string,
  reason: RejectReason,
  error?: string,
): Promise<Outcome> {
  const order = await lockOrder(tx, orderId);
  if (!order) return { changed: false, status: undefined };
  const next = transition(order.status, 'reject');
  if (!next.ok) return { changed: false, status: order.status };
  await setStatuses(tx, [orderId], next.to, reason);
  await release(tx, order.items);
  await recordOrderEvents(tx, [{ orderId, type: 'rejected', detail: { reason, ...(error ? { error } : {}) } }]);
  return { changed: true, status: next.to };
}

/**
 * Settles the money of an order given its status (after the caller locked
 * the order): one that keeps its charge (see owesRefund) is left alone, any
 * other gets back whatever may have moved. Every path that may refund goes
 * through here, so "a confirmed order is never refunded" holds in one place.
 */
export async function refundIfOwed(
  tx: Queryable,
  payments: PaymentPort,
  orderId: string,
  status: OrderStatus | undefined,
): Promise<void> {
  if (owesRefund(status)) await payments.settle(tx, orderId);
}

/**
 * Cancels a pending or confirmed order: its stock returns, and any payment
 * that may have reached the gateway is refunded, also one still in flight
 * (the pay worker sees the cancellation when it records its result).
 */
export async function cancelOrder(
  deps: { db: Database; payments: PaymentPort },
  orderId: string,
  customerId: string | undefined,
  /** Who asked (the token's subject), for the order's history. */
  by: string,
): Promise<Order> {
  await deps.db.transaction(async (tx) => {
    const order = await lockOrder(tx, orderId, customerId);
    if (!order) throw new AppError('not_found', `no order with id "${orderId}"`);
    const next = transition(order.status, 'cancel');
    if (!next.ok)
      throw new AppError(
        'order_not_cancellable',
        `the order is ${order.status}: only pending or confirmed orders can be cancelled`,
      );
    await setStatuses(tx, [orderId], next.to);
    await release(tx, order.items);
    await recordOrderEvents(tx, [{ orderId, type: 'cancel_requested', detail: { by, was: order.status } }]);
    await refundIfOwed(tx, deps.payments, orderId, next.to);
  });
  return getOrder(deps.db, orderId);
}

/**
 * An operator's re-drive of a payment that failed for good: the order,
 * rejected with payment_failed, becomes pending again and holds its stock
 * again (all lines or none, under the stock rows' locks, as on accept). In
 * the caller's transaction, which also queues the charge. Throws AppError
 * order_not_retryable when the state machine forbids it and
 * insufficient_stock when the stock is gone.
 */
export async function reopenForPayment(tx: Queryable, orderId: string): Promise<Order> {
  const order = await lockOrder(tx, orderId);
  if (!order) throw new AppError('not_found', `no order with id "${orderId}"`);
  const next = retryPayment(order.status, order.rejectReason);
  if (!next.ok) throw new AppError('order_not_retryable', next.reason);
  const skus = [...new Set(order.items.map((i) => i.sku))];
  const { fits, toHold } = allocate(await lockStock(tx, skus), [order.items]);
  if (!fits[0])
    throw new AppError('insufficient_stock', `order ${orderId} cannot hold its stock again: not enough is available`);
  await holdStock(tx, toHold);
  await setStatuses(tx, [orderId], next.to);
  await recordOrderEvents(tx, [
    { orderId, type: 'stock_held', detail: { lines: order.items.map((i) => ({ sku: i.sku, quantity: i.quantity })) } },
  ]);
  return { ...order, status: next.to, rejectReason: null };
}
