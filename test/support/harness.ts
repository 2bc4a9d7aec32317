// Test harness: a real Orderflow app per test, on a fresh database — embedded
// PGlite in memory, or a brand-new PostgreSQL database when DATABASE_URL is
// set — with the simulated gateway kept outside the app so it outlives
// restarts and counts money the way an outside gateway would.
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import type { OutgoingHttpHeaders } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import postgres from 'postgres';
import { pino, type Logger } from 'pino';
import { createApp, type App } from '../../src/app.ts';
import { deleteBrokerTopology as deleteTopology } from '../../src/messaging/topology.ts';
import { loadConfig, type Config } from '../../src/config.ts';
import { NatsBroker } from '../../src/messaging/nats-broker.ts';
import { RabbitMqBroker } from '../../src/messaging/rabbitmq-broker.ts';
import { PAYMENT_QUEUES } from '../../src/payments/payments.ts';
import { SimulatedGateway } from '../../src/payments/simulated-gateway.ts';
import type { Queryable } from '../../src/storage/database.ts';
import {
  privatePostgresUnavailable,
  startPrivatePrimary,
  startPrivateStandby,
  waitForReplay,
  type PrivatePostgres,
} from './private-postgres.ts';

/**
 * Where a test app keeps its data: PGlite in memory (embedded); a fresh
 * database on DATABASE_URL's server (postgres), with a broker (nats,
 * rabbitmq); or a fresh database on a private primary whose streaming standby
 * serves the reads that may use a replica (replica: DATABASE_READ_URL).
 */
export type Mode = 'embedded' | 'postgres' | 'nats' | 'rabbitmq' | 'replica';
export type BrokerMode = 'nats' | 'rabbitmq';

/** The variable naming each broker's test server. */
export const BROKER_URL_VARIABLE = { nats: 'NATS_URL', rabbitmq: 'RABBITMQ_URL' } as const;

export function isBrokerMode(mode: Mode): mode is BrokerMode {
  return mode === 'nats' || mode === 'rabbitmq';
}

/**
 * The modes this run covers: embedded always; PostgreSQL when DATABASE_URL is
 * set; each broker (on PostgreSQL) when its URL is set too. With
 * REQUIRE_SERVICES=1 every mode runs, so a missing server fails its tests.
 * The replica mode is for the suites that ask for it (it starts two private
 * servers): it runs with DATABASE_URL when the PostgreSQL server programs are
 * installed, and always with REQUIRE_SERVICES=1.
 */
export function modes(options: { replica?: boolean } = {}): Mode[] {
  const all = process.env.REQUIRE_SERVICES === '1';
  const result: Mode[] = ['embedded'];
  if (all || process.env.DATABASE_URL) result.push('postgres');
  for (const mode of ['nats', 'rabbitmq'] as const) {
    if (all || (process.env.DATABASE_URL && process.env[BROKER_URL_VARIABLE[mode]])) result.push(mode);
  }
  if (options.replica && (all || (process.env.DATABASE_URL && privatePostgresUnavailable() === undefined)))
    result.push('replica');
  return result;
}

export interface ReplicatedPostgres {
  primary: PrivatePostgres;
  standby: PrivatePostgres;
}

let sharedReplicated: Promise<ReplicatedPostgres> | undefined;

/** The private primary and standby the replica mode uses, started once per test process and removed when it exits. */
export function replicatedPostgres(): Promise<ReplicatedPostgres> {
  sharedReplicated ??= startReplicatedPostgres();
  return sharedReplicated;
}

/** A private primary with a streaming standby; the caller destroys both (standby first). */
export async function startReplicatedPostgres(
  standbySettings: Record<string, string> = {},
): Promise<ReplicatedPostgres> {
  const unavailable = privatePostgresUnavailable();
  if (unavailable) throw new Error(`the replica mode needs private PostgreSQL servers: ${unavailable}`);
  const primary = await startPrivatePrimary();
  try {
    return { primary, standby: await startPrivateStandby(primary, standbySettings) };
  } catch (error) {
    await primary.destroy();
    throw error;
  }
}

