// The admin API, under /v1/admin: what the operators' console (and an
// operator's script) needs beyond the customers' API. Scopes:
//   orders:admin      read every order with its history, search, live
//                     figures, invariants, dead letters (and, through the
//                     customers' route, cancel any order)
//   catalog:write     the product list with held stock (stock changes go
//                     through POST /v1/products/{sku}/stock)
//   operations:write  re-drive or discard dead letters
// This module reads and changes other modules only through their public
// functions; it owns no tables.
import { Type } from 'typebox';
import type { Logger } from 'pino';
import { productPage } from '../catalog/routes.ts';
import { AppError } from '../errors.ts';
import { decodeCursor, encodeCursor, parseLimit } from '../http/pagination.ts';
import { LimitQuery, Problem, Sku, Text } from '../http/schemas.ts';
import { principalOf, type Routes } from '../http/server.ts';
import type { DeadLetterStore } from '../messaging/dead-letters.ts';
import type { JobQueue } from '../messaging/queue.ts';
import {
  confirmedQuantities,
  findOrder,
  orderHistory,
  ORDER_EVENT_TYPES,
  pendingOrderStats,
  searchOrders,
} from '../orders/history.ts';
import { isSequence, Order, OrderIdParams } from '../orders/routes.ts';
import { ORDER_STATUSES, REJECT_REASONS } from '../orders/state-machine.ts';
import { paymentSummary } from '../payments/payments.ts';
import { stockLevels } from '../inventory/stock.ts';
import type { Database } from '../storage/database.ts';
import { primaryReads, type ReadRouter } from '../storage/read-replica.ts';
import { discardDeadLetters, orderIdOf, redriveDeadLetters } from './dead-letters.ts';
import { deploymentFigures } from './figures.ts';

export interface AdminDeps {
  db: Database;
  reads?: ReadRouter;
  queue: JobQueue;
  deadLetters: DeadLetterStore;
  log: Logger;
  /** PENDING_DEADLINE_MS: an order pending longer is overdue (the sweeper re-drives it). */
  pendingDeadlineMs: number;
  /** How often the figures stream sends, in ms. */
  figuresIntervalMs?: number;
}

const errors = { 400: Problem, 401: Problem, 403: Problem };

/** The events that tell what happened to an order's money at the gateway. */
const MONEY_MOVEMENTS = new Set<string>(['charged', 'refund_requested', 'refunded', 'refund_failed', 'charge_voided']);
const Page = <T extends ReturnType<typeof Type.Object>>(item: T) =>
  Type.Object({ items: Type.Array(item), nextCursor: Type.Union([Type.String(), Type.Null()]) });

const Detail = Type.Record(Type.String(), Type.Unknown(), {
  description:
    'What the event carries, camelCase: reason, amountCents and currency, chargeId, refundId, attempt and outcome, error, by (who acted)',
});
const OrderEvent = Type.Object({
  id: Type.Integer({ description: 'Increasing in the order events were recorded' }),
  type: Type.Enum(ORDER_EVENT_TYPES),
  detail: Detail,
  at: Type.String({ format: 'date-time' }),
});

const AdminOrder = Type.Object({
  order: Order,
  payment: Type.Union(
    [
      Type.Object({
        status: Type.String({
          description: 'pending, charging, succeeded, declined, refunded, failed, refund_failed or voided',
        }),
        amountCents: Type.Integer(),
        currency: Type.String(),
        chargeId: Type.Union([Type.String(), Type.Null()]),
        refundId: Type.Union([Type.String(), Type.Null()]),
        lastError: Type.Union([Type.String(), Type.Null()]),
        refundRequestedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
        createdAt: Type.String({ format: 'date-time' }),
        updatedAt: Type.String({ format: 'date-time' }),
      }),
      Type.Null(),
    ],
    { description: 'Null for an order rejected out_of_stock at once: it never had a payment' },
  ),
  events: Type.Array(OrderEvent, { description: 'The append-only history, oldest first' }),
  paymentAttempts: Type.Array(OrderEvent, {
    description: 'The charge_attempted events: each attempt with its outcome (succeeded, declined, transient, refused)',
  }),
  moneyMovements: Type.Array(OrderEvent, {
    description:
      'charged, refund_requested, refunded, refund_failed and charge_voided events: what moved at the gateway, and a charge voided with nothing charged',
  }),
});

