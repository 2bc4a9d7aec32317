// The composition root: the only place that knows which adapter is live.
// It picks the adapters (storage, queue and broker, cache, gateway,
// identity) from the configuration and wires the roles this process plays
// (ROLE=all | api | worker | relay), one function per role; every part it
// starts goes on one list that close() stops in reverse order.
import type { Logger } from 'pino';
import { backoffMs } from './backoff.ts';
import type { Cache } from './cache/cache.ts';
import { MemcachedCache } from './cache/memcached-cache.ts';
import { MemoryCache } from './cache/memory-cache.ts';
import { RedisCache } from './cache/redis-cache.ts';
import { connectRedis } from './cache/redis.ts';
import { adminRoutes } from './admin/routes.ts';
import { consoleRoutes } from './admin/console.ts';
import { catalogRoutes } from './catalog/routes.ts';
import { ConfigError, redactUrl, type Config } from './config.ts';
import { notReady, operationsRoutes } from './http/operations.ts';
import { registerRateLimits } from './http/rate-limit.ts';
import { buildServer, closeConnections, type Server } from './http/server.ts';
import { DEV_AUDIENCE, DEV_ISSUER, openDevIssuer, type DevIssuer } from './identity/dev-issuer.ts';
import { localVerifier, remoteVerifier } from './identity/verifier.ts';
import type { Broker } from './messaging/broker.ts';
import { BrokerQueue } from './messaging/broker-queue.ts';
import { DatabaseQueue, type DatabaseQueueOptions } from './messaging/database-queue.ts';
import { brokerDeadLetters, databaseDeadLetters } from './messaging/dead-letters.ts';
import { NatsBroker } from './messaging/nats-broker.ts';
import type { JobQueue } from './messaging/queue.ts';
import { RabbitMqBroker } from './messaging/rabbitmq-broker.ts';
import { Relay, type RelayOptions } from './messaging/relay.ts';
import { createLogger } from './observability/logger.ts';
import { FiguresReporter } from './admin/figures.ts';
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
import { retentionFor, SimulatedGateway } from './payments/simulated-gateway.ts';
import { startSweeper, type Sweeper } from './payments/sweeper.ts';
import type { Database } from './storage/database.ts';
import { measureDatabase } from './storage/measured.ts';
import { traceDatabase } from './storage/traced.ts';
import { loadMigrations, migrate } from './storage/migrate.ts';
import { inDataDir } from './storage/data-dir.ts';
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
  /** Called when the embedded database in DATA_DIR is about to be created (its first start, tens of seconds), once its lock is held. */
  onCreatingDatabase?: (dataDir: string) => void;
  /** Retry and polling settings of the job queue (broker mode uses the retry settings; pollIntervalMs becomes the relay's idle poll). */
  queue?: DatabaseQueueOptions;
  /** Broker mode: the prefix of every stream, subject, exchange and queue name (tests give each app its own). */
  brokerPrefix?: string;
  relay?: RelayOptions;
  resilience?: ResilienceOptions;
  /** How long this process may serve a cached product without asking the shared cache (tests lengthen it to prove invalidations arrive, or shorten it). */
  cacheLocalTtlMs?: number;
  /** How often this process writes its live figures, and the figures stream sends, in ms (default 1000). */
  figuresIntervalMs?: number;
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
  /** Writes this process's live figures for the console (every role). */
  readonly figures: FiguresReporter;
  /** Starts the background work of the role: job consumers and sweeper (all, worker), outbox relay (all, relay, in broker mode); no-op for ROLE=api. */
  startWorkers(): void;
  /** Starts the workers and listens on config.port; returns the URL. */
  start(): Promise<string>;
  /**
   * Graceful shutdown: stop listening and refuse new requests (503), finish
   * in-flight requests and jobs, close the database, and last close the HTTP
   * connections still open.
   */
  close(): Promise<void>;
}

