// SQL of the payments module: its table is payments.payments, one row per
// order, and only this module touches it (the statuses are explained at the
// top of payments.ts).
import type { Queryable } from '../storage/database.ts';
import { storableText } from '../text.ts';
import type { PaymentRequest } from '../orders/payment-port.ts';

export type PaymentStatus =
  'pending' | 'charging' | 'succeeded' | 'declined' | 'refunded' | 'failed' | 'refund_failed' | 'voided';

export interface Payment {
  orderId: string;
  amountCents: number;
  currency: string;
  cardToken: string;
  status: PaymentStatus;
  chargeId: string | null;
}

/** $1 order ids, $2 amounts in minor units, $3 currencies, $4 card tokens: one pending payment per order. */
export const INSERT_PAYMENTS_SQL = `INSERT INTO payments.payments (order_id, amount_cents, currency, card_token, status)
       SELECT order_id, amount_cents, currency, card_token, 'pending'
         FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS p(order_id, amount_cents, currency, card_token)`;

/** Records the payments of newly accepted orders, pending. */
export async function insertPayments(tx: Queryable, payments: readonly PaymentRequest[]): Promise<void> {
  await tx.query(INSERT_PAYMENTS_SQL, [
    payments.map((p) => p.orderId),
    payments.map((p) => p.amountCents),
    payments.map((p) => p.currency),
    payments.map((p) => p.token),
  ]);
}

/**
 * Notes that a refund is asked for (once: the first time stays) if the
 * payment may hold money (charging or succeeded); returns the amount that
 * may be owed, and whether this was the first request, or undefined when
 * no money may have moved.
 */
export async function markRefundRequested(
  tx: Queryable,
  orderId: string,
): Promise<{ amountCents: number; currency: string; first: boolean } | undefined> {
  const [[before], [owed]] = await Promise.all([
    lockedRow<{ refund_requested_at: Date | null }>(tx, orderId, 'refund_requested_at'),
    tx.query<{ amount_cents: number; currency: string }>(
      `UPDATE payments.payments SET refund_requested_at = coalesce(refund_requested_at, now())
        WHERE order_id = $1 AND status IN ('charging', 'succeeded')
        RETURNING amount_cents, currency`,
      [orderId],
    ),
  ]);
  return owed
    ? { amountCents: owed.amount_cents, currency: owed.currency, first: before?.refund_requested_at == null }
    : undefined;
}

/**
 * The payment's row as it stands, locked for the rest of the transaction:
 * what an update issued next in the same transaction changes from. Sent
 * pipelined with that update, it costs no extra round trip.
 *
 * Why not a subquery in the update's RETURNING: under READ COMMITTED an
 * UPDATE that waited for another transaction's row lock updates the row as
 * that transaction left it, but its subqueries read the snapshot taken when
 * the statement began, before that commit (PostgreSQL manual, "Transaction
 * Isolation", Read Committed). A locking SELECT returns the newest version,
 * and the update that follows starts with a snapshot taken after it.
 */
function lockedRow<Row extends Record<string, unknown>>(
  tx: Queryable,
  orderId: string,
  columns: string,
): Promise<Row[]> {
  return tx.query<Row>(`SELECT ${columns} FROM payments.payments WHERE order_id = $1 FOR UPDATE`, [orderId]);
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
  return {
    orderId: row.order_id,
    amountCents: row.amount_cents,
    currency: row.currency,
    cardToken: row.card_token,
    status: row.status,
    chargeId: row.charge_id,
  };
}

