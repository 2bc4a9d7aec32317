// The catalog: what each SKU is called and what it costs. Stock lives in the
// inventory module; a product as clients see it joins the two.
//
// Only the catalog half is cached. A product's name, price and currency never
// change once created, so a cached copy cannot go stale; stock and
// `available` change with every order, so they are always read from the
// database (see docs/architecture.md, "Cache and rate limits").
import type { Cache } from '../cache/cache.ts';
import { AppError } from '../errors.ts';
import { adjustStock, createStock, MAX_STOCK, stockLevels, type StockLevel } from '../inventory/stock.ts';
import { isUniqueViolation, type Database, type Queryable } from '../storage/database.ts';
import { findProductDetails, insertProduct, listProductDetails, type ProductDetails } from './store.ts';

export { pricesOf, type Price } from './store.ts';

export interface NewProduct {
  sku: string;
  name: string;
  priceCents: number;
  currency: string;
  stock: number;
}

export interface Product {
  sku: string;
  name: string;
  priceCents: number;
  currency: string;
  stock: number;
  available: number;
}

function productCacheKey(sku: string): string {
  return `catalog:product:${sku}`;
}

function toProduct(details: ProductDetails, stock: StockLevel | undefined): Product {
  return {
    sku: details.sku,
    name: details.name,
    priceCents: details.priceCents,
    currency: details.currency,
    stock: stock?.onHand ?? 0,
    available: stock?.available ?? 0,
  };
}

export async function createProduct(db: Database, input: NewProduct, cache?: Cache): Promise<Product> {
  try {
    await db.transaction(async (tx) => {
      await insertProduct(tx, input);
      await createStock(tx, input.sku, input.stock);
    });
  } catch (error) {
    if (isUniqueViolation(error)) throw new AppError('sku_exists', `a product with SKU "${input.sku}" already exists`);
    throw error;
  }
  // Nothing should be cached under a SKU that did not exist, unless the
  // database was restored or reset while the cache kept its entries: then the
  // old product's name and price must not outlive it.
  await cache?.invalidate([productCacheKey(input.sku)]);
  return { ...input, available: input.stock };
}

/** Inside a transaction, pass no cache: the transaction must see its own rows. */
export async function getProduct(db: Queryable, sku: string, cache?: Cache): Promise<Product> {
  const details = cache
    ? await cache.getOrLoad(productCacheKey(sku), () => findProductDetails(db, sku))
    : await findProductDetails(db, sku);
  const level = details && (await stockLevels(db, [sku])).get(sku);
  // Every product has its stock row from the transaction that created it, so
  // the fresh stock read also proves that a cached product still exists.
  if (!details || !level) throw new AppError('not_found', `no product with SKU "${sku}"`);
  return toProduct(details, level);
}

export async function listProducts(
  db: Queryable,
  limit: number,
  afterSku: string | undefined,
): Promise<{ items: Product[]; last: string | undefined; more: boolean }> {
  const rows = await listProductDetails(db, limit + 1, afterSku);
  const page = rows.slice(0, limit);
  const stock = await stockLevels(
    db,
    page.map((r) => r.sku),
  );
  return { items: page.map((r) => toProduct(r, stock.get(r.sku))), last: page.at(-1)?.sku, more: rows.length > limit };
}

export async function changeStock(db: Database, sku: string, delta: number): Promise<Product> {
  return db.transaction(async (tx) => {
    const product = await getProduct(tx, sku);
    const level = await adjustStock(tx, sku, delta);
    if (!level) {
      // Refused under the row lock; the product read above says which bound it would have broken.
      if (product.stock + delta > MAX_STOCK) {
        throw new AppError(
          'stock_limit_exceeded',
          `a delta of ${delta} would take the stock of "${sku}" above ${MAX_STOCK} (stock: ${product.stock})`,
        );
      }
      throw new AppError(
        'insufficient_stock',
        `a delta of ${delta} would take available stock of "${sku}" below zero (available: ${product.available})`,
      );
    }
    return { ...product, stock: level.onHand, available: level.available };
  });
}
