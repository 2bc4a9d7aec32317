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

/** $1 ids, $2 customers, $3 statuses, $4 totals in minor units, $5 currencies, $6 reject reasons (null when none). */
export const INSERT_ORDERS_SQL = `INSERT INTO orders.orders (id, customer_id, status, total_cents, currency, reject_reason)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
     RETURNING id, created_at, updated_at`;

/** $1 order ids, $2 line numbers (from 1), $3 SKUs, $4 quantities, $5 unit prices in minor units. */
export const INSERT_ORDER_LINES_SQL = `INSERT INTO orders.order_lines (order_id, line_no, sku, quantity, price_cents)
       SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::bigint[])`;

/** Stores new orders and their lines: two statements for any number of orders. */
export async function insertOrders(tx: Queryable, orders: readonly NewOrder[]): Promise<Order[]> {
  if (orders.length === 0) return [];
  const lines = orders.flatMap((o) => o.lines.map((line, index) => ({ orderId: o.id, lineNo: index + 1, ...line })));
  // Both statements go in one round trip (pipelined; see Queryable); the lines follow their orders.
  const [stamps] = await Promise.all([
    tx.query<{ id: string; created_at: Date; updated_at: Date }>(INSERT_ORDERS_SQL, [
      orders.map((o) => o.id),
      orders.map((o) => o.customerId),
      orders.map((o) => o.status),
      orders.map((o) => o.totalCents),
      orders.map((o) => o.currency),
      orders.map((o) => o.rejectReason),
    ]),
    tx.query(INSERT_ORDER_LINES_SQL, [
      lines.map((l) => l.orderId),
      lines.map((l) => l.lineNo),
      lines.map((l) => l.sku),
      lines.map((l) => l.quantity),
      lines.map((l) => l.priceCents),
    ]),
  ]);
  const stampOf = new Map(stamps.map((row) => [row.id, row]));
  return orders.map((o) => {
    const stamp = stampOf.get(o.id)!;
    return {
      id: o.id,
      customerId: o.customerId,
      status: o.status,
      items: o.lines.map((l) => ({ sku: l.sku, quantity: l.quantity, priceCents: l.priceCents })),
      totalCents: o.totalCents,
      currency: o.currency,
      rejectReason: o.rejectReason,
      createdAt: stamp.created_at.toISOString(),
      updatedAt: stamp.updated_at.toISOString(),
    };
  });
}

/** Reads several orders at once, by id. */
export async function findOrders(db: Queryable, ids: readonly string[]): Promise<Map<string, Order>> {
  if (ids.length === 0) return new Map();
  const rows = await db.query<OrderRow>(`SELECT ${ORDER_COLUMNS} FROM orders.orders o WHERE o.id = ANY($1::text[])`, [
    ids,
  ]);
  return new Map(rows.map((row) => [row.id, toOrder(row)]));
}

/** The statuses of several orders, without their lines (for decisions that need nothing else). */
export async function statusesOf(db: Queryable, ids: readonly string[]): Promise<Map<string, OrderStatus>> {
  if (ids.length === 0) return new Map();
  const rows = await db.query<{ id: string; status: OrderStatus }>(
    'SELECT id, status FROM orders.orders WHERE id = ANY($1::text[])',
    [ids],
  );
  return new Map(rows.map((row) => [row.id, row.status]));
}

