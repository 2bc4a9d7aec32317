import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from './config.ts';

describe('loadConfig', () => {
  it('defaults to the embedded shape', () => {
    const config = loadConfig({});
    assert.equal(config.port, 8080);
    assert.equal(config.role, 'all');
    assert.equal(config.databaseUrl, undefined);
    assert.equal(config.auth, undefined);
    assert.match(config.dataDir, /data$/);
  });

  const bad: [Record<string, string>, string][] = [
    [{ PORT: 'eighty' }, 'PORT'],
    [{ PORT: '70000' }, 'PORT'],
    [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
    [{ DATABASE_URL: 'not a url' }, 'DATABASE_URL'],
    [{ BROKER_URL: 'kafka://x' }, 'BROKER_URL'],
    [{ REDIS_URL: 'http://x' }, 'REDIS_URL'],
    [{ REDIS_KEY_PREFIX: 'has space' }, 'REDIS_KEY_PREFIX'],
    [{ CACHE_URL: 'redis://x' }, 'CACHE_URL'],
    [{ CACHE_URL: 'memcached://host:11211/some/path' }, 'CACHE_URL'],
    [{ CACHE_KEY_PREFIX: 'has space' }, 'CACHE_KEY_PREFIX'],
    [{ DATABASE_READ_URL: 'postgres://replica/db' }, 'DATABASE_READ_URL'],
    [{ DATABASE_URL: 'postgres://primary/db', DATABASE_READ_URL: 'redis://replica' }, 'DATABASE_READ_URL'],
    [{ DATABASE_URL: 'postgres://primary/db', DATABASE_READ_MAX_WAIT_MS: '0' }, 'DATABASE_READ_MAX_WAIT_MS'],
    [{ BROKER_PREFIX: 'orders.v1' }, 'BROKER_PREFIX'],
    [{ NATS_STREAM_REPLICAS: '0' }, 'NATS_STREAM_REPLICAS'],
    [{ NATS_STREAM_REPLICAS: '6' }, 'NATS_STREAM_REPLICAS'],
    [{ GROUP_COMMIT_MAX_BATCH: '0' }, 'GROUP_COMMIT_MAX_BATCH'],
    [{ WEB_CONCURRENCY: 'two' }, 'WEB_CONCURRENCY'],
    [{ WORKER_CONCURRENCY: '0' }, 'WORKER_CONCURRENCY'],
    [{ WEB_CONCURRENCY: '2' }, 'WEB_CONCURRENCY'],
    [{ RATE_LIMIT_ORDERS_PER_MINUTE: '-1' }, 'RATE_LIMIT_ORDERS_PER_MINUTE'],
    [{ RATE_LIMIT_ORDERS_PER_MINUTE: 'lots' }, 'RATE_LIMIT_ORDERS_PER_MINUTE'],
    [{ PAYMENT_GATEWAY_URL: 'ftp://x' }, 'PAYMENT_GATEWAY_URL'],
    [{ ROLE: 'boss' }, 'ROLE'],
    [{ AUTH_JWKS_URL: 'https://idp.example/jwks' }, 'AUTH_ISSUER'],
    [{ MAX_ORDER_TOTAL_CENTS: '0' }, 'MAX_ORDER_TOTAL_CENTS'],
    [{ MAX_ORDER_TOTAL_CENTS: '1000000000000' }, 'MAX_ORDER_TOTAL_CENTS'],
    [{ MAX_ORDER_TOTAL_CENTS: '9.99' }, 'MAX_ORDER_TOTAL_CENTS'],
    [{ MAX_LINE_TOTAL_CENTS: '100000000' }, 'MAX_LINE_TOTAL_CENTS'],
    [{ MAX_ORDER_TOTAL_CENTS: '5000', MAX_LINE_TOTAL_CENTS: '5001' }, 'MAX_LINE_TOTAL_CENTS'],
  ];
  for (const [env, variable] of bad) {
    it(`names ${variable} when ${JSON.stringify(env)}`, () => {
      assert.throws(
        () => loadConfig(env),
        (error: unknown) =>
          error instanceof ConfigError && error.variable === variable && error.message.startsWith(`${variable}: `),
      );
    });
  }

  it('takes a read replica and a Memcached cache', () => {
    const config = loadConfig({
      DATABASE_URL: 'postgres://primary/db',
      DATABASE_READ_URL: 'postgres://replica/db',
      DATABASE_READ_MAX_WAIT_MS: '250',
      CACHE_URL: 'memcached://cache:11211',
      CACHE_KEY_PREFIX: 'shop:',
    });
    assert.equal(config.databaseReadUrl, 'postgres://replica/db');
    assert.equal(config.databaseReadMaxWaitMs, 250);
    assert.equal(config.cacheUrl, 'memcached://cache:11211');
    assert.equal(config.cacheKeyPrefix, 'shop:');
    const defaults = loadConfig({});
    assert.equal(defaults.databaseReadMaxWaitMs, 100);
    assert.equal(defaults.cacheUrl, undefined);
  });

  it('money limits: 99,999,999 minor units for a line and an order unless set; a line defaults to the order maximum', () => {
    assert.deepEqual(loadConfig({}).moneyLimits, { maxLineTotalCents: 99_999_999, maxOrderTotalCents: 99_999_999 });
    assert.deepEqual(loadConfig({ MAX_ORDER_TOTAL_CENTS: '999999999999' }).moneyLimits, {
      maxLineTotalCents: 999_999_999_999,
      maxOrderTotalCents: 999_999_999_999,
    });
    assert.deepEqual(loadConfig({ MAX_ORDER_TOTAL_CENTS: '5000', MAX_LINE_TOTAL_CENTS: '2000' }).moneyLimits, {
      maxLineTotalCents: 2000,
      maxOrderTotalCents: 5000,
    });
  });

  it('hides a database password in its error', () => {
    assert.throws(
      () => loadConfig({ DATABASE_URL: 'mysql://user:secret@host/db' }),
      (error: unknown) => error instanceof ConfigError && !error.message.includes('secret'),
    );
  });
});
