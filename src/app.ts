// The composition root: the only place that knows which adapter is live.
// It picks storage, queue, gateway and identity from the configuration and
// starts the roles this process plays (ROLE=all | api | worker | relay).
import type { Logger } from 'pino';
import { backoffMs } from './backoff.ts';
import type { Cache } from './cache/cache.ts';
import { MemcachedCache } from './cache/memcached-cache.ts';
import { MemoryCache } from './cache/memory-cache.ts';
import { RedisCache } from './cache/redis-cache.ts';
import { connectRedis } from './cache/redis.ts';
import { catalogRoutes } from './catalog/routes.ts';
import { ConfigError, redactUrl, type Config } from './config.ts';
import { notReady, operationsRoutes } from './http/operations.ts';
import { registerRateLimits } from './http/rate-limit.ts';
import { buildServer, type Server } from './http/server.ts';
import { DEV_AUDIENCE, DEV_ISSUER, openDevIssuer, type DevIssuer } from './identity/dev-issuer.ts';
import { localVerifier, remoteVerifier } from './identity/verifier.ts';
import type { Broker } from './messaging/broker.ts';
import { BrokerQueue } from './messaging/broker-queue.ts';
import { DatabaseQueue, type DatabaseQueueOptions } from './messaging/database-queue.ts';
import { NatsBroker } from './messaging/nats-broker.ts';
import type { JobQueue } from './messaging/queue.ts';
import { RabbitMqBroker } from './messaging/rabbitmq-broker.ts';
import { Relay, type RelayOptions } from './messaging/relay.ts';
import { createLogger } from './observability/logger.ts';
import { createMetrics, readAtScrape, type Metrics } from './observability/metrics.ts';
import { tracingEnabled } from './observability/tracing.ts';
import { orderRoutes } from './orders/routes.ts';
import { pendingOrderStats } from './orders/lifecycle.ts';
import { ORDER_OUTCOMES } from './orders/state-machine.ts';
import type { PaymentGateway } from './payments/gateway.ts';
import { HttpGateway } from './payments/http-gateway.ts';
import { registerPayWorker } from './payments/pay-worker.ts';
import { PAYMENT_QUEUES, paymentPort } from './payments/payments.ts';
import { ResilientGateway, type ResilienceOptions } from './payments/resilient-gateway.ts';
import { SimulatedGateway } from './payments/simulated-gateway.ts';
import { startSweeper, type Sweeper } from './payments/sweeper.ts';
import type { Database } from './storage/database.ts';
import { measureDatabase } from './storage/measured.ts';
import { traceDatabase } from './storage/traced.ts';
import { loadMigrations, migrate } from './storage/migrate.ts';
import { openPGlite } from './storage/pglite.ts';
import { openPostgres } from './storage/postgres.ts';
import { primaryReads, ReplicaReads, type ReadRouter } from './storage/read-replica.ts';
import { PROCESS } from './tunables.ts';

export interface AppOptions {
  config: Config;
  log?: Logger;
  /** The gateway to call instead of the one the configuration names (tests keep one across restarts). */
  gateway?: PaymentGateway;
  /** Keep the embedded database in memory instead of DATA_DIR (tests). */
  inMemory?: boolean;
  /** Retry and polling settings of the job queue (broker mode uses the retry settings; pollIntervalMs becomes the relay's idle poll). */
  queue?: DatabaseQueueOptions;
  /** Broker mode: the prefix of every stream, subject, exchange and queue name (tests give each app its own). */
  brokerPrefix?: string;
  relay?: RelayOptions;
  resilience?: ResilienceOptions;
  /** How long this process may serve a cached product without asking the shared cache (tests lengthen it to prove invalidations arrive, or shorten it). */
  cacheLocalTtlMs?: number;
}

export interface App {
  readonly config: Config;
  readonly server: Server;
  readonly db: Database;
  readonly queue: JobQueue;
  /** The broker adapter when BROKER_URL is set. */
  readonly broker: Broker | undefined;
  /** The outbox relay, in broker mode for ROLE=all and ROLE=relay. */
  readonly relay: Relay | undefined;
  readonly metrics: Metrics;
  readonly log: Logger;
  /** The development issuer, when no outside identity provider is configured. */
  readonly devIssuer: DevIssuer | undefined;
  readonly sweeper: Sweeper | undefined;
  /** Starts the background work of the role: job consumers and sweeper (all, worker), outbox relay (all, relay, in broker mode); no-op for ROLE=api. */
  startWorkers(): void;
  /** Starts the workers and listens on config.port; returns the URL. */
  start(): Promise<string>;
  /** Graceful shutdown: stop accepting, finish in-flight requests and jobs, close the database. */
  close(): Promise<void>;
}