export async function openDatabase(
  config: Config,
  options: { inMemory?: boolean; metrics?: Metrics; onCreatingDatabase?: (dataDir: string) => void } = {},
): Promise<Database> {
  if (config.databaseUrl === undefined) {
    // A DATA_DIR that is in use or unusable rejects with a DataDirError: the
    // operator's fix is a setting, a permission or stopping the other
    // process, reported as one line like bad configuration.
    return openPGlite(options.inMemory ? undefined : config.dataDir, { onCreate: options.onCreatingDatabase });
  }
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
        throw new ConfigError(
          'DATABASE_URL',
          `cannot reach ${redactUrl(config.databaseUrl)}: ${(error as Error).message}`,
        );
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
  const settings = {
    prefix: options.brokerPrefix ?? options.config.brokerPrefix,
    defaultMaxAttempts: options.queue?.defaultMaxAttempts,
  };
  return new URL(url).protocol === 'nats:'
    ? new NatsBroker(url, log, { ...settings, streamReplicas: options.config.natsStreamReplicas })
    : new RabbitMqBroker(url, log, settings);
}

/**
 * What to stop when the app closes, in the order things were started: close()
 * stops them in reverse, so what depends on something stops before it (the
 * server before the relay, the consumers before the broker, everything
 * before the database).
 */
class Stops {
  readonly #stops: (() => Promise<unknown>)[] = [];

  add(stop: () => Promise<unknown>): void {
    this.#stops.push(stop);
  }

  /** Stops everything, last added first; a failed stop does not keep the others from stopping. */
  async run(log: Logger): Promise<void> {
    for (const stop of this.#stops.splice(0).reverse()) {
      await stop().catch((error: unknown) => log.error({ err: error }, 'a part of the app failed to stop cleanly'));
    }
  }
}

/** What every role shares: configuration, logs, metrics, and the migrated database. */
interface Core {
  config: Config;
  options: AppOptions;
  log: Logger;
  metrics: Metrics;
  db: Database;
  stops: Stops;
}

async function openCore(options: AppOptions, stops: Stops): Promise<Core & { latestMigration: number }> {
  const { config } = options;
  const log = options.log ?? createLogger(config.logLevel);
  const metrics = createMetrics({ orderOutcomes: ORDER_OUTCOMES });
  const opened = await openDatabase(config, { ...options, metrics });
  const db = measureDatabase(
    tracingEnabled() ? traceDatabase(opened) : opened,
    metrics,
    config.databaseUrl === undefined ? 1 : config.databasePoolSize,
  );
  stops.add(() => db.close());
  await migrate(db);
  const latestMigration = (await loadMigrations()).at(-1)?.version ?? 0;
  readAtScrape(
    metrics,
    {
      ready: async () => (await notReady(db, latestMigration)) === undefined,
      pendingOrders: () => pendingOrderStats(db, config.pendingDeadlineMs),
    },
    log.child({ component: 'metrics' }),
  );
  return { config, options, log, metrics, db, stops, latestMigration };
}

/**
 * Messaging, for every role: the job queue (messaging.jobs, or the outbox
 * and a broker with BROKER_URL). The broker adapters connect on first use
 * and reconnect by themselves, so a process starts (and accepts orders)
 * while the broker is down.
 */
function wireMessaging(core: Core): { queue: JobQueue; broker: Broker | undefined } {
  const { config, options, log, metrics, db, stops } = core;
  const broker = config.brokerUrl
    ? openBroker(config.brokerUrl, log.child({ component: 'broker' }), options)
    : undefined;
  if (broker) stops.add(() => broker.close());
  const queue: JobQueue = broker
    ? new BrokerQueue(db, broker, log.child({ component: 'queue' }), metrics, options.queue)
    : new DatabaseQueue(db, log.child({ component: 'queue' }), metrics, options.queue);
  return { queue, broker };
}

/** The relay role (all, relay; broker mode only): publishes the outbox. */
function wireRelay(core: Core, queue: JobQueue, broker: Broker): Relay {
  const { options, log, metrics, db, stops } = core;
  const relay = new Relay(db, broker, log.child({ component: 'relay' }), metrics, {
    idlePollMs: options.queue?.pollIntervalMs,
    ...options.relay,
  });
  queue.onEnqueue(() => relay.wake());
  // The relay publishes the payment queues: their series start at 0 (see metrics.ts).
  for (const name of PAYMENT_QUEUES) metrics.relayPublished.inc({ queue: name }, 0);
  // Its last pass either publishes and deletes its rows or leaves them for the next relay.
  stops.add(() => relay.stop());
  return relay;
}