/**
 * The PostgreSQL URL for service tests. Undefined means "skip" — unless
 * REQUIRE_SERVICES=1, where a missing server is a failure, not a skip.
 */
export function requiredServiceUrl(
  variable: 'DATABASE_URL' | 'REDIS_URL' | 'NATS_URL' | 'RABBITMQ_URL',
): string | undefined {
  const value = process.env[variable];
  if (!value && process.env.REQUIRE_SERVICES === '1') {
    throw new Error(`${variable} must be set when REQUIRE_SERVICES=1`);
  }
  return value;
}

/** Creates an empty database on the PostgreSQL server and returns its URL and a dropper. */
export async function freshPostgresDatabase(baseUrl: string): Promise<{ url: string; drop: () => Promise<void> }> {
  const name = `orderflow_test_${randomBytes(6).toString('hex')}`;
  const admin = postgres(baseUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const sql = postgres(baseUrl, { max: 1, onnotice: () => {} });
      await sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await sql.end();
    },
  };
}

/** A broker name prefix of its own, so a test never sees another test's messages. */
export function freshBrokerPrefix(): string {
  return `t${randomBytes(5).toString('hex')}`;
}

/** A broker adapter for a test server (broker modes). */
export function testBroker(
  mode: BrokerMode,
  prefix: string,
  url = requiredServiceUrl(BROKER_URL_VARIABLE[mode])!,
): NatsBroker | RabbitMqBroker {
  const log = pino({ level: 'silent' });
  return mode === 'nats' ? new NatsBroker(url, log, { prefix }) : new RabbitMqBroker(url, log, { prefix });
}

/** Deletes what a test created on the broker under its prefix (best effort: a test must not fail on cleanup). */
export async function deleteBrokerTopology(
  mode: BrokerMode,
  prefix: string,
  queues: readonly string[] = PAYMENT_QUEUES,
): Promise<void> {
  try {
    await deleteTopology(requiredServiceUrl(BROKER_URL_VARIABLE[mode])!, prefix, queues);
  } catch {
    // left behind: harmless, every test uses a fresh prefix
  }
}

export interface TestAppOptions {
  gateway?: SimulatedGateway;
  /** Reopen an existing database: a PostgreSQL URL or a PGlite data directory. */
  databaseUrl?: string;
  dataDir?: string;
  startWorkers?: boolean;
  env?: Record<string, string>;
  maxAttempts?: number;
  /** Broker modes: use this broker URL instead of the test server's (e.g. a closed port). */
  brokerUrl?: string;
  /** Broker modes: share this prefix with another app (the caller then deletes its topology). */
  brokerPrefix?: string;
  cacheLocalTtlMs?: number;
  /** Where the app logs (silent by default). */
  log?: Logger;
  /** Replica mode: this primary and standby instead of the shared pair (for tests that stop, delay or promote the standby). */
  replicated?: ReplicatedPostgres;
}

export interface TestApp {
  app: App;
  gateway: SimulatedGateway;
  token(sub: string, scope: string): Promise<string>;
  close(): Promise<void>;
}

