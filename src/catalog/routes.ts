// Catalog HTTP routes: products and stock adjustments.
import { Type } from 'typebox';
import type { Cache } from '../cache/cache.ts';
import type { Routes } from '../http/server.ts';
import { decodeCursor, encodeCursor, parseLimit } from '../http/pagination.ts';
import { Currency, LimitQuery, Problem, problemOf, Sku, SKU_PATTERN, SkuParams, Text } from '../http/schemas.ts';
import { MAX_STOCK } from '../inventory/stock.ts';
import type { Database } from '../storage/database.ts';
import { primaryReads, type ReadRouter } from '../storage/read-replica.ts';
import { changeStock, createProduct, getProduct, listProducts, type Product as ProductRecord } from './products.ts';

const Product = Type.Object({
  sku: Type.String(),
  name: Type.String(),
  priceCents: Type.Integer(),
  currency: Type.String(),
  stock: Type.Integer(),
  available: Type.Integer(),
});

const NewProduct = Type.Object(
  {
    sku: Sku,
    name: Text({ minLength: 1, maxLength: 200 }),
    priceCents: Type.Integer({ minimum: 0, maximum: 1_000_000_000 }),
    currency: Currency,
    stock: Type.Integer({ minimum: 0, maximum: MAX_STOCK }),
  },
  { additionalProperties: false },
);

const errors = { 400: Problem, 401: Problem, 403: Problem, 404: Problem };

/** A products cursor holds the last SKU of a page. */
const isSku = (key: unknown): key is string => typeof key === 'string' && SKU_PATTERN.test(key);

/**
 * A page of products by SKU, from a LimitQuery (limit 1–100, default 50; the
 * cursor a previous page gave): the customers' list and the operators' (with
 * held stock, admin/routes.ts) page alike. A cursor this API did not give is
 * an AppError validation_failed (400).
 */
export async function productPage(
  reads: ReadRouter,
  query: { limit?: string; cursor?: string },
): Promise<{ items: ProductRecord[]; nextCursor: string | null }> {
  const limit = parseLimit(query.limit);
  const after = decodeCursor(query.cursor, isSku);
  const page = await reads.read((source) => listProducts(source, limit, after));
  return { items: page.items, nextCursor: page.more && page.last !== undefined ? encodeCursor(page.last) : null };
}

/** `reads` serves the product list (a replica when one is configured); everything else uses `db`, the primary. */
export function catalogRoutes(db: Database, cache?: Cache, reads: ReadRouter = primaryReads(db)): Routes {
  return async (app) => {
    app.post('/v1/products', {
      config: { scopes: ['catalog:write'] },
      schema: {
        tags: ['catalog'],
        summary: 'Create a product',
        body: NewProduct,
        response: { 201: Product, 409: problemOf('sku_exists'), ...errors },
      },
      handler: async (request, reply) => reply.code(201).send(await createProduct(db, request.body, cache)),
    });

    app.get('/v1/products/:sku', {
      config: { scopes: [] },
      schema: {
        tags: ['catalog'],
        summary: 'Read a product and its available stock',
        params: SkuParams,
        response: { 200: Product, ...errors },
      },
      handler: async (request) => getProduct(db, request.params.sku, cache),
    });

    app.get('/v1/products', {
      config: { scopes: [] },
      schema: {
        tags: ['catalog'],
        summary: 'List products by SKU',
        querystring: LimitQuery,
        response: {
          200: Type.Object({ items: Type.Array(Product), nextCursor: Type.Union([Type.String(), Type.Null()]) }),
          ...errors,
        },
      },
      handler: async (request) => productPage(reads, request.query),
    });

    app.post('/v1/products/:sku/stock', {
      config: { scopes: ['catalog:write'] },
      schema: {
        tags: ['catalog'],
        summary: 'Add (positive delta) or remove (negative delta) stock',
        params: SkuParams,
        body: Type.Object(
          { delta: Type.Integer({ minimum: -MAX_STOCK, maximum: MAX_STOCK }) },
          { additionalProperties: false },
        ),
        response: { 200: Product, 409: problemOf('insufficient_stock', 'stock_limit_exceeded'), ...errors },
      },
      handler: async (request) => changeStock(db, request.params.sku, request.body.delta),
    });
  };
}