export async function findPayment(db: Queryable, orderId: string): Promise<Payment | undefined> {
  const rows = await db.query<PaymentRow>(`SELECT ${PAYMENT_COLUMNS} FROM payments.payments WHERE order_id = $1`, [
    orderId,
  ]);
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

/**
 * Records successful charges, except where a refund already settled the
 * payment; returns the orders whose charge this recorded first (the others'
 * charge was recorded by a duplicate delivery or by their refund), so that
 * each charge enters the order's history once.
 */
export async function markSucceeded(
  tx: Queryable,
  charges: readonly { orderId: string; chargeId: string }[],
): Promise<Set<string>> {
  if (charges.length === 0) return new Set();
  const rows = await tx.query<{ order_id: string }>(
    `UPDATE payments.payments p SET status = 'succeeded', charge_id = c.charge_id, updated_at = now()
       FROM unnest($1::text[], $2::text[]) AS c(order_id, charge_id)
      WHERE p.order_id = c.order_id AND p.status IN ('pending', 'charging')
      RETURNING p.order_id`,
    [charges.map((c) => c.orderId), charges.map((c) => c.chargeId)],
  );
  return new Set(rows.map((r) => r.order_id));
}

/**
 * A payment whose charge was never sent will never be: its order is no
 * longer pending (the caller holds the order's lock, so no pay worker can be
 * starting it). True if the payment was pending and is now voided.
 */
export async function voidUnsent(tx: Queryable, orderId: string): Promise<boolean> {
  const rows = await tx.query(
    `UPDATE payments.payments SET status = 'voided', updated_at = now() WHERE order_id = $1 AND status = 'pending' RETURNING order_id`,
    [orderId],
  );
  return rows.length > 0;
}

/**
 * The gateway voided the charge key of a payment whose charge's answer was
 * unknown: nothing was charged and nothing can be. True if this moved the
 * payment (false: settled already, by another delivery of the refund).
 */
export async function markVoided(tx: Queryable, orderId: string): Promise<boolean> {
  const rows = await tx.query(
    `UPDATE payments.payments SET status = 'voided', updated_at = now() WHERE order_id = $1 AND status IN ('charging', 'refund_failed') AND charge_id IS NULL RETURNING order_id`,
    [orderId],
  );
  return rows.length > 0;
}

export async function markDeclined(tx: Queryable, orderId: string): Promise<void> {
  // refund_failed too: an operator's re-drive of a refund may learn that the charge was declined after all.
  await tx.query(
    `UPDATE payments.payments SET status = 'declined', updated_at = now() WHERE order_id = $1 AND status IN ('pending', 'charging', 'refund_failed')`,
    [orderId],
  );
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

/**
 * Records a refund, once: undefined when the payment was refunded already
 * (another delivery of the refund job), else whether its charge was already
 * recorded (false: the refund learned of the charge itself, from the
 * gateway, and the order's history has not seen it yet).
 */
export async function markRefunded(
  tx: Queryable,
  orderId: string,
  chargeId: string,
  refundId: string,
): Promise<{ chargeWasRecorded: boolean } | undefined> {
  const [[before], updated] = await Promise.all([
    lockedRow<{ charge_id: string | null }>(tx, orderId, 'charge_id'),
    tx.query(
      `UPDATE payments.payments SET status = 'refunded', charge_id = $2, refund_id = $3, updated_at = now() WHERE order_id = $1 AND status <> 'refunded'
       RETURNING order_id`,
      [orderId, chargeId, refundId],
    ),
  ]);
  return updated.length > 0 ? { chargeWasRecorded: before?.charge_id != null } : undefined;
}

/** A payment the gateway refused (failed) goes back to pending, for an operator's re-drive; false for any other payment. */
export async function reopenFailed(tx: Queryable, orderId: string): Promise<boolean> {
  const rows = await tx.query(
    `UPDATE payments.payments SET status = 'pending', last_error = NULL, updated_at = now() WHERE order_id = $1 AND status = 'failed' RETURNING order_id`,
    [orderId],
  );
  return rows.length > 0;
}

/** What an operator sees of an order's payment: never the card token. */
export interface PaymentSummary {
  status: PaymentStatus;
  amountCents: number;
  currency: string;
  chargeId: string | null;
  refundId: string | null;
  /** Why it failed (the gateway's words), for failed and refund_failed. */
  lastError: string | null;
  /** RFC 3339, or null when no refund was asked for. */
  refundRequestedAt: string | null;
  createdAt: string;
  updatedAt: string;
}

export async function paymentSummary(db: Queryable, orderId: string): Promise<PaymentSummary | undefined> {
  const rows = await db.query<{
    status: PaymentStatus;
    amount_cents: number;
    currency: string;
    charge_id: string | null;
    refund_id: string | null;
    last_error: string | null;
    refund_requested_at: Date | null;
    created_at: Date;
    updated_at: Date;
  }>(
    `SELECT status, amount_cents, currency, charge_id, refund_id, last_error, refund_requested_at, created_at, updated_at
       FROM payments.payments WHERE order_id = $1`,
    [orderId],
  );
  const row = rows[0];
  if (!row) return undefined;
  return {
    status: row.status,
    amountCents: row.amount_cents,
    currency: row.currency,
    chargeId: row.charge_id,
    refundId: row.refund_id,
    lastError: row.last_error,
    refundRequestedAt: row.refund_requested_at?.toISOString() ?? null,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}
