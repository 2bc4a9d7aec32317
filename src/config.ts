// Every environment variable Orderflow reads, parsed and checked once at start.
// A bad value becomes a ConfigError whose message names the variable, so the
// CLI can exit with one line the operator can act on.
import path from 'node:path';
import { DEFAULT_MAX_TOTAL_CENTS, MAX_CONFIGURABLE_TOTAL_CENTS, type MoneyLimits } from './orders/pricing.ts';
import { SIMULATED_GATEWAY } from './tunables.ts';

const ROLES = ['all', 'api', 'worker', 'relay'] as const;
export type Role = (typeof ROLES)[number];

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  /** postgres:// URL, or undefined for the embedded PGlite database in dataDir. */
  databaseUrl: string | undefined;
  databasePoolSize: number;
  /** postgres:// URL of a streaming replica of databaseUrl's server that serves the reads which may go there (docs/architecture.md, "Read replica"). */
  databaseReadUrl: string | undefined;
  /** How long such a read waits for the replica to replay what the primary had committed when it arrived, before it goes to the primary. */
  databaseReadMaxWaitMs: number;
  /** Longest wait for one database call (a pool connection, then its query or whole transaction) and each statement's timeout, in ms; 0: none. */
  databaseTimeoutMs: number;
  redisUrl: string | undefined;
  /** memcached://host:port: the shared cache in Memcached instead of Redis (rate limits stay where REDIS_URL says). */
  cacheUrl: string | undefined;
  /** Prepended to every Memcached key, so several deployments (or test runs) can share one Memcached. */
  cacheKeyPrefix: string;
  /** Prepended to every Redis key and channel, so several deployments (or test runs) can share one Redis. */
  redisKeyPrefix: string;
  /** Names the broker's stream, subjects, exchanges and queues: one per deployment sharing a broker. */
  brokerPrefix: string;
  /** Orders one customer may place per minute; 0 turns the limit off. */
  rateLimitOrdersPerMinute: number;
  brokerUrl: string | undefined;
  /** Copies of the NATS stream JetStream keeps (num_replicas): 1 on one server, 3 on a cluster of 3 or more. */
  natsStreamReplicas: number;
  paymentGatewayUrl: string | undefined;
  /** External identity provider; undefined means the built-in development issuer. */
  auth: { jwksUrl: string; issuer: string; audience: string } | undefined;
  role: Role;
  logLevel: string;
  /** How long an order may stay pending before the sweeper re-drives its payment. */
  pendingDeadlineMs: number;
  /** Artificial latency of the simulated gateway, to make the embedded shape behave like a real one. */
  simulatedGatewayLatencyMs: number;
  /** Settled answers (and the charges or refunds they made) the simulated gateway keeps at most, per kind; oldest forgotten first. */
  simulatedGatewayMaxEntries: number;
  /** Most transactions committed together by group commit; 1 turns it off (one commit per order). */
  groupCommitMaxBatch: number;
  /** Processes `serve` runs on one port (node:cluster); more than 1 needs DATABASE_URL. */
  webConcurrency: number;
  /** Charge jobs one worker process runs at once (most of their time is spent waiting for the gateway). */
  workerConcurrency: number;
  /** The largest line total and order total an order may have, in minor units; above them it is refused when placed. */
  moneyLimits: MoneyLimits;
}

export class ConfigError extends Error {
  readonly variable: string;
  constructor(variable: string, message: string) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
    this.variable = variable;
  }
}

type Env = Record<string, string | undefined>;

function optional(env: Env, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === '' ? undefined : value;
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = optional(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(name, `expected an integer, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${value}`);
  return value;
}

function url(env: Env, name: string, protocols: readonly string[]): string | undefined {
  const raw = optional(env, name);
  if (raw === undefined) return undefined;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(name, `not a valid URL: "${redactUrl(raw)}"`);
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(
      name,
      `expected a ${protocols.map((p) => p + '//').join(' or ')} URL, got "${parsed.protocol}//…"`,
    );
  }
  return raw;
}

function keyPrefix(env: Env, name: string, fallback: string): string {
  const raw = optional(env, name);
  if (raw === undefined) return fallback;
  if (!/^[A-Za-z0-9:._{}-]{1,100}$/.test(raw))
    throw new ConfigError(name, `expected 1–100 characters of A-Z a-z 0-9 : . _ - { }, got "${raw}"`);
  return raw;
}

function brokerPrefix(env: Env): string {
  const raw = optional(env, 'BROKER_PREFIX');
  if (raw === undefined) return 'orderflow';
  // Letters, digits, - and _ are valid in NATS stream names and subject
  // tokens and in RabbitMQ names alike.
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(raw))
    throw new ConfigError('BROKER_PREFIX', `expected 1–32 characters of A-Z a-z 0-9 _ -, got "${raw}"`);
  return raw;
}

function memcachedUrl(env: Env): string | undefined {
  const raw = url(env, 'CACHE_URL', ['memcached:']);
  if (raw === undefined) return undefined;
  const parsed = new URL(raw);
  if (parsed.hostname === '' || (parsed.pathname !== '' && parsed.pathname !== '/')) {
    throw new ConfigError('CACHE_URL', `expected memcached://host:port, got "${redactUrl(raw)}"`);
  }
  return raw;
}

/** Hides the password of a URL so it can be logged or printed. */
export function redactUrl(raw: string): string {
  try {
    const parsed = new URL(raw);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return raw.replace(/\/\/[^@/]*@/, '//***@');
  }
}

