// The shared cache against a real Redis and a real Memcached, and the rate
// limits: what is cached is served from it, writes through one process are
// seen through another (at once with Redis's pub/sub, within the local TTL
// with Memcached's versioned keys), the order limit is per customer and
// shared between processes, and the cache's server being down, from the
// start or in the middle of traffic, costs nothing but the cache. Each test
// uses its own key prefix, and the outage tests their own server, so
// concurrent runs never see each other's keys.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { MemcacheClient } from 'memcache-client';
import { pino } from 'pino';
import { MemcachedCache } from '../src/cache/memcached-cache.ts';
import { createMetrics } from '../src/observability/metrics.ts';
import { freePort, installed } from './support/programs.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  placeOrder,
  requiredServiceUrl,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

const redisUrl = requiredServiceUrl('REDIS_URL');
const databaseUrl = requiredServiceUrl('DATABASE_URL');
const requireAll = process.env.REQUIRE_SERVICES === '1';

function uniquePrefix(): string {
  return `orderflow-test:${randomBytes(6).toString('hex')}:`;
}

async function deleteKeys(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    if (keys.length > 0) await redis.del(...keys);
    cursor = next;
  } while (cursor !== '0');
}

/** A Prometheus sample: the series with exactly these labels, or the sum of every series when labels is omitted. */
async function metric(t: TestApp, name: string, labels?: string): Promise<number> {
  const lines = (await t.app.metrics.registry.metrics()).split('\n');
  const series = lines.filter((l) =>
    labels === undefined ? l.startsWith(`${name}{`) || l.startsWith(`${name} `) : l.startsWith(`${name}${labels} `),
  );
  return series.reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0);
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/**
 * A shared cache server as the tests see it: how to point an app at it,
 * how to look at its keys from outside, and how to run a private one that a
 * test may kill and start again.
 */
interface Backend {
  name: 'Redis' | 'Memcached';
  hitLabel: 'redis_hit' | 'memcached_hit';
  upMetric: 'orderflow_redis_up' | 'orderflow_memcached_up';
  /** Why the tests against the shared test server cannot run, if they cannot. */
  sharedSkip: string | undefined;
  /** Why the tests against a private server cannot run, if they cannot. */
  privateSkip: string | undefined;
  /** App environment for this backend at url, under prefix. */
  env(url: string, prefix: string): Record<string, string>;
  sharedUrl(): Promise<string>;
  /** A connection to look at what the app stored. */
  inspect(url: string): Inspector;
  startPrivate(port: number): Promise<ChildProcess>;
  url(port: number): string;
}

interface Inspector {
  /** Whether the product's catalog entry is stored under the prefix. */
  holdsProduct(prefix: string, sku: string): Promise<boolean>;
  cleanUp(prefix: string): Promise<void>;
  close(): void;
}

const redisBackend: Backend = {
  name: 'Redis',
  hitLabel: 'redis_hit',
  upMetric: 'orderflow_redis_up',
  sharedSkip:
    redisUrl === undefined || databaseUrl === undefined
      ? 'set REDIS_URL and DATABASE_URL to run the Redis tests'
      : undefined,
  privateSkip: installed('redis-server', ['--version']) ? undefined : 'redis-server is not installed',
  env: (url, prefix) => ({ REDIS_URL: url, REDIS_KEY_PREFIX: prefix }),
  sharedUrl: async () => redisUrl!,
  inspect(url) {
    const redis = new Redis(url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 50 });
    redis.on('error', () => {});
    return {
      holdsProduct: async (prefix, sku) => (await redis.exists(`${prefix}catalog:product:${sku}`).catch(() => 0)) === 1,
      cleanUp: (prefix) => deleteKeys(redis, prefix),
      close: () => redis.disconnect(),
    };
  },
  async startPrivate(port) {
    const child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
      { stdio: 'ignore' },
    );
    await waitForServer(this.inspect(this.url(port)), `redis-server on port ${port}`);
    return child;
  },
  url: (port) => `redis://127.0.0.1:${port}`,
};

// One Memcached for the shared tests of this file, started below: the
// machine runs none, and the outage tests need one of their own anyway.
let memcachedForFile: { child: ChildProcess; url: string } | undefined;