/** Reads an order; with a customer id, another customer's order is "not found". */
export async function findOrder(
  db: Queryable,
  id: string,
  customerId?: string,
  options: { lock?: boolean } = {},
): Promise<Order | undefined> {
  const rows = await db.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM orders.orders o WHERE o.id = $1 AND ($2::text IS NULL OR o.customer_id = $2)${options.lock ? ' FOR UPDATE' : ''}`,
    [id, customerId ?? null],
  );
  return rows[0] ? toOrder(rows[0]) : undefined;
}

/**
 * Locks orders' rows and returns only their statuses: the cheap lock for
 * transitions that need nothing else. Rows are locked in id order, so two
 * transactions locking overlapping sets of orders cannot deadlock.
 */
export async function lockOrderStatuses(tx: Queryable, ids: readonly string[]): Promise<Map<string, OrderStatus>> {
  if (ids.length === 0) return new Map();
  const rows = await tx.query<{ id: string; status: OrderStatus }>(
    'SELECT id, status FROM orders.orders WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE',
    [ids],
  );
  return new Map(rows.map((row) => [row.id, row.status]));
}

export async function getOrder(db: Queryable, id: string, customerId?: string): Promise<Order> {
  const order = await findOrder(db, id, customerId);
  if (!order) throw new AppError('not_found', `no order with id "${id}"`);
  return order;
}

/**
 * One page of orders, newest first: a customer's own (customerId set) or
 * everyone's. The page after another starts below `afterId`, the last order
 * of the page before, found among the orders the same filter can see; the
 * cursor is an order id, which its customer already knows, so a page of
 * one's own orders reveals nothing about anyone else's (an insertion
 * sequence would reveal how many orders everyone placed in between).
 *
 * @throws AppError validation_failed when `afterId` names no order this filter can see.
 */
export async function listOrders(
  db: Queryable,
  filter: {
    customerId: string | undefined;
    status: OrderStatus | undefined;
    limit: number;
    afterId: string | undefined;
  },
): Promise<{ items: Order[]; lastId: string | undefined; more: boolean }> {
  let beforeSeq: number | null = null;
  if (filter.afterId !== undefined) {
    const [cursor] = await db.query<{ seq: number }>(
      'SELECT seq FROM orders.orders WHERE id = $1 AND ($2::text IS NULL OR customer_id = $2)',
      [filter.afterId, filter.customerId ?? null],
    );
    if (!cursor)
      throw new AppError('validation_failed', 'cursor is not one this API returned', [
        { path: '/querystring/cursor', message: 'no order of yours is at this cursor' },
      ]);
    beforeSeq = cursor.seq;
  }
  const rows = await db.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM orders.orders o
      WHERE ($1::text IS NULL OR o.customer_id = $1) AND ($2::text IS NULL OR o.status = $2) AND ($3::bigint IS NULL OR o.seq < $3)
      ORDER BY o.seq DESC LIMIT $4`,
    [filter.customerId ?? null, filter.status ?? null, beforeSeq, filter.limit + 1],
  );
  const page = rows.slice(0, filter.limit);
  return { items: page.map(toOrder), lastId: page.at(-1)?.id, more: rows.length > filter.limit };
}