/**
 * The worker role (all, worker): the pay worker on the payment queues, and
 * the sweeper, which starts with the consumers (see startWorkers).
 */
function wireWorker(core: Core, queue: JobQueue): { startSweeper(): Sweeper } {
  const { config, options, log, metrics, db, stops } = core;
  const httpGateway =
    options.gateway || !config.paymentGatewayUrl ? undefined : new HttpGateway(config.paymentGatewayUrl);
  if (httpGateway) stops.add(() => httpGateway.close());
  const inner =
    options.gateway ??
    httpGateway ??
    new SimulatedGateway({
      latencyMs: config.simulatedGatewayLatencyMs,
      retain: retentionFor(config.pendingDeadlineMs, config.simulatedGatewayMaxEntries),
    });
  const gateway = new ResilientGateway(inner, metrics, options.resilience);
  registerPayWorker(
    { db, queue, gateway, metrics, log: log.child({ component: 'pay-worker' }) },
    config.workerConcurrency,
    config.groupCommitMaxBatch,
  );
  // The consumers finish and ack what they hold while the gateway and the broker are still open.
  stops.add(() => queue.stop());
  let sweeper: Sweeper | undefined;
  // Before the consumers stop: a pass may be queueing jobs.
  stops.add(async () => sweeper?.stop());
  return {
    startSweeper: () =>
      (sweeper ??= startSweeper({ db, queue, log: log.child({ component: 'sweeper' }) }, config.pendingDeadlineMs)),
  };
}

/**
 * The API role (all, api): the catalog and order routes, with what only
 * they use. Only the API reads through the cache and rate-limits, so
 * workers need no Redis; CACHE_URL moves the cache to Memcached, and the
 * rate limits stay in Redis when REDIS_URL is set, else in the process.
 * Only the API reads lists, so only it opens the replica (lazily: it may be
 * down).
 */
async function wireApi(
  core: Core,
  server: Server,
  queue: JobQueue,
  extra: { broker: Broker | undefined; devIssuer: DevIssuer | undefined },
): Promise<{ cache: string; redis: boolean; replica: boolean }> {
  const { config, options, log, metrics, db, stops } = core;
  const redis = config.redisUrl
    ? connectRedis(config.redisUrl, { log: log.child({ component: 'redis' }), metrics })
    : undefined;
  if (redis) stops.add(() => redis.close());
  const cacheDeps = { metrics, log: log.child({ component: 'cache' }) };
  const localTtl = { localTtlMs: options.cacheLocalTtlMs };
  let cache: Cache;
  let cacheKind: string;
  if (config.cacheUrl) {
    const memcached = new MemcachedCache(config.cacheUrl, cacheDeps, { prefix: config.cacheKeyPrefix, ...localTtl });
    void memcached.probe();
    [cache, cacheKind] = [memcached, 'memcached'];
  } else if (redis) {
    [cache, cacheKind] = [new RedisCache(redis, cacheDeps, { prefix: config.redisKeyPrefix, ...localTtl }), 'redis'];
  } else {
    [cache, cacheKind] = [new MemoryCache(metrics), 'memory'];
  }
  stops.add(() => cache.close());
  const reads: ReadRouter = config.databaseReadUrl
    ? new ReplicaReads(
        {
          primary: db,
          replica: openPostgres(config.databaseReadUrl, config.databasePoolSize, {
            timeoutMs: config.databaseTimeoutMs,
          }),
          metrics,
          log: log.child({ component: 'read-replica' }),
        },
        { maxWaitMs: config.databaseReadMaxWaitMs },
      )
    : primaryReads(db);
  stops.add(() => reads.close());

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
      groupCommit: {
        maxBatch: config.groupCommitMaxBatch,
        maxInFlight: Math.max(1, Math.floor(config.databasePoolSize / 2)),
      },
    }),
  );
  await server.register(
    adminRoutes({
      db,
      reads,
      queue,
      deadLetters: extra.broker ? brokerDeadLetters(db, extra.broker, PAYMENT_QUEUES) : databaseDeadLetters(db),
      log: log.child({ component: 'admin' }),
      pendingDeadlineMs: config.pendingDeadlineMs,
      ...(options.figuresIntervalMs !== undefined ? { figuresIntervalMs: options.figuresIntervalMs } : {}),
    }),
  );
  // The token button only in the embedded shape (no DATABASE_URL) with the development issuer.
  await server.register(consoleRoutes({ devIssuer: config.databaseUrl === undefined ? extra.devIssuer : undefined }));
  return { cache: cacheKind, redis: redis !== undefined, replica: config.databaseReadUrl !== undefined };
}

