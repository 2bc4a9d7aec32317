// The HTTP contract (docs/api-contract.md), route by route and rule by rule,
// in every mode this run covers. Every rejected request is proven to change
// nothing: the whole database is snapshotted before and after. In the replica
// mode the lists are read from a streaming standby, and the same assertions
// hold: a list never misses what was committed before it was asked for.
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import {
  ALL_SCOPES,
  assertRefused,
  client,
  createProduct,
  modes,
  newKey,
  placeOrder,
  quiesce,
  snapshot,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

for (const mode of modes({ replica: true })) {
  describe(`HTTP contract (${mode})`, () => {
    let t: TestApp;
    let admin: Client;
    let alice: Client;
    let bob: Client;

    before(async () => {
      t = await startTestApp(mode);
      admin = client(t.app, await t.token('admin', ALL_SCOPES));
      alice = client(t.app, await t.token('alice', 'orders:write orders:read'));
      bob = client(t.app, await t.token('bob', 'orders:write orders:read'));
      await createProduct(admin, { sku: 'MUG-1', stock: 100, priceCents: 1299 });
      await createProduct(admin, { sku: 'TEA.2', stock: 5, priceCents: 450 });
      await createProduct(admin, { sku: 'USD-1', stock: 10, priceCents: 999, currency: 'USD' });
    });
    after(() => t.close());

    const refused = (
      c: Client,
      method: string,
      url: string,
      status: number,
      options: Parameters<Client['request']>[2] = {},
    ) => assertRefused(t.app, c, method, url, status, options);

    describe('operations', () => {
      it('GET /healthz answers 200 without auth', async () => {
        assert.equal((await client(t.app).request('GET', '/healthz')).status, 200);
      });
      it('GET /readyz answers 200 when the database is migrated', async () => {
        const response = await client(t.app).request('GET', '/readyz');
        assert.equal(response.status, 200);
      });
      it('GET /metrics serves Prometheus text with the request counters', async () => {
        const response = await client(t.app).request('GET', '/metrics');
        assert.equal(response.status, 200);
        assert.match(String(response.headers['content-type']), /^text\/plain/);
        assert.match(response.body, /orderflow_http_requests_total\{method="GET",route="\/readyz",status="200"\}/);
      });
      it('an unknown route is a 404 problem', async () => {
        await refused(admin, 'GET', '/v1/nothing-here', 404);
      });
    });

    describe('authentication and authorization', () => {
      it('no token: 401', async () => {
        await refused(client(t.app), 'GET', '/v1/products', 401);
        await refused(client(t.app), 'POST', '/v1/orders', 401, {
          headers: { 'idempotency-key': newKey() },
          body: { items: [{ sku: 'MUG-1', quantity: 1 }], payment: { token: 'tok_visa' } },
        });
      });
      it('a malformed or forged token: 401', async () => {
        await refused(client(t.app, 'not-a-jwt'), 'GET', '/v1/products', 401);
        const [header, payload] = (await t.token('alice', 'orders:read')).split('.');
        await refused(client(t.app, `${header}.${payload}.AAAA`), 'GET', '/v1/products', 401);
        await refused(client(t.app), 'GET', '/v1/products', 401, { headers: { authorization: 'Basic YWxpY2U6cHc=' } });
      });
      it('an expired token: 401', async () => {
        const expired = await t.app.devIssuer!.issue({ sub: 'alice', scope: 'orders:read', ttlSeconds: -10 });
        await refused(client(t.app, expired), 'GET', '/v1/orders', 401);
      });
      it('a valid token without the scope: 403', async () => {
        await refused(alice, 'POST', '/v1/products', 403, {
          body: { sku: 'X-1', name: 'x', priceCents: 1, currency: 'EUR', stock: 1 },
        });
        await refused(alice, 'POST', '/v1/products/MUG-1/stock', 403, { body: { delta: 5 } });
        const readOnly = client(t.app, await t.token('alice', 'orders:read'));
        await refused(readOnly, 'POST', '/v1/orders', 403, {
          headers: { 'idempotency-key': newKey() },
          body: { items: [{ sku: 'MUG-1', quantity: 1 }], payment: { token: 'tok_visa' } },
        });
        const writeOnly = client(t.app, await t.token('alice', 'orders:write'));
        await refused(writeOnly, 'GET', '/v1/orders', 403);
      });
    });

    describe('catalog', () => {
      it('creates a product (201) and reads it back with available stock', async () => {
        const created = await admin.request('POST', '/v1/products', {
          body: { sku: 'NEW_1', name: 'Kettle', priceCents: 4999, currency: 'EUR', stock: 7 },
        });
        assert.equal(created.status, 201);
        assert.deepEqual(created.body, {
          sku: 'NEW_1',
          name: 'Kettle',
          priceCents: 4999,
          currency: 'EUR',
          stock: 7,
          available: 7,
        });
        const read = await alice.request('GET', '/v1/products/NEW_1');
        assert.equal(read.status, 200);
        assert.deepEqual(read.body, created.body);
      });
      it('an existing SKU: 409', async () => {
        await refused(admin, 'POST', '/v1/products', 409, {
          body: { sku: 'MUG-1', name: 'Again', priceCents: 1, currency: 'EUR', stock: 1 },
        });
      });
      it('bad product bodies: 400 with the offending paths, nothing written', async () => {
        const cases: [unknown, string][] = [
          [{ sku: 'has space', name: 'x', priceCents: 1, currency: 'EUR', stock: 1 }, '/sku'],
          [{ sku: 'x'.repeat(65), name: 'x', priceCents: 1, currency: 'EUR', stock: 1 }, '/sku'],
          [{ sku: '', name: 'x', priceCents: 1, currency: 'EUR', stock: 1 }, '/sku'],
          [{ sku: 'OK-1', name: 'x', priceCents: -1, currency: 'EUR', stock: 1 }, '/priceCents'],
          [{ sku: 'OK-1', name: 'x', priceCents: 1.5, currency: 'EUR', stock: 1 }, '/priceCents'],
          [{ sku: 'OK-1', name: 'x', priceCents: '100', currency: 'EUR', stock: 1 }, '/priceCents'],
          [{ sku: 'OK-1', name: 'x', priceCents: 1, currency: 'euro', stock: 1 }, '/currency'],
          [{ sku: 'OK-1', name: 'x', priceCents: 1, currency: 'EUR', stock: -3 }, '/stock'],
          [{ sku: 'OK-1', name: 'x', priceCents: 1, currency: 'EUR', stock: 1, color: 'red' }, '/color'],
          [{ sku: 'OK-1', priceCents: 1, currency: 'EUR', stock: 1 }, '/name'],
        ];
        for (const [body, path] of cases) {
          const problem = await refused(admin, 'POST', '/v1/products', 400, { body });
          assert.ok(
            problem.errors.some((e: { path: string }) => e.path === path),
            `expected an error at ${path} for ${JSON.stringify(body)}: ${JSON.stringify(problem.errors)}`,
          );
        }
      });
      it('unknown product: 404', async () => {
        await refused(alice, 'GET', '/v1/products/NOPE', 404);
      });
      it('lists products page by page with a cursor', async () => {
        const seen: string[] = [];
        let cursor: string | null = null;
        do {
          const page: any = await alice.request('GET', `/v1/products?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
          assert.equal(page.status, 200);
          assert.ok(page.body.items.length <= 2);
          seen.push(...page.body.items.map((p: { sku: string }) => p.sku));
          cursor = page.body.nextCursor;
        } while (cursor);
        assert.deepEqual(seen, [...seen].sort());
        for (const sku of ['MUG-1', 'TEA.2', 'USD-1']) assert.ok(seen.includes(sku), sku);
        assert.equal(new Set(seen).size, seen.length, 'no product twice');
      });
      it('bad list parameters: 400', async () => {
        await refused(alice, 'GET', '/v1/products?limit=0', 400);
        await refused(alice, 'GET', '/v1/products?limit=101', 400);
        await refused(alice, 'GET', '/v1/products?limit=abc', 400);
        await refused(alice, 'GET', '/v1/products?cursor=garbage', 400);
        await refused(alice, 'GET', '/v1/products?bogus=1', 400);
      });
      it('changes stock by a delta (200), refusing to go below what orders hold (409)', async () => {
        await createProduct(admin, { sku: 'STK-1', stock: 10 });
        assert.equal((await placeOrder(alice, [{ sku: 'STK-1', quantity: 4 }])).status, 202);
        const up = await admin.request('POST', '/v1/products/STK-1/stock', { body: { delta: 5 } });
        assert.equal(up.status, 200);
        assert.equal(up.body.stock, 15);
        assert.equal(up.body.available, 11);
        await refused(admin, 'POST', '/v1/products/STK-1/stock', 409, { body: { delta: -12 } });
        const down = await admin.request('POST', '/v1/products/STK-1/stock', { body: { delta: -11 } });
        assert.equal(down.status, 200);
        assert.equal(down.body.available, 0);
        await refused(admin, 'POST', '/v1/products/STK-1/stock', 400, { body: { delta: 1.5 } });
        await refused(admin, 'POST', '/v1/products/STK-1/stock', 400, { body: { delta: '3' } });
        await refused(admin, 'POST', '/v1/products/STK-1/stock', 400, { body: { delta: 1, note: 'x' } });
        await refused(admin, 'POST', '/v1/products/NOPE/stock', 404, { body: { delta: 1 } });
      });
      it('refuses to take stock above 1,000,000,000 (409 stock-limit-exceeded), one delta or many', async () => {
        await createProduct(admin, { sku: 'STK-MAX', stock: 999_999_000 });
        const problem = await refused(admin, 'POST', '/v1/products/STK-MAX/stock', 409, { body: { delta: 1_001 } });
        assert.equal(problem.type, '/problems/stock-limit-exceeded');
        const full = await admin.request('POST', '/v1/products/STK-MAX/stock', { body: { delta: 1_000 } });
        assert.equal(full.status, 200);
        assert.equal(full.body.stock, 1_000_000_000);
        await refused(admin, 'POST', '/v1/products/STK-MAX/stock', 409, { body: { delta: 1 } });
      });
    });

    describe('placing orders', () => {
      it('accepts an order: 202, Location, the order as the contract shapes it', async () => {
        const response = await placeOrder(alice, [
          { sku: 'MUG-1', quantity: 2 },
          { sku: 'TEA.2', quantity: 1 },
        ]);
        assert.equal(response.status, 202);
        const order = response.body;
        assert.equal(response.headers.location, `/v1/orders/${order.id}`);
        assert.deepEqual(Object.keys(order).sort(), [
          'createdAt',
          'currency',
          'customerId',
          'id',
          'items',
          'rejectReason',
          'status',
          'totalCents',
          'updatedAt',
        ]);
        assert.equal(order.customerId, 'alice');
        assert.equal(order.status, 'pending');
        assert.equal(order.totalCents, 2 * 1299 + 450);
        assert.equal(order.currency, 'EUR');
        assert.equal(order.rejectReason, null);
        assert.deepEqual(order.items, [
          { sku: 'MUG-1', quantity: 2, priceCents: 1299 },
          { sku: 'TEA.2', quantity: 1, priceCents: 450 },
        ]);
        assert.ok(!Number.isNaN(Date.parse(order.createdAt)));
        const read = await alice.request('GET', response.headers.location);
        assert.equal(read.status, 200);
        assert.equal(read.body.id, order.id);
      });

      it('an order that cannot be reserved is rejected at once as out_of_stock', async () => {
        await createProduct(admin, { sku: 'RARE-1', stock: 1 });
        const response = await placeOrder(alice, [{ sku: 'RARE-1', quantity: 2 }]);
        assert.equal(response.status, 202);
        assert.equal(response.body.status, 'rejected');
        assert.equal(response.body.rejectReason, 'out_of_stock');
        assert.equal((await alice.request('GET', '/v1/products/RARE-1')).body.available, 1);
      });

      it('a multi-line order that cannot reserve every line holds none of them', async () => {
        await createProduct(admin, { sku: 'PAIR-A', stock: 5 });
        await createProduct(admin, { sku: 'PAIR-B', stock: 1 });
        const response = await placeOrder(alice, [
          { sku: 'PAIR-A', quantity: 3 },
          { sku: 'PAIR-B', quantity: 2 },
        ]);
        assert.equal(response.body.rejectReason, 'out_of_stock');
        assert.equal((await alice.request('GET', '/v1/products/PAIR-A')).body.available, 5);
        assert.equal((await alice.request('GET', '/v1/products/PAIR-B')).body.available, 1);
      });

      it('bad order bodies: 400 or 422 with the offending paths, nothing written', async () => {
        const line = { sku: 'MUG-1', quantity: 1 };
        const pay = { token: 'tok_visa' };
        const cases: [unknown, number, string][] = [
          [{ items: [{ sku: 'MUG-1', quantity: 0 }], payment: pay }, 400, '/items/0/quantity'],
          [{ items: [{ sku: 'MUG-1', quantity: -1 }], payment: pay }, 400, '/items/0/quantity'],
          [{ items: [{ sku: 'MUG-1', quantity: 1.5 }], payment: pay }, 400, '/items/0/quantity'],
          [{ items: [{ sku: 'MUG-1', quantity: '1' }], payment: pay }, 400, '/items/0/quantity'],
          [{ items: [{ sku: 'MUG-1', quantity: null }], payment: pay }, 400, '/items/0/quantity'],
          [{ items: [{ sku: 'MUG-1' }], payment: pay }, 400, '/items/0/quantity'],
          [{ items: [{ ...line, gift: true }], payment: pay }, 400, '/items/0/gift'],
          [{ items: [line], payment: pay, coupon: 'FREE' }, 400, '/coupon'],
          [{ items: [line], payment: { token: 'tok_visa', cvc: '123' } }, 400, '/payment/cvc'],
          [{ items: [], payment: pay }, 400, '/items'],
          [{ items: Array.from({ length: 101 }, () => line), payment: pay }, 400, '/items'],
          [{ items: 'MUG-1', payment: pay }, 400, '/items'],
          [{ items: [line] }, 400, '/payment'],
          [{ items: [{ sku: 'bad sku!', quantity: 1 }], payment: pay }, 400, '/items/0/sku'],
          [{ items: [line, { sku: 'NOPE', quantity: 1 }], payment: pay }, 422, '/items/1/sku'],
        ];
        for (const [body, status, path] of cases) {
          const problem = await refused(alice, 'POST', '/v1/orders', status, {
            headers: { 'idempotency-key': newKey() },
            body,
          });
          assert.ok(
            problem.errors?.some((e: { path: string }) => e.path === path),
            `expected an error at ${path} for ${JSON.stringify(body).slice(0, 120)}: ${JSON.stringify(problem.errors)}`,
          );
        }
      });

      it('a line or a total above the maximum amount: 422 amount-too-large with the paths, nothing written', async () => {
        await createProduct(admin, { sku: 'GOLD-1', stock: 1_000_000_000, priceCents: 1_000_000_000 });
        await createProduct(admin, { sku: 'SILVER-1', stock: 1_000_000_000, priceCents: 33_333_333 });
        // Each field is in range; their product (1e15 per line) and sum (1e16, past 2^53) are not.
        const tenBars = Array.from({ length: 10 }, () => ({ sku: 'GOLD-1', quantity: 1_000_000 }));
        const lines = await refused(alice, 'POST', '/v1/orders', 422, {
          headers: { 'idempotency-key': newKey() },
          body: { items: tenBars, payment: { token: 'tok_visa' } },
        });
        assert.equal(lines.type, '/problems/amount-too-large');
        assert.deepEqual(
          lines.errors.map((e: { path: string }) => e.path),
          tenBars.map((_, i) => `/items/${i}`),
        );
        // Three lines of 33,333,333 are each allowed and total 99,999,999, the default maximum; a fourth is not.
        const atMost = await placeOrder(
          alice,
          [1, 2, 3].map(() => ({ sku: 'SILVER-1', quantity: 1 })),
        );
        assert.equal(atMost.status, 202, JSON.stringify(atMost.body));
        assert.equal(atMost.body.totalCents, 99_999_999);
        const total = await refused(alice, 'POST', '/v1/orders', 422, {
          headers: { 'idempotency-key': newKey() },
          body: { items: [1, 2, 3, 4].map(() => ({ sku: 'SILVER-1', quantity: 1 })), payment: { token: 'tok_visa' } },
        });
        assert.deepEqual(
          total.errors.map((e: { path: string }) => e.path),
          ['/items'],
        );
      });

      it('an order that totals 0: 422 amount-too-small, nothing written', async () => {
        await createProduct(admin, { sku: 'FREE-1', stock: 10, priceCents: 0 });
        const problem = await refused(alice, 'POST', '/v1/orders', 422, {
          headers: { 'idempotency-key': newKey() },
          body: { items: [{ sku: 'FREE-1', quantity: 2 }], payment: { token: 'tok_visa' } },
        });
        assert.equal(problem.type, '/problems/amount-too-small');
      });

      it('items in two currencies: 422, nothing written', async () => {
        await refused(alice, 'POST', '/v1/orders', 422, {
          headers: { 'idempotency-key': newKey() },
          body: {
            items: [
              { sku: 'MUG-1', quantity: 1 },
              { sku: 'USD-1', quantity: 1 },
            ],
            payment: { token: 'tok_visa' },
          },
        });
      });

      it('malformed JSON: 400; not JSON: 415; over 64 KiB: 413 — nothing written', async () => {
        const headers = { 'idempotency-key': newKey() };
        await refused(alice, 'POST', '/v1/orders', 400, { headers, rawBody: '{"items": [' });
        await refused(alice, 'POST', '/v1/orders', 400, { headers, rawBody: '' });
        await refused(alice, 'POST', '/v1/orders', 415, {
          headers: { ...headers, 'content-type': 'text/plain' },
          rawBody: 'hello',
        });
        const huge = JSON.stringify({
          items: [{ sku: 'MUG-1', quantity: 1 }],
          payment: { token: 'x'.repeat(70 * 1024) },
        });
        await refused(alice, 'POST', '/v1/orders', 413, { headers, rawBody: huge });
      });

      it('Idempotency-Key is required and 1–255 characters', async () => {
        const body = { items: [{ sku: 'MUG-1', quantity: 1 }], payment: { token: 'tok_visa' } };
        await refused(alice, 'POST', '/v1/orders', 400, { body });
        await refused(alice, 'POST', '/v1/orders', 400, { body, headers: { 'idempotency-key': '' } });
        await refused(alice, 'POST', '/v1/orders', 400, { body, headers: { 'idempotency-key': 'k'.repeat(256) } });
      });

      it('the same key and body returns the same order; a different body is 422; keys are per customer', async () => {
        const key = newKey();
        const first = await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }], 'tok_visa', key);
        assert.equal(first.status, 202);
        const replay = await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }], 'tok_visa', key);
        assert.ok([200, 202].includes(replay.status));
        assert.equal(replay.body.id, first.body.id);
        await refused(alice, 'POST', '/v1/orders', 422, {
          headers: { 'idempotency-key': key },
          body: { items: [{ sku: 'MUG-1', quantity: 2 }], payment: { token: 'tok_visa' } },
        });
        const bobs = await placeOrder(bob, [{ sku: 'MUG-1', quantity: 1 }], 'tok_visa', key);
        assert.equal(bobs.status, 202);
        assert.notEqual(bobs.body.id, first.body.id);
        assert.equal(bobs.body.customerId, 'bob');
      });
    });

    describe('reading and listing orders', () => {
      it("another customer's order is 404; an admin sees it", async () => {
        const order = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }])).body;
        await refused(bob, 'GET', `/v1/orders/${order.id}`, 404);
        await refused(bob, 'POST', `/v1/orders/${order.id}/cancel`, 404);
        const asAdmin = await admin.request('GET', `/v1/orders/${order.id}`);
        assert.equal(asAdmin.status, 200);
        assert.equal(asAdmin.body.customerId, 'alice');
        await refused(alice, 'GET', '/v1/orders/ord_does_not_exist', 404);
      });

      it("lists one's own orders newest first, by status, across pages; admins list everyone's", async () => {
        const carol = client(t.app, await t.token('carol', 'orders:write orders:read'));
        const dave = client(t.app, await t.token('dave', 'orders:write orders:read'));
        const placed: string[] = [];
        for (let i = 0; i < 5; i++) {
          placed.push((await placeOrder(carol, [{ sku: 'MUG-1', quantity: 1 }])).body.id);
          // Someone else's orders in between, which carol's pages must neither show nor count.
          for (let j = 0; j < i; j++) await placeOrder(dave, [{ sku: 'MUG-1', quantity: 1 }]);
        }
        placed.push((await placeOrder(carol, [{ sku: 'MUG-1', quantity: 1000 }])).body.id); // rejected: out of stock
        const seen: string[] = [];
        const cursors: string[] = [];
        let cursor: string | null = null;
        do {
          const page: any = await carol.request('GET', `/v1/orders?limit=2${cursor ? `&cursor=${cursor}` : ''}`);
          assert.equal(page.status, 200);
          for (const order of page.body.items) assert.equal(order.customerId, 'carol');
          seen.push(...page.body.items.map((o: { id: string }) => o.id));
          cursor = page.body.nextCursor;
          if (cursor) {
            // Opaque to clients, but all it holds is the page's last order,
            // which carol already has: nothing about how many orders others placed.
            assert.equal(JSON.parse(Buffer.from(cursor, 'base64url').toString()), seen.at(-1));
            cursors.push(cursor);
          }
        } while (cursor);
        assert.deepEqual(seen, [...placed].reverse());
        assert.equal(cursors.length, 2);
        // A cursor is only good for the orders it came from.
        for (const c of cursors) await refused(dave, 'GET', `/v1/orders?cursor=${c}`, 400);
        const admins = await admin.request('GET', `/v1/orders?limit=1&cursor=${cursors[0]}`);
        assert.equal(admins.status, 200, 'an admin sees every order, so every order cursor');
        const unknown = Buffer.from(JSON.stringify('ord_00000000000000000000000000')).toString('base64url');
        await refused(carol, 'GET', `/v1/orders?cursor=${unknown}`, 400);
        const rejected = await carol.request('GET', '/v1/orders?status=rejected');
        assert.deepEqual(
          rejected.body.items.map((o: { id: string }) => o.id),
          [placed[5]],
        );
        const everyone = await admin.request('GET', '/v1/orders?limit=100');
        const customers = new Set(everyone.body.items.map((o: { customerId: string }) => o.customerId));
        assert.ok(customers.has('carol') && customers.has('alice'), [...customers].join());
        await refused(carol, 'GET', '/v1/orders?status=lost', 400);
        await refused(carol, 'GET', '/v1/orders?cursor=%22abc%22', 400);
      });
    });

    if (mode === 'replica') {
      describe('read replica', () => {
        it('served the lists, and never fell back for a reason other than lag', async () => {
          const counted = (await t.app.metrics.routedReads.get()).values;
          const served = (database: string, reason: string) =>
            counted.find((v) => v.labels.database === database && v.labels.reason === reason)?.value ?? 0;
          assert.ok(served('replica', 'caught_up') > 0, JSON.stringify(counted));
          for (const reason of ['down', 'promoted', 'error'])
            assert.equal(
              served('primary', reason),
              0,
              `fell back to the primary (${reason}): ${JSON.stringify(counted)}`,
            );
        });
      });
    }

    describe('hostile input (v1.1): refused as problem+json, never a 5xx, nothing written', () => {
      const ORDER = 'ord_01M8ATWWD9YJEQ51WDS1D0RG3W';

      it('a path parameter of the wrong form is 404 on every route that takes one, 414 when too long, 400 when it does not decode', async () => {
        const routes: [string, (value: string) => string, unknown][] = [
          ['GET', (v) => `/v1/products/${v}`, undefined],
          ['POST', (v) => `/v1/products/${v}/stock`, { delta: 1 }],
          ['GET', (v) => `/v1/orders/${v}`, undefined],
          ['POST', (v) => `/v1/orders/${v}/cancel`, {}],
        ];
        const malformed = [
          '%00',
          'a%00b',
          '%0A',
          'has%20space',
          '%F0%9F%98%80',
          `${'A'.repeat(65)}`,
          ORDER.toLowerCase(),
          `${ORDER}0`,
          ORDER.replace('W', 'U'),
          'ord_',
        ];
        for (const [method, url, body] of routes) {
          for (const value of malformed) {
            // A well-formed SKU in an order route, and an order id in a product route, are well-formed enough to look up.
            if (url('x').startsWith('/v1/products') && /^[A-Za-z0-9._-]{1,64}$/.test(decodeURIComponent(value)))
              continue;
            const problem = await refused(admin, method, url(value), 404, body === undefined ? {} : { body });
            assert.equal(problem.type, '/problems/not-found');
          }
          assert.equal(
            (await refused(admin, method, url('A'.repeat(101)), 414, body === undefined ? {} : { body })).type,
            '/problems/uri-too-long',
          );
          for (const value of ['%ZZ', '%E0%A4%A', '%ED%A0%80', '%C0%80']) {
            assert.equal(
              (await refused(admin, method, url(value), 400, body === undefined ? {} : { body })).type,
              '/problems/malformed-url',
            );
          }
        }
        assert.equal(
          (await refused(admin, 'GET', `/v1/products?cursor=${'A'.repeat(8_200)}`, 414)).type,
          '/problems/uri-too-long',
        );
      });

      it('text the database cannot store, or control characters in a one-line field, is 400 at its path', async () => {
        const bad = [
          'a\u0000b',
          '\u0000',
          'bell\u0007',
          'two\nlines',
          'tab\there',
          'del\u007f',
          'c1\u0085',
          'lone \ud800 high',
          'lone \udfff low',
          '\udc00\ud800',
        ];
        for (const text of bad) {
          const name = await refused(admin, 'POST', '/v1/products', 400, {
            body: { sku: 'TXT-1', name: text, priceCents: 1, currency: 'EUR', stock: 1 },
          });
          assert.deepEqual(
            name.errors.map((e: { path: string }) => e.path),
            ['/name'],
            JSON.stringify(text),
          );
          const token = await refused(alice, 'POST', '/v1/orders', 400, {
            headers: { 'idempotency-key': newKey() },
            body: { items: [{ sku: 'MUG-1', quantity: 1 }], payment: { token: text } },
          });
          assert.deepEqual(
            token.errors.map((e: { path: string }) => e.path),
            ['/payment/token'],
            JSON.stringify(text),
          );
          const key = await refused(alice, 'POST', '/v1/orders', 400, {
            headers: { 'idempotency-key': `k-${text}` },
            body: { items: [{ sku: 'MUG-1', quantity: 1 }], payment: { token: 'tok_visa' } },
          });
          assert.deepEqual(
            key.errors.map((e: { path: string }) => e.path),
            ['/headers/idempotency-key'],
            JSON.stringify(text),
          );
        }
        // Text outside the BMP (a surrogate pair) and other scripts are text like any other.
        const created = await admin.request('POST', '/v1/products', {
          body: { sku: 'TXT-2', name: 'Tasse ☕ 😀 茶碗', priceCents: 1, currency: 'EUR', stock: 1 },
        });
        assert.equal(created.status, 201, JSON.stringify(created.body));
        assert.equal((await alice.request('GET', '/v1/products/TXT-2')).body.name, 'Tasse ☕ 😀 茶碗');
      });

      it('a cursor that decodes to something out of range or of the wrong kind is 400', async () => {
        const cursor = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
        const productCursors = [
          cursor(123),
          cursor('\u0000'),
          cursor('has space'),
          cursor(null),
          cursor({}),
          cursor(['A']),
          cursor('x'.repeat(65)),
          '!!',
          '%00',
          'AAAA====',
          'x'.repeat(513),
        ];
        for (const c of productCursors) await refused(alice, 'GET', `/v1/products?cursor=${c}`, 400);
        const orderCursors = [
          cursor(1.5),
          cursor(0),
          cursor(-1),
          cursor(1e300),
          cursor(2 ** 53),
          cursor(7),
          cursor(Number.MAX_SAFE_INTEGER),
          cursor('5'),
          cursor('ord_abc'),
          cursor(null),
          cursor(true),
          'Infinity',
        ];
        for (const c of orderCursors) await refused(alice, 'GET', `/v1/orders?cursor=${c}`, 400);
        for (const limit of ['1.5', '-1', '1e2', '%00', '', '00', '1&limit=2'])
          await refused(alice, 'GET', `/v1/orders?limit=${limit}`, 400);
      });

      it('currency must be an ISO 4217 code in circulation', async () => {
        for (const currency of ['XYZ', 'eur', 'EURO', 'EU', 'XTS', 'XXX', '€', 'E\u0000R']) {
          const problem = await refused(admin, 'POST', '/v1/products', 400, {
            body: { sku: 'CUR-1', name: 'x', priceCents: 1, currency, stock: 1 },
          });
          assert.deepEqual(
            problem.errors.map((e: { path: string }) => e.path),
            ['/currency'],
            currency,
          );
        }
        for (const [sku, currency] of [
          ['CUR-JPY', 'JPY'],
          ['CUR-CHF', 'CHF'],
          ['CUR-KWD', 'KWD'],
        ]) {
          assert.equal(
            (
              await admin.request('POST', '/v1/products', {
                body: { sku, name: 'x', priceCents: 1, currency, stock: 1 },
              })
            ).status,
            201,
            currency,
          );
        }
      });

      it('cancel takes an empty body or {}: JSON null, an array, a string, a number is 400', async () => {
        const order = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }])).body;
        for (const rawBody of ['null', '[]', '"x"', '0', 'true', '{"a":1}', '[{}]']) {
          await refused(alice, 'POST', `/v1/orders/${order.id}/cancel`, 400, {
            rawBody,
            headers: { 'content-type': 'application/json' },
          });
        }
        assert.notEqual((await alice.request('GET', `/v1/orders/${order.id}`)).body.status, 'cancelled');
      });

      it('a method a route does not take is 405 with Allow', async () => {
        const cases: [string, string, string][] = [
          ['DELETE', '/v1/products/MUG-1', 'GET, HEAD'],
          ['PUT', '/v1/products', 'GET, HEAD, POST'],
          ['PATCH', `/v1/orders/${ORDER}`, 'GET, HEAD'],
          ['GET', `/v1/orders/${ORDER}/cancel`, 'POST'],
          ['DELETE', '/v1/orders', 'GET, HEAD, POST'],
          ['OPTIONS', '/v1/orders', 'GET, HEAD, POST'],
          ['POST', '/healthz', 'GET, HEAD'],
          ['GET', '/v1/products/MUG-1/stock', 'POST'],
        ];
        for (const [method, url, allow] of cases) {
          await quiesce(t.app);
          const before = await snapshot(t.app.db);
          const response = await admin.request(
            method,
            url,
            method === 'GET' || method === 'OPTIONS' ? {} : { body: {} },
          );
          assert.equal(response.status, 405, `${method} ${url}`);
          assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
          assert.deepEqual(
            String(response.headers.allow).split(', ').sort(),
            allow.split(', ').sort(),
            `${method} ${url}`,
          );
          assert.deepEqual(await snapshot(t.app.db), before);
        }
        await refused(admin, 'DELETE', '/v1/nothing-here', 404);
      });
    });

    describe('the bytes of a body: UTF-8 JSON, unencoded, each member once, on every route that takes one', () => {
      /**
       * Every route that takes a body, with a body it would take; "@@" marks
       * where a defect goes (inside a string where there is one), and `twice`
       * names one member twice.
       */
      const bodyRoutes = async () => {
        const operator = client(t.app, await t.token('operator', 'operations:write'));
        const order = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }])).body;
        await quiesce(t.app);
        const key = { 'idempotency-key': newKey() };
        return [
          {
            c: admin,
            url: '/v1/products',
            text: '{"sku":"UTF-1","name":"Kettle@@","priceCents":100,"currency":"EUR","stock":5}',
            twice: '{"sku":"UTF-1","name":"Kettle","priceCents":100,"currency":"EUR","stock":5,"sku":"UTF-2"}',
          },
          { c: admin, url: '/v1/products/MUG-1/stock', text: '{"delta":1@@}', twice: '{"delta":1,"delta":1}' },
          {
            c: alice,
            url: '/v1/orders',
            headers: key,
            text: '{"items":[{"sku":"MUG-1","quantity":1}],"payment":{"token":"tok_@@visa"}}',
            twice: '{"items":[{"sku":"MUG-1","quantity":1,"sku":"TEA.2"}],"payment":{"token":"tok_visa"}}',
          },
          { c: alice, url: `/v1/orders/${order.id}/cancel`, text: '{@@}', twice: '{"reason":"x","reason":"y"}' },
          {
            c: operator,
            url: '/v1/admin/dead-letters/redrive',
            text: '{"ids":["1@@"]}',
            twice: '{"ids":["1"],"ids":["2"]}',
          },
          {
            c: operator,
            url: '/v1/admin/dead-letters/discard',
            text: '{"ids":["1@@"]}',
            twice: '{"ids":["1"],"ids":["2"]}',
          },
        ];
      };
      const withBytes = (text: string, bytes: number[]) => {
        const [head, tail] = text.split('@@') as [string, string];
        return Buffer.concat([Buffer.from(head), Buffer.from(bytes), Buffer.from(tail)]);
      };

      it('bytes that are not UTF-8 are 400 malformed-json, never U+FFFD in their place', async () => {
        // A byte that never occurs in UTF-8, a lone continuation byte, an overlong "/", an encoded
        // surrogate (CESU-8), a sequence cut short, a code point past U+10FFFF.
        const invalid = [
          [0xff, 0xfe],
          [0x80],
          [0xc0, 0xaf],
          [0xed, 0xa0, 0x80],
          [0xe2, 0x82],
          [0xf4, 0x90, 0x80, 0x80],
        ];
        for (const { c, url, headers, text } of await bodyRoutes()) {
          for (const bytes of invalid) {
            const problem = await refused(c, 'POST', url, 400, {
              headers: { ...headers, 'content-type': 'application/json' },
              rawBody: withBytes(text, bytes),
            });
            assert.equal(problem.type, '/problems/malformed-json', `${url} ${bytes.join(',')}`);
            assert.match(problem.detail, /not valid UTF-8/);
          }
        }
        // The same body in valid UTF-8 (é, U+10FFFF) is taken.
        const created = await admin.request('POST', '/v1/products', {
          headers: { 'content-type': 'application/json' },
          rawBody: withBytes(
            '{"sku":"UTF-1","name":"Kettle@@","priceCents":100,"currency":"EUR","stock":5}',
            [0xc3, 0xa9, 0xf4, 0x8f, 0xbf, 0xbd],
          ),
        });
        assert.equal(created.status, 201, JSON.stringify(created.body));
        assert.equal(created.body.name, 'Kettleé\u{10fffd}');
      });

      it('a Content-Encoding other than identity is 415 with Accept-Encoding: identity; a charset other than UTF-8 is 415', async () => {
        for (const { c, url, headers, text } of await bodyRoutes()) {
          const body = text.replace('@@', '');
          for (const encoding of ['gzip', 'deflate', 'br', 'x-unknown', 'identity, gzip']) {
            const rawBody = encoding === 'gzip' ? gzipSync(body) : body;
            const problem = await refused(c, 'POST', url, 415, {
              headers: { ...headers, 'content-type': 'application/json', 'content-encoding': encoding },
              rawBody,
            });
            assert.equal(problem.type, '/problems/unsupported-content-encoding', `${url} ${encoding}`);
          }
          for (const charset of ['latin1', 'ISO-8859-1', '"utf-16"', 'us-ascii', 'windows-1252']) {
            const problem = await refused(c, 'POST', url, 415, {
              headers: { ...headers, 'content-type': `application/json; charset=${charset}` },
              rawBody: body,
            });
            assert.equal(problem.type, '/problems/unsupported-media-type', `${url} ${charset}`);
          }
        }
        const response = await admin.request('POST', '/v1/products/MUG-1/stock', {
          headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
          rawBody: '{"delta":1}',
        });
        assert.equal(response.headers['accept-encoding'], 'identity');
        // identity, and a charset of UTF-8 however it is spelt, are what a body is anyway.
        for (const [encoding, type] of [
          ['identity', 'application/json; charset=utf-8'],
          ['Identity', 'application/json;charset="UTF-8"'],
        ]) {
          const stock = await admin.request('POST', '/v1/products/MUG-1/stock', {
            headers: { 'content-type': type!, 'content-encoding': encoding! },
            rawBody: '{"delta":0}',
          });
          assert.equal(stock.status, 200, JSON.stringify(stock.body));
        }
      });

      it('an object that names a member twice is 400 duplicate-json-member, whichever value would have won', async () => {
        for (const { c, url, headers, twice } of await bodyRoutes()) {
          const problem = await refused(c, 'POST', url, 400, {
            headers: { ...headers, 'content-type': 'application/json' },
            rawBody: twice,
          });
          assert.equal(problem.type, '/problems/duplicate-json-member', url);
        }
        // The same name spelt with an escape is the same name; the same name in two objects is no duplicate.
        const escaped = await refused(admin, 'POST', '/v1/products', 400, {
          rawBody: '{"sku":"UTF-3","name":"x","priceCents":1,"currency":"EUR","stock":1,"\\u0073ku":"UTF-4"}',
        });
        assert.match(escaped.detail, /"sku" appears twice in the object at \//);
        const nested = await refused(alice, 'POST', '/v1/orders', 400, {
          headers: { 'idempotency-key': newKey() },
          rawBody:
            '{"items":[{"sku":"MUG-1","quantity":1},{"sku":"MUG-1","quantity":2,"quantity":1}],"payment":{"token":"tok_visa"}}',
        });
        assert.match(nested.detail, /"quantity" appears twice in the object at \/items\/1/);
        const order = await alice.request('POST', '/v1/orders', {
          headers: { 'idempotency-key': newKey() },
          rawBody:
            '{"items":[{"sku":"MUG-1","quantity":1},{"sku":"TEA.2","quantity":1}],"payment":{"token":"tok_visa"}}',
        });
        assert.equal(order.status, 202, JSON.stringify(order.body));
      });
    });

    describe('cancelling orders', () => {
      it('cancels a confirmed order: stock returns, payment refunded; cancelling again is 409', async () => {
        await createProduct(admin, { sku: 'CAN-1', stock: 3, priceCents: 700 });
        const order = (await placeOrder(alice, [{ sku: 'CAN-1', quantity: 2 }])).body;
        await quiesce(t.app);
        assert.equal((await alice.request('GET', `/v1/orders/${order.id}`)).body.status, 'confirmed');
        assert.equal((await alice.request('GET', '/v1/products/CAN-1')).body.available, 1);
        const cancelled = await alice.request('POST', `/v1/orders/${order.id}/cancel`);
        assert.equal(cancelled.status, 200);
        assert.equal(cancelled.body.status, 'cancelled');
        assert.equal((await alice.request('GET', '/v1/products/CAN-1')).body.available, 3);
        await quiesce(t.app);
        assert.deepEqual(t.gateway.netCharged(order.id), { charges: 1, netCents: 0 });
        await refused(alice, 'POST', `/v1/orders/${order.id}/cancel`, 409);
      });

      it('accepts an empty body or {} and nothing else', async () => {
        const one = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }])).body;
        const two = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }])).body;
        assert.equal((await alice.request('POST', `/v1/orders/${one.id}/cancel`, { body: {} })).status, 200);
        await refused(alice, 'POST', `/v1/orders/${two.id}/cancel`, 400, { body: { reason: 'changed my mind' } });
        assert.equal(
          (
            await alice.request('POST', `/v1/orders/${two.id}/cancel`, {
              rawBody: '',
              headers: { 'content-type': 'application/json' },
            })
          ).status,
          200,
        );
      });

      it('a rejected order cannot be cancelled: 409', async () => {
        const order = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }], 'tok_declined')).body;
        await quiesce(t.app);
        const read = await alice.request('GET', `/v1/orders/${order.id}`);
        assert.equal(read.body.status, 'rejected');
        assert.equal(read.body.rejectReason, 'payment_declined');
        await refused(alice, 'POST', `/v1/orders/${order.id}/cancel`, 409);
      });

      it('needs orders:write (or orders:admin)', async () => {
        const order = (await placeOrder(alice, [{ sku: 'MUG-1', quantity: 1 }])).body;
        const readOnly = client(t.app, await t.token('alice', 'orders:read'));
        await refused(readOnly, 'POST', `/v1/orders/${order.id}/cancel`, 403);
        const byAdmin = await admin.request('POST', `/v1/orders/${order.id}/cancel`);
        assert.equal(byAdmin.status, 200);
      });
    });
  });
}
