// The payments module's public functions. Its table (payments.payments, SQL
// in store.ts) has one row per order. A
// payment row remembers what we know of the gateway for one order, so a
// crash at any point leaves enough behind to finish the job safely:
//   pending  → never sent: nothing to undo;
//   charging → sent at least once: a charge may exist, only a replay tells;
//   succeeded / declined / refunded → the gateway's answer, recorded.
//   failed        → the gateway refused the charge request itself, or it could
//                   not be sent: nothing was charged, nothing is owed back;
//   refund_failed → the refund can never succeed as it stands: money may be
//                   held, and an operator must settle it (last_error says why);
//   voided        → no charge was made under its key and none ever will be:
//                   never sent before its order was cancelled or rejected, or
//                   its unknown answer settled by the gateway's void.
import { Type } from 'typebox';
import { AppError } from '../errors.ts';
import type { JobQueue } from '../messaging/queue.ts';
import type { TraceCarrier } from '../observability/tracing.ts';
import { ORDER_ID_PATTERN } from '../orders/ids.ts';
import { recordOrderEvents } from '../orders/history.ts';
import type { PaymentPort, PaymentRequest } from '../orders/payment-port.ts';
import type { Queryable } from '../storage/database.ts';
import {
  findPayment,
  insertPayments,
  markRefundRequested,
  reopenFailed,
  voidUnsent,
  type PaymentStatus,
} from './store.ts';

export { paymentSummary, type PaymentSummary } from './store.ts';

export const CHARGE_QUEUE = 'payments.charge';
export const REFUND_QUEUE = 'payments.refund';
/** Every queue the payments module consumes: what a deployment's broker topology holds. */
export const PAYMENT_QUEUES = [CHARGE_QUEUE, REFUND_QUEUE] as const;

/**
 * The payload of a charge or a refund job: the order it is for. Checked
 * before a job runs; unknown fields are allowed, so a newer producer can add
 * one during a rolling deploy without its messages being dead-lettered.
 */
export const OrderJobPayload = Type.Object({ orderId: Type.String({ pattern: ORDER_ID_PATTERN }) });

/**
 * Whether a refund job has anything to do for a payment in this status: a
 * charge may exist (charging, succeeded), or an operator re-drives a refund
 * that could not succeed before (refund_failed).
 */
export function mayRefund(status: PaymentStatus): boolean {
  return status === 'charging' || status === 'succeeded' || status === 'refund_failed';
}

/** Whether the gateway's answer to the charge is unknown (sent, answer never recorded): only replaying its key tells. */
export function chargeOutcomeUnknown(status: PaymentStatus): boolean {
  return status === 'charging';
}

/** One key per order and operation, stable across every retry: the gateway charges or refunds once. */
export const chargeKey = (orderId: string) => `orderflow-charge-${orderId}`;
export const refundKey = (orderId: string) => `orderflow-refund-${orderId}`;

/** Orders' payment port (orders/payment-port.ts), on this module's table and queues. */
export function paymentPort(queue: JobQueue): PaymentPort {
  return {
    open: (tx, payments) => openPayments(tx, queue, payments),
    settle: (tx, orderId) => refundIfCharged(tx, queue, orderId),
  };
}

/** Records the payments of newly accepted orders and queues their charges, in the caller's transaction. */
async function openPayments(tx: Queryable, queue: JobQueue, payments: readonly PaymentRequest[]): Promise<void> {
  if (payments.length === 0) return;
  // Pipelined: one round trip (see Queryable).
  await Promise.all([insertPayments(tx, payments), queueCharges(tx, queue, payments)]);
}

/**
 * Queues the orders' charges in one statement: on accept, and again for the
 * sweeper's re-drive, a no-op for each charge job still queued.
 */
export async function queueCharges(
  tx: Queryable,
  queue: JobQueue,
  charges: readonly { orderId: string; trace?: TraceCarrier }[],
): Promise<void> {
  await queue.enqueueMany(
    tx,
    CHARGE_QUEUE,
    charges.map(({ orderId, trace }) => ({ payload: { orderId }, key: `charge:${orderId}`, trace })),
  );
}

/**
 * Queues a refund of the order's payment if a charge may exist (charging or
 * succeeded), and notes when it was asked for (the sweeper re-drives it from
 * then on); a payment never sent is voided there and then, since no charge
 * can follow (the caller holds the order's lock and the order is no longer
 * pending). The order side decides whether money is owed back (orders'
 * refundIfOwed); this only knows whether any may have moved.
 */
async function refundIfCharged(tx: Queryable, queue: JobQueue, orderId: string): Promise<void> {
  const owed = await markRefundRequested(tx, orderId);
  if (!owed) {
    if (await voidUnsent(tx, orderId))
      await recordOrderEvents(tx, [{ orderId, type: 'charge_voided', detail: { sent: false } }]);
    return;
  }
  await redriveRefunds(tx, queue, [orderId]);
  if (owed.first)
    await recordOrderEvents(tx, [
      { orderId, type: 'refund_requested', detail: { amountCents: owed.amountCents, currency: owed.currency } },
    ]);
}

/** Queues the orders' refunds again (the sweeper's re-drive), in one statement; a no-op for each refund job still queued. */
export async function redriveRefunds(tx: Queryable, queue: JobQueue, orderIds: readonly string[]): Promise<void> {
  await queue.enqueueMany(
    tx,
    REFUND_QUEUE,
    orderIds.map((orderId) => ({ payload: { orderId }, key: `refund:${orderId}` })),
  );
}

/**
 * An operator's re-drive of a charge that failed for good: a payment the
 * gateway refused (failed: nothing was charged under its key) may be charged
 * again, so it goes back to pending. In the caller's transaction, after the
 * order's row is locked (lock order: order, stock, payment). Throws
 * AppError order_not_retryable for any other payment: money may have moved.
 */
export async function reopenFailedPayment(tx: Queryable, orderId: string): Promise<void> {
  if (await reopenFailed(tx, orderId)) return;
  const payment = await findPayment(tx, orderId);
  throw new AppError(
    'order_not_retryable',
    `the payment of order ${orderId} is ${payment?.status ?? 'missing'}, not failed: only a charge the gateway refused, with nothing charged, may be retried`,
  );
}
