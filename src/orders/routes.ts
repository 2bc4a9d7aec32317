// Orders HTTP routes: place (with Idempotency-Key), read, list, cancel.
import { Type } from 'typebox';
import type { Metrics } from '../observability/metrics.ts';
import { tagOrder } from '../observability/tracing.ts';
import { decodeCursor, encodeCursor, parseLimit } from '../http/pagination.ts';
import { LimitQuery, Problem, problemOf, Sku, Text } from '../http/schemas.ts';
import { principalOf, type Routes } from '../http/server.ts';
import { perCustomerLimit } from '../http/rate-limit.ts';
import type { Database } from '../storage/database.ts';
import { primaryReads, type ReadRouter } from '../storage/read-replica.ts';
import { OrderAcceptor } from './accept.ts';
import { ORDER_ID_PATTERN } from './ids.ts';
import type { PaymentPort } from './payment-port.ts';
import type { MoneyLimits } from './pricing.ts';
import { cancelOrder } from './lifecycle.ts';
import { ORDER_STATUSES, REJECT_REASONS } from './state-machine.ts';
import { getOrder, listOrders } from './store.ts';

const MAX_ORDER_LINES = 100;

// A path id of the wrong form names nothing, and is answered 404 (see http/problems.ts).
export const OrderIdParams = Type.Object({
  id: Type.String({ pattern: ORDER_ID_PATTERN, description: '"ord_" and 26 characters of Crockford base32' }),
});

