// The payments module's table (payments.payments) and public functions. A
// payment row remembers what we know of the gateway for one order, so a
// crash at any point leaves enough behind to finish the job safely:
//   pending  → never sent: nothing to undo;
//   charging → sent at least once: a charge may exist, only a replay tells;
//   succeeded / declined / refunded → the gateway's answer, recorded.
//   failed        → the gateway refused the charge request itself, or it could
//                   not be sent: nothing was charged, nothing is owed back;
//   refund_failed → the refund can never succeed as it stands: money may be
//                   held, and an operator must settle it (last_error says why).
import { Type } from 'typebox';
import type { JobQueue } from '../messaging/queue.ts';
import { ORDER_ID_PATTERN } from '../orders/ids.ts';
import type { PaymentPort, PaymentRequest } from '../orders/payment-port.ts';
import type { Queryable } from '../storage/database.ts';
import { storableText } from '../text.ts';

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

export type PaymentStatus = 'pending' | 'charging' | 'succeeded' | 'declined' | 'refunded' | 'failed' | 'refund_failed';

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

export interface Payment {
  orderId: string;
  amountCents: number;
  currency: string;
  cardToken: string;
  status: PaymentStatus;
  chargeId: string | null;
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
  await Promise.all([
    tx.query(
      `INSERT INTO payments.payments (order_id, amount_cents, currency, card_token, status)
       SELECT order_id, amount_cents, currency, card_token, 'pending'
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS p(order_id, amount_cents, currency, card_token)`,
      [payments.map((p) => p.orderId), payments.map((p) => p.amountCents), payments.map((p) => p.currency), payments.map((p) => p.token)],
    ),
    queueCharges(tx, queue, payments.map((p) => p.orderId)),
  ]);
}

/**
 * Queues the orders' charges in one statement: on accept, and again for the
 * sweeper's re-drive, a no-op for each charge job still queued.
 */
export async function queueCharges(tx: Queryable, queue: JobQueue, orderIds: readonly string[]): Promise<void> {
  await queue.enqueueMany(
    tx,
    CHARGE_QUEUE,
    orderIds.map((orderId) => ({ payload: { orderId }, key: `charge:${orderId}` })),
  );
}

/**
 * Queues a refund of the order's payment if a charge may exist (charging or
 * succeeded), and notes when it was asked for (the sweeper re-drives it from
 * then on). The order side decides whether money is owed back (orders'
 * refundIfOwed); this only knows whether any may have moved.
 */
async function refundIfCharged(tx: Queryable, queue: JobQueue, orderId: string): Promise<void> {
  const owed = await tx.query(
    `UPDATE payments.payments SET refund_requested_at = coalesce(refund_requested_at, now())
      WHERE order_id = $1 AND status IN ('charging', 'succeeded') RETURNING order_id`,
    [orderId],
  );
  if (owed.length > 0) await redriveRefunds(tx, queue, [orderId]);
}

/** Queues the orders' refunds again (the sweeper's re-drive), in one statement; a no-op for each refund job still queued. */
export async function redriveRefunds(tx: Queryable, queue: JobQueue, orderIds: readonly string[]): Promise<void> {
  await queue.enqueueMany(
    tx,
    REFUND_QUEUE,
    orderIds.map((orderId) => ({ payload: { orderId }, key: `refund:${orderId}` })),
  );
}

interface PaymentRow {
  order_id: string;
  amount_cents: number;
  currency: string;
  card_token: string;
  status: PaymentStatus;
  charge_id: string | null;
  [column: string]: unknown;
}

const PAYMENT_COLUMNS = 'order_id, amount_cents, currency, card_token, status, charge_id';

function toPayment(row: PaymentRow): Payment {
  return { orderId: row.order_id, amountCents: row.amount_cents, currency: row.currency, cardToken: row.card_token, status: row.status, chargeId: row.charge_id };
}

