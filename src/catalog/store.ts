// SQL of the catalog module: its table is catalog.products (sku, name,
// price_cents, currency), and only this module touches it.
import type { Queryable } from '../storage/database.ts';

/** The part of a product that never changes after it is created, and so may be cached. */
export interface ProductDetails {
  sku: string;
  name: string;
  priceCents: number;
  currency: string;
}

/** A SKU's price, in minor units of its ISO 4217 currency. */
export interface Price {
  sku: string;
  priceCents: number;
  currency: string;
}

interface ProductRow {
  sku: string;
  name: string;
  price_cents: number;
  currency: string;
  [column: string]: unknown;
}

function toDetails(row: ProductRow): ProductDetails {
  return { sku: row.sku, name: row.name, priceCents: row.price_cents, currency: row.currency };
}

/** Fails with a unique violation when the SKU exists. */
export async function insertProduct(tx: Queryable, product: ProductDetails): Promise<void> {
  await tx.query('INSERT INTO catalog.products (sku, name, price_cents, currency) VALUES ($1, $2, $3, $4)', [
    product.sku,
    product.name,
    product.priceCents,
    product.currency,
  ]);
}

export async function findProductDetails(db: Queryable, sku: string): Promise<ProductDetails | undefined> {
  const rows = await db.query<ProductRow>(
    'SELECT sku, name, price_cents, currency FROM catalog.products WHERE sku = $1',
    [sku],
  );
  return rows[0] ? toDetails(rows[0]) : undefined;
}

/** Up to limit products in SKU order, after afterSku when given. */
export async function listProductDetails(
  db: Queryable,
  limit: number,
  afterSku: string | undefined,
): Promise<ProductDetails[]> {
  const rows = await db.query<ProductRow>(
    'SELECT sku, name, price_cents, currency FROM catalog.products WHERE $1::text IS NULL OR sku > $1 ORDER BY sku LIMIT $2',
    [afterSku ?? null, limit],
  );
  return rows.map(toDetails);
}

/** $1 SKUs: the price of each that exists. */
export const PRICES_SQL = 'SELECT sku, price_cents, currency FROM catalog.products WHERE sku = ANY($1::text[])';

/** Prices of the SKUs that exist; callers decide what a missing SKU means. */
export async function pricesOf(db: Queryable, skus: readonly string[]): Promise<Map<string, Price>> {
  const rows = await db.query<ProductRow>(PRICES_SQL, [skus]);
  return new Map(rows.map((r) => [r.sku, { sku: r.sku, priceCents: r.price_cents, currency: r.currency }]));
}