/** An order as the API shows it, to its customer and to an operator (admin/routes.ts). */
export const Order = Type.Object({
  id: Type.String(),
  customerId: Type.String(),
  status: Type.Enum(ORDER_STATUSES),
  items: Type.Array(Type.Object({ sku: Type.String(), quantity: Type.Integer(), priceCents: Type.Integer() })),
  totalCents: Type.Integer({
    description:
      'The exact sum of quantity × priceCents over the items, in minor units; at most MAX_ORDER_TOTAL_CENTS (99,999,999 unless configured)',
  }),
  currency: Type.String(),
  rejectReason: Type.Union([Type.Enum(REJECT_REASONS), Type.Null()]),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

const PlaceOrder = Type.Object(
  {
    items: Type.Array(
      Type.Object(
        { sku: Sku, quantity: Type.Integer({ minimum: 1, maximum: 1_000_000 }) },
        { additionalProperties: false },
      ),
      { minItems: 1, maxItems: MAX_ORDER_LINES },
    ),
    payment: Type.Object({ token: Text({ minLength: 1, maxLength: 255 }) }, { additionalProperties: false }),
  },
  { additionalProperties: false },
);

const IdempotencyHeaders = Type.Object({
  'idempotency-key': Text({
    minLength: 1,
    maxLength: 255,
    description: 'Chosen by the client, one per order it means to place',
  }),
});

// Response headers as @fastify/swagger reads them, for the OpenAPI document.
const OrderLocation = { location: { type: 'string', description: 'The order: /v1/orders/{id}' } };

/** An order list's cursor holds the id of the page's last order (listOrders says why not its sequence). */
const ORDER_ID = new RegExp(ORDER_ID_PATTERN);
const isOrderId = (key: unknown): key is string => typeof key === 'string' && ORDER_ID.test(key);

/** The admin search's cursor holds the insertion sequence of a page's last order: a positive safe integer. */
export const isSequence = (key: unknown): key is number =>
  typeof key === 'number' && Number.isSafeInteger(key) && key >= 1;
const errors = { 400: Problem, 401: Problem, 403: Problem, 404: Problem };

/** `reads` serves order lists (a replica when one is configured); an order by id, and every write, use `db`, the primary. */
export function orderRoutes(deps: {
  db: Database;
  reads?: ReadRouter;
  payments: PaymentPort;
  metrics: Metrics;
  ordersPerMinute?: number;
  groupCommit?: { maxBatch: number; maxInFlight: number };
  moneyLimits?: MoneyLimits;
}): Routes {
  const { db, metrics } = deps;
  const reads = deps.reads ?? primaryReads(db);
  const acceptor = new OrderAcceptor(deps, deps.groupCommit);
  return async (app) => {
    app.post('/v1/orders', {
      config: { scopes: ['orders:write'], ...perCustomerLimit(deps.ordersPerMinute ?? 0) },
      schema: {
        tags: ['orders'],
        summary: 'Place an order; payment happens asynchronously',
        headers: IdempotencyHeaders,
        body: PlaceOrder,
        response: {
          200: {
            ...Order,
            description: 'A replay (same key, same body): the order the key placed, as it is now',
            headers: OrderLocation,
          },
          202: {
            ...Order,
            description: 'The new order; already rejected with out_of_stock when the stock cannot cover it',
            headers: OrderLocation,
          },
          422: problemOf(
            'unknown_sku',
            'mixed_currencies',
            'amount_too_large',
            'amount_too_small',
            'idempotency_key_reused',
          ),
          429: Problem,
          ...errors,
        },
      },
      handler: async (request, reply) => {
        const { customerId } = principalOf(request);
        const { order, replayed } = await acceptor.accept(customerId, request.headers['idempotency-key'], request.body);
        tagOrder(order.id);
        if (!replayed) metrics.orderTransitions.inc({ status: order.status, reason: order.rejectReason ?? '' });
        return reply
          .code(replayed ? 200 : 202)
          .header('location', `/v1/orders/${order.id}`)
          .send(order);
      },
    });

    app.get('/v1/orders/:id', {
      config: { scopes: ['orders:read', 'orders:admin'] },
      schema: {
        tags: ['orders'],
        summary: 'Read an order',
        params: OrderIdParams,
        response: { 200: Order, ...errors },
      },
      handler: async (request) => getOrder(db, request.params.id, ownerFilter(principalOf(request))),
    });

    app.get('/v1/orders', {
      config: { scopes: ['orders:read', 'orders:admin'] },
      schema: {
        tags: ['orders'],
        summary: "List one's orders (all orders with orders:admin), newest first",
        querystring: Type.Object(
          { ...LimitQuery.properties, status: Type.Optional(Type.Enum(ORDER_STATUSES)) },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({ items: Type.Array(Order), nextCursor: Type.Union([Type.String(), Type.Null()]) }),
          ...errors,
        },
      },
      handler: async (request) => {
        const filter = {
          customerId: ownerFilter(principalOf(request)),
          status: request.query.status,
          limit: parseLimit(request.query.limit),
          afterId: decodeCursor(request.query.cursor, isOrderId),
        };
        const page = await reads.read((source) => listOrders(source, filter));
        return {
          items: page.items,
          nextCursor: page.more && page.lastId !== undefined ? encodeCursor(page.lastId) : null,
        };
      },
    });

    app.post('/v1/orders/:id/cancel', {
      config: { scopes: ['orders:write', 'orders:admin'] },
      schema: {
        tags: ['orders'],
        summary: 'Cancel a pending or confirmed order; its stock returns and any payment is refunded',
        params: OrderIdParams,
        body: Type.Object({}, { additionalProperties: false, description: 'empty, or {}' }),
        response: { 200: Order, 409: problemOf('order_not_cancellable'), ...errors },
      },
      // No body at all means "no options", like {}. JSON null is a body, and not an object: 400.
      preValidation: async (request) => {
        if (request.body === undefined) request.body = {};
      },
      handler: async (request) => {
        tagOrder(request.params.id);
        const principal = principalOf(request);
        const order = await cancelOrder(deps, request.params.id, ownerFilter(principal), principal.customerId);
        metrics.orderTransitions.inc({ status: 'cancelled', reason: '' });
        return order;
      },
    });
  };
}

/** Admins see every order; everyone else only their own (others' are "not found"). */
function ownerFilter(principal: { customerId: string; scopes: ReadonlySet<string> }): string | undefined {
  return principal.scopes.has('orders:admin') ? undefined : principal.customerId;
}