const memcachedBackend: Backend = {
  name: 'Memcached',
  hitLabel: 'memcached_hit',
  upMetric: 'orderflow_memcached_up',
  sharedSkip: !installed('memcached', ['--version'])
    ? 'memcached is not installed'
    : databaseUrl === undefined
      ? 'set DATABASE_URL to run the Memcached tests'
      : undefined,
  privateSkip: installed('memcached', ['--version']) ? undefined : 'memcached is not installed',
  env: (url, prefix) => ({ CACHE_URL: url, CACHE_KEY_PREFIX: prefix }),
  async sharedUrl() {
    if (!memcachedForFile) {
      const port = await freePort();
      memcachedForFile = { child: await this.startPrivate(port), url: this.url(port) };
    }
    return memcachedForFile.url;
  },
  inspect(url) {
    const { hostname, port } = new URL(url);
    const memcached = new MemcacheClient({ server: `${hostname}:${port}`, cmdTimeout: 500, connectTimeout: 500 });
    return {
      holdsProduct: async (prefix, sku) =>
        (await memcached.get(`${prefix}e:catalog:product:${sku}`).catch(() => undefined)) !== undefined,
      // Every key carries the test's own prefix and expires; nothing to sweep.
      cleanUp: async () => {},
      close: () => memcached.shutdown(),
    };
  },
  async startPrivate(port) {
    // memcached refuses to run as root unless told which user to become.
    const user = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
    const child = spawn('memcached', ['-p', String(port), '-l', '127.0.0.1', '-U', '0', ...user], { stdio: 'ignore' });
    await waitForServer(this.inspect(this.url(port)), `memcached on port ${port}`);
    return child;
  },
  url: (port) => `memcached://127.0.0.1:${port}`,
};

async function waitForServer(inspector: Inspector, what: string): Promise<void> {
  try {
    await eventually(what, async () => {
      try {
        await inspector.holdsProduct('probe:', 'x');
        return true;
      } catch {
        return undefined;
      }
    });
  } finally {
    inspector.close();
  }
}

after(async () => {
  if (memcachedForFile) await stopServer(memcachedForFile.child);
});

