// Inventory: how much of each SKU exists (on_hand) and how much of it orders
// hold. Every change happens under the SKU's row lock, so two requests can
// never both take the last unit: the database decides, not a prior read.
// This file is the module's public face; its SQL is in store.ts.
//
// Holding stock for a batch of orders gives each order every line or none,
// in the order given (first come, first served), in two statements whatever
// the batch size: lockStock locks the SKUs' rows in sorted order and reads
// their availability; allocate decides under those locks; holdStock applies
// the summed quantity per SKU in one UPDATE. A hot SKU thus costs one row
// lock per batch, not per order, and an order only loses to the orders ahead
// of it for the SKU that runs out.
import type { Queryable } from '../storage/database.ts';
import { adjustOnHand, releaseStock, type StockLevel, type StockLine } from './store.ts';

export { createStock, holdStock, lockStock, stockLevels, type StockLevel, type StockLine } from './store.ts';

/**
 * The most stock one SKU may have on hand. Every hold and release is summed
 * under it, so no stock figure can grow without bound (and come near the
 * integers a JavaScript number cannot hold exactly).
 */
export const MAX_STOCK = 1_000_000_000;

/** What allocate decided for a batch: per order (in the order given) whether its lines fit, and the summed quantity to hold per SKU. */
export interface Allocation {
  fits: boolean[];
  toHold: StockLine[];
}

/** Which orders fit in what lockStock found, in order, and the quantity to hold per SKU for them. Pure. */
export function allocate(
  available: ReadonlyMap<string, number>,
  orders: readonly (readonly StockLine[])[],
): Allocation {
  const taken = new Map<string, number>();
  const fits = orders.map((lines) => {
    const wanted = mergeLines(lines);
    const fit = wanted.every((line) => (available.get(line.sku) ?? 0) - (taken.get(line.sku) ?? 0) >= line.quantity);
    if (fit) for (const line of wanted) taken.set(line.sku, (taken.get(line.sku) ?? 0) + line.quantity);
    return fit;
  });
  return { fits, toHold: [...taken].map(([sku, quantity]) => ({ sku, quantity })) };
}

/** Gives back what an order held, SKU by SKU in sorted order (the lock order every transaction keeps). */
export async function release(tx: Queryable, lines: readonly StockLine[]): Promise<void> {
  await releaseStock(tx, mergeLines(lines));
}

/** Changes on_hand by delta unless that would leave less than what orders hold, or more than MAX_STOCK; null when refused. */
export function adjustStock(tx: Queryable, sku: string, delta: number): Promise<StockLevel | null> {
  return adjustOnHand(tx, sku, delta, MAX_STOCK);
}

/** One line per SKU with the summed quantity, sorted by SKU. */
export function mergeLines(lines: readonly StockLine[]): StockLine[] {
  const totals = new Map<string, number>();
  for (const line of lines) totals.set(line.sku, (totals.get(line.sku) ?? 0) + line.quantity);
  return [...totals].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([sku, quantity]) => ({ sku, quantity }));
}
