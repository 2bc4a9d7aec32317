// The admin API (/v1/admin/…) in every mode: each route's answers and its
// refusals (no token 401, wrong scope 403, bad filters and bodies 400, each
// proven to write nothing), the order history written with each transition,
// search across customers, dead letters listed, re-driven and discarded
// where each mode keeps them, live figures, the invariants, and the
// console's development token, minted only for a loopback peer.
import assert from 'node:assert/strict';
import http, { type IncomingHttpHeaders } from 'node:http';
import { networkInterfaces } from 'node:os';
import { after, before, describe, it } from 'node:test';
import { DEV_TOKEN_HEADER } from '../src/admin/console.ts';
import { CHARGE_QUEUE } from '../src/payments/payments.ts';
import { PoisonGateway } from './support/gateways.ts';
import { figuresReadings } from './support/sse.ts';
import {
  ALL_SCOPES,
  assertRefused,
  client,
  createProduct,
  eventually,
  modes,
  placeOrder,
  quiesce,
  snapshot,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

const OPERATOR = 'orders:admin orders:read orders:write catalog:write operations:write';

for (const mode of modes()) {
  describe(`admin API (${mode})`, () => {
    let t: TestApp;
    let gateway: PoisonGateway;
    let operator: Client;
    let alice: Client;
    let bob: Client;

    before(async () => {
      gateway = new PoisonGateway();
      t = await startTestApp(mode, { gateway, env: { PENDING_DEADLINE_MS: '3600000' } });
      operator = client(t.app, await t.token('ops', OPERATOR));
      alice = client(t.app, await t.token('alice', 'orders:write orders:read'));
      bob = client(t.app, await t.token('bob', 'orders:write orders:read'));
      const seller = client(t.app, await t.token('seller', ALL_SCOPES));
      await createProduct(seller, { sku: 'ADM-1', stock: 100, priceCents: 1250 });
      await createProduct(seller, { sku: 'ADM-2', stock: 100, priceCents: 300 });
      await createProduct(seller, { sku: 'ADM-LAST', stock: 1, priceCents: 999 });
    });
    after(() => t.close());

    /** The app on a real socket, on every interface (listened once). */
    let listening: Promise<URL> | undefined;
    const port = async () =>
      Number(
        (await (listening ??= t.app.server.listen({ port: 0, host: '0.0.0.0' }).then((url) => new URL(url)))).port,
      );

    /**
     * A request to the app over a real socket to 127.0.0.1, with the headers
     * given, Host included (fetch would write its own): what the development
     * token's rule reads is the socket and these headers.
     */
    const overSocket = async (method: string, path: string, headers: Record<string, string> = {}) => {
      const p = await port();
      return new Promise<{ status: number; headers: IncomingHttpHeaders; body: string }>((resolve, reject) => {
        const request = http.request({
          host: '127.0.0.1',
          port: p,
          method,
          path,
          headers: { host: `127.0.0.1:${p}`, ...headers },
        });
        request.on('error', reject);
        request.on('response', (response) => {
          let body = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (body += chunk));
          response.on('end', () => resolve({ status: response.statusCode!, headers: response.headers, body }));
        });
        request.end();
      });
    };

    const refused = (
      c: Client,
      method: string,
      url: string,
      status: number,
      options: Parameters<Client['request']>[2] = {},
    ) => assertRefused(t.app, c, method, url, status, options);

    const detail = async (id: string) => {
      const response = await operator.request('GET', `/v1/admin/orders/${id}`);
      assert.equal(response.status, 200, JSON.stringify(response.body));
      return response.body;
    };
    const types = (body: { events: { type: string }[] }) => body.events.map((e) => e.type);

    describe('refusals', () => {
      const routes: [string, string, unknown?][] = [
        ['GET', '/v1/admin/orders'],
        ['GET', '/v1/admin/orders/ord_00000000000000000000000000'],
        ['GET', '/v1/admin/products'],
        ['GET', '/v1/admin/invariants'],
        ['GET', '/v1/admin/dead-letters'],
        ['POST', '/v1/admin/dead-letters/redrive', { ids: ['1'] }],
        ['POST', '/v1/admin/dead-letters/discard', { ids: ['1'] }],
        ['GET', '/v1/admin/figures'],
        ['GET', '/v1/admin/figures/stream'],
      ];
      it('every admin route: no token or a bad one is 401', async () => {
        for (const [method, url, body] of routes) {
          await refused(client(t.app), method, url, 401, body === undefined ? {} : { body });
          await refused(client(t.app, 'not-a-jwt'), method, url, 401, body === undefined ? {} : { body });
        }
      });
      it("every admin route: a customer's token is 403", async () => {
        for (const [method, url, body] of routes)
          await refused(alice, method, url, 403, body === undefined ? {} : { body });
      });
      it('re-drive and discard need operations:write; orders:admin alone only reads', async () => {
        const reader = client(t.app, await t.token('auditor', 'orders:admin'));
        await refused(reader, 'POST', '/v1/admin/dead-letters/redrive', 403, { body: { ids: ['1'] } });
        await refused(reader, 'POST', '/v1/admin/dead-letters/discard', 403, { body: { ids: ['1'] } });
        assert.equal((await reader.request('GET', '/v1/admin/dead-letters')).status, 200);
        const stock = client(t.app, await t.token('stock', 'catalog:write'));
        assert.equal((await stock.request('GET', '/v1/admin/products')).status, 200);
        await refused(stock, 'GET', '/v1/admin/orders', 403);
      });
      it('bad search filters: 400 with the offending parameter', async () => {
        const cases: [string, string][] = [
          ['status=lost', '/querystring/status'],
          ['rejectReason=bored', '/querystring/rejectReason'],
          ['sku=has%20space', '/querystring/sku'],
          ['customerId=', '/querystring/customerId'],
          ['customerId=a%00b', '/querystring/customerId'],
          ['from=yesterday', '/querystring/from'],
          ['to=2026-13-01T00:00:00Z', '/querystring/to'],
          ['from=2026-11-30T10:00:00Z&to=2026-11-30T09:00:00Z', '/querystring/from'],
          // Date-times JSON Schema takes but no instant the database holds: year 0, a leap second, an offset of 24 hours.
          ['from=0000-01-01T00:00:00Z', '/querystring/from'],
          ['from=0001-01-01T00:00:00%2B01:00', '/querystring/from'],
          ['to=2026-06-30T23:59:60Z', '/querystring/to'],
          ['to=2026-11-30T10:00:00%2B24:00', '/querystring/to'],
          ['limit=0', '/querystring/limit'],
          ['limit=101', '/querystring/limit'],
          ['cursor=bm90LWEtY3Vyc29y', '/querystring/cursor'],
          ['colour=red', '/querystring/colour'],
        ];
        for (const [query, path] of cases) {
          const problem = await refused(operator, 'GET', `/v1/admin/orders?${query}`, 400);
          assert.ok(
            problem.errors?.some((e: { path: string }) => e.path === path),
            `${query}: expected an error at ${path}: ${JSON.stringify(problem)}`,
          );
        }
      });
      it('a query parameter the route does not read: 400 naming it, on every admin route', async () => {
        for (const [method, url, body] of routes) {
          const problem = await refused(operator, method, `${url}?colour=red`, 400, body === undefined ? {} : { body });
          assert.deepEqual(problem.errors, [{ path: '/querystring/colour', message: 'unknown field' }], url);
        }
      });
      it('bad dead-letter queries and bodies: 400', async () => {
        await refused(operator, 'GET', '/v1/admin/dead-letters?queue=NOT%20A%20QUEUE', 400);
        await refused(
          operator,
          'GET',
          `/v1/admin/dead-letters?cursor=${Buffer.from('"no-such-position"').toString('base64url')}`,
          400,
        );
        for (const body of [
          {},
          { ids: [] },
          { ids: 'all' },
          { ids: [1] },
          { ids: ['1', '1'] },
          { ids: Array.from({ length: 101 }, (_, i) => String(i)) },
          { ids: ['1'], force: true },
          [],
          null,
        ]) {
          await refused(operator, 'POST', '/v1/admin/dead-letters/redrive', 400, { body });
          await refused(operator, 'POST', '/v1/admin/dead-letters/discard', 400, { body });
        }
      });
      it('an order id that names nothing: 404', async () => {
        await refused(operator, 'GET', '/v1/admin/orders/ord_00000000000000000000000000', 404);
        await refused(operator, 'GET', '/v1/admin/orders/not-an-order', 404);
      });
    });

    describe('order history', () => {
      it('a paid order: accepted, stock held, the charge attempted and made, confirmed, with its payment', async () => {
        const placed = await placeOrder(alice, [{ sku: 'ADM-1', quantity: 2 }]);
        await quiesce(t.app);
        const body = await detail(placed.body.id);
        assert.equal(body.order.status, 'confirmed');
        assert.deepEqual(types(body), ['accepted', 'stock_held', 'charge_attempted', 'charged', 'confirmed']);
        assert.deepEqual(body.events[0].detail, { totalCents: 2500, currency: 'EUR', customerId: 'alice' });
        assert.deepEqual(body.events[1].detail, { lines: [{ sku: 'ADM-1', quantity: 2 }] });
        assert.deepEqual(
          body.paymentAttempts.map((e: { detail: unknown }) => e.detail),
          [{ attempt: 1, outcome: 'succeeded' }],
        );
        const charged = body.events[3].detail;
        assert.equal(charged.amountCents, 2500);
        assert.match(charged.chargeId, /^ch_/);
        assert.deepEqual(gateway.netCharged(placed.body.id), { charges: 1, netCents: 2500 });
        assert.equal(body.payment.status, 'succeeded');
        assert.equal(body.payment.chargeId, charged.chargeId);
        assert.equal(body.payment.amountCents, 2500);
        assert.ok(!('cardToken' in body.payment), 'the card token is never shown');
        assert.deepEqual(
          body.moneyMovements.map((e: { type: string }) => e.type),
          ['charged'],
        );
        const ids = body.events.map((e: { id: number }) => e.id);
        assert.deepEqual(
          ids,
          [...ids].sort((a, b) => a - b),
          'oldest first',
        );
      });

      it('a declined order and one out of stock carry their reasons; the latter never had a payment', async () => {
        const declined = await placeOrder(alice, [{ sku: 'ADM-2', quantity: 1 }], 'tok_declined');
        await createProduct(client(t.app, await t.token('seller', ALL_SCOPES)), { sku: 'ADM-NONE', stock: 0 });
        const sold = await placeOrder(alice, [{ sku: 'ADM-NONE', quantity: 1 }]);
        await quiesce(t.app);
        const d = await detail(declined.body.id);
        assert.deepEqual(types(d), ['accepted', 'stock_held', 'charge_attempted', 'rejected']);
        assert.deepEqual(d.events[2].detail, { attempt: 1, outcome: 'declined' });
        assert.deepEqual(d.events[3].detail, { reason: 'payment_declined' });
        assert.equal(d.payment.status, 'declined');
        const s = await detail(sold.body.id);
        assert.deepEqual(types(s), ['accepted', 'rejected']);
        assert.deepEqual(s.events[1].detail, { reason: 'out_of_stock', lines: [{ sku: 'ADM-NONE', quantity: 1 }] });
        assert.equal(s.payment, null);
      });

      it('a cancelled order: the cancel, the refund asked for and made, as money movements', async () => {
        const placed = await placeOrder(bob, [{ sku: 'ADM-2', quantity: 3 }]);
        await quiesce(t.app);
        const cancelled = await operator.request('POST', `/v1/orders/${placed.body.id}/cancel`);
        assert.equal(cancelled.status, 200);
        await quiesce(t.app);
        const body = await detail(placed.body.id);
        assert.deepEqual(types(body), [
          'accepted',
          'stock_held',
          'charge_attempted',
          'charged',
          'confirmed',
          'cancel_requested',
          'refund_requested',
          'refunded',
        ]);
        assert.deepEqual(body.events[5].detail, { by: 'ops', was: 'confirmed' });
        const refunded = body.events[7].detail;
        assert.match(refunded.refundId, /^re_/);
        assert.equal(refunded.amountCents, 900);
        assert.deepEqual(
          body.moneyMovements.map((e: { type: string }) => e.type),
          ['charged', 'refund_requested', 'refunded'],
        );
        assert.equal(body.payment.status, 'refunded');
        assert.deepEqual(gateway.netCharged(placed.body.id), { charges: 1, netCents: 0 });
      });

      it('the history is append-only: the database refuses to change or delete it', async () => {
        await assert.rejects(t.app.db.query("UPDATE orders.order_events SET type = 'confirmed'"), /append-only/);
        await assert.rejects(t.app.db.query('DELETE FROM orders.order_events'), /append-only/);
      });

      it('is never out of step: every order has exactly one accepted event and one event per status it reached', async () => {
        await quiesce(t.app);
        const rows = await t.app.db.query<{
          id: string;
          status: string;
          accepted: number;
          confirmed: number;
          rejected: number;
          cancelled: number;
        }>(
          `SELECT o.id, o.status,
                  count(*) FILTER (WHERE e.type = 'accepted')::int AS accepted, count(*) FILTER (WHERE e.type = 'confirmed')::int AS confirmed,
                  count(*) FILTER (WHERE e.type = 'rejected')::int AS rejected, count(*) FILTER (WHERE e.type = 'cancel_requested')::int AS cancelled
             FROM orders.orders o LEFT JOIN orders.order_events e ON e.order_id = o.id GROUP BY o.id, o.status`,
        );
        assert.ok(rows.length >= 4);
        for (const row of rows) {
          assert.equal(row.accepted, 1, row.id);
          assert.equal(row.cancelled, row.status === 'cancelled' ? 1 : 0, row.id);
          if (row.status === 'confirmed') assert.deepEqual([row.confirmed, row.rejected], [1, 0], row.id);
          if (row.status === 'rejected') assert.equal(row.rejected, 1, row.id);
        }
      });
    });

    describe('search', () => {
      let carolOrders: string[];
      before(async () => {
        const carol = client(t.app, await t.token('carol', 'orders:write orders:read'));
        carolOrders = [];
        for (let i = 0; i < 3; i++)
          carolOrders.push((await placeOrder(carol, [{ sku: i === 1 ? 'ADM-2' : 'ADM-1', quantity: 1 }])).body.id);
        await quiesce(t.app);
      });

      it("finds one customer's orders, newest first, a page at a time", async () => {
        const first = await operator.request('GET', '/v1/admin/orders?customerId=carol&limit=2');
        assert.equal(first.status, 200);
        assert.deepEqual(
          first.body.items.map((o: { id: string }) => o.id),
          [carolOrders[2], carolOrders[1]],
        );
        assert.equal(typeof first.body.nextCursor, 'string');
        const second = await operator.request(
          'GET',
          `/v1/admin/orders?customerId=carol&limit=2&cursor=${first.body.nextCursor}`,
        );
        assert.deepEqual(
          second.body.items.map((o: { id: string }) => o.id),
          [carolOrders[0]],
        );
        assert.equal(second.body.nextCursor, null);
      });

      it('by SKU, status, reject reason and creation time, combined', async () => {
        const bySku = await operator.request('GET', '/v1/admin/orders?customerId=carol&sku=ADM-2');
        assert.deepEqual(
          bySku.body.items.map((o: { id: string }) => o.id),
          [carolOrders[1]],
        );
        const confirmed = await operator.request('GET', '/v1/admin/orders?status=confirmed&limit=100');
        assert.ok(confirmed.body.items.length >= 3);
        assert.ok(confirmed.body.items.every((o: { status: string }) => o.status === 'confirmed'));
        const declined = await operator.request('GET', '/v1/admin/orders?rejectReason=payment_declined');
        assert.ok(
          declined.body.items.length >= 1 &&
            declined.body.items.every((o: { rejectReason: string }) => o.rejectReason === 'payment_declined'),
        );
        const newest = (await operator.request('GET', `/v1/admin/orders/${carolOrders[2]}`)).body.order
          .createdAt as string;
        const oldest = (await operator.request('GET', `/v1/admin/orders/${carolOrders[0]}`)).body.order
          .createdAt as string;
        const range = await operator.request(
          'GET',
          `/v1/admin/orders?customerId=carol&from=${encodeURIComponent(oldest)}&to=${encodeURIComponent(newest)}`,
        );
        assert.ok(!range.body.items.some((o: { id: string }) => o.id === carolOrders[2]), 'to is exclusive');
        assert.ok(
          range.body.items.some((o: { id: string }) => o.id === carolOrders[0]),
          'from is inclusive',
        );
        const future = await operator.request('GET', '/v1/admin/orders?from=2999-01-01T00:00:00Z');
        assert.deepEqual(future.body, { items: [], nextCursor: null });
      });
    });

    describe('products and invariants', () => {
      it('lists products with stock on hand, held and available; a stock change reads back', async () => {
        const placed = await placeOrder(alice, [{ sku: 'ADM-LAST', quantity: 1 }]);
        await quiesce(t.app);
        assert.equal(placed.status, 202);
        const list = await operator.request('GET', '/v1/admin/products?limit=100');
        const last = list.body.items.find((p: { sku: string }) => p.sku === 'ADM-LAST');
        assert.deepEqual(last, {
          sku: 'ADM-LAST',
          name: 'Product ADM-LAST',
          priceCents: 999,
          currency: 'EUR',
          stock: 1,
          available: 0,
          held: 1,
        });
        assert.equal(
          (await operator.request('POST', '/v1/products/ADM-LAST/stock', { body: { delta: 4 } })).status,
          200,
        );
        const again = (await operator.request('GET', '/v1/admin/products?limit=100')).body.items.find(
          (p: { sku: string }) => p.sku === 'ADM-LAST',
        );
        assert.deepEqual([again.stock, again.held, again.available], [5, 1, 4]);
      });

      it('reports no oversold SKU and no overdue order when all is well, and an oversold SKU when there is one', async () => {
        await quiesce(t.app);
        const ok = await operator.request('GET', '/v1/admin/invariants');
        assert.equal(ok.status, 200);
        assert.deepEqual(ok.body.oversoldSkus, []);
        assert.deepEqual(
          [ok.body.pendingOrders.count, ok.body.pendingOrders.overdue, ok.body.pendingOrders.deadlineSeconds],
          [0, 0, 3600],
        );
        // Only a broken database could oversell; make it look that way by hand.
        await t.app.db.query("UPDATE inventory.stock SET held = 0, on_hand = 0 WHERE sku = 'ADM-LAST'");
        try {
          const bad = await operator.request('GET', '/v1/admin/invariants');
          assert.deepEqual(bad.body.oversoldSkus, [{ sku: 'ADM-LAST', stock: 0, confirmedQuantity: 1 }]);
        } finally {
          await t.app.db.query("UPDATE inventory.stock SET held = 1, on_hand = 5 WHERE sku = 'ADM-LAST'");
        }
      });
    });

    describe('dead letters', () => {
      const letters = async () => {
        const response = await operator.request('GET', `/v1/admin/dead-letters?queue=${CHARGE_QUEUE}`);
        assert.equal(response.status, 200, JSON.stringify(response.body));
        return response.body.items as {
          id: string;
          queue: string;
          orderId: string | null;
          reason: string;
          attempts: number | null;
          ageSeconds: number | null;
          body: string;
        }[];
      };
      const letterOf = (orderId: string) =>
        eventually(
          `the dead letter of ${orderId}`,
          async () => (await letters()).find((l) => l.orderId === orderId),
          15_000,
        );

      it('a charge the gateway refuses is listed with its queue, reason, attempts and age; re-driven after the fix, the order confirms', async () => {
        const placed = await placeOrder(alice, [{ sku: 'ADM-1', quantity: 3 }], 'tok_refused');
        const id = placed.body.id as string;
        await quiesce(t.app);
        const letter = await letterOf(id);
        assert.equal(letter.queue, CHARGE_QUEUE);
        assert.match(letter.reason, /payment can never succeed: .*no such token/);
        assert.equal(letter.attempts, 1);
        assert.ok(
          letter.ageSeconds !== null && letter.ageSeconds >= 0 && letter.ageSeconds < 60,
          `age ${letter.ageSeconds}`,
        );
        assert.deepEqual(JSON.parse(letter.body), { orderId: id });
        const before = await detail(id);
        assert.deepEqual(
          [before.order.status, before.order.rejectReason, before.payment.status],
          ['rejected', 'payment_failed', 'failed'],
        );
        assert.deepEqual(
          before.paymentAttempts.map((e: { detail: { outcome: string } }) => e.detail.outcome),
          ['refused'],
        );

        // Still refused: the re-drive runs the charge again, which fails again, into a new dead letter.
        const again = await operator.request('POST', '/v1/admin/dead-letters/redrive', { body: { ids: [letter.id] } });
        assert.equal(again.status, 200);
        assert.deepEqual(again.body.results, [{ id: letter.id, outcome: 'redriven', orderId: id, reopened: true }]);
        await quiesce(t.app);
        const second = await letterOf(id);
        assert.notEqual(second.id, letter.id);
        assert.equal((await detail(id)).order.rejectReason, 'payment_failed');

        gateway.cured = true;
        try {
          const redriven = await operator.request('POST', '/v1/admin/dead-letters/redrive', {
            body: { ids: [second.id] },
          });
          assert.deepEqual(redriven.body.results, [
            { id: second.id, outcome: 'redriven', orderId: id, reopened: true },
          ]);
          await quiesce(t.app);
          const after = await detail(id);
          assert.equal(after.order.status, 'confirmed');
          assert.deepEqual(types(after), [
            'accepted',
            'stock_held',
            'charge_attempted',
            'rejected',
            'stock_held',
            'redriven',
            'charge_attempted',
            'rejected',
            'stock_held',
            'redriven',
            'charge_attempted',
            'charged',
            'confirmed',
          ]);
          assert.equal(
            after.events.filter(
              (e: { type: string; detail: { by?: string } }) => e.type === 'redriven' && e.detail.by === 'ops',
            ).length,
            2,
          );
          assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 3750 });
          assert.equal((await letters()).filter((l) => l.orderId === id).length, 0, 'the re-driven letters are gone');
        } finally {
          gateway.cured = false;
        }
      });

      it('a re-drive is refused, and the letter kept, when the stock is gone; discard removes it for good', async () => {
        const seller = client(t.app, await t.token('seller', ALL_SCOPES));
        await createProduct(seller, { sku: 'ADM-ONE', stock: 1, priceCents: 500 });
        const placed = await placeOrder(alice, [{ sku: 'ADM-ONE', quantity: 1 }], 'tok_refused');
        const id = placed.body.id as string;
        await quiesce(t.app);
        const letter = await letterOf(id);
        // Someone else buys the last one meanwhile.
        assert.equal((await placeOrder(bob, [{ sku: 'ADM-ONE', quantity: 1 }])).body.status, 'pending');
        await quiesce(t.app);
        const before = await snapshot(t.app.db);
        const refusedRedrive = await operator.request('POST', '/v1/admin/dead-letters/redrive', {
          body: { ids: [letter.id, 'no-such-letter'] },
        });
        assert.equal(refusedRedrive.status, 200);
        assert.equal(refusedRedrive.body.results[0].outcome, 'refused');
        assert.match(refusedRedrive.body.results[0].detail, /cannot hold its stock again/);
        assert.deepEqual(refusedRedrive.body.results[1], { id: 'no-such-letter', outcome: 'not_found', orderId: null });
        await quiesce(t.app);
        assert.deepEqual(await snapshot(t.app.db), before, 'a refused re-drive wrote nothing');
        assert.ok(
          (await letters()).some((l) => l.id === letter.id),
          'the letter is kept',
        );

        const discarded = await operator.request('POST', '/v1/admin/dead-letters/discard', {
          body: { ids: [letter.id] },
        });
        assert.deepEqual(discarded.body.results, [{ id: letter.id, outcome: 'discarded', orderId: id }]);
        assert.ok(!(await letters()).some((l) => l.id === letter.id));
        const history = await detail(id);
        assert.equal(history.events.at(-1).type, 'dead_letter_discarded');
        assert.equal(history.events.at(-1).detail.by, 'ops');
        const twice = await operator.request('POST', '/v1/admin/dead-letters/discard', { body: { ids: [letter.id] } });
        assert.deepEqual(twice.body.results, [{ id: letter.id, outcome: 'not_found', orderId: null }]);
      });

      it('a letter is settled once: two re-drives at once, a re-drive after a re-drive, a re-drive after a discard', async () => {
        const placed = await placeOrder(alice, [{ sku: 'ADM-1', quantity: 1 }], 'tok_refused');
        const id = placed.body.id as string;
        await quiesce(t.app);
        const letter = await letterOf(id);
        const redrive = () =>
          operator.request('POST', '/v1/admin/dead-letters/redrive', { body: { ids: [letter.id] } });
        const both = await Promise.all([redrive(), redrive()]);
        assert.deepEqual(
          both.map((r) => r.status),
          [200, 200],
          JSON.stringify(both.map((r) => r.body)),
        );
        const outcomes = both.map((r) => r.body.results[0].outcome).sort();
        assert.deepEqual(
          outcomes,
          ['not_found', 'redriven'],
          `one of the two re-drives did it, the other found nothing: ${JSON.stringify(both.map((r) => r.body))}`,
        );
        await quiesce(t.app);
        const history = await detail(id);
        assert.equal(
          history.events.filter((e: { type: string }) => e.type === 'redriven').length,
          1,
          'one redriven event',
        );
        assert.equal(gateway.calls.get(id), 2, 'the charge ran once more, not twice');

        // The re-drive failed again (the gateway still refuses): a new letter. Re-driving the old id again changes nothing.
        const second = await letterOf(id);
        await quiesce(t.app);
        const before = await snapshot(t.app.db);
        const again = await redrive();
        assert.deepEqual(again.body.results, [{ id: letter.id, outcome: 'not_found', orderId: null }]);
        assert.deepEqual(await snapshot(t.app.db), before, 'a re-drive of a letter already re-driven wrote nothing');

        const discarded = await operator.request('POST', '/v1/admin/dead-letters/discard', {
          body: { ids: [second.id] },
        });
        assert.deepEqual(discarded.body.results, [{ id: second.id, outcome: 'discarded', orderId: id }]);
        await quiesce(t.app);
        const afterDiscard = await snapshot(t.app.db);
        const late = await operator.request('POST', '/v1/admin/dead-letters/redrive', { body: { ids: [second.id] } });
        assert.deepEqual(late.body.results, [{ id: second.id, outcome: 'not_found', orderId: null }]);
        await quiesce(t.app);
        assert.deepEqual(await snapshot(t.app.db), afterDiscard, 'a re-drive of a discarded letter wrote nothing');
        assert.equal((await detail(id)).order.status, 'rejected');
      });

      it('lists a page at a time', async () => {
        const ids = [];
        // Ten, so that the database queue's ids pass 9 (they once sorted as text, and "10" came before "9").
        for (let i = 0; i < 10; i++)
          ids.push((await placeOrder(alice, [{ sku: 'ADM-2', quantity: 1 }], 'tok_refused')).body.id as string);
        await quiesce(t.app);
        for (const id of ids) await letterOf(id);
        const seen: string[] = [];
        let cursor: string | null = null;
        do {
          const page: { status: number; body: { items: { orderId: string }[]; nextCursor: string | null } } =
            await operator.request('GET', `/v1/admin/dead-letters?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
          assert.equal(page.status, 200);
          assert.ok(page.body.items.length <= 2);
          seen.push(...page.body.items.map((l) => l.orderId));
          cursor = page.body.nextCursor;
        } while (cursor);
        for (const id of ids)
          assert.equal(seen.filter((s) => s === id).length, 1, `${id} listed once: ${JSON.stringify(await letters())}`);
        const all = (await letters()).map((l) => l.id);
        const results = (await operator.request('POST', '/v1/admin/dead-letters/discard', { body: { ids: all } })).body
          .results;
        assert.ok(results.every((r: { outcome: string }) => r.outcome === 'discarded'));
        assert.deepEqual(await letters(), []);
      });
    });

    describe('live figures', () => {
      it('reports this process with the orders it accepted, their latency and the queues', async () => {
        for (let i = 0; i < 5; i++) await placeOrder(alice, [{ sku: 'ADM-1', quantity: 1 }]);
        // The reporter writes about once a second; read a reading that includes the orders.
        const figures = await eventually('figures with accepted orders', async () => {
          const response = await operator.request('GET', '/v1/admin/figures');
          assert.equal(response.status, 200);
          return response.body.totals.orders.acceptedPerSecond > 0 ? response.body : undefined;
        });
        assert.equal(figures.totals.processes, 1);
        const [process] = figures.processes;
        assert.equal(process.role, 'all');
        assert.equal(process.pid, globalThis.process.pid);
        assert.ok(process.figures.acceptLatencyMs.count >= 1);
        assert.ok(process.figures.acceptLatencyMs.p99 >= process.figures.acceptLatencyMs.p50);
        assert.equal(typeof figures.totals.backlog, 'object');
        assert.equal(figures.totals.gateway.circuit, 'closed');
        assert.equal(process.figures.outbox === null, mode === 'embedded' || mode === 'postgres');
      });

      it('streams them as Server-Sent Events', async () => {
        const controller = new AbortController();
        const response = await fetch(`http://127.0.0.1:${await port()}/v1/admin/figures/stream`, {
          headers: { authorization: `Bearer ${await t.token('ops', OPERATOR)}` },
          signal: controller.signal,
        });
        assert.equal(response.status, 200);
        assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
        const events: { processes: unknown[]; totals: { processes: number } }[] = [];
        for await (const reading of figuresReadings<(typeof events)[number]>(response))
          if (events.push(reading) === 2) break;
        controller.abort();
        for (const event of events) assert.equal(event.totals.processes, event.processes.length);
      });
    });

    describe('console', () => {
      it('is served at /console with the libraries it imports', async () => {
        const anyone = client(t.app);
        const page = await anyone.request('GET', '/console/');
        assert.equal(page.status, 200);
        assert.match(String(page.headers['content-type']), /^text\/html/);
        assert.equal((await anyone.request('GET', '/console')).status, 302);
        for (const file of [
          'preact.mjs',
          'preact-hooks.mjs',
          'htm-preact.mjs',
          'uPlot.esm.js',
          'eventsource-parser-stream.js',
        ]) {
          const vendor = await anyone.request('GET', `/console/vendor/${file}`);
          assert.equal(vendor.status, 200, file);
          assert.match(String(vendor.headers['content-type']), /javascript/, file);
        }
        assert.equal((await anyone.request('GET', '/console/vendor/package.json')).status, 404);
      });

      const embedded = mode === 'embedded';
      it(
        embedded ? 'mints an operator token for a loopback peer only' : 'mints no token outside the embedded shape',
        async () => {
          const anyone = client(t.app);
          const local = await overSocket('POST', '/console/dev-token', { [DEV_TOKEN_HEADER]: 'dev-token' });
          assert.equal(local.status, embedded ? 200 : 404, local.body);
          const options = await overSocket('GET', '/console/session-options');
          assert.deepEqual(JSON.parse(options.body), { devToken: embedded });
          if (embedded) {
            const { token } = JSON.parse(local.body) as { token: string };
            assert.equal((await client(t.app, token).request('GET', '/v1/admin/orders')).status, 200);
          }
          for (const remoteAddress of ['192.0.2.10', '::ffff:192.0.2.10', '2001:db8::1']) {
            for (const headers of [
              {},
              { 'x-forwarded-for': '127.0.0.1' },
              { 'x-real-ip': '127.0.0.1', forwarded: 'for=127.0.0.1' },
            ]) {
              const remote = await t.app.server.inject({
                method: 'POST',
                url: '/console/dev-token',
                remoteAddress,
                headers,
              });
              assert.equal(
                remote.statusCode,
                embedded ? 403 : 404,
                `${remoteAddress} ${JSON.stringify(headers)}: ${remote.body}`,
              );
              assert.match(String(remote.headers['content-type']), /^application\/problem\+json/);
              if (embedded) assert.equal(remote.json<{ type: string }>().type, '/problems/dev-token-refused');
              assert.deepEqual(
                (
                  await t.app.server.inject({ method: 'GET', url: '/console/session-options', remoteAddress, headers })
                ).json(),
                { devToken: false },
              );
            }
          }
          assert.equal((await anyone.request('GET', '/console/session-options')).status, 200);
        },
      );

      it(
        embedded
          ? 'mints a token only for a loopback Host with its own port, its own Origin, and the console header: not for a rebound name'
          : 'has no token for any Host or Origin outside the embedded shape',
        async () => {
          const p = await port();
          const mint = { [DEV_TOKEN_HEADER]: 'dev-token' };
          // What the console sends from each loopback name: taken.
          for (const host of [`127.0.0.1:${p}`, `localhost:${p}`, `LOCALHOST:${p}`, `127.1.2.3:${p}`]) {
            for (const headers of [mint, { ...mint, origin: `http://${host}` }]) {
              const response = await overSocket('POST', '/console/dev-token', { ...headers, host });
              assert.equal(
                response.status,
                embedded ? 200 : 404,
                `${host} ${JSON.stringify(headers)}: ${response.body}`,
              );
            }
            assert.deepEqual(JSON.parse((await overSocket('GET', '/console/session-options', { host })).body), {
              devToken: embedded,
            });
          }
          // A page whose name was rebound to 127.0.0.1 sends its own Host and Origin; another
          // origin, another port, or no console header is refused too.
          const refusedHeaders: Record<string, string>[] = [
            { ...mint, host: `attacker.example:${p}`, origin: `http://attacker.example:${p}` },
            { ...mint, host: `attacker.example:${p}` },
            { ...mint, host: `127.0.0.1.attacker.example:${p}` },
            { ...mint, host: `localhost.:${p}` },
            { ...mint, host: `127.0.0.1:${p === 1 ? 2 : 1}` },
            { ...mint, host: '127.0.0.1' },
            { ...mint, host: `127.0.0.1:${p}`, origin: `http://attacker.example:${p}` },
            { ...mint, host: `127.0.0.1:${p}`, origin: `http://localhost:${p}` },
            { ...mint, host: `127.0.0.1:${p}`, origin: `https://127.0.0.1:${p}` },
            { ...mint, host: `127.0.0.1:${p}`, origin: 'null' },
            { host: `127.0.0.1:${p}` },
            { host: `127.0.0.1:${p}`, origin: `http://127.0.0.1:${p}` },
          ];
          for (const headers of refusedHeaders) {
            const response = await overSocket('POST', '/console/dev-token', headers);
            assert.equal(response.status, embedded ? 403 : 404, `${JSON.stringify(headers)}: ${response.body}`);
            assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
            if (embedded) {
              const problem = JSON.parse(response.body) as { type: string; title: string };
              assert.equal(problem.type, '/problems/dev-token-refused');
              assert.doesNotMatch(problem.title, /scope/);
            }
          }
          for (const host of [`attacker.example:${p}`, `localhost:${p === 1 ? 2 : 1}`]) {
            assert.deepEqual(JSON.parse((await overSocket('GET', '/console/session-options', { host })).body), {
              devToken: false,
            });
          }
        },
      );

      it('a console path with dot or empty segments, or naming no file, is 404 problem+json', async () => {
        for (const path of [
          '/console/%2e%2e/package.json',
          '/console/%2e%2e/%2e%2e/package.json',
          '/console/../package.json',
          '/console/a/%2e%2e/index.html',
          '/console//index.html',
          '/console/..%2fpackage.json',
          '/console/.env',
          '/console/no-such-file.js',
        ]) {
          const response = await overSocket('GET', path);
          assert.equal(response.status, 404, `${path}: ${response.body}`);
          assert.match(String(response.headers['content-type']), /^application\/problem\+json/, path);
          assert.equal((JSON.parse(response.body) as { type: string }).type, '/problems/not-found', path);
        }
      });

      const external = Object.values(networkInterfaces())
        .flat()
        .find((a) => a && a.family === 'IPv4' && !a.internal);
      it(
        'refuses a token over a real socket from a non-loopback address',
        {
          skip: !embedded || !external ? 'needs the embedded shape and a non-loopback address on this machine' : false,
        },
        async () => {
          const response = await fetch(`http://${external!.address}:${await port()}/console/dev-token`, {
            method: 'POST',
            headers: { 'x-forwarded-for': '127.0.0.1', [DEV_TOKEN_HEADER]: 'dev-token' },
          });
          assert.equal(response.status, 403);
          const problem = (await response.json()) as { type: string; title: string };
          assert.equal(problem.type, '/problems/dev-token-refused');
          assert.equal(
            problem.title,
            'A development token is minted only for a loopback request to a loopback address',
          );
          const loopback = await fetch(`http://127.0.0.1:${await port()}/console/dev-token`, {
            method: 'POST',
            headers: { [DEV_TOKEN_HEADER]: 'dev-token' },
          });
          assert.equal(loopback.status, 200);
        },
      );
    });
  });
}