for (const backend of [redisBackend, memcachedBackend]) {
  const { name } = backend;
  if (requireAll && (backend.sharedSkip || backend.privateSkip))
    throw new Error(`the ${name} tests cannot run (REQUIRE_SERVICES=1): ${backend.sharedSkip ?? backend.privateSkip}`);

  describe(`${name} as the shared cache (PostgreSQL + ${name})`, { skip: backend.sharedSkip }, () => {
    let url: string;
    let inspector: Inspector;
    let prefix: string;
    const apps: TestApp[] = [];

    before(async () => {
      url = await backend.sharedUrl();
      inspector = backend.inspect(url);
    });
    after(() => inspector.close());

    /** App A on a fresh database, app B on the same database; both on one cache server under this test's prefix. */
    async function twoApps(env: Record<string, string> = {}, options: { cacheLocalTtlMs?: number } = {}) {
      prefix = uniquePrefix();
      const shared = { ...backend.env(url, prefix), ...env };
      const a = await startTestApp('postgres', { env: shared, ...options });
      apps.push(a);
      const b = await startTestApp('postgres', { env: shared, databaseUrl: a.app.config.databaseUrl!, ...options });
      apps.unshift(b);
      return { a, b };
    }

    async function closeApps(): Promise<void> {
      // B first: closing A drops the database they share.
      for (const t of apps.splice(0)) await t.close();
      await inspector.cleanUp(prefix);
    }

    it('serves a product from the cache, and never its stock', async () => {
      try {
        const { a, b } = await twoApps();
        const admin = client(a.app, await a.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'CACHED-1', stock: 10, priceCents: 500, name: 'Original name' });

        assert.equal((await admin.request('GET', '/v1/products/CACHED-1')).status, 200);
        await eventually(`the product in ${name}`, async () =>
          (await inspector.holdsProduct(prefix, 'CACHED-1')) ? true : undefined,
        );

        // Changed behind the cache's back: a cached read still shows the old
        // name, which proves it did not ask the database.
        await a.app.db.query("UPDATE catalog.products SET name = 'Changed in the database' WHERE sku = 'CACHED-1'");
        await a.app.db.query("UPDATE inventory.stock SET on_hand = 12 WHERE sku = 'CACHED-1'");
        const fromLocal = await admin.request('GET', '/v1/products/CACHED-1');
        assert.equal(fromLocal.body.name, 'Original name');
        assert.equal(await metric(a, 'orderflow_cache_lookups_total', '{result="local_hit"}'), 1);

        // B has never read it: its answer comes from the shared cache, not from its LRU.
        const fromShared = await client(b.app, await b.token('reader', 'orders:read')).request(
          'GET',
          '/v1/products/CACHED-1',
        );
        assert.equal(fromShared.body.name, 'Original name');
        assert.equal(await metric(b, 'orderflow_cache_lookups_total', `{result="${backend.hitLabel}"}`), 1);
        assert.equal(await metric(b, 'orderflow_cache_lookups_total', '{result="miss"}'), 0);
        assert.equal(await metric(b, backend.upMetric), 1);

        // Stock is never cached: both see the database's value at once.
        for (const response of [fromLocal, fromShared]) {
          assert.equal(response.body.stock, 12);
          assert.equal(response.body.available, 12);
        }
      } finally {
        await closeApps();
      }
    });

    it('a write through app A is read back at once through A, and through B within the staleness bound', async () => {
      try {
        // Redis: B's LRU keeps entries for a minute, so only the published
        // invalidation can make it drop one in time. Memcached has no
        // pub/sub: B's LRU is the staleness bound, so it is kept short.
        const { a, b } = await twoApps({}, { cacheLocalTtlMs: name === 'Redis' ? 60_000 : 300 });
        const adminA = client(a.app, await a.token('admin', ALL_SCOPES));
        const adminB = client(b.app, await b.token('admin', ALL_SCOPES));
        const aliceA = client(a.app, await a.token('alice', 'orders:write orders:read'));
        const aliceB = client(b.app, await b.token('alice', 'orders:write orders:read'));
        await createProduct(adminA, { sku: 'SHARED-1', stock: 10 });
        const read = async (c: Client, sku = 'SHARED-1') => (await c.request('GET', `/v1/products/${sku}`)).body;
        assert.equal((await read(adminB)).available, 10);

        assert.equal((await adminA.request('POST', '/v1/products/SHARED-1/stock', { body: { delta: 5 } })).status, 200);
        assert.deepEqual([(await read(adminB)).stock, (await read(adminB)).available], [15, 15]);

        const placed = await placeOrder(aliceA, [{ sku: 'SHARED-1', quantity: 4 }]);
        assert.equal(placed.status, 202);
        assert.equal((await read(adminB)).available, 11);
        assert.equal((await aliceB.request('POST', `/v1/orders/${placed.body.id}/cancel`)).status, 200);
        assert.equal((await read(adminA)).available, 15);

        // The database is restored without SHARED-2 while both caches hold it:
        // its stock row is gone, so neither answers with the cached product.
        await createProduct(adminA, { sku: 'SHARED-2', stock: 3, name: 'Before the restore', priceCents: 100 });
        assert.equal((await read(adminB, 'SHARED-2')).name, 'Before the restore');
        await eventually(`SHARED-2 in ${name}`, async () =>
          (await inspector.holdsProduct(prefix, 'SHARED-2')) ? true : undefined,
        );
        await a.app.db.query("DELETE FROM inventory.stock WHERE sku = 'SHARED-2'");
        await a.app.db.query("DELETE FROM catalog.products WHERE sku = 'SHARED-2'");
        assert.equal((await adminB.request('GET', '/v1/products/SHARED-2')).status, 404);

        // Created again, with another name and price: A reads its own write at
        // once, and B drops its old copy (the invalidation message, or its
        // LRU's TTL; either way the shared entry is no longer served).
        await createProduct(adminA, { sku: 'SHARED-2', stock: 3, name: 'After the restore', priceCents: 200 });
        assert.deepEqual(await read(adminA, 'SHARED-2'), {
          sku: 'SHARED-2',
          name: 'After the restore',
          priceCents: 200,
          currency: 'EUR',
          stock: 3,
          available: 3,
        });
        // Waited for with the usual deadline, not the bound itself: how long a
        // loaded machine takes to run the next read is not what is tested here.
        await eventually('B to see the new product', async () =>
          (await read(adminB, 'SHARED-2')).priceCents === 200 ? true : undefined,
        );
        if (name === 'Memcached') {
          // A third process, with an empty LRU, never gets the old entry from Memcached.
          const c = await startTestApp('postgres', {
            env: backend.env(url, prefix),
            databaseUrl: a.app.config.databaseUrl!,
          });
          apps.unshift(c);
          assert.equal((await read(client(c.app, await c.token('reader', 'orders:read')), 'SHARED-2')).priceCents, 200);
        }
      } finally {
        await closeApps();
      }
    });
  });

  if (name === 'Memcached') {
    describe('Memcached versioned keys', { skip: backend.sharedSkip }, () => {
      it('a value loaded before an invalidation and stored after it is never served by another process', async () => {
        const url = await backend.sharedUrl();
        const prefix = uniquePrefix();
        const quiet = { metrics: createMetrics(), log: pino({ level: 'silent' }) };
        const [a, b, c] = [0, 1, 2].map(
          () => new MemcachedCache(url, { ...quiet, metrics: createMetrics() }, { prefix }),
        );
        const raw = new MemcacheClient({ server: new URL(url).host, cmdTimeout: 500 });
        try {
          // B starts a load (it has read the key's version), A's write commits and invalidates, then B's load returns the old row.
          let finish: ((value: string) => void) | undefined;
          const slow = b!.getOrLoad('race:key', () => new Promise<string>((resolve) => (finish = resolve)));
          await eventually('B to be loading', async () => (finish ? true : undefined));
          await a!.invalidate(['race:key']);
          finish!('old row');
          assert.equal(await slow, 'old row');
          await eventually('B to store what it loaded', async () =>
            (await raw.get(`${prefix}e:race:key`)) !== undefined ? true : undefined,
          );
          // The stored entry carries the version from before the invalidation: C does not take it.
          assert.equal(await c!.getOrLoad('race:key', async () => 'new row'), 'new row');
          await eventually('C to store what it loaded', async () =>
            String((await raw.get(`${prefix}e:race:key`))?.value).includes('new row') ? true : undefined,
          );
          assert.equal(
            await a!.getOrLoad('race:key', async () => 'not asked'),
            'new row',
            'A gets the current entry from Memcached',
          );
        } finally {
          for (const cache of [a, b, c]) await cache!.close();
          raw.shutdown();
        }
      });
    });
  }

  describe(`${name} unreachable`, () => {
    it('serves product reads and orders from the database, and says so in the metrics', async () => {
      // Port 1 refuses connections: the cache server is down from the start.
      // With Redis the limit of 2 shows that the limiter fails open; Memcached holds no counters.
      const limit: Record<string, string> = name === 'Redis' ? { RATE_LIMIT_ORDERS_PER_MINUTE: '2' } : {};
      const t = await startTestApp('embedded', { env: { ...backend.env(backend.url(1), uniquePrefix()), ...limit } });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'DOWN-1', stock: 10 });
        const started = Date.now();
        for (let i = 0; i < 3; i++) {
          const product = await admin.request('GET', '/v1/products/DOWN-1');
          assert.equal(product.status, 200);
          assert.equal(product.body.available, 10 - i);
          assert.equal((await placeOrder(admin, [{ sku: 'DOWN-1', quantity: 1 }])).status, 202);
        }
        assert.ok(
          Date.now() - started < 2_000,
          `requests took ${Date.now() - started} ms: something waited for ${name}`,
        );
        assert.ok((await metric(t, 'orderflow_cache_errors_total')) > 0, 'cache errors are counted');
        const text = (await client(t.app).request('GET', '/metrics')).body as string;
        assert.match(text, new RegExp(`^${backend.upMetric} 0$`, 'm'));
      } finally {
        await t.close();
      }
    });
  });

  describe(`${name} goes down and comes back`, { skip: backend.privateSkip }, () => {
    it('requests keep flowing and succeeding from the database during the outage, and the cache is used again without a restart', async () => {
      const port = await freePort();
      let server = await backend.startPrivate(port);
      const prefix = uniquePrefix();
      const t = await startTestApp('embedded', {
        env: { ...backend.env(backend.url(port), prefix), RATE_LIMIT_ORDERS_PER_MINUTE: '100000' },
        cacheLocalTtlMs: 50,
      });
      const inspector = backend.inspect(backend.url(port));
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        await eventually('the app to connect', async () => {
          await admin.request('GET', '/v1/products');
          return (await metric(t, backend.upMetric)) === 1 ? true : undefined;
        });
        for (const sku of ['OUTAGE-1', 'OUTAGE-2']) await createProduct(admin, { sku, stock: 100_000 });
        assert.equal((await admin.request('GET', '/v1/products/OUTAGE-1')).status, 200);
        await eventually(`the product in ${name}`, async () =>
          (await inspector.holdsProduct(prefix, 'OUTAGE-1')) ? true : undefined,
        );

        // Traffic flows the whole time: product reads (through the cache) and orders.
        const failures: string[] = [];
        let answered = 0;
        let stop = false;
        const traffic = Array.from({ length: 4 }, async (_, i) => {
          const sku = i % 2 === 0 ? 'OUTAGE-1' : 'OUTAGE-2';
          for (let n = 0; n < 5_000 && !stop; n++) {
            const read = await admin.request('GET', `/v1/products/${sku}`);
            if (read.status !== 200 || read.body.name !== `Product ${sku}`)
              failures.push(`read ${sku}: ${read.status} ${JSON.stringify(read.body)}`);
            const placed = await placeOrder(admin, [{ sku, quantity: 1 }]);
            if (placed.status !== 202) failures.push(`order: ${placed.status} ${JSON.stringify(placed.body)}`);
            answered++;
          }
        });
        const outage = (async () => {
          await eventually('traffic with the cache up', async () => (answered >= 50 ? true : undefined));
          await stopServer(server);
          await eventually('the app to notice', async () =>
            (await metric(t, backend.upMetric)) === 0 ? true : undefined,
          );
          const errorsBefore = await metric(t, 'orderflow_cache_errors_total');
          const during = answered;
          await eventually('traffic during the outage', async () => (answered >= during + 100 ? true : undefined));
          assert.ok(
            (await metric(t, 'orderflow_cache_errors_total')) > errorsBefore,
            'the failed or skipped cache operations are counted',
          );

          server = await backend.startPrivate(port);
          await eventually(
            'the app to reconnect',
            async () => ((await metric(t, backend.upMetric)) === 1 ? true : undefined),
            10_000,
          );
          // The new server is empty: the next reads fill it again, and hit it.
          const hitsBefore = await metric(t, 'orderflow_cache_lookups_total', `{result="${backend.hitLabel}"}`);
          await eventually(
            'the cache to be used again',
            async () => {
              const hits = await metric(t, 'orderflow_cache_lookups_total', `{result="${backend.hitLabel}"}`);
              return hits > hitsBefore && (await inspector.holdsProduct(prefix, 'OUTAGE-2')) ? true : undefined;
            },
            10_000,
          );
        })();
        try {
          await outage;
        } finally {
          stop = true;
          await Promise.all(traffic);
        }
        assert.deepEqual(failures, []);
        const [row] = await t.app.db.query<{ n: number }>('SELECT count(*)::int AS n FROM orders.orders');
        assert.equal(row!.n, answered, 'every order was stored');
      } finally {
        inspector.close();
        await t.close();
        await stopServer(server);
      }
    });
  });
}