export async function findPayment(db: Queryable, orderId: string): Promise<Payment | undefined> {
  const rows = await db.query<PaymentRow>(`SELECT ${PAYMENT_COLUMNS} FROM payments.payments WHERE order_id = $1`, [orderId]);
  return rows[0] ? toPayment(rows[0]) : undefined;
}

/** Refunds asked for more than olderThanMs ago whose payment still holds money: the sweeper re-drives them. */
export async function overdueRefunds(db: Queryable, olderThanMs: number, limit: number): Promise<string[]> {
  const rows = await db.query<{ order_id: string }>(
    `SELECT order_id FROM payments.payments
      WHERE refund_requested_at < now() - make_interval(secs => $1::float8) AND status IN ('charging', 'succeeded')
      ORDER BY refund_requested_at LIMIT $2`,
    [olderThanMs / 1000, limit],
  );
  return rows.map((r) => r.order_id);
}

/**
 * Records that a charge may now exist and returns the payments to charge, in
 * one statement that also locks the rows; a payment missing from the answer
 * is missing or already settled (succeeded, declined, refunded).
 */
export async function startCharging(tx: Queryable, orderIds: readonly string[]): Promise<Map<string, Payment>> {
  if (orderIds.length === 0) return new Map();
  const rows = await tx.query<PaymentRow>(
    `UPDATE payments.payments SET status = 'charging', updated_at = now() WHERE order_id = ANY($1::text[]) AND status IN ('pending', 'charging')
     RETURNING ${PAYMENT_COLUMNS}`,
    [orderIds],
  );
  return new Map(rows.map((row) => [row.order_id, toPayment(row)]));
}

/** Records successful charges, except where a refund already settled the payment. */
export async function markSucceeded(tx: Queryable, charges: readonly { orderId: string; chargeId: string }[]): Promise<void> {
  if (charges.length === 0) return;
  await tx.query(
    `UPDATE payments.payments p SET status = 'succeeded', charge_id = c.charge_id, updated_at = now()
       FROM unnest($1::text[], $2::text[]) AS c(order_id, charge_id)
      WHERE p.order_id = c.order_id AND p.status IN ('pending', 'charging')`,
    [charges.map((c) => c.orderId), charges.map((c) => c.chargeId)],
  );
}

export async function markDeclined(tx: Queryable, orderId: string): Promise<void> {
  // refund_failed too: an operator's re-drive of a refund may learn that the charge was declined after all.
  await tx.query(`UPDATE payments.payments SET status = 'declined', updated_at = now() WHERE order_id = $1 AND status IN ('pending', 'charging', 'refund_failed')`, [orderId]);
}

/** The gateway refused the charge request itself, or it could not be sent: nothing was charged under its key, so nothing is owed back. */
export async function markFailed(tx: Queryable, orderId: string, reason: string): Promise<void> {
  await tx.query(
    `UPDATE payments.payments SET status = 'failed', last_error = $2, updated_at = now() WHERE order_id = $1 AND status IN ('pending', 'charging', 'refund_failed')`,
    [orderId, storableText(reason)],
  );
}

/**
 * The refund can never succeed as it stands. The payment leaves the statuses
 * the sweeper re-drives (money may still be held: an operator settles it, and
 * may re-drive the refund once the cause is fixed).
 */
export async function markRefundFailed(tx: Queryable, orderId: string, reason: string): Promise<void> {
  await tx.query(
    `UPDATE payments.payments SET status = 'refund_failed', last_error = $2, updated_at = now() WHERE order_id = $1 AND status IN ('charging', 'succeeded', 'refund_failed')`,
    [orderId, storableText(reason)],
  );
}

export async function markRefunded(tx: Queryable, orderId: string, chargeId: string, refundId: string): Promise<void> {
  await tx.query(`UPDATE payments.payments SET status = 'refunded', charge_id = $2, refund_id = $3, updated_at = now() WHERE order_id = $1`, [
    orderId,
    chargeId,
    refundId,
  ]);
}
