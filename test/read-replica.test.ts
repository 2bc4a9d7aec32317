// The read replica against a real streaming standby of a private primary
// (never the machine's server): lists wait for the standby to replay what
// the primary had committed when they were asked, so a client always finds
// its own writes; a standby that is paused, delayed, stopped or promoted
// sends reads to the primary, says so in a metric and a log line, and no
// request fails. The contract suite runs in the replica mode too
// (test/contract.test.ts).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import postgres from 'postgres';
import { pino } from 'pino';
import { startPrivatePrimary } from './support/private-postgres.ts';
import type { App } from '../src/app.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  modes,
  placeOrder,
  startReplicatedPostgres,
  startTestApp,
  type Client,
  type ReplicatedPostgres,
  type TestApp,
} from './support/harness.ts';

const skip = modes({ replica: true }).includes('replica')
  ? undefined
  : 'set DATABASE_URL (and install the PostgreSQL server programs) to run the read replica tests';

interface LogLine {
  level: number;
  msg: string;
  reason?: string;
}

/** An app in replica mode on this file's own primary and standby, logging into `lines`. */
async function replicaApp(
  pair: ReplicatedPostgres,
  env: Record<string, string> = {},
): Promise<{ t: TestApp; lines: LogLine[]; admin: Client }> {
  const lines: LogLine[] = [];
  const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const t = await startTestApp('replica', { replicated: pair, env, log });
  return { t, lines, admin: client(t.app, await t.token('admin', ALL_SCOPES)) };
}

async function routed(app: App, database: 'replica' | 'primary', reason: string): Promise<number> {
  const values = (await app.metrics.routedReads.get()).values;
  return values.find((v) => v.labels.database === database && v.labels.reason === reason)?.value ?? 0;
}

async function gauge(app: App, name: 'readReplicaUp' | 'replicaWaiting'): Promise<number> {
  return (await app.metrics[name].get()).values[0]?.value ?? 0;
}

/** A connection to the standby's copy of the app's database, to look at (and pause) it directly. */
function standbySql(pair: ReplicatedPostgres, app: App) {
  return postgres(pair.standby.url(new URL(app.config.databaseUrl!).pathname.slice(1)), { max: 1, onnotice: () => {} });
}

async function pauseReplay(standby: postgres.Sql): Promise<void> {
  await standby`SELECT pg_wal_replay_pause()`;
  await eventually('replay to pause', async () => {
    const [row] = await standby<{ state: string }[]>`SELECT pg_get_wal_replay_pause_state() AS state`;
    return row?.state === 'paused' ? true : undefined;
  });
}

const ids = (page: { body: { items: { id: string }[] } }) => page.body.items.map((o) => o.id);

