// The cache and the rate limits against a real Redis: what is cached is
// served from it, writes through one process are seen at once through
// another, the order limit is per customer and shared between processes, and
// Redis being down costs nothing but the cache. Each test uses its own key
// prefix, so concurrent runs on one Redis never see each other's keys.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { ALL_SCOPES, client, createProduct, eventually, placeOrder, requiredServiceUrl, startTestApp, type Client, type TestApp } from './support/harness.ts';

const redisUrl = requiredServiceUrl('REDIS_URL');
const databaseUrl = requiredServiceUrl('DATABASE_URL');
const skip = redisUrl === undefined || databaseUrl === undefined ? 'set REDIS_URL and DATABASE_URL to run the Redis tests' : undefined;

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
  const series = lines.filter((l) => (labels === undefined ? l.startsWith(`${name}{`) || l.startsWith(`${name} `) : l.startsWith(`${name}${labels} `)));
  return series.reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0);
}

describe('Redis cache and rate limits (PostgreSQL + Redis)', { skip }, () => {
  let redis: Redis;
  let prefix: string;
  const apps: TestApp[] = [];

  before(() => {
    redis = new Redis(redisUrl!, { maxRetriesPerRequest: 1 });
  });
  after(async () => {
    redis.disconnect();
  });

  /** App A on a fresh database, app B on the same database; both on one Redis under this test's prefix. */
  async function twoApps(env: Record<string, string> = {}, options: { cacheLocalTtlMs?: number } = {}) {
    prefix = uniquePrefix();
    const shared = { REDIS_URL: redisUrl!, REDIS_KEY_PREFIX: prefix, ...env };
    const a = await startTestApp('postgres', { env: shared, ...options });
    apps.push(a);
    const b = await startTestApp('postgres', { env: shared, databaseUrl: a.app.config.databaseUrl!, ...options });
    apps.unshift(b);
    return { a, b };
  }

  async function closeApps(): Promise<void> {
    // B first: closing A drops the database they share.
    for (const t of apps.splice(0)) await t.close();
    await deleteKeys(redis, prefix);
  }

  it('serves a product from the cache, and never its stock', async () => {
    try {
      const { a, b } = await twoApps();
      const admin = client(a.app, await a.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'CACHED-1', stock: 10, priceCents: 500, name: 'Original name' });

      assert.equal((await admin.request('GET', '/v1/products/CACHED-1')).status, 200);
      assert.equal(await redis.exists(`${prefix}catalog:product:CACHED-1`), 1, 'the read stored the product in Redis');

      // Changed behind the cache's back: a cached read still shows the old
      // name, which proves it did not ask the database.
      await a.app.db.query("UPDATE catalog.products SET name = 'Changed in the database' WHERE sku = 'CACHED-1'");
      await a.app.db.query("UPDATE inventory.stock SET on_hand = 12 WHERE sku = 'CACHED-1'");
      const fromLocal = await admin.request('GET', '/v1/products/CACHED-1');
      assert.equal(fromLocal.body.name, 'Original name');
      assert.equal(await metric(a, 'orderflow_cache_lookups_total', '{result="local_hit"}'), 1);

      // B has never read it: its answer comes from Redis, not from its LRU.
      const fromRedis = await client(b.app, await b.token('reader', 'orders:read')).request('GET', '/v1/products/CACHED-1');
      assert.equal(fromRedis.body.name, 'Original name');
      assert.equal(await metric(b, 'orderflow_cache_lookups_total', '{result="redis_hit"}'), 1);
      assert.equal(await metric(b, 'orderflow_cache_lookups_total', '{result="miss"}'), 0);

      // Stock is never cached: both see the database's value at once.
      for (const response of [fromLocal, fromRedis]) {
        assert.equal(response.body.stock, 12);
        assert.equal(response.body.available, 12);
      }
    } finally {
      await closeApps();
    }
  });

  it('a write through app A is seen at once through app B', async () => {
    try {
      // B's LRU keeps entries for a minute, so only the published
      // invalidation can make it drop one in time.
      const { a, b } = await twoApps({}, { cacheLocalTtlMs: 60_000 });
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
      await a.app.db.query("DELETE FROM inventory.stock WHERE sku = 'SHARED-2'");
      await a.app.db.query("DELETE FROM catalog.products WHERE sku = 'SHARED-2'");
      assert.equal((await adminB.request('GET', '/v1/products/SHARED-2')).status, 404);

      // Created again, with another name and price: A reads its own write at
      // once, and B's LRU drops the old copy when the invalidation arrives.
      await createProduct(adminA, { sku: 'SHARED-2', stock: 3, name: 'After the restore', priceCents: 200 });
      assert.equal(await redis.exists(`${prefix}catalog:product:SHARED-2`), 0, 'the create deleted the Redis key');
      assert.deepEqual(await read(adminA, 'SHARED-2'), { sku: 'SHARED-2', name: 'After the restore', priceCents: 200, currency: 'EUR', stock: 3, available: 3 });
      await eventually('B to see the new product', async () => ((await read(adminB, 'SHARED-2')).priceCents === 200 ? true : undefined), 2_000);
    } finally {
      await closeApps();
    }
  });

  it('limits orders per customer across processes: 429 problem+json with Retry-After', async () => {
    try {
      const { a, b } = await twoApps({ RATE_LIMIT_ORDERS_PER_MINUTE: '3' });
      const admin = client(a.app, await a.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'LIMITED-1', stock: 100 });
      const aliceA = client(a.app, await a.token('alice', 'orders:write orders:read'));
      const aliceB = client(b.app, await b.token('alice', 'orders:write orders:read'));
      const bobA = client(a.app, await a.token('bob', 'orders:write orders:read'));
      const line = [{ sku: 'LIMITED-1', quantity: 1 }];

      // A request refused by auth is not counted against anyone.
      assert.equal((await client(a.app).request('POST', '/v1/orders', { headers: { 'idempotency-key': 'x' }, body: { items: line, payment: { token: 'tok_visa' } } })).status, 401);

      for (const c of [aliceA, aliceA, aliceB]) assert.equal((await placeOrder(c, line)).status, 202);
      const throttled = await placeOrder(aliceB, line);
      assert.equal(throttled.status, 429, JSON.stringify(throttled.body));
      assert.match(String(throttled.headers['content-type']), /^application\/problem\+json/);
      assert.equal(throttled.body.type, '/problems/rate-limited');
      assert.equal(throttled.body.status, 429);
      const retryAfter = Number(throttled.headers['retry-after']);
      assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After: ${throttled.headers['retry-after']}`);
      assert.equal((await placeOrder(aliceA, line)).status, 429, 'A enforces the limit B counted towards');

      assert.equal((await placeOrder(bobA, line)).status, 202, 'another customer is not affected');
      assert.equal(await redis.exists(`${prefix}rate-limit:POST/v1/orders-alice`), 1, 'the counter is keyed by the customer');
      const orders = await a.app.db.query<{ n: number }>("SELECT count(*)::int AS n FROM orders.orders WHERE customer_id = 'alice'");
      assert.equal(orders[0]!.n, 3, 'a throttled order is not stored');
    } finally {
      await closeApps();
    }
  });
});

describe('Redis unreachable', () => {
  it('serves product reads and orders from the database, and says so in the metrics', async () => {
    // Port 1 refuses connections: Redis is down from the start.
    const t = await startTestApp('embedded', { env: { REDIS_URL: 'redis://127.0.0.1:1', RATE_LIMIT_ORDERS_PER_MINUTE: '2' } });
    try {
      const admin = client(t.app, await t.token('admin', ALL_SCOPES));
      await createProduct(admin, { sku: 'DOWN-1', stock: 10 });
      const started = Date.now();
      for (let i = 0; i < 3; i++) {
        const product = await admin.request('GET', '/v1/products/DOWN-1');
        assert.equal(product.status, 200);
        assert.equal(product.body.available, 10 - i);
        // The limiter fails open: a third order within the minute goes through.
        assert.equal((await placeOrder(admin, [{ sku: 'DOWN-1', quantity: 1 }])).status, 202);
      }
      assert.ok(Date.now() - started < 2_000, `requests took ${Date.now() - started} ms: something waited for Redis`);
      assert.ok((await metric(t, 'orderflow_cache_errors_total')) > 0, 'cache errors are counted');
      const text = (await client(t.app).request('GET', '/metrics')).body as string;
      assert.match(text, /^orderflow_redis_up 0$/m);
    } finally {
      await t.close();
    }
  });
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

function redisServerInstalled(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A Redis of this test's own, so it can be killed and started again. */
async function startRedisServer(port: number): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  probe.on('error', () => {});
  try {
    await eventually(`redis-server on port ${port}`, async () => {
      try {
        await probe.connect();
        return (await probe.ping()) === 'PONG' ? true : undefined;
      } catch {
        probe.disconnect();
        return undefined;
      }
    });
  } finally {
    probe.disconnect();
  }
  return child;
}

async function stopRedisServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

const noRedisServer = redisServerInstalled() ? undefined : 'redis-server is not installed';
if (noRedisServer && process.env.REQUIRE_SERVICES === '1') throw new Error('the Redis outage test needs redis-server (REQUIRE_SERVICES=1)');

describe('Redis goes down and comes back', { skip: noRedisServer }, () => {
  it('serves from the database during the outage and uses Redis again without a restart', async () => {
    const port = await freePort();
    let server = await startRedisServer(port);
    const prefix = uniquePrefix();
    const t = await startTestApp('embedded', { env: { REDIS_URL: `redis://127.0.0.1:${port}`, REDIS_KEY_PREFIX: prefix, RATE_LIMIT_ORDERS_PER_MINUTE: '1000' } });
    const probe = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 50 });
    probe.on('error', () => {});
    try {
      const admin = client(t.app, await t.token('admin', ALL_SCOPES));
      await eventually('the app to connect', async () => ((await metric(t, 'orderflow_redis_up')) === 1 ? true : undefined));
      await createProduct(admin, { sku: 'OUTAGE-1', stock: 10 });
      assert.equal((await admin.request('GET', '/v1/products/OUTAGE-1')).status, 200);
      await eventually('the product in Redis', async () => ((await probe.exists(`${prefix}catalog:product:OUTAGE-1`)) === 1 ? true : undefined));

      await stopRedisServer(server);
      await eventually('the app to notice', async () => ((await metric(t, 'orderflow_redis_up')) === 0 ? true : undefined));
      const errorsBefore = await metric(t, 'orderflow_cache_errors_total');
      const started = Date.now();
      await createProduct(admin, { sku: 'OUTAGE-2', stock: 5 });
      for (const sku of ['OUTAGE-1', 'OUTAGE-2']) assert.equal((await admin.request('GET', `/v1/products/${sku}`)).status, 200);
      assert.equal((await placeOrder(admin, [{ sku: 'OUTAGE-2', quantity: 1 }])).status, 202);
      assert.equal((await admin.request('GET', '/v1/products/OUTAGE-2')).body.available, 4);
      assert.ok(Date.now() - started < 2_000, `requests took ${Date.now() - started} ms during the outage`);
      assert.ok((await metric(t, 'orderflow_cache_errors_total')) > errorsBefore, 'the failed cache operations are counted');

      server = await startRedisServer(port);
      await eventually('the app to reconnect', async () => ((await metric(t, 'orderflow_redis_up')) === 1 ? true : undefined), 10_000);
      // The new server is empty: the next reads fill it again.
      await eventually('the cache to be used again', async () => {
        assert.equal((await admin.request('GET', '/v1/products/OUTAGE-2')).status, 200);
        return (await probe.exists(`${prefix}catalog:product:OUTAGE-2`).catch(() => 0)) === 1 ? true : undefined;
      }, 10_000);
    } finally {
      probe.disconnect();
      await t.close();
      await stopRedisServer(server);
    }
  });
});