/**
 * Builds the app for config.role from its parts: the core (database,
 * metrics) and messaging for every role, then the relay, worker and API
 * roles this process plays. Nothing runs until start() or startWorkers().
 */
export async function createApp(options: AppOptions): Promise<App> {
  const { config } = options;
  checkSupported(config);
  const stops = new Stops();
  const early = options.log ?? createLogger(config.logLevel);
  try {
    const core = await openCore({ ...options, log: early }, stops);
    const { log, metrics, db, latestMigration } = core;
    const devIssuer =
      config.auth === undefined
        ? options.inMemory
          ? await openDevIssuer(undefined)
          : await inDataDir(config.dataDir, () => openDevIssuer(config.dataDir))
        : undefined;
    const verifyToken = config.auth
      ? remoteVerifier(config.auth)
      : localVerifier(devIssuer!.publicJwk, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE });

    const { queue, broker } = wireMessaging(core);
    const worker = config.role === 'all' || config.role === 'worker' ? wireWorker(core, queue) : undefined;
    const relay =
      broker && (config.role === 'all' || config.role === 'relay') ? wireRelay(core, queue, broker) : undefined;

    const figures = new FiguresReporter({
      db,
      metrics,
      queue,
      log: log.child({ component: 'figures' }),
      role: config.role,
      callsGateway: worker !== undefined,
      hasOutbox: broker !== undefined,
      ...(options.figuresIntervalMs !== undefined ? { intervalMs: options.figuresIntervalMs } : {}),
    });
    // After the server has closed: its last row is removed, not left to go stale.
    stops.add(() => figures.stop());

    const server = buildServer({ log, metrics, verifyToken });
    // Accept latencies for the live figures (their percentiles are exact, not bucketed).
    server.addHook('onResponse', async (request, reply) => {
      if (request.method === 'POST' && request.routeOptions.url === '/v1/orders')
        figures.observeAccept(reply.elapsedTime);
    });
    await server.register(operationsRoutes({ db, metrics, queue, latestMigration }));
    const api =
      config.role === 'all' || config.role === 'api'
        ? await wireApi(core, server, queue, { broker, devIssuer })
        : undefined;
    // Stopped first: it stops listening, new requests get 503 and those in
    // flight finish. Its connections stay open, still answering 503, until
    // everything else has stopped (close() below).
    stops.add(() => server.close());

    metrics.info.set(
      {
        database: db.kind,
        queue_backend: broker?.kind ?? 'database',
        cache: api?.cache ?? 'none',
        redis: api?.redis ? 'yes' : 'no',
        read_replica: api?.replica ? 'yes' : 'no',
      },
      1,
    );

    let sweeper: Sweeper | undefined;
    let started = false;
    const startWorkers = () => {
      figures.start();
      relay?.start();
      if (!worker || started) return;
      started = true;
      queue.start();
      sweeper = worker.startSweeper();
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
      figures,
      get sweeper() {
        return sweeper;
      },
      startWorkers,
      async start() {
        startWorkers();
        return server.listen({ port: config.port, host: config.host });
      },
      async close() {
        await stops.run(log);
        await closeConnections(server);
      },
    };
  } catch (error) {
    await stops.run(early);
    throw error;
  }
}
