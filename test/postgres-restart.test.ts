// PostgreSQL going away and coming back, seen through every kind of route:
// meanwhile every request that needs it gets 503 problem+json with
// Retry-After (never a hang, never a 500), reads and writes alike, and
// afterwards the same Orderflow app serves again without a restart and
// finishes the orders it had accepted. The server is a private one
// (test/support/private-postgres.ts), so stopping it disturbs nothing else;
// test/outages.test.ts does the same under load with real serving processes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ALL_SCOPES, client, createProduct, eventually, placeOrder, quiesce, startTestApp } from './support/harness.ts';
import { startPrivatePrimary } from './support/private-postgres.ts';
import { privateServersUnavailable } from './support/servers.ts';

const missing = privateServersUnavailable('postgresql');
if (missing && process.env.REQUIRE_SERVICES === '1')
  throw new Error(`the PostgreSQL restart test needs a private PostgreSQL (REQUIRE_SERVICES=1): ${missing}`);

describe('PostgreSQL restart', { skip: missing }, () => {
  it(
    'answers 503 with Retry-After while PostgreSQL is down, then recovers without a restart',
    { timeout: 120_000 },
    async () => {
      const server = await startPrivatePrimary();
      const t = await startTestApp('postgres', { databaseUrl: server.url() });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        const shopper = client(t.app, await t.token('pat', 'orders:write orders:read'));
        await createProduct(admin, { sku: 'PG-1', stock: 10, priceCents: 500 });
        const before = await placeOrder(shopper, [{ sku: 'PG-1', quantity: 1 }]);
        assert.equal(before.status, 202);
        await quiesce(t.app);

        await server.stop('fast');
        for (const [method, url, send] of [
          ['GET', '/v1/products/PG-1', () => admin.request('GET', '/v1/products/PG-1')],
          ['GET', '/v1/orders', () => shopper.request('GET', '/v1/orders')],
          ['POST', '/v1/orders', () => placeOrder(shopper, [{ sku: 'PG-1', quantity: 1 }])],
          [
            'POST',
            '/v1/orders/{id}/cancel',
            () => shopper.request('POST', `/v1/orders/${before.body.id}/cancel`, { body: {} }),
          ],
          [
            'POST',
            '/v1/products',
            () =>
              admin.request('POST', '/v1/products', {
                body: { sku: 'PG-2', name: 'Two', priceCents: 1, currency: 'EUR', stock: 1 },
              }),
          ],
          ['GET', '/readyz', () => admin.request('GET', '/readyz')],
        ] as const) {
          const response = await send();
          assert.equal(
            response.status,
            503,
            `${method} ${url} while PostgreSQL is down: ${JSON.stringify(response.body)}`,
          );
          assert.match(String(response.headers['content-type']), /application\/problem\+json/);
          assert.ok(Number(response.headers['retry-after']) > 0, `${method} ${url} carries Retry-After`);
        }
        assert.equal((await admin.request('GET', '/healthz')).status, 200, 'the process itself stays alive');
        assert.equal(
          (await admin.request('GET', '/metrics')).status,
          200,
          'metrics are served without the database figures',
        );

        await server.start();
        const after = await eventually(
          'an order to be accepted again',
          async () => {
            const response = await placeOrder(shopper, [{ sku: 'PG-1', quantity: 1 }]);
            return response.status === 202 ? response : undefined;
          },
          60_000,
        );
        await quiesce(t.app, 60_000);
        for (const id of [before.body.id, after.body.id]) {
          const order = await admin.request('GET', `/v1/orders/${id}`);
          assert.equal(order.body.status, 'confirmed');
        }
        assert.equal((await admin.request('GET', '/readyz')).status, 200);
      } finally {
        await t.close();
        await server.destroy();
      }
    },
  );
});
