// Inventory: how much of each SKU exists (on_hand) and how much of it orders
// hold. Every change happens under the SKU's row lock, so two requests can
// never both take the last unit: the database decides, not a prior read.
import type { Queryable } from '../storage/database.ts';

/**
 * The most stock one SKU may have on hand. Every hold and release is summed
 * under it, so no stock figure can grow without bound (and come near the
 * integers a JavaScript number cannot hold exactly).
 */
export const MAX_STOCK = 1_000_000_000;

export interface StockLevel {
  sku: string;
  onHand: number;
  held: number;
  available: number;
}

export interface StockLine {
  sku: string;
  quantity: number;
}

export async function createStock(tx: Queryable, sku: string, onHand: number): Promise<void> {
  await tx.query('INSERT INTO inventory.stock (sku, on_hand) VALUES ($1, $2)', [sku, onHand]);
}

export async function stockLevels(db: Queryable, skus: readonly string[]): Promise<Map<string, StockLevel>> {
  const rows = await db.query<{ sku: string; on_hand: number; held: number }>(
    'SELECT sku, on_hand, held FROM inventory.stock WHERE sku = ANY($1::text[])',
    [skus],
  );
  return new Map(rows.map((r) => [r.sku, { sku: r.sku, onHand: r.on_hand, held: r.held, available: r.on_hand - r.held }]));
}

/**
 * Holds stock for a batch of orders: each order gets every line or none, in
 * the order given (first come, first served). Whatever the batch size, this
 * is two statements: lockStock locks the SKUs' rows in sorted order (so
 * concurrent batches, in this process or another, cannot deadlock) and reads
 * their availability; allocate decides under those locks; holdStock applies
 * the summed quantity per SKU in one UPDATE. A hot SKU thus costs one row
 * lock per batch, not per order, and an order only loses to the orders ahead
 * of it for the SKU that runs out.
 */
export async function lockStock(tx: Queryable, skus: readonly string[]): Promise<Map<string, number>> {
  if (skus.length === 0) return new Map();
  const rows = await tx.query<{ sku: string; available: number }>(
    'SELECT sku, on_hand - held AS available FROM inventory.stock WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE',
    [skus],
  );
  return new Map(rows.map((r) => [r.sku, Number(r.available)]));
}

/** Which orders fit in what lockStock found, in order, and the quantity to hold per SKU for them. */
export function allocate(available: ReadonlyMap<string, number>, orders: readonly (readonly StockLine[])[]): { reserved: boolean[]; holds: StockLine[] } {
  const held = new Map<string, number>();
  const reserved = orders.map((lines) => {
    const wanted = mergeLines(lines);
    const fits = wanted.every((line) => (available.get(line.sku) ?? 0) - (held.get(line.sku) ?? 0) >= line.quantity);
    if (fits) for (const line of wanted) held.set(line.sku, (held.get(line.sku) ?? 0) + line.quantity);
    return fits;
  });
  return { reserved, holds: [...held].map(([sku, quantity]) => ({ sku, quantity })) };
}

/** Holds what allocate decided, under lockStock's locks. */
export async function holdStock(tx: Queryable, holds: readonly StockLine[]): Promise<void> {
  if (holds.length === 0) return;
  // The guard can only fail if the rows were not locked as they should be;
  // then the whole batch rolls back rather than oversell.
  const updated = await tx.query(
    `UPDATE inventory.stock s SET held = s.held + v.quantity
       FROM unnest($1::text[], $2::bigint[]) AS v(sku, quantity)
      WHERE s.sku = v.sku AND s.on_hand - s.held >= v.quantity
      RETURNING s.sku`,
    [holds.map((h) => h.sku), holds.map((h) => h.quantity)],
  );
  if (updated.length !== holds.length) throw new Error(`stock changed under a row lock: held ${updated.length} of ${holds.length} SKUs`);
}

export async function release(tx: Queryable, lines: readonly StockLine[]): Promise<void> {
  for (const line of mergeLines(lines)) {
    await tx.query('UPDATE inventory.stock SET held = held - $2 WHERE sku = $1', [line.sku, line.quantity]);
  }
}

/** Changes on_hand by delta unless that would leave less than what orders hold, or more than MAX_STOCK; null when refused. */
export async function adjustStock(tx: Queryable, sku: string, delta: number): Promise<StockLevel | null> {
  const rows = await tx.query<{ sku: string; on_hand: number; held: number }>(
    `UPDATE inventory.stock SET on_hand = on_hand + $2
      WHERE sku = $1 AND on_hand + $2 - held >= 0 AND on_hand + $2 <= $3
      RETURNING sku, on_hand, held`,
    [sku, delta, MAX_STOCK],
  );
  const row = rows[0];
  return row ? { sku: row.sku, onHand: row.on_hand, held: row.held, available: row.on_hand - row.held } : null;
}

function mergeLines(lines: readonly StockLine[]): StockLine[] {
  const totals = new Map<string, number>();
  for (const line of lines) totals.set(line.sku, (totals.get(line.sku) ?? 0) + line.quantity);
  return [...totals].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([sku, quantity]) => ({ sku, quantity }));
}
