// SQL of the orders module: its tables are orders.orders, orders.order_lines
// and orders.idempotency_keys, and only this module touches them.
import { AppError } from '../errors.ts';
import type { Queryable } from '../storage/database.ts';
import type { PricedLine } from './pricing.ts';
import type { OrderStatus, RejectReason } from './state-machine.ts';

export interface Order {
  id: string;
  customerId: string;
  status: OrderStatus;
  items: { sku: string; quantity: number; priceCents: number }[];
  totalCents: number;
  currency: string;
  rejectReason: RejectReason | null;
  createdAt: string;
  updatedAt: string;
}

interface OrderRow {
  id: string;
  seq: number;
  customer_id: string;
  status: OrderStatus;
  total_cents: number;
  currency: string;
  reject_reason: RejectReason | null;
  created_at: Date;
  updated_at: Date;
  items: Order['items'] | null;
  [column: string]: unknown;
}

const ORDER_COLUMNS = `o.id, o.seq, o.customer_id, o.status, o.total_cents, o.currency, o.reject_reason, o.created_at, o.updated_at,
  (SELECT json_agg(json_build_object('sku', l.sku, 'quantity', l.quantity, 'priceCents', l.price_cents) ORDER BY l.line_no)
     FROM orders.order_lines l WHERE l.order_id = o.id) AS items`;

function toOrder(row: OrderRow): Order {
  return {
    id: row.id,
    customerId: row.customer_id,
    status: row.status,
    items: row.items ?? [],
    totalCents: row.total_cents,
    currency: row.currency,
    rejectReason: row.reject_reason,
    createdAt: row.created_at.toISOString(),
    updatedAt: row.updated_at.toISOString(),
  };
}

export interface NewOrder {
  id: string;
  customerId: string;
  status: 'pending' | 'rejected';
  rejectReason: RejectReason | null;
  lines: PricedLine[];
  totalCents: number;
  currency: string;
}

export async function insertOrder(tx: Queryable, order: NewOrder): Promise<void> {
  await tx.query(
    `INSERT INTO orders.orders (id, customer_id, status, total_cents, currency, reject_reason) VALUES ($1, $2, $3, $4, $5, $6)`,
    [order.id, order.customerId, order.status, order.totalCents, order.currency, order.rejectReason],
  );
  await tx.query(
    `INSERT INTO orders.order_lines (order_id, line_no, sku, quantity, price_cents)
     SELECT $1, n, sku, quantity, price_cents
       FROM unnest($2::text[], $3::int[], $4::bigint[]) WITH ORDINALITY AS l(sku, quantity, price_cents, n)`,
    [order.id, order.lines.map((l) => l.sku), order.lines.map((l) => l.quantity), order.lines.map((l) => l.priceCents)],
  );
}

/** Reads an order; with a customer id, another customer's order is "not found". */
export async function findOrder(db: Queryable, id: string, customerId?: string, options: { lock?: boolean } = {}): Promise<Order | undefined> {
  const rows = await db.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM orders.orders o WHERE o.id = $1 AND ($2::text IS NULL OR o.customer_id = $2)${options.lock ? ' FOR UPDATE' : ''}`,
    [id, customerId ?? null],
  );
  return rows[0] ? toOrder(rows[0]) : undefined;
}

export async function getOrder(db: Queryable, id: string, customerId?: string): Promise<Order> {
  const order = await findOrder(db, id, customerId);
  if (!order) throw new AppError('not_found', `no order with id "${id}"`);
  return order;
}

export async function listOrders(
  db: Queryable,
  filter: { customerId: string | undefined; status: OrderStatus | undefined; limit: number; beforeSeq: number | undefined },
): Promise<{ items: Order[]; lastSeq: number | undefined; more: boolean }> {
  const rows = await db.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM orders.orders o
      WHERE ($1::text IS NULL OR o.customer_id = $1) AND ($2::text IS NULL OR o.status = $2) AND ($3::bigint IS NULL OR o.seq < $3)
      ORDER BY o.seq DESC LIMIT $4`,
    [filter.customerId ?? null, filter.status ?? null, filter.beforeSeq ?? null, filter.limit + 1],
  );
  const page = rows.slice(0, filter.limit);
  return { items: page.map(toOrder), lastSeq: page.at(-1)?.seq, more: rows.length > filter.limit };
}

export async function setStatus(tx: Queryable, id: string, status: OrderStatus, rejectReason: RejectReason | null = null): Promise<void> {
  await tx.query('UPDATE orders.orders SET status = $2, reject_reason = $3, updated_at = now() WHERE id = $1', [id, status, rejectReason]);
}

/** Pending orders untouched for longer than olderThanMs: candidates for the sweeper. */
export async function stalePendingOrders(db: Queryable, olderThanMs: number, limit: number): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    `SELECT id FROM orders.orders WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1::float8)
      ORDER BY updated_at LIMIT $2`,
    [olderThanMs / 1000, limit],
  );
  return rows.map((r) => r.id);
}

// --- idempotency keys -------------------------------------------------------

/** Claims (customer, key) for a new order; returns the existing claim when the key was used before. */
export async function claimIdempotencyKey(
  tx: Queryable,
  claim: { customerId: string; key: string; requestHash: string; orderId: string },
): Promise<{ claimed: true } | { claimed: false; orderId: string; requestHash: string }> {
  const inserted = await tx.query(
    `INSERT INTO orders.idempotency_keys (customer_id, key, request_hash, order_id) VALUES ($1, $2, $3, $4)
     ON CONFLICT (customer_id, key) DO NOTHING RETURNING order_id`,
    [claim.customerId, claim.key, claim.requestHash, claim.orderId],
  );
  if (inserted.length > 0) return { claimed: true };
  const rows = await tx.query<{ order_id: string; request_hash: string }>(
    'SELECT order_id, request_hash FROM orders.idempotency_keys WHERE customer_id = $1 AND key = $2',
    [claim.customerId, claim.key],
  );
  const existing = rows[0];
  if (!existing) throw new Error('idempotency key vanished between conflict and read');
  return { claimed: false, orderId: existing.order_id, requestHash: existing.request_hash };
}