export function loadConfig(env: Env = process.env): Config {
  const role = optional(env, 'ROLE') ?? 'all';
  if (!(ROLES as readonly string[]).includes(role)) {
    throw new ConfigError('ROLE', `expected one of ${ROLES.join(', ')}, got "${role}"`);
  }
  const jwksUrl = url(env, 'AUTH_JWKS_URL', ['http:', 'https:']);
  const issuer = optional(env, 'AUTH_ISSUER');
  const audience = optional(env, 'AUTH_AUDIENCE');
  const authParts = [jwksUrl, issuer, audience].filter((v) => v !== undefined).length;
  if (authParts !== 0 && authParts !== 3) {
    const missing = jwksUrl === undefined ? 'AUTH_JWKS_URL' : issuer === undefined ? 'AUTH_ISSUER' : 'AUTH_AUDIENCE';
    throw new ConfigError(missing, 'AUTH_JWKS_URL, AUTH_ISSUER and AUTH_AUDIENCE must be set together');
  }
  if (role !== 'all' && optional(env, 'DATABASE_URL') === undefined) {
    // The embedded database lives inside one process; roles split across
    // processes only when they share a PostgreSQL server.
    throw new ConfigError(
      'ROLE',
      `ROLE=${role} runs one part of a distributed deployment and needs DATABASE_URL; use ROLE=all for the embedded shape`,
    );
  }
  if (optional(env, 'DATABASE_READ_URL') !== undefined && optional(env, 'DATABASE_URL') === undefined) {
    throw new ConfigError(
      'DATABASE_READ_URL',
      'a read replica needs its primary in DATABASE_URL; the embedded database has no replicas',
    );
  }
  const webConcurrency = integer(env, 'WEB_CONCURRENCY', 1, 1, 64);
  if (webConcurrency > 1 && optional(env, 'DATABASE_URL') === undefined) {
    throw new ConfigError(
      'WEB_CONCURRENCY',
      'several processes need a shared PostgreSQL server (DATABASE_URL); the embedded database belongs to one process',
    );
  }
  const maxOrderTotalCents = integer(
    env,
    'MAX_ORDER_TOTAL_CENTS',
    DEFAULT_MAX_TOTAL_CENTS,
    1,
    MAX_CONFIGURABLE_TOTAL_CENTS,
  );
  // A line cannot come to more than its order, so that is also its ceiling.
  const maxLineTotalCents = integer(env, 'MAX_LINE_TOTAL_CENTS', maxOrderTotalCents, 1, maxOrderTotalCents);
  const logLevel = optional(env, 'LOG_LEVEL') ?? 'info';
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(logLevel)) {
    throw new ConfigError('LOG_LEVEL', `expected fatal, error, warn, info, debug, trace or silent, got "${logLevel}"`);
  }
  return {
    port: integer(env, 'PORT', 8080, 0, 65535),
    host: optional(env, 'HOST') ?? '0.0.0.0',
    dataDir: path.resolve(optional(env, 'DATA_DIR') ?? './data'),
    databaseUrl: url(env, 'DATABASE_URL', ['postgres:', 'postgresql:']),
    databasePoolSize: integer(env, 'DATABASE_POOL_SIZE', 10, 1, 1000),
    databaseReadUrl: url(env, 'DATABASE_READ_URL', ['postgres:', 'postgresql:']),
    databaseReadMaxWaitMs: integer(env, 'DATABASE_READ_MAX_WAIT_MS', 100, 1, 10_000),
    databaseTimeoutMs: integer(env, 'DATABASE_TIMEOUT_MS', 10_000, 0, 600_000),
    redisUrl: url(env, 'REDIS_URL', ['redis:', 'rediss:']),
    redisKeyPrefix: keyPrefix(env, 'REDIS_KEY_PREFIX', 'orderflow:'),
    cacheUrl: memcachedUrl(env),
    cacheKeyPrefix: keyPrefix(env, 'CACHE_KEY_PREFIX', 'orderflow:'),
    brokerPrefix: brokerPrefix(env),
    // Generous by default: it is there to stop a runaway client, not to
    // shape normal traffic, and benchmarks place many orders per customer.
    rateLimitOrdersPerMinute: integer(env, 'RATE_LIMIT_ORDERS_PER_MINUTE', 600_000, 0, 100_000_000),
    brokerUrl: url(env, 'BROKER_URL', ['nats:', 'amqp:', 'amqps:']),
    // JetStream's own limit is 5 (an R3 stream survives one server lost, R5 two).
    natsStreamReplicas: integer(env, 'NATS_STREAM_REPLICAS', 1, 1, 5),
    paymentGatewayUrl: url(env, 'PAYMENT_GATEWAY_URL', ['http:', 'https:']),
    auth: jwksUrl && issuer && audience ? { jwksUrl, issuer, audience } : undefined,
    role: role as Role,
    logLevel,
    pendingDeadlineMs: integer(env, 'PENDING_DEADLINE_MS', 60_000, 1_000, 86_400_000),
    simulatedGatewayLatencyMs: integer(env, 'SIMULATED_GATEWAY_LATENCY_MS', 20, 0, 60_000),
    simulatedGatewayMaxEntries: integer(
      env,
      'SIMULATED_GATEWAY_MAX_ENTRIES',
      SIMULATED_GATEWAY.maxEntries,
      1,
      100_000_000,
    ),
    groupCommitMaxBatch: integer(env, 'GROUP_COMMIT_MAX_BATCH', 64, 1, 1_000),
    webConcurrency,
    workerConcurrency: integer(env, 'WORKER_CONCURRENCY', 64, 1, 1_000),
    moneyLimits: { maxLineTotalCents, maxOrderTotalCents },
  };
}
