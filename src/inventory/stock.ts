// Inventory: how much of each SKU exists (on_hand) and how much of it orders
// hold. Every change is one conditional UPDATE, so two requests can never
// both take the last unit: the database row lock decides, not a prior read.
import type { Queryable } from '../storage/database.ts';

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
 * Holds stock for every line or for none. SKUs are taken in sorted order so
 * two multi-line orders lock rows in the same order and cannot deadlock.
 */
export async function reserve(tx: Queryable, lines: readonly StockLine[]): Promise<boolean> {
  const merged = mergeLines(lines);
  const taken: StockLine[] = [];
  for (const line of merged) {
    const rows = await tx.query(
      'UPDATE inventory.stock SET held = held + $2 WHERE sku = $1 AND on_hand - held >= $2 RETURNING sku',
      [line.sku, line.quantity],
    );
    if (rows.length === 0) {
      // Undo the lines already held, inside the same transaction.
      await release(tx, taken);
      return false;
    }
    taken.push(line);
  }
  return true;
}

export async function release(tx: Queryable, lines: readonly StockLine[]): Promise<void> {
  for (const line of mergeLines(lines)) {
    await tx.query('UPDATE inventory.stock SET held = held - $2 WHERE sku = $1', [line.sku, line.quantity]);
  }
}

/** Changes on_hand by delta unless that would leave less than what orders hold; null when refused. */
export async function adjustStock(tx: Queryable, sku: string, delta: number): Promise<StockLevel | null> {
  const rows = await tx.query<{ sku: string; on_hand: number; held: number }>(
    `UPDATE inventory.stock SET on_hand = on_hand + $2
      WHERE sku = $1 AND on_hand + $2 - held >= 0
      RETURNING sku, on_hand, held`,
    [sku, delta],
  );
  const row = rows[0];
  return row ? { sku: row.sku, onHand: row.on_hand, held: row.held, available: row.on_hand - row.held } : null;
}

function mergeLines(lines: readonly StockLine[]): StockLine[] {
  const totals = new Map<string, number>();
  for (const line of lines) totals.set(line.sku, (totals.get(line.sku) ?? 0) + line.quantity);
  return [...totals].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([sku, quantity]) => ({ sku, quantity }));
}