describe('read replica (a private primary and its streaming standby)', { skip }, () => {
  let pair: ReplicatedPostgres;

  before(async () => {
    pair = await startReplicatedPostgres();
  });
  after(async () => {
    await pair?.standby.destroy();
    await pair?.primary.destroy();
  });

  it('a list waits for the standby to replay the order its caller just placed, and is served by the standby', async () => {
    const { t, admin } = await replicaApp(pair, { DATABASE_READ_MAX_WAIT_MS: '10000' });
    const standby = standbySql(pair, t.app);
    try {
      const alice = client(t.app, await t.token('alice', 'orders:write orders:read'));
      await createProduct(admin, { sku: 'RYW-1', stock: 10 });
      await pauseReplay(standby);
      const placed = await placeOrder(alice, [{ sku: 'RYW-1', quantity: 3 }]);
      assert.equal(placed.status, 202);
      assert.equal(
        (await standby`SELECT 1 FROM orders.orders WHERE id = ${placed.body.id}`).length,
        0,
        'the paused standby does not have the order',
      );

      const servedBefore = await routed(t.app, 'replica', 'caught_up');
      const ordersList = alice.request('GET', '/v1/orders');
      const productList = alice.request('GET', '/v1/products');
      await eventually('both lists to wait for the standby', async () =>
        (await gauge(t.app, 'replicaWaiting')) >= 2 ? true : undefined,
      );
      // The order by id never waits: it is read from the primary.
      assert.equal((await alice.request('GET', `/v1/orders/${placed.body.id}`)).status, 200);
      await standby`SELECT pg_wal_replay_resume()`;

      assert.deepEqual(ids(await ordersList), [placed.body.id]);
      const products = (await productList).body.items;
      assert.deepEqual(
        products.map((p: { sku: string; available: number }) => [p.sku, p.available]),
        [['RYW-1', 7]],
      );
      assert.equal(
        await routed(t.app, 'replica', 'caught_up'),
        servedBefore + 2,
        'both lists were served by the standby',
      );
    } finally {
      await standby`SELECT pg_wal_replay_resume()`.catch(() => undefined);
      await standby.end();
      await t.close();
    }
  });

  it("a list the request itself gets wrong (another customer's cursor) is refused by the standby, which stays in use", async () => {
    const { t, admin, lines } = await replicaApp(pair, { DATABASE_READ_MAX_WAIT_MS: '10000' });
    try {
      const alice = client(t.app, await t.token('alice', 'orders:write orders:read'));
      const bob = client(t.app, await t.token('bob', 'orders:write orders:read'));
      await createProduct(admin, { sku: 'CUR-1', stock: 10 });
      for (let i = 0; i < 3; i++) await placeOrder(alice, [{ sku: 'CUR-1', quantity: 1 }]);
      const page = await alice.request('GET', '/v1/orders?limit=1');
      const cursor = page.body.nextCursor as string;
      assert.ok(cursor);
      const servedBefore = await routed(t.app, 'replica', 'caught_up');
      const refused = await bob.request('GET', `/v1/orders?cursor=${cursor}`);
      assert.equal(refused.status, 400);
      assert.equal(refused.body.type, '/problems/validation-failed');
      assert.equal((await alice.request('GET', `/v1/orders?limit=1&cursor=${cursor}`)).status, 200);
      assert.equal(await routed(t.app, 'replica', 'caught_up'), servedBefore + 2, 'both answered by the standby');
      for (const reason of ['error', 'down'])
        assert.equal(await routed(t.app, 'primary', reason), 0, `no read went to the primary (${reason})`);
      assert.equal(await gauge(t.app, 'readReplicaUp'), 1);
      assert.deepEqual(
        lines.filter((l) => l.reason !== undefined).map((l) => l.msg),
        [],
        'no fallback was logged',
      );
    } finally {
      await t.close();
    }
  });

  it('a standby that lags past the bound: reads go to the primary, a metric and a log line say so, and it is used again once it catches up', async () => {
    const { t, lines, admin } = await replicaApp(pair, { DATABASE_READ_MAX_WAIT_MS: '50' });
    const standby = standbySql(pair, t.app);
    try {
      await createProduct(admin, { sku: 'LAG-1', stock: 10 });
      await pauseReplay(standby);
      const placed = await placeOrder(admin, [{ sku: 'LAG-1', quantity: 1 }]);
      assert.deepEqual(
        ids(await admin.request('GET', '/v1/orders')),
        [placed.body.id],
        'served by the primary, with the order',
      );
      assert.equal(await routed(t.app, 'primary', 'lagging'), 1);
      assert.equal(await gauge(t.app, 'readReplicaUp'), 0);
      assert.ok(
        lines.some((l) => l.reason === 'lagging' && /has not replayed/.test(l.msg)),
        JSON.stringify(lines),
      );
      // Until it has caught up, reads do not even wait for it.
      assert.equal((await admin.request('GET', '/v1/products')).body.items[0].available, 9);
      assert.equal(await routed(t.app, 'primary', 'lagging'), 2);
      assert.equal((await client(t.app).request('GET', '/readyz')).status, 200, 'readiness is about the primary');

      await standby`SELECT pg_wal_replay_resume()`;
      await eventually(
        'the standby to be used again',
        async () => ((await gauge(t.app, 'readReplicaUp')) === 1 ? true : undefined),
        10_000,
      );
      assert.ok(lines.some((l) => /has caught up/.test(l.msg)));
      const served = await routed(t.app, 'replica', 'caught_up');
      assert.deepEqual(ids(await admin.request('GET', '/v1/orders')), [placed.body.id]);
      assert.equal(await routed(t.app, 'replica', 'caught_up'), served + 1);
    } finally {
      await standby`SELECT pg_wal_replay_resume()`.catch(() => undefined);
      await standby.end();
      await t.close();
    }
  });

  it('read-your-writes under load while replay is delayed by recovery_min_apply_delay', async () => {
    const { t, admin } = await replicaApp(pair, { DATABASE_READ_MAX_WAIT_MS: '10000' });
    await pair.standby.configure({ recovery_min_apply_delay: "'250ms'" });
    try {
      const customers = 12;
      const ordersEach = 5;
      const stock = customers * ordersEach;
      await createProduct(admin, { sku: 'DELAY-1', stock });
      const primaryAvailable = async () => {
        const [row] = await t.app.db.query<{ available: number }>(
          "SELECT on_hand - held AS available FROM inventory.stock WHERE sku = 'DELAY-1'",
        );
        return Number(row!.available);
      };
      await Promise.all(
        Array.from({ length: customers }, async (_, c) => {
          const buyer = client(t.app, await t.token(`buyer-${c}`, 'orders:write orders:read'));
          const mine: string[] = [];
          for (let i = 0; i < ordersEach; i++) {
            const placed = await placeOrder(buyer, [{ sku: 'DELAY-1', quantity: 1 }]);
            assert.equal(placed.status, 202);
            assert.equal(placed.body.status, 'pending', 'the stock covers every order');
            mine.unshift(placed.body.id);
            // Every order the buyer has placed, newest first, at once.
            assert.deepEqual(ids(await buyer.request('GET', '/v1/orders?limit=100')), mine);
            // Nothing is ever released here, so available only falls: a list
            // as fresh as its request never shows more than the primary did before it.
            const ceiling = await primaryAvailable();
            const listed = (await buyer.request('GET', '/v1/products')).body.items.find(
              (p: { sku: string }) => p.sku === 'DELAY-1',
            );
            assert.ok(
              listed.available <= ceiling,
              `the list showed ${listed.available} available after the primary had ${ceiling}`,
            );
          }
        }),
      );
      const sold = (await admin.request('GET', '/v1/products')).body.items.find(
        (p: { sku: string }) => p.sku === 'DELAY-1',
      );
      assert.equal(sold.available, 0, 'sold out is sold out on the list too');
      const everyone = await admin.request('GET', '/v1/orders?limit=100');
      assert.equal(everyone.body.items.length, stock);

      const reads = 2 * stock + 2;
      assert.ok(
        (await routed(t.app, 'replica', 'caught_up')) + (await routed(t.app, 'primary', 'lagging')) === reads,
        'every list was routed',
      );
      assert.ok((await routed(t.app, 'replica', 'caught_up')) > 0, 'the standby served lists while it was delayed');
      // The delay was real: some lists waited for replay well past a normal lag.
      const wait = (await t.app.metrics.replicaWait.get()).values;
      const count = wait.find((v) => v.metricName?.endsWith('_count'))?.value ?? 0;
      const quick = wait.find((v) => v.metricName?.endsWith('_bucket') && v.labels.le === 0.1)?.value ?? 0;
      assert.ok(count - quick > 0, `no read waited over 100 ms: ${JSON.stringify(wait)}`);
    } finally {
      await pair.standby.configure({ recovery_min_apply_delay: '0' });
      await t.close();
    }
  });

  it('the standby stopped mid-run and started again: no request fails, reads move to the primary and back', async () => {
    const { t, lines, admin } = await replicaApp(pair, { DATABASE_READ_MAX_WAIT_MS: '5000' });
    try {
      await createProduct(admin, { sku: 'STOP-1', stock: 100_000 });
      const failures: string[] = [];
      let completed = 0;
      let phase: 'before' | 'stopped' | 'restarted' = 'before';
      const rounds = { before: 0, stopped: 0, restarted: 0 };
      const check = (what: string, response: { status: number; body: unknown }, expected: number) => {
        if (response.status !== expected) failures.push(`${what}: ${response.status} ${JSON.stringify(response.body)}`);
      };
      const loops = Array.from({ length: 8 }, async (_, c) => {
        const buyer = client(t.app, await t.token(`stop-${c}`, 'orders:write orders:read'));
        const mine: string[] = [];
        // Bounded: each loop ends once the standby has been back for a while.
        for (let i = 0; i < 3_000 && !(phase === 'restarted' && rounds.restarted >= 80); i++) {
          const placed = await placeOrder(buyer, [{ sku: 'STOP-1', quantity: 1 }]);
          check('place', placed, 202);
          if (placed.status === 202) mine.unshift(placed.body.id);
          const list = await buyer.request('GET', '/v1/orders?limit=100');
          check('list orders', list, 200);
          if (list.status === 200 && ids(list).join() !== mine.slice(0, 100).join())
            failures.push(`the list missed the buyer's orders in phase ${phase}`);
          check('list products', await buyer.request('GET', '/v1/products'), 200);
          check('read order', await buyer.request('GET', `/v1/orders/${placed.body.id}`), 200);
          completed++;
          rounds[phase]++;
        }
      });
      const outage = (async () => {
        await eventually('some load with the standby up', async () => (completed >= 40 ? true : undefined), 60_000);
        await pair.standby.stop('immediate');
        phase = 'stopped';
        await eventually(
          'some load with the standby down',
          async () => (rounds.stopped >= 80 ? true : undefined),
          60_000,
        );
        assert.equal((await client(t.app).request('GET', '/readyz')).status, 200, 'ready while the standby is down');
        await pair.standby.start();
        await eventually(
          'the standby to be used again',
          async () => ((await gauge(t.app, 'readReplicaUp')) === 1 ? true : undefined),
          20_000,
        );
        phase = 'restarted';
      })();
      await Promise.all([outage, ...loops]);

      assert.deepEqual(failures, []);
      assert.ok(rounds.restarted > 0, 'the load went on after the standby was back');
      assert.ok(
        (await routed(t.app, 'primary', 'down')) + (await routed(t.app, 'primary', 'error')) > 0,
        'reads fell back while it was down',
      );
      assert.ok(
        lines.some((l) => l.reason === 'down' && /unreachable/.test(l.msg)) || lines.some((l) => l.reason === 'error'),
        JSON.stringify(lines.slice(-5)),
      );
      const served = await routed(t.app, 'replica', 'caught_up');
      assert.equal((await admin.request('GET', '/v1/products')).status, 200);
      assert.equal(await routed(t.app, 'replica', 'caught_up'), served + 1, 'the standby serves again');
    } finally {
      await t.close();
    }
  });

  it('an unreachable replica at start: the app starts, reads go to the primary', async () => {
    const lines: LogLine[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
    const t = await startTestApp('replica', {
      replicated: pair,
      env: { DATABASE_READ_URL: 'postgres://postgres@127.0.0.1:1/nowhere' },
      log,
    });
    try {
      const admin = client(t.app, await t.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'NOREP-1', stock: 2 });
      const placed = await placeOrder(admin, [{ sku: 'NOREP-1', quantity: 1 }]);
      assert.deepEqual(ids(await admin.request('GET', '/v1/orders')), [placed.body.id]);
      assert.equal((await admin.request('GET', '/v1/products')).body.items[0].available, 1);
      assert.equal(await routed(t.app, 'primary', 'down'), 2);
      assert.equal(await gauge(t.app, 'readReplicaUp'), 0);
      assert.equal((await client(t.app).request('GET', '/readyz')).status, 200);
      await eventually('the log line', async () =>
        lines.some((l) => l.reason === 'down' && /unreachable/.test(l.msg)) ? true : undefined,
      );
    } finally {
      await t.close();
    }
  });

  it('a server that is not a copy of the primary is never used', async () => {
    const lines: LogLine[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
    // Another cluster altogether: the machine's server, or a second private primary.
    const other = process.env.DATABASE_URL ? undefined : await startPrivatePrimary();
    const t = await startTestApp('replica', {
      replicated: pair,
      env: { DATABASE_READ_URL: other?.url() ?? process.env.DATABASE_URL! },
      log,
    });
    try {
      const admin = client(t.app, await t.token('admin', ALL_SCOPES));
      await eventually('the first check of the replica', async () =>
        lines.some((l) => l.reason === 'unrelated') ? true : undefined,
      );
      await createProduct(admin, { sku: 'OTHER-1', stock: 1 });
      assert.equal((await admin.request('GET', '/v1/products')).body.items[0].sku, 'OTHER-1');
      assert.equal(await routed(t.app, 'primary', 'unrelated'), 1);
      assert.equal(await routed(t.app, 'replica', 'caught_up'), 0);
      assert.equal(await gauge(t.app, 'readReplicaUp'), 0);
    } finally {
      await t.close();
      await other?.destroy();
    }
  });

  // Last: a promoted standby is a primary of its own from then on.
  it('a promoted standby: reads go to the primary, and the metric and a log line say why', async () => {
    const { t, lines, admin } = await replicaApp(pair, { DATABASE_READ_MAX_WAIT_MS: '5000' });
    try {
      await createProduct(admin, { sku: 'PROMO-1', stock: 5 });
      await pair.standby.promote();
      const placed = await placeOrder(admin, [{ sku: 'PROMO-1', quantity: 2 }]);
      assert.deepEqual(ids(await admin.request('GET', '/v1/orders')), [placed.body.id]);
      assert.equal((await admin.request('GET', '/v1/products')).body.items[0].available, 3);
      assert.equal(await routed(t.app, 'primary', 'promoted'), 2);
      assert.equal(await gauge(t.app, 'readReplicaUp'), 0);
      assert.ok(
        lines.some((l) => l.reason === 'promoted' && /no longer a standby/.test(l.msg)),
        JSON.stringify(lines),
      );
    } finally {
      await t.close();
    }
  });
});
