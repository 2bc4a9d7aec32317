// The contract's invariants, checked at the end of every run once the system
// is quiet. A benchmark that got its figures by overselling or charging
// twice has measured nothing, so any failure fails the run.
import type { Queryable } from '../src/storage/database.ts';
import type { Ledger } from './targets.ts';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export interface StatusCounts {
  pending: number;
  confirmed: number;
  rejected: number;
  cancelled: number;
  total: number;
}

export async function statusCounts(db: Queryable): Promise<StatusCounts> {
  const rows = await db.query<{ status: string; n: number }>(
    'SELECT status, count(*)::int AS n FROM orders.orders GROUP BY status',
  );
  const counts: StatusCounts = { pending: 0, confirmed: 0, rejected: 0, cancelled: 0, total: 0 };
  for (const row of rows) {
    if (row.status in counts) counts[row.status as keyof Omit<StatusCounts, 'total'>] = Number(row.n);
    counts.total += Number(row.n);
  }
  return counts;
}

/** Waits until no order is pending; returns how long that took, or undefined on timeout. */
export async function drain(db: Queryable, timeoutMs: number): Promise<number | undefined> {
  const start = performance.now();
  for (;;) {
    const [row] = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM orders.orders WHERE status = 'pending'`,
    );
    if (Number(row?.n) === 0) return performance.now() - start;
    if (performance.now() - start > timeoutMs) return undefined;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export async function checkInvariants(db: Queryable, ledger: Ledger, acceptedIds: readonly string[]): Promise<Check[]> {
  const checks: Check[] = [];

  const counts = await statusCounts(db);
  checks.push({
    name: 'every order terminal after drain',
    ok: counts.pending === 0,
    detail: `${counts.pending} pending of ${counts.total} (confirmed ${counts.confirmed}, rejected ${counts.rejected}, cancelled ${counts.cancelled})`,
  });

  // available = stock − what pending and confirmed orders hold; confirmed never above stock.
  const stock = await db.query<{ sku: string; on_hand: number; held: number; confirmed: number; holding: number }>(
    `SELECT s.sku, s.on_hand, s.held,
            COALESCE(q.confirmed, 0)::bigint AS confirmed, COALESCE(q.holding, 0)::bigint AS holding
       FROM inventory.stock s
       LEFT JOIN (SELECT l.sku,
                         sum(l.quantity) FILTER (WHERE o.status = 'confirmed') AS confirmed,
                         sum(l.quantity) FILTER (WHERE o.status IN ('pending', 'confirmed')) AS holding
                    FROM orders.order_lines l JOIN orders.orders o ON o.id = l.order_id
                   GROUP BY l.sku) q ON q.sku = s.sku`,
  );
  const oversold = stock.filter((s) => Number(s.confirmed) > Number(s.on_hand));
  const mismatched = stock.filter(
    (s) => Number(s.held) !== Number(s.holding) || Number(s.on_hand) - Number(s.held) < 0,
  );
  checks.push({
    name: 'no oversell (confirmed ≤ stock per SKU)',
    ok: oversold.length === 0,
    detail:
      oversold.length === 0
        ? `${stock.length} SKUs`
        : oversold
            .slice(0, 5)
            .map((s) => `${s.sku}: confirmed ${s.confirmed} > stock ${s.on_hand}`)
            .join('; '),
  });
  checks.push({
    name: 'available = stock − held by pending/confirmed',
    ok: mismatched.length === 0,
    detail:
      mismatched.length === 0
        ? `${stock.length} SKUs`
        : mismatched
            .slice(0, 5)
            .map((s) => `${s.sku}: held ${s.held}, orders hold ${s.holding}, stock ${s.on_hand}`)
            .join('; '),
  });

  // One net charge per confirmed order, nothing net for the others, nothing for unknown orders.
  const orders = await db.query<{ id: string; status: string; total_cents: number }>(
    'SELECT id, status, total_cents FROM orders.orders',
  );
  const refunded = new Map<string, number>();
  for (const refund of ledger.refunds)
    refunded.set(refund.chargeId, (refunded.get(refund.chargeId) ?? 0) + refund.amountCents);
  const byOrder = new Map<string, { charges: number; net: number }>();
  for (const charge of ledger.charges) {
    const entry = byOrder.get(charge.reference) ?? { charges: 0, net: 0 };
    const net = charge.amountCents - (refunded.get(charge.id) ?? 0);
    if (net !== 0) entry.charges++;
    entry.net += net;
    byOrder.set(charge.reference, entry);
  }
  const problems: string[] = [];
  const known = new Set<string>();
  for (const order of orders) {
    known.add(order.id);
    const entry = byOrder.get(order.id) ?? { charges: 0, net: 0 };
    if (order.status === 'confirmed' && (entry.charges !== 1 || entry.net !== Number(order.total_cents))) {
      problems.push(`${order.id} confirmed: ${entry.charges} net charges, net ${entry.net} of ${order.total_cents}`);
    }
    if (order.status !== 'confirmed' && order.status !== 'pending' && entry.net !== 0)
      problems.push(`${order.id} ${order.status}: nets ${entry.net}`);
  }
  for (const reference of byOrder.keys())
    if (!known.has(reference)) problems.push(`charge for unknown order ${reference}`);
  checks.push({
    name: 'one net charge per confirmed order (gateway ledger)',
    ok: problems.length === 0,
    detail:
      problems.length === 0
        ? `${ledger.charges.length} charges, ${ledger.refunds.length} refunds`
        : `${problems.length} problems: ${problems.slice(0, 5).join('; ')}`,
  });

  // Every 202 can be read back.
  const unique = [...new Set(acceptedIds)];
  const [found] = await db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM orders.orders WHERE id = ANY($1::text[])',
    [unique],
  );
  checks.push({
    name: 'every 202 answer readable',
    ok: Number(found?.n) === unique.length,
    detail: `${found?.n} of ${unique.length} order ids from 202 answers found`,
  });
  return checks;
}