export async function startTestApp(mode: Mode, options: TestAppOptions = {}): Promise<TestApp> {
  let dropDatabase: (() => Promise<void>) | undefined;
  let databaseUrl = options.databaseUrl;
  const brokerPrefix = isBrokerMode(mode) ? (options.brokerPrefix ?? freshBrokerPrefix()) : undefined;
  const brokerUrl = isBrokerMode(mode)
    ? (options.brokerUrl ?? requiredServiceUrl(BROKER_URL_VARIABLE[mode]))
    : undefined;
  let databaseReadUrl: string | undefined;
  if (mode === 'replica' && databaseUrl === undefined) {
    const { primary, standby } = options.replicated ?? (await replicatedPostgres());
    const fresh = await freshPostgresDatabase(primary.url());
    databaseUrl = fresh.url;
    dropDatabase = fresh.drop;
    const name = new URL(fresh.url).pathname.slice(1);
    // The replica serves the database once it has replayed its creation.
    await waitForReplay(primary, standby, name);
    databaseReadUrl = standby.url(name);
  } else if (mode !== 'embedded' && databaseUrl === undefined) {
    const fresh = await freshPostgresDatabase(requiredServiceUrl('DATABASE_URL')!);
    databaseUrl = fresh.url;
    dropDatabase = fresh.drop;
  }
  const config: Config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...(databaseReadUrl ? { DATABASE_READ_URL: databaseReadUrl } : {}),
    ...(brokerUrl ? { BROKER_URL: brokerUrl } : {}),
    ...(options.dataDir ? { DATA_DIR: options.dataDir } : {}),
    ...options.env,
  });
  const gateway = options.gateway ?? new SimulatedGateway({ latencyMs: 0, retain: 'all' });
  const app = await createApp({
    config,
    log: options.log ?? pino({ level: 'silent' }),
    gateway,
    inMemory: mode === 'embedded' && options.dataDir === undefined,
    queue: { pollIntervalMs: 5, retryBaseMs: 5, retryMaxMs: 50, defaultMaxAttempts: options.maxAttempts ?? 25 },
    resilience: { initialBackoffMs: 1, maxBackoffMs: 5, halfOpenAfterMs: 20, attemptTimeoutMs: 2_000 },
    ...(brokerPrefix ? { brokerPrefix, relay: { retryBaseMs: 20, retryMaxMs: 200 } } : {}),
    ...(options.cacheLocalTtlMs !== undefined ? { cacheLocalTtlMs: options.cacheLocalTtlMs } : {}),
  });
  await app.server.ready();
  // Replica mode is about reads served by the replica: start once they are.
  if (databaseReadUrl && config.databaseReadUrl === databaseReadUrl) {
    try {
      await eventually('the app to route reads to the replica', async () =>
        (await app.metrics.readReplicaUp.get()).values[0]?.value === 1 ? true : undefined,
      );
    } catch (error) {
      await app.close();
      await dropDatabase?.();
      throw error;
    }
  }
  if (options.startWorkers !== false) app.startWorkers();
  return {
    app,
    gateway,
    token: (sub, scope) => app.devIssuer!.issue({ sub, scope }),
    close: async () => {
      await app.close();
      if (isBrokerMode(mode) && brokerPrefix && options.brokerPrefix === undefined)
        await deleteBrokerTopology(mode, brokerPrefix);
      await dropDatabase?.();
    },
  };
}

export const ALL_SCOPES = 'orders:write orders:read orders:admin catalog:write';

export interface Client {
  request(
    method: string,
    url: string,
    options?: { body?: unknown; rawBody?: string | Buffer; headers?: Record<string, string> },
  ): Promise<{
    status: number;
    headers: OutgoingHttpHeaders;
    // Tests inspect arbitrary JSON answers.
    body: any;
  }>;
}

/** An HTTP client speaking to the app through fastify.inject (full HTTP semantics, no socket). */
export function client(app: App, token?: string): Client {
  return {
    async request(method, url, options = {}) {
      const headers: Record<string, string> = {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...options.headers,
      };
      let payload: string | Buffer | undefined;
      if (options.rawBody !== undefined) payload = options.rawBody;
      else if (options.body !== undefined) payload = JSON.stringify(options.body);
      if (payload !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type'))
        headers['content-type'] = 'application/json';
      const response = await app.server.inject({
        method: method as 'GET',
        url,
        headers,
        ...(payload !== undefined ? { payload } : {}),
      });
      const text = response.body;
      let body: unknown = text;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        // not JSON (e.g. /metrics): keep the text
      }
      return { status: response.statusCode, headers: response.headers, body };
    },
  };
}