export async function openDatabase(config: Config, options: { inMemory?: boolean; metrics?: Metrics } = {}): Promise<Database> {
  if (config.databaseUrl === undefined) return openPGlite(options.inMemory ? undefined : config.dataDir);
  const circuit = options.metrics?.databaseCircuitOpen;
  const db = openPostgres(config.databaseUrl, config.databasePoolSize, {
    timeoutMs: config.databaseTimeoutMs,
    ...(circuit ? { onCircuitChange: (open: boolean) => circuit.set(open ? 1 : 0) } : {}),
  });
  // A server that is still starting gets 10–20 s to answer (PROCESS in tunables.ts).
  for (let attempt = 1; ; attempt++) {
    try {
      await db.query('SELECT 1');
      return db;
    } catch (error) {
      if (attempt >= PROCESS.databaseConnectAttempts) {
        await db.close();
        throw new ConfigError('DATABASE_URL', `cannot reach ${redactUrl(config.databaseUrl)}: ${(error as Error).message}`);
      }
      await new Promise((resolve) => setTimeout(resolve, backoffMs(attempt, PROCESS.databaseConnectRetry)));
    }
  }
}

function checkSupported(config: Config): void {
  // Without a broker the jobs table is the queue and there is nothing to relay.
  if (config.role === 'relay' && config.brokerUrl === undefined) {
    throw new ConfigError('ROLE', 'ROLE=relay publishes the outbox to a broker and needs BROKER_URL');
  }
}

function openBroker(url: string, log: Logger, options: AppOptions): Broker {
  const settings = { prefix: options.brokerPrefix ?? options.config.brokerPrefix, defaultMaxAttempts: options.queue?.defaultMaxAttempts };
  return new URL(url).protocol === 'nats:'
    ? new NatsBroker(url, log, { ...settings, streamReplicas: options.config.natsStreamReplicas })
    : new RabbitMqBroker(url, log, settings);
}

