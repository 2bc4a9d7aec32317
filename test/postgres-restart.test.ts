// PostgreSQL going away and coming back: meanwhile every request that needs
// it gets 503 problem+json with Retry-After (never a hang, never a 500), and
// afterwards the same Orderflow process serves again without a restart and
// finishes the orders it had accepted. This stops and starts the machine's
// real PostgreSQL server, so it runs only where the test may control it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { describe, it } from 'node:test';
import { ALL_SCOPES, client, createProduct, eventually, placeOrder, quiesce, requiredServiceUrl, startTestApp } from './support/harness.ts';

/** The Debian cluster serving DATABASE_URL, when this machine manages PostgreSQL with pg_ctlcluster. */
function localCluster(): { version: string; name: string } | undefined {
  try {
    execFileSync('pg_lsclusters', [], { stdio: 'ignore' });
    const version = readdirSync('/etc/postgresql').sort().at(-1);
    return version ? { version, name: 'main' } : undefined;
  } catch {
    return undefined;
  }
}

function pgctl(cluster: { version: string; name: string }, action: 'stop' | 'start'): void {
  execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', cluster.version, cluster.name, action, ...(action === 'stop' ? ['-m', 'fast'] : [])], {
    stdio: 'inherit',
  });
}

const databaseUrl = requiredServiceUrl('DATABASE_URL');
const cluster = localCluster();
const skip = databaseUrl === undefined ? 'DATABASE_URL is not set' : cluster === undefined ? 'PostgreSQL is not managed by pg_ctlcluster here' : undefined;
if (skip && databaseUrl !== undefined && process.env.REQUIRE_SERVICES === '1') {
  throw new Error(`the PostgreSQL restart test cannot run: ${skip}`);
}

describe('PostgreSQL restart', { skip }, () => {
  it('answers 503 with Retry-After while PostgreSQL is down, then recovers without a restart', { timeout: 120_000 }, async () => {
    const t = await startTestApp('postgres');
    let stopped = false;
    try {
      const admin = client(t.app, await t.token('admin', ALL_SCOPES));
      const shopper = client(t.app, await t.token('pat', 'orders:write orders:read'));
      await createProduct(admin, { sku: 'PG-1', stock: 10, priceCents: 500 });
      const before = await placeOrder(shopper, [{ sku: 'PG-1', quantity: 1 }]);
      assert.equal(before.status, 202);
      await quiesce(t.app);

      pgctl(cluster!, 'stop');
      stopped = true;
      for (const [method, url, send] of [
        ['GET', '/v1/products/PG-1', () => admin.request('GET', '/v1/products/PG-1')],
        ['POST', '/v1/orders', () => placeOrder(shopper, [{ sku: 'PG-1', quantity: 1 }])],
        ['GET', '/readyz', () => admin.request('GET', '/readyz')],
      ] as const) {
        const response = await send();
        assert.equal(response.status, 503, `${method} ${url} while PostgreSQL is down: ${JSON.stringify(response.body)}`);
        assert.match(String(response.headers['content-type']), /application\/problem\+json/);
        assert.ok(Number(response.headers['retry-after']) > 0, `${method} ${url} carries Retry-After`);
      }
      const alive = await admin.request('GET', '/healthz');
      assert.equal(alive.status, 200, 'the process itself stays alive');

      pgctl(cluster!, 'start');
      stopped = false;
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
      if (stopped) pgctl(cluster!, 'start');
      await t.close();
    }
  });
});
