// The metrics the alerting rules and dashboards (deploy/) are written
// against, as a real app serves them on GET /metrics, in every mode: the
// series that must exist from the start, the settle histogram the SLO
// counts, and the gauges read from the database at scrape time.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SimulatedGateway } from '../src/payments/simulated-gateway.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  isBrokerMode,
  modes,
  placeOrder,
  quiesce,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

/** The value of the one sample named `series` (name and labels exactly as exposed), or undefined. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

for (const mode of modes()) {
  describe(`metrics (${mode})`, () => {
    let t: TestApp;
    let admin: Client;
    const scrape = async () => (await client(t.app).request('GET', '/metrics')).body as string;

    before(async () => {
      // tok_flaky always fails and a job has two attempts: its order ends payment_failed.
      t = await startTestApp(mode, { gateway: new SimulatedGateway({ flakyFailureRate: 1 }), maxAttempts: 2 });
      admin = client(t.app, await t.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'MUG-1', stock: 100 });
      await createProduct(admin, { sku: 'LAST-1', stock: 1 });
    });
    after(() => t.close());

    it('counts every order outcome from the start, and times each payment outcome from its accept', async () => {
      const fresh = await scrape();
      for (const series of [
        'orderflow_orders_total{status="pending",reason=""}',
        'orderflow_orders_total{status="rejected",reason="payment_failed"}',
        'orderflow_jobs_processed_total{queue="payments.refund",outcome="dead"}',
        'orderflow_order_settle_duration_seconds_count',
      ]) {
        assert.equal(sample(fresh, series), 0, `${series} exists at 0 before anything happened`);
      }

      const buyer = client(t.app, await t.token('alice', 'orders:write orders:read'));
      for (const token of ['tok_visa', 'tok_declined', 'tok_flaky'])
        assert.equal((await placeOrder(buyer, [{ sku: 'MUG-1', quantity: 1 }], token)).status, 202);
      assert.equal((await placeOrder(buyer, [{ sku: 'LAST-1', quantity: 2 }])).body.rejectReason, 'out_of_stock');
      await quiesce(t.app);

      const text = await scrape();
      assert.equal(sample(text, 'orderflow_orders_total{status="confirmed",reason=""}'), 1);
      assert.equal(sample(text, 'orderflow_orders_total{status="rejected",reason="payment_declined"}'), 1);
      assert.equal(sample(text, 'orderflow_orders_total{status="rejected",reason="payment_failed"}'), 1);
      assert.equal(sample(text, 'orderflow_orders_total{status="rejected",reason="out_of_stock"}'), 1);
      // The three payment outcomes, not the out-of-stock order that never waited.
      assert.equal(sample(text, 'orderflow_order_settle_duration_seconds_count'), 3);
      assert.equal(sample(text, 'orderflow_order_settle_duration_seconds_bucket{le="600"}'), 3);
      assert.ok(sample(text, 'orderflow_order_settle_duration_seconds_sum')! > 0);
    });

    it('reports readiness, the adapters in use and the database pool', async () => {
      const text = await scrape();
      assert.equal(sample(text, 'orderflow_ready'), 1);
      const database = mode === 'embedded' ? 'pglite' : 'postgres';
      const backend = isBrokerMode(mode) ? mode : 'database';
      assert.equal(
        sample(
          text,
          `orderflow_info{database="${database}",queue_backend="${backend}",cache="memory",redis="no",read_replica="no"}`,
        ),
        1,
      );
      assert.equal(sample(text, 'orderflow_db_pool_size'), mode === 'embedded' ? 1 : t.app.config.databasePoolSize);
      assert.ok(sample(text, 'orderflow_db_pool_busy_seconds_total')! > 0, 'the statements so far took time');
    });

    it('reads the pending orders at scrape time: how many, how many past the deadline, the oldest age', async () => {
      assert.equal(sample(await scrape(), 'orderflow_pending_orders'), 0);
      // No workers: an order stays pending and passes the 1 s deadline.
      const idle = await startTestApp(mode, { startWorkers: false, env: { PENDING_DEADLINE_MS: '1000' } });
      try {
        const owner = client(idle.app, await idle.token('admin', ALL_SCOPES));
        await createProduct(owner, { sku: 'MUG-1', stock: 10 });
        assert.equal((await placeOrder(owner, [{ sku: 'MUG-1', quantity: 1 }])).status, 202);
        const read = async () => (await client(idle.app).request('GET', '/metrics')).body as string;
        assert.equal(sample(await read(), 'orderflow_pending_orders'), 1);
        const overdue = await eventually('the order to pass its deadline', async () => {
          const text = await read();
          return sample(text, 'orderflow_pending_orders_overdue') === 1 ? text : undefined;
        });
        assert.ok(sample(overdue, 'orderflow_pending_order_oldest_age_seconds')! >= 1);
        idle.app.startWorkers();
        await quiesce(idle.app);
        const settled = await read();
        assert.equal(sample(settled, 'orderflow_pending_orders'), 0);
        assert.equal(sample(settled, 'orderflow_pending_order_oldest_age_seconds'), 0);
      } finally {
        await idle.close();
      }
    });

    it(
      'database queue: reports the dead letters held in messaging.dead_jobs',
      { skip: isBrokerMode(mode) && 'a broker holds its own dead letters' },
      async () => {
        // The payment_failed order's refund replays the charge, fails both its attempts and is already dead.
        const held = async () =>
          (
            await t.app.db.query<{ n: number }>(
              `SELECT count(*)::int AS n FROM messaging.dead_jobs WHERE queue = 'payments.refund'`,
            )
          )[0]!.n;
        const before = await held();
        assert.equal(sample(await scrape(), 'orderflow_dead_jobs{queue="payments.refund"}'), before);
        await t.app.db.query(
          `INSERT INTO messaging.dead_jobs (id, queue, payload, attempts, last_error, created_at) VALUES (-1, 'payments.refund', '{"orderId":"ord_x"}', 10, 'test', now())`,
        );
        try {
          assert.equal(sample(await scrape(), 'orderflow_dead_jobs{queue="payments.refund"}'), before + 1);
          assert.equal(sample(await scrape(), 'orderflow_dead_jobs{queue="payments.charge"}'), 0);
        } finally {
          await t.app.db.query('DELETE FROM messaging.dead_jobs WHERE id = -1');
        }
      },
    );
  });
}