const SearchQuery = Type.Object(
  {
    ...LimitQuery.properties,
    status: Type.Optional(Type.Enum(ORDER_STATUSES)),
    rejectReason: Type.Optional(Type.Enum(REJECT_REASONS)),
    customerId: Type.Optional(Text({ minLength: 1, maxLength: 255, description: "A customer's id (a token's sub)" })),
    sku: Type.Optional(Sku),
    from: Type.Optional(
      Type.String({ format: 'date-time', description: 'Orders created at or after this RFC 3339 time' }),
    ),
    to: Type.Optional(Type.String({ format: 'date-time', description: 'Orders created before this RFC 3339 time' })),
  },
  { additionalProperties: false },
);

const DeadLetter = Type.Object({
  id: Type.String({ description: 'Opaque; pass it back to re-drive or discard' }),
  queue: Type.String(),
  body: Type.String({ description: 'The message as it was dead-lettered' }),
  orderId: Type.Union([Type.String(), Type.Null()], {
    description: 'The order the message is about, when it names one',
  }),
  reason: Type.String({ description: 'Why it was given up on (the last error)' }),
  attempts: Type.Union([Type.Integer(), Type.Null()], {
    description: 'Deliveries it had; null where the broker did not record it',
  }),
  diedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  ageSeconds: Type.Union([Type.Number(), Type.Null()], { description: 'Seconds since it was dead-lettered' }),
});

const DeadLetterIds = Type.Object(
  {
    ids: Type.Array(Type.String({ minLength: 1, maxLength: 300, pattern: '^[\\x21-\\x7e]+$' }), {
      minItems: 1,
      maxItems: 100,
      uniqueItems: true,
    }),
  },
  { additionalProperties: false },
);
const SettleResults = Type.Object({
  results: Type.Array(
    Type.Object({
      id: Type.String(),
      outcome: Type.Union([
        Type.Literal('redriven'),
        Type.Literal('discarded'),
        Type.Literal('not_found'),
        Type.Literal('refused'),
      ]),
      orderId: Type.Union([Type.String(), Type.Null()]),
      reopened: Type.Optional(
        Type.Boolean({ description: 'The charge of an order rejected payment_failed: the order is pending again' }),
      ),
      detail: Type.Optional(Type.String({ description: 'Why it was refused (left in place)' })),
    }),
  ),
});

const AdminProduct = Type.Object({
  sku: Type.String(),
  name: Type.String(),
  priceCents: Type.Integer(),
  currency: Type.String(),
  stock: Type.Integer({ description: 'On hand' }),
  available: Type.Integer({ description: 'stock − held' }),
  held: Type.Integer({ description: 'Held by pending orders and sold to confirmed ones' }),
});

/** A dead-letter cursor holds the mode's own position (checked by the store). */
const isPosition = (key: unknown): key is string => typeof key === 'string' && /^[\x21-\x7e]{1,300}$/.test(key);