describe('Redis rate limits', { skip: redisBackend.sharedSkip }, () => {
  it('limits orders per customer across processes: 429 problem+json with Retry-After', async () => {
    const prefix = uniquePrefix();
    const env = { REDIS_URL: redisUrl!, REDIS_KEY_PREFIX: prefix, RATE_LIMIT_ORDERS_PER_MINUTE: '3' };
    const a = await startTestApp('postgres', { env });
    const b = await startTestApp('postgres', { env, databaseUrl: a.app.config.databaseUrl! });
    const redis = new Redis(redisUrl!, { maxRetriesPerRequest: 1 });
    try {
      const admin = client(a.app, await a.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'LIMITED-1', stock: 100 });
      const aliceA = client(a.app, await a.token('alice', 'orders:write orders:read'));
      const aliceB = client(b.app, await b.token('alice', 'orders:write orders:read'));
      const bobA = client(a.app, await a.token('bob', 'orders:write orders:read'));
      const line = [{ sku: 'LIMITED-1', quantity: 1 }];

      // A request refused by auth is not counted against anyone.
      assert.equal(
        (
          await client(a.app).request('POST', '/v1/orders', {
            headers: { 'idempotency-key': 'x' },
            body: { items: line, payment: { token: 'tok_visa' } },
          })
        ).status,
        401,
      );

      for (const c of [aliceA, aliceA, aliceB]) assert.equal((await placeOrder(c, line)).status, 202);
      const throttled = await placeOrder(aliceB, line);
      assert.equal(throttled.status, 429, JSON.stringify(throttled.body));
      assert.match(String(throttled.headers['content-type']), /^application\/problem\+json/);
      assert.equal(throttled.body.type, '/problems/rate-limited');
      assert.equal(throttled.body.status, 429);
      const retryAfter = Number(throttled.headers['retry-after']);
      assert.ok(
        Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60,
        `Retry-After: ${throttled.headers['retry-after']}`,
      );
      assert.equal((await placeOrder(aliceA, line)).status, 429, 'A enforces the limit B counted towards');

      assert.equal((await placeOrder(bobA, line)).status, 202, 'another customer is not affected');
      assert.equal(
        await redis.exists(`${prefix}rate-limit:POST/v1/orders-alice`),
        1,
        'the counter is keyed by the customer',
      );
      const orders = await a.app.db.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM orders.orders WHERE customer_id = 'alice'",
      );
      assert.equal(orders[0]!.n, 3, 'a throttled order is not stored');
    } finally {
      await b.close();
      await a.close();
      await deleteKeys(redis, prefix);
      redis.disconnect();
    }
  });

  it(
    'with Memcached as the cache, the limit stays shared in Redis',
    { skip: memcachedBackend.sharedSkip },
    async () => {
      const prefix = uniquePrefix();
      const env = {
        REDIS_URL: redisUrl!,
        REDIS_KEY_PREFIX: prefix,
        ...memcachedBackend.env(await memcachedBackend.sharedUrl(), prefix),
        RATE_LIMIT_ORDERS_PER_MINUTE: '2',
      };
      const a = await startTestApp('postgres', { env });
      const b = await startTestApp('postgres', { env, databaseUrl: a.app.config.databaseUrl! });
      const redis = new Redis(redisUrl!, { maxRetriesPerRequest: 1 });
      try {
        const admin = client(a.app, await a.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'BOTH-1', stock: 100 });
        assert.equal((await admin.request('GET', '/v1/products/BOTH-1')).status, 200);
        const line = [{ sku: 'BOTH-1', quantity: 1 }];
        const carolA = client(a.app, await a.token('carol', 'orders:write'));
        const carolB = client(b.app, await b.token('carol', 'orders:write'));
        assert.equal((await placeOrder(carolA, line)).status, 202);
        assert.equal((await placeOrder(carolB, line)).status, 202);
        assert.equal((await placeOrder(carolA, line)).status, 429, 'A counts what B admitted: the counter is in Redis');
        assert.equal(await redis.exists(`${prefix}rate-limit:POST/v1/orders-carol`), 1);
        assert.equal(await redis.exists(`${prefix}catalog:product:BOTH-1`), 0, 'the cache is not in Redis');
        assert.equal(await metric(a, 'orderflow_memcached_up'), 1);
      } finally {
        await b.close();
        await a.close();
        await deleteKeys(redis, prefix);
        redis.disconnect();
      }
    },
  );
});

describe('rate limits without Redis', () => {
  it('limits orders per customer in the process', async () => {
    const t = await startTestApp('embedded', { env: { RATE_LIMIT_ORDERS_PER_MINUTE: '2' } });
    try {
      const admin = client(t.app, await t.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'LOCAL-1', stock: 10 });
      const line = [{ sku: 'LOCAL-1', quantity: 1 }];
      const carol = client(t.app, await t.token('carol', 'orders:write'));
      for (let i = 0; i < 2; i++) assert.equal((await placeOrder(carol, line)).status, 202);
      const throttled = await placeOrder(carol, line);
      assert.equal(throttled.status, 429);
      assert.match(String(throttled.headers['content-type']), /^application\/problem\+json/);
      assert.ok(Number(throttled.headers['retry-after']) >= 1);
      assert.equal((await placeOrder(client(t.app, await t.token('dave', 'orders:write')), line)).status, 202);
    } finally {
      await t.close();
    }
  });
});