export async function createApp(options: AppOptions): Promise<App> {
  const { config } = options;
  checkSupported(config);
  const log = options.log ?? createLogger(config.logLevel);
  const metrics = createMetrics({ orderOutcomes: ORDER_OUTCOMES });
  const opened = await openDatabase(config, { ...options, metrics });
  const db = measureDatabase(tracingEnabled() ? traceDatabase(opened) : opened, metrics, config.databaseUrl === undefined ? 1 : config.databasePoolSize);
  try {
    await migrate(db);
  } catch (error) {
    await db.close();
    throw error;
  }
  const latestMigration = (await loadMigrations()).at(-1)?.version ?? 0;
  readAtScrape(
    metrics,
    {
      ready: async () => (await notReady(db, latestMigration)) === undefined,
      pendingOrders: () => pendingOrderStats(db, config.pendingDeadlineMs),
    },
    log.child({ component: 'metrics' }),
  );

  const devIssuer = config.auth === undefined ? await openDevIssuer(options.inMemory ? undefined : config.dataDir) : undefined;
  const verifyToken = config.auth
    ? remoteVerifier(config.auth)
    : localVerifier(devIssuer!.publicJwk, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE });

  // The broker adapters connect on first use and reconnect by themselves, so
  // a process starts (and accepts orders) while the broker is down.
  const broker = config.brokerUrl ? openBroker(config.brokerUrl, log.child({ component: 'broker' }), options) : undefined;
  const queue: JobQueue = broker
    ? new BrokerQueue(db, broker, log.child({ component: 'queue' }), metrics, options.queue)
    : new DatabaseQueue(db, log.child({ component: 'queue' }), metrics, options.queue);
  const runsApi = config.role === 'all' || config.role === 'api';
  const runsWorker = config.role === 'all' || config.role === 'worker';
  const relay =
    broker && (config.role === 'all' || config.role === 'relay')
      ? new Relay(db, broker, log.child({ component: 'relay' }), metrics, { idlePollMs: options.queue?.pollIntervalMs, ...options.relay })
      : undefined;
  if (relay && queue instanceof BrokerQueue) queue.onEnqueue(() => relay.wake());
  // The relay publishes the payment queues: their series start at 0 (see metrics.ts).
  if (relay) for (const name of PAYMENT_QUEUES) metrics.relayPublished.inc({ queue: name }, 0);

  // Only the API reads through the cache and rate-limits; workers need no
  // Redis. CACHE_URL moves the cache to Memcached; the rate limits stay in
  // Redis when REDIS_URL is set, else in the process.
  const redis = runsApi && config.redisUrl ? connectRedis(config.redisUrl, { log: log.child({ component: 'redis' }), metrics }) : undefined;
  const cacheDeps = { metrics, log: log.child({ component: 'cache' }) };
  const localTtl = { localTtlMs: options.cacheLocalTtlMs };
  let cache: Cache | undefined;
  if (runsApi && config.cacheUrl) {
    const memcached = new MemcachedCache(config.cacheUrl, cacheDeps, { prefix: config.cacheKeyPrefix, ...localTtl });
    void memcached.probe();
    cache = memcached;
  } else if (runsApi) {
    cache = redis ? new RedisCache(redis, cacheDeps, { prefix: config.redisKeyPrefix, ...localTtl }) : new MemoryCache(metrics);
  }

  // Only the API reads lists; the replica is opened lazily and may be down.
  const reads: ReadRouter | undefined = !runsApi
    ? undefined
    : config.databaseReadUrl
      ? new ReplicaReads(
          {
            primary: db,
            replica: openPostgres(config.databaseReadUrl, config.databasePoolSize, { timeoutMs: config.databaseTimeoutMs }),
            metrics,
            log: log.child({ component: 'read-replica' }),
          },
          { maxWaitMs: config.databaseReadMaxWaitMs },
        )
      : primaryReads(db);

  metrics.info.set(
    {
      database: db.kind,
      queue_backend: broker?.kind ?? 'database',
      cache: cache instanceof MemcachedCache ? 'memcached' : cache instanceof RedisCache ? 'redis' : cache ? 'memory' : 'none',
      redis: redis ? 'yes' : 'no',
      read_replica: reads instanceof ReplicaReads ? 'yes' : 'no',
    },
    1,
  );

  const server = buildServer({ log, metrics, verifyToken });
  await server.register(operationsRoutes({ db, metrics, queue, latestMigration }));
  if (runsApi) {
    await registerRateLimits(server, { redis: redis?.commands, keyPrefix: config.redisKeyPrefix });
    await server.register(catalogRoutes(db, cache, reads));
    await server.register(
      orderRoutes({
        db,
        reads,
        payments: paymentPort(queue),
        metrics,
        ordersPerMinute: config.rateLimitOrdersPerMinute,
        moneyLimits: config.moneyLimits,
        // Half the pool commits accepts; reads keep the rest.
        groupCommit: { maxBatch: config.groupCommitMaxBatch, maxInFlight: Math.max(1, Math.floor(config.databasePoolSize / 2)) },
      }),
    );
  }

  let sweeper: Sweeper | undefined;
  let httpGateway: HttpGateway | undefined;
  if (runsWorker) {
    const inner =
      options.gateway ??
      (config.paymentGatewayUrl
        ? (httpGateway = new HttpGateway(config.paymentGatewayUrl))
        : new SimulatedGateway({ latencyMs: config.simulatedGatewayLatencyMs }));
    const gateway = new ResilientGateway(inner, metrics, options.resilience);
    registerPayWorker({ db, queue, gateway, metrics, log: log.child({ component: 'pay-worker' }) }, config.workerConcurrency, config.groupCommitMaxBatch);
  }

  let closed = false;
  const startWorkers = () => {
    relay?.start();
    if (!runsWorker || sweeper) return;
    queue.start();
    sweeper = startSweeper({ db, queue, log: log.child({ component: 'sweeper' }) }, config.pendingDeadlineMs);
  };
  return {
    config,
    server,
    db,
    queue,
    broker,
    relay,
    metrics,
    log,
    devIssuer,
    get sweeper() {
      return sweeper;
    },
    startWorkers,
    async start() {
      startWorkers();
      return server.listen({ port: config.port, host: config.host });
    },
    async close() {
      if (closed) return;
      closed = true;
      await server.close();
      // The relay first: its last pass either publishes and deletes its rows
      // or leaves them for the next relay. Then the consumers finish and ack
      // what is in flight, and only then does the broker connection close.
      await relay?.stop();
      await sweeper?.stop();
      await queue.stop();
      await broker?.close();
      await httpGateway?.close();
      await cache?.close();
      await redis?.close();
      await reads?.close();
      await db.close();
    },
  };
}