export function adminRoutes(deps: AdminDeps): Routes {
  const { db } = deps;
  const reads = deps.reads ?? primaryReads(db);
  const settling = { store: deps.deadLetters, queue: deps.queue, log: deps.log };
  const streams = new Set<() => void>();
  return async (app) => {
    // An open stream would hold graceful shutdown up forever: end them all first.
    app.addHook('preClose', async () => {
      for (const end of streams) end();
    });

    app.get('/v1/admin/orders', {
      config: { scopes: ['orders:admin'] },
      schema: {
        tags: ['admin'],
        summary:
          'Search orders of every customer by status, reject reason, customer, SKU and creation time, newest first',
        querystring: SearchQuery,
        response: { 200: Page(Order), ...errors },
      },
      handler: async (request) => {
        const { query } = request;
        const from = query.from === undefined ? undefined : new Date(query.from);
        const to = query.to === undefined ? undefined : new Date(query.to);
        if (from && to && from.getTime() >= to.getTime()) {
          throw new AppError('validation_failed', '"from" must be before "to"', [
            { path: '/querystring/from', message: 'must be before to' },
          ]);
        }
        const filter = {
          status: query.status,
          rejectReason: query.rejectReason,
          customerId: query.customerId,
          sku: query.sku,
          from,
          to,
          limit: parseLimit(query.limit),
          beforeSeq: decodeCursor(query.cursor, isSequence),
        };
        const page = await reads.read((source) => searchOrders(source, filter));
        return {
          items: page.items,
          nextCursor: page.more && page.lastSeq !== undefined ? encodeCursor(page.lastSeq) : null,
        };
      },
    });

    app.get('/v1/admin/orders/:id', {
      config: { scopes: ['orders:admin'] },
      schema: {
        tags: ['admin'],
        summary: 'An order with its history, its payment attempts and its money movements',
        params: OrderIdParams,
        response: { 200: AdminOrder, 404: Problem, ...errors },
      },
      handler: async (request) => {
        const { id } = request.params;
        // Read together: the primary, so the history is as new as the order.
        const [order, payment, events] = await Promise.all([
          findOrder(db, id),
          paymentSummary(db, id),
          orderHistory(db, id),
        ]);
        if (!order) throw new AppError('not_found', `no order with id "${id}"`);
        return {
          order,
          payment: payment ?? null,
          events,
          paymentAttempts: events.filter((e) => e.type === 'charge_attempted'),
          moneyMovements: events.filter((e) => MONEY_MOVEMENTS.has(e.type)),
        };
      },
    });

    app.get('/v1/admin/products', {
      config: { scopes: ['orders:admin', 'catalog:write'] },
      schema: {
        tags: ['admin'],
        summary: 'Products by SKU with their stock on hand, held and available',
        querystring: LimitQuery,
        response: { 200: Page(AdminProduct), ...errors },
      },
      handler: async (request) => {
        const page = await productPage(reads, request.query);
        return { items: page.items.map((p) => ({ ...p, held: p.stock - p.available })), nextCursor: page.nextCursor };
      },
    });

    app.get('/v1/admin/invariants', {
      config: { scopes: ['orders:admin'] },
      schema: {
        tags: ['admin'],
        summary: 'The checks an operator watches: oversold SKUs, and orders pending past the deadline',
        description: 'Reads every confirmed order line: poll it every few seconds at most, not per request.',
        response: {
          200: Type.Object({
            oversoldSkus: Type.Array(
              Type.Object({ sku: Type.String(), stock: Type.Integer(), confirmedQuantity: Type.Integer() }),
              {
                description:
                  'SKUs whose confirmed orders add up to more than the stock on hand (contract invariant 1); empty when all is well',
              },
            ),
            pendingOrders: Type.Object({
              count: Type.Integer(),
              overdue: Type.Integer({
                description: 'Pending for longer than the deadline (the sweeper re-drives them)',
              }),
              oldestAgeSeconds: Type.Number(),
              deadlineSeconds: Type.Number(),
            }),
          }),
          ...errors,
        },
      },
      handler: async () => {
        const [sold, pending] = await Promise.all([
          confirmedQuantities(db),
          pendingOrderStats(db, deps.pendingDeadlineMs),
        ]);
        const stock = await stockLevels(db, [...sold.keys()]);
        const oversoldSkus = [...sold]
          .filter(([sku, quantity]) => quantity > (stock.get(sku)?.onHand ?? 0))
          .map(([sku, quantity]) => ({ sku, stock: stock.get(sku)?.onHand ?? 0, confirmedQuantity: quantity }));
        return { oversoldSkus, pendingOrders: { ...pending, deadlineSeconds: deps.pendingDeadlineMs / 1000 } };
      },
    });

    app.get('/v1/admin/dead-letters', {
      config: { scopes: ['orders:admin', 'operations:write'] },
      schema: {
        tags: ['admin'],
        summary:
          'Dead letters of every queue (or one), oldest first, where this deployment keeps them: database, NATS or RabbitMQ',
        querystring: Type.Object(
          { ...LimitQuery.properties, queue: Type.Optional(Type.String({ pattern: '^[a-z][a-z0-9._-]{0,63}$' })) },
          { additionalProperties: false },
        ),
        response: { 200: Page(DeadLetter), ...errors },
      },
      handler: async (request) => {
        const { query } = request;
        const page = await deps.deadLetters.list({
          limit: parseLimit(query.limit),
          ...(query.queue !== undefined ? { queue: query.queue } : {}),
          ...(query.cursor !== undefined ? { after: decodeCursor(query.cursor, isPosition) } : {}),
        });
        const now = Date.now();
        return {
          items: page.items.map((letter) => ({
            id: letter.id,
            queue: letter.queue,
            body: letter.body,
            orderId: orderIdOf(letter),
            reason: letter.reason,
            attempts: letter.attempts,
            diedAt: letter.diedAt,
            ageSeconds:
              letter.diedAt === null ? null : Math.max(0, Math.round((now - Date.parse(letter.diedAt)) / 100) / 10),
          })),
          nextCursor: page.next === undefined ? null : encodeCursor(page.next),
        };
      },
    });

    const settlers = [
      {
        verb: 'redrive',
        settle: redriveDeadLetters,
        summary: 'Re-drive dead letters: each is queued again, through the same path as its first delivery',
        description:
          'Each letter is settled on its own: redriven, not_found, or refused (left in place, with the reason). ' +
          'A charge whose order was rejected payment_failed with nothing charged re-opens the order: pending again, its stock held again.',
      },
      {
        verb: 'discard',
        settle: discardDeadLetters,
        summary: 'Discard dead letters for good; the order history records it',
        description: 'Each letter is settled on its own: discarded or not_found.',
      },
    ];
    for (const { verb, settle, summary, description } of settlers) {
      app.post(`/v1/admin/dead-letters/${verb}`, {
        config: { scopes: ['operations:write'] },
        schema: {
          tags: ['admin'],
          summary,
          description,
          body: DeadLetterIds,
          response: { 200: SettleResults, ...errors },
        },
        handler: async (request) => ({
          results: await settle(settling, request.body.ids, principalOf(request).customerId),
        }),
      });
    }

    app.get('/v1/admin/figures', {
      config: { scopes: ['orders:admin'] },
      schema: {
        tags: ['admin'],
        summary: 'Live figures of every process of the deployment, and their totals (one reading)',
        response: {
          200: Type.Object(
            {},
            { additionalProperties: true, description: 'DeploymentFigures: at, processes[], totals (see docs/api.md)' },
          ),
          ...errors,
        },
      },
      handler: async () => deploymentFigures(db),
    });

    app.get('/v1/admin/figures/stream', {
      config: { scopes: ['orders:admin'] },
      schema: {
        tags: ['admin'],
        summary: 'The live figures as Server-Sent Events: a `figures` event about every second',
        response: {
          200: {
            type: 'string',
            description: "text/event-stream; each event's data is one reading of GET /v1/admin/figures",
          },
          ...errors,
        },
      },
      handler: async (request, reply) => {
        reply.hijack();
        const raw = reply.raw;
        raw.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-store',
          connection: 'keep-alive',
          'x-accel-buffering': 'no',
        });
        // The browser reconnects after this many ms if the stream drops.
        raw.write('retry: 2000\n\n');
        let timer: NodeJS.Timeout | undefined;
        const end = () => {
          clearTimeout(timer);
          streams.delete(end);
          raw.end();
        };
        streams.add(end);
        request.raw.on('close', end);
        const send = async () => {
          try {
            raw.write(`event: figures\ndata: ${JSON.stringify(await deploymentFigures(db))}\n\n`);
          } catch (error) {
            // The database is away: say so in the stream and keep trying.
            deps.log.warn({ err: error }, 'figures stream: could not read the figures');
            raw.write(`event: unavailable\ndata: ${JSON.stringify({ detail: (error as Error).message })}\n\n`);
          }
          if (streams.has(end)) timer = setTimeout(() => void send(), deps.figuresIntervalMs ?? 1_000);
        };
        await send();
      },
    });
  };
}
