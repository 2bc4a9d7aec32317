// SQL of the inventory module: its table is inventory.stock (sku, on_hand,
// held), and only this module touches it. stock.ts says which of these
// other modules may call, and decides what to hold (allocate).
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
  return new Map(
    rows.map((r) => [r.sku, { sku: r.sku, onHand: r.on_hand, held: r.held, available: r.on_hand - r.held }]),
  );
}

/** $1 SKUs: locks their rows in sorted order and reads what is available of each. */
export const LOCK_STOCK_SQL =
  'SELECT sku, on_hand - held AS available FROM inventory.stock WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE';

/**
 * Locks the SKUs' rows in sorted order (so concurrent batches, in this
 * process or another, cannot deadlock) and reads their availability.
 */
export async function lockStock(tx: Queryable, skus: readonly string[]): Promise<Map<string, number>> {
  if (skus.length === 0) return new Map();
  const rows = await tx.query<{ sku: string; available: number }>(LOCK_STOCK_SQL, [skus]);
  return new Map(rows.map((r) => [r.sku, Number(r.available)]));
}

/**
 * $1 SKUs, $2 quantities: holds each quantity; returns the SKUs held. Holding
 * more than is available fails the statement (the table's CHECK (held <=
 * on_hand)) instead of skipping the row, so the database itself refuses an
 * oversell, even when the caller commits before it has read the answer
 * (Transaction.commit).
 */
export const HOLD_STOCK_SQL = `UPDATE inventory.stock s SET held = s.held + v.quantity
       FROM unnest($1::text[], $2::bigint[]) AS v(sku, quantity)
      WHERE s.sku = v.sku
      RETURNING s.sku`;

/**
 * Holds the summed quantity per SKU, under lockStock's locks, of SKUs whose
 * rows lockStock found. A quantity no longer available can only mean the
 * rows were not locked as they should be: the statement fails (a CHECK
 * violation) and the whole batch rolls back rather than oversell.
 */
export async function holdStock(tx: Queryable, holds: readonly StockLine[]): Promise<void> {
  if (holds.length === 0) return;
  const updated = await tx.query(HOLD_STOCK_SQL, [holds.map((h) => h.sku), holds.map((h) => h.quantity)]);
  if (updated.length !== holds.length)
    throw new Error(`stock rows vanished under a row lock: held ${updated.length} of ${holds.length} SKUs`);
}

/** Gives back held quantities: one statement per SKU, in the order given (callers sort them). */
export async function releaseStock(tx: Queryable, lines: readonly StockLine[]): Promise<void> {
  for (const line of lines) {
    await tx.query('UPDATE inventory.stock SET held = held - $2 WHERE sku = $1', [line.sku, line.quantity]);
  }
}

/** Changes on_hand by delta unless that would leave less than what orders hold, or more than max; null when refused. */
export async function adjustOnHand(tx: Queryable, sku: string, delta: number, max: number): Promise<StockLevel | null> {
  const rows = await tx.query<{ sku: string; on_hand: number; held: number }>(
    `UPDATE inventory.stock SET on_hand = on_hand + $2
      WHERE sku = $1 AND on_hand + $2 - held >= 0 AND on_hand + $2 <= $3
      RETURNING sku, on_hand, held`,
    [sku, delta, max],
  );
  const row = rows[0];
  return row ? { sku: row.sku, onHand: row.on_hand, held: row.held, available: row.on_hand - row.held } : null;
}