/** Sets the status of orders the caller has locked and checked against the state machine. */
export async function setStatuses(
  tx: Queryable,
  ids: readonly string[],
  status: OrderStatus,
  rejectReason: RejectReason | null = null,
): Promise<void> {
  if (ids.length === 0) return;
  // By primary key only: a condition on status here would let the planner
  // pick the status indexes, whose entries for every order that was ever
  // pending stay until vacuum (a 14-row update took 24 ms that way).
  await tx.query(
    'UPDATE orders.orders SET status = $2, reject_reason = $3, updated_at = now() WHERE id = ANY($1::text[])',
    [ids, status, rejectReason],
  );
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

/**
 * Orders waiting for their payment outcome, database-wide, for the metrics:
 * how many, how many untouched for longer than olderThanMs (the sweeper's
 * deadline), and the age of the oldest in seconds (0 when none). One read of
 * the partial index orders_pending.
 */
export async function pendingOrderStats(
  db: Queryable,
  olderThanMs: number,
): Promise<{ count: number; overdue: number; oldestAgeSeconds: number }> {
  const [row] = await db.query<{ count: number; overdue: number; oldest: number }>(
    `SELECT count(*)::int AS count,
            (count(*) FILTER (WHERE updated_at < now() - make_interval(secs => $1::float8)))::int AS overdue,
            coalesce(extract(epoch FROM now() - min(updated_at)), 0)::float8 AS oldest
       FROM orders.orders WHERE status = 'pending'`,
    [olderThanMs / 1000],
  );
  return { count: row?.count ?? 0, overdue: row?.overdue ?? 0, oldestAgeSeconds: Math.max(0, row?.oldest ?? 0) };
}

// --- idempotency keys -------------------------------------------------------

export interface KeyClaim {
  customerId: string;
  key: string;
  requestHash: string;
  orderId: string;
}

/** $1 customers, $2 keys, $3 request hashes, $4 order ids: returns the order ids of the pairs claimed now. */
export const CLAIM_KEYS_SQL = `INSERT INTO orders.idempotency_keys (customer_id, key, request_hash, order_id)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
     ON CONFLICT (customer_id, key) DO NOTHING RETURNING order_id`;

/**
 * Claims (customer, key) pairs for new orders. Returns, per claim, null when
 * it was claimed now, or the earlier claim of that pair. The pairs must be
 * distinct; they are inserted in sorted order so two batches racing for the
 * same keys wait on each other instead of deadlocking.
 */
export async function claimIdempotencyKeys(
  tx: Queryable,
  claims: readonly KeyClaim[],
): Promise<({ orderId: string; requestHash: string } | null)[]> {
  if (claims.length === 0) return [];
  const sorted = [...claims].sort((a, b) => compare(a.customerId, b.customerId) || compare(a.key, b.key));
  const inserted = await tx.query<{ order_id: string }>(CLAIM_KEYS_SQL, [
    sorted.map((c) => c.customerId),
    sorted.map((c) => c.key),
    sorted.map((c) => c.requestHash),
    sorted.map((c) => c.orderId),
  ]);
  const claimedNow = new Set(inserted.map((row) => row.order_id));
  const earlier = claims.filter((c) => !claimedNow.has(c.orderId));
  const existing = new Map<string, { orderId: string; requestHash: string }>();
  if (earlier.length > 0) {
    const rows = await tx.query<{ customer_id: string; key: string; order_id: string; request_hash: string }>(
      `SELECT k.customer_id, k.key, k.order_id, k.request_hash
         FROM orders.idempotency_keys k
         JOIN unnest($1::text[], $2::text[]) AS c(customer_id, key) ON k.customer_id = c.customer_id AND k.key = c.key`,
      [earlier.map((c) => c.customerId), earlier.map((c) => c.key)],
    );
    for (const row of rows)
      existing.set(customerKey(row.customer_id, row.key), { orderId: row.order_id, requestHash: row.request_hash });
  }
  return claims.map((c) => {
    if (claimedNow.has(c.orderId)) return null;
    const found = existing.get(customerKey(c.customerId, c.key));
    if (!found) throw new Error('idempotency key vanished between conflict and read');
    return found;
  });
}

/** One string per (customer, Idempotency-Key) pair: keys are scoped to their customer. */
export function customerKey(customerId: string, key: string): string {
  return `${customerId}\u0000${key}`;
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// --- the order's history (orders.order_events) -------------------------------

/** What can happen to an order; each is written in the transaction that makes it happen. */
export const ORDER_EVENT_TYPES = [
  'accepted',
  'stock_held',
  'charge_attempted',
  'charged',
  'confirmed',
  'rejected',
  'cancel_requested',
  'refund_requested',
  'refunded',
  'refund_failed',
  'redriven',
  'dead_letter_discarded',
  'charge_voided',
] as const;
export type OrderEventType = (typeof ORDER_EVENT_TYPES)[number];

export interface NewOrderEvent {
  orderId: string;
  type: OrderEventType;
  /** What the event carries (reason, amount in minor units, charge id, who acted): camelCase JSON. */
  detail?: Record<string, unknown>;
}

export interface OrderEventRecord {
  /** Increasing in the order things were recorded, across all orders. */
  id: number;
  type: OrderEventType;
  detail: Record<string, unknown>;
  /** RFC 3339: when the transaction that wrote it ran. */
  at: string;
}

/** $1 order ids, $2 event types, $3 details (JSON text). */
export const INSERT_ORDER_EVENTS_SQL = `INSERT INTO orders.order_events (order_id, type, detail)
     SELECT e.order_id, e.type, e.detail::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS e(order_id, type, detail)`;

/**
 * Appends events to orders' histories, in the caller's transaction: one
 * multi-row statement for any number of events, so a group-committed batch
 * stays one round trip (pipelined with its other statements; see Queryable).
 */
export async function recordOrderEvents(tx: Queryable, events: readonly NewOrderEvent[]): Promise<void> {
  if (events.length === 0) return;
  await tx.query(INSERT_ORDER_EVENTS_SQL, [
    events.map((e) => e.orderId),
    events.map((e) => e.type),
    events.map((e) => JSON.stringify(e.detail ?? {})),
  ]);
}

/** An order's history, oldest first. */
export async function orderHistory(db: Queryable, orderId: string): Promise<OrderEventRecord[]> {
  const rows = await db.query<{ id: number; type: OrderEventType; detail: Record<string, unknown>; at: Date }>(
    'SELECT id, type, detail, at FROM orders.order_events WHERE order_id = $1 ORDER BY id',
    [orderId],
  );
  return rows.map((r) => ({ id: r.id, type: r.type, detail: r.detail, at: r.at.toISOString() }));
}

export interface OrderSearch {
  status: OrderStatus | undefined;
  rejectReason: RejectReason | undefined;
  customerId: string | undefined;
  /** Orders with a line of this SKU. */
  sku: string | undefined;
  /** created_at >= from (inclusive) and < to (exclusive). */
  from: Date | undefined;
  to: Date | undefined;
  limit: number;
  /** The seq of the last order of the previous page (newest first). */
  beforeSeq: number | undefined;
}

/** Orders of every customer matching all the given filters, newest first, a page at a time. */
export async function searchOrders(
  db: Queryable,
  filter: OrderSearch,
): Promise<{ items: Order[]; lastSeq: number | undefined; more: boolean }> {
  const rows = await db.query<OrderRow>(
    `SELECT ${ORDER_COLUMNS} FROM orders.orders o
      WHERE ($1::text IS NULL OR o.status = $1) AND ($2::text IS NULL OR o.reject_reason = $2)
        AND ($3::text IS NULL OR o.customer_id = $3)
        AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM orders.order_lines l WHERE l.sku = $4 AND l.order_id = o.id))
        AND ($5::timestamptz IS NULL OR o.created_at >= $5) AND ($6::timestamptz IS NULL OR o.created_at < $6)
        AND ($7::bigint IS NULL OR o.seq < $7)
      ORDER BY o.seq DESC LIMIT $8`,
    [
      filter.status ?? null,
      filter.rejectReason ?? null,
      filter.customerId ?? null,
      filter.sku ?? null,
      filter.from?.toISOString() ?? null,
      filter.to?.toISOString() ?? null,
      filter.beforeSeq ?? null,
      filter.limit + 1,
    ],
  );
  const page = rows.slice(0, filter.limit);
  return { items: page.map(toOrder), lastSeq: page.at(-1)?.seq, more: rows.length > filter.limit };
}

/**
 * Quantities sold per SKU: the lines of confirmed orders, summed. Reads every
 * confirmed order's lines, so it is for checks an operator runs now and
 * then (the console's "oversold SKUs" tile), not for the request path.
 */
export async function confirmedQuantities(db: Queryable): Promise<Map<string, number>> {
  const rows = await db.query<{ sku: string; quantity: number }>(
    `SELECT l.sku, sum(l.quantity)::bigint AS quantity FROM orders.order_lines l JOIN orders.orders o ON o.id = l.order_id
      WHERE o.status = 'confirmed' GROUP BY l.sku`,
  );
  return new Map(rows.map((r) => [r.sku, r.quantity]));
}