const MODULE_TABLES = [
  'catalog.products',
  'inventory.stock',
  'orders.orders',
  'orders.order_lines',
  'orders.idempotency_keys',
  'orders.order_events',
  'payments.payments',
  'messaging.jobs',
  'messaging.dead_jobs',
  'messaging.outbox',
  'messaging.inbox',
];

/** Every row of every module table, in a stable order: two equal snapshots mean nothing was written. */
export async function snapshot(db: Queryable): Promise<Record<string, unknown[]>> {
  const result: Record<string, unknown[]> = {};
  for (const table of MODULE_TABLES) {
    const rows = await db.query(`SELECT to_jsonb(t)::text AS row FROM ${table} t`);
    result[table] = rows.map((r) => r.row as string).sort();
  }
  return result;
}

/**
 * Sends the request and asserts it was refused with the status, as
 * problem+json, writing nothing (a snapshot of every table before and after,
 * with the pipeline quiet); returns the problem.
 */
export async function assertRefused(
  app: App,
  c: Client,
  method: string,
  url: string,
  status: number,
  options: Parameters<Client['request']>[2] = {},
) {
  await quiesce(app);
  const before = await snapshot(app.db);
  const response = await c.request(method, url, options);
  assert.equal(response.status, status, `${method} ${url}: ${JSON.stringify(response.body)}`);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
  assert.equal(response.body.status, status);
  for (const field of ['type', 'title', 'detail'])
    assert.equal(typeof response.body[field], 'string', `problem.${field}`);
  await quiesce(app);
  assert.deepEqual(await snapshot(app.db), before, 'a refused request changed the database');
  return response.body;
}

/** Polls until check() returns a value other than undefined, or fails after timeoutMs. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Waits until no order is pending, no job is queued, the outbox is drained and the broker holds nothing for this app. */
export async function quiesce(app: App, timeoutMs = 30_000): Promise<void> {
  // A message the broker has handed out and the consumer has not yet taken
  // up is counted nowhere for a moment: in broker mode quiet must hold for
  // two reads in a row.
  const readsNeeded = app.broker ? 2 : 1;
  let quietReads = 0;
  await eventually(
    'every order to reach a terminal status and every job or message to finish',
    async () => {
      const rows = await app.db.query<{ pending: number; jobs: number; outbox: number }>(
        `SELECT (SELECT count(*)::int FROM orders.orders WHERE status = 'pending') AS pending,
                (SELECT count(*)::int FROM messaging.jobs) AS jobs,
                (SELECT count(*)::int FROM messaging.outbox) AS outbox`,
      );
      const backlog = Object.values(await app.queue.backlog()).reduce((sum, n) => sum + n, 0);
      const quiet = rows[0]!.pending === 0 && rows[0]!.jobs === 0 && rows[0]!.outbox === 0 && backlog === 0;
      quietReads = quiet ? quietReads + 1 : 0;
      return quietReads >= readsNeeded ? true : undefined;
    },
    timeoutMs,
  );
}

export async function createProduct(
  c: Client,
  product: { sku: string; stock: number; priceCents?: number; currency?: string; name?: string },
) {
  const response = await c.request('POST', '/v1/products', {
    body: {
      name: product.name ?? `Product ${product.sku}`,
      priceCents: product.priceCents ?? 1000,
      currency: product.currency ?? 'EUR',
      sku: product.sku,
      stock: product.stock,
    },
  });
  assert.equal(response.status, 201, JSON.stringify(response.body));
  return response.body;
}

let keyCounter = 0;
export function newKey(): string {
  return `key-${process.pid}-${Date.now()}-${keyCounter++}`;
}

export async function placeOrder(
  c: Client,
  items: { sku: string; quantity: number }[],
  token = 'tok_visa',
  key = newKey(),
) {
  return c.request('POST', '/v1/orders', { headers: { 'idempotency-key': key }, body: { items, payment: { token } } });
}
