// Durability of the embedded database: orders accepted by a process that
// stops before paying them are finished by the next process on the same
// DATA_DIR, with the same gateway (the outside world outlives restarts), and
// nothing is lost or charged twice. Reopening again applies no migration twice.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SimulatedGateway } from '../src/payments/simulated-gateway.ts';
import { loadMigrations, migrate } from '../src/storage/migrate.ts';
import { ALL_SCOPES, client, createProduct, placeOrder, quiesce, startTestApp } from './support/harness.ts';

describe('restart on the embedded database', () => {
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-restart-'));
  });
  after(() => rm(dataDir, { recursive: true, force: true }));

  it('orders accepted before a restart are all finished after it, charged once each; a second reopen migrates nothing', async () => {
    const gateway = new SimulatedGateway({ retain: 'all' });
    const migrations = (await loadMigrations()).map((m) => m.name);

    // First life: accept orders, pay none of them.
    const first = await startTestApp('embedded', { dataDir, gateway, startWorkers: false });
    const accepted: { id: string; status: string; totalCents: number; token: string }[] = [];
    try {
      const admin = client(first.app, await first.token('admin', ALL_SCOPES));
      const shopper = client(first.app, await first.token('rita', 'orders:write orders:read'));
      await createProduct(admin, { sku: 'KEEP-1', stock: 6, priceCents: 1100 });
      const tokens = ['tok_visa', 'tok_visa', 'tok_declined', 'tok_visa', 'tok_flaky', 'tok_visa', 'tok_visa'];
      for (const token of tokens) {
        const response = await placeOrder(shopper, [{ sku: 'KEEP-1', quantity: 1 }], token);
        assert.equal(response.status, 202);
        accepted.push({
          id: response.body.id,
          status: response.body.status,
          totalCents: response.body.totalCents,
          token,
        });
      }
      // The seventh order finds no stock left.
      assert.deepEqual(
        accepted.map((o) => o.status),
        ['pending', 'pending', 'pending', 'pending', 'pending', 'pending', 'rejected'],
      );
      const jobs = await first.app.db.query('SELECT id FROM messaging.jobs');
      assert.equal(jobs.length, 6, 'a payment job per pending order');
    } finally {
      await first.close();
    }
    assert.equal(gateway.chargeCalls, 0, 'nothing was charged before the restart');

    // Second life: same DATA_DIR, same gateway, workers on.
    const second = await startTestApp('embedded', { dataDir, gateway });
    try {
      // The development key lives in DATA_DIR too: a token minted by the
      // second process is accepted, and the orders are all still there.
      const admin = client(second.app, await second.token('admin', ALL_SCOPES));
      await quiesce(second.app);
      const listed = await admin.request('GET', '/v1/orders?limit=100');
      assert.equal(listed.status, 200);
      assert.deepEqual(
        listed.body.items.map((o: { id: string }) => o.id).sort(),
        accepted.map((o) => o.id).sort(),
        'orders lost across the restart',
      );
      const byId = new Map<string, { status: string; rejectReason: string | null; totalCents: number }>(
        listed.body.items.map((o: { id: string }) => [o.id, o]),
      );
      for (const placed of accepted) {
        const order = byId.get(placed.id)!;
        const expected =
          placed.status === 'rejected' ? 'rejected' : placed.token === 'tok_declined' ? 'rejected' : 'confirmed';
        assert.equal(order.status, expected, `order paid with ${placed.token}`);
        const net = gateway.netCharged(placed.id);
        if (order.status === 'confirmed') assert.deepEqual(net, { charges: 1, netCents: order.totalCents });
        else assert.deepEqual(net, { charges: 0, netCents: 0 });
      }
      const product = (await admin.request('GET', '/v1/products/KEEP-1')).body;
      assert.equal(product.available, 1, 'five confirmed orders hold five of six');
      assert.equal(gateway.charges.size, 5);
    } finally {
      await second.close();
    }

    // Third life: nothing left to migrate, every row still there.
    const third = await startTestApp('embedded', { dataDir, gateway });
    try {
      assert.deepEqual(await migrate(third.app.db), [], 'a reopen applied a migration again');
      const recorded = await third.app.db.query<{ name: string; n: number }>(
        'SELECT name, count(*)::int AS n FROM public.schema_migrations GROUP BY name ORDER BY name',
      );
      assert.deepEqual(
        recorded.map((r) => [r.name, r.n]),
        migrations.map((name) => [name, 1]),
      );
      const counts = await third.app.db.query<{ orders: number; confirmed: number; jobs: number }>(
        `SELECT count(*)::int AS orders, count(*) FILTER (WHERE status = 'confirmed')::int AS confirmed,
                (SELECT count(*)::int FROM messaging.jobs) AS jobs FROM orders.orders`,
      );
      assert.deepEqual({ ...counts[0] }, { orders: 7, confirmed: 5, jobs: 0 });
      const admin = client(third.app, await third.token('admin', ALL_SCOPES));
      assert.equal((await admin.request('GET', '/v1/products/KEEP-1')).body.available, 1);
      assert.equal(gateway.charges.size, 5, 'the third life charged nothing new');
    } finally {
      await third.close();
    }
  });
});
