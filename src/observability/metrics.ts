// Prometheus metrics. Each app instance owns its registry, so several
// instances (tests, one process per role) never share counters by accident.
// The alerting rules and dashboards in deploy/ are written against these
// names (docs/operations.md#metrics lists them); a series the rules rate()
// exists from the start at 0, because a counter that appears only with its
// first increment hides that increment from rate() and increase().
//
// Under node:cluster (WEB_CONCURRENCY > 1) the copies' registries are added
// up into one answer (cluster-metrics.ts): counters and histograms sum, and
// each gauge says how its copies combine (aggregator): a database-wide
// figure every copy reads alike is their max, an "up" their min.
import type { Logger } from 'pino';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { withDeadline } from '../deadline.ts';

/** Seconds from accept to payment outcome; the settle SLO (deploy/prometheus/rules/slo.yml) counts the orders under 10 s. */
const SETTLE_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

/**
 * orderOutcomes: every (status, reason) an order can reach (orders'
 * ORDER_OUTCOMES), whose orderflow_order_transitions_total series start at 0.
 */
export function createMetrics(options: { orderOutcomes?: readonly { status: string; reason: string }[] } = {}) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const metrics = {
    registry,
    httpRequests: new Counter({
      name: 'orderflow_http_requests_total',
      help: 'HTTP requests by method, route pattern and status code',
      labelNames: ['method', 'route', 'status'] as const,
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: 'orderflow_http_request_duration_seconds',
      help: 'HTTP request duration by method and route pattern',
      labelNames: ['method', 'route'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    acceptBatchSize: new Histogram({
      name: 'orderflow_accept_batch_size',
      help: 'Orders committed together by one accept transaction (group commit)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128],
      registers: [registry],
    }),
    workerBatchSize: new Histogram({
      name: 'orderflow_worker_batch_size',
      help: 'Pay-worker transactions committed together (group commit)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128],
      registers: [registry],
    }),
    orderTransitions: new Counter({
      name: 'orderflow_orders_total',
      help: 'Orders entering each status (pending on accept, then confirmed, rejected or cancelled)',
      labelNames: ['status', 'reason'] as const,
      registers: [registry],
    }),
    jobsProcessed: new Counter({
      name: 'orderflow_jobs_processed_total',
      help: 'Jobs handled by outcome: done, retry (failed, will run again), dead (dead-lettered), duplicate (broker mode: already in the inbox, acknowledged unhandled)',
      labelNames: ['queue', 'outcome'] as const,
      registers: [registry],
    }),
    jobBacklog: new Gauge({
      name: 'orderflow_job_backlog',
      aggregator: 'max',
      help: 'Jobs waiting or running, per queue: database queue rows, or (broker mode) outbox rows plus, for the queues this process consumes, what the broker holds and what is being handled (read at scrape time)',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    backlogUp: new Gauge({
      name: 'orderflow_backlog_up',
      aggregator: 'min',
      help: 'Per source of the backlog gauges (database, broker): 1 when the last scrape read it within 0.5 s, 0 when it could not, and the gauges that need it were left out',
      labelNames: ['source'] as const,
      registers: [registry],
    }),
    outboxBacklog: new Gauge({
      name: 'orderflow_outbox_backlog',
      aggregator: 'max',
      help: 'Broker mode: outbox messages committed and not yet published, per queue (read at scrape time)',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    relayPublished: new Counter({
      name: 'orderflow_relay_published_total',
      help: 'Outbox messages the relay published and the broker confirmed, per queue',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    relayFailures: new Counter({
      name: 'orderflow_relay_failed_passes_total',
      help: 'Relay passes that failed (broker or database unavailable); each is retried with backoff',
      registers: [registry],
    }),
    consumerRedeliveries: new Counter({
      name: 'orderflow_consumer_redeliveries_total',
      help: 'Broker mode: deliveries after the first of a message (retries and redeliveries after a lost ack), per queue',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    deadLettered: new Counter({
      name: 'orderflow_dead_lettered_total',
      help: 'Broker mode: messages dead-lettered after their last attempt, per queue',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    gatewayDuration: new Histogram({
      name: 'orderflow_payment_gateway_duration_seconds',
      help: 'Payment gateway calls by operation and outcome, each attempt counted',
      labelNames: ['operation', 'outcome'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
      registers: [registry],
    }),
    gatewayCircuitOpen: new Gauge({
      name: 'orderflow_payment_gateway_circuit_open',
      aggregator: 'max',
      help: '1 while the circuit breaker around the payment gateway is open or half-open, else 0',
      registers: [registry],
    }),
    gatewayCircuitOpened: new Counter({
      name: 'orderflow_payment_gateway_circuit_opened_total',
      help: 'Times the circuit breaker around the payment gateway opened (consecutive transient failures); it never opens for a request the gateway refused',
      registers: [registry],
    }),
    databaseCircuitOpen: new Gauge({
      name: 'orderflow_database_circuit_open',
      aggregator: 'max',
      help: '1 while calls to PostgreSQL fail fast because a connection attempt failed (one call probes every 0.5 s), else 0',
      registers: [registry],
    }),
    cacheLookups: new Counter({
      name: 'orderflow_cache_lookups_total',
      help: 'Cache reads by result: local_hit (process LRU), redis_hit, memcached_hit, miss (loaded from the database)',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    cacheErrors: new Counter({
      name: 'orderflow_cache_errors_total',
      help: 'Cache operations that failed or were skipped because Redis or Memcached is unreachable; the request was served from the database',
      labelNames: ['operation'] as const,
      registers: [registry],
    }),
    memcachedUp: new Gauge({
      name: 'orderflow_memcached_up',
      aggregator: 'min',
      help: '1 while the last command to Memcached at CACHE_URL succeeded; 0 while it is unreachable (reads then go to the database) or when CACHE_URL is unset',
      registers: [registry],
    }),
    readReplicaUp: new Gauge({
      name: 'orderflow_read_replica_up',
      aggregator: 'min',
      help: '1 while reads that may use the replica at DATABASE_READ_URL go to it; 0 while they go to the primary (replica down, lagging, promoted or not a copy of the primary) or when DATABASE_READ_URL is unset',
      registers: [registry],
    }),
    routedReads: new Counter({
      name: 'orderflow_routed_reads_total',
      help: 'Reads that may use the read replica, by the database that served them and why: replica/caught_up, or primary/down|lagging|promoted|unrelated|error',
      labelNames: ['database', 'reason'] as const,
      registers: [registry],
    }),
    replicaWaiting: new Gauge({
      name: 'orderflow_read_replica_waiting_reads',
      help: 'Reads waiting right now for the replica to replay what the primary had committed when they began (includes the background check)',
      registers: [registry],
    }),
    replicaWait: new Histogram({
      name: 'orderflow_read_replica_wait_seconds',
      help: 'How long a read waited for the replica to replay what the primary had committed when the read began',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [registry],
    }),
    redisUp: new Gauge({
      name: 'orderflow_redis_up',
      aggregator: 'min',
      help: '1 while connected to Redis at REDIS_URL; 0 while disconnected (rate limits are then not enforced) or when REDIS_URL is unset',
      registers: [registry],
    }),
    orderSettleDuration: new Histogram({
      name: 'orderflow_order_settle_duration_seconds',
      help: "Seconds from an order's accept to its payment outcome (confirmed, or rejected payment_declined or payment_failed), observed by the worker that settled it",
      buckets: SETTLE_BUCKETS,
      registers: [registry],
    }),
    deadJobs: new Gauge({
      name: 'orderflow_dead_jobs',
      aggregator: 'max',
      help: 'Database queue: dead-lettered jobs held in messaging.dead_jobs, per queue (read at scrape time; a broker keeps its own dead letters)',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    dbPoolSize: new Gauge({
      name: 'orderflow_db_pool_size',
      help: 'Connections this process may open to the database (DATABASE_POOL_SIZE; 1 for the embedded database)',
      registers: [registry],
    }),
    dbBusySeconds: new Counter({
      name: 'orderflow_db_pool_busy_seconds_total',
      help: 'Seconds spent in database statements and transactions (waiting for a connection included), summed over concurrent calls: its rate divided by orderflow_db_pool_size is the pool use',
      registers: [registry],
    }),
    info: new Gauge({
      name: 'orderflow_info',
      aggregator: 'max',
      help: 'Always 1; the labels say which adapters this process runs: database (postgres, pglite), queue_backend (database, nats, rabbitmq), cache (memcached, redis, memory, none), redis and read_replica (yes, no: REDIS_URL, DATABASE_READ_URL in use)',
      labelNames: ['database', 'queue_backend', 'cache', 'redis', 'read_replica'] as const,
      registers: [registry],
    }),
  };
  for (const labels of options.orderOutcomes ?? []) metrics.orderTransitions.inc(labels, 0);
  return metrics;
}

export type Metrics = ReturnType<typeof createMetrics>;

/** Starts the per-queue series of a queue this process consumes at 0 (see the top of this file). */
export function declareQueue(metrics: Metrics, queue: string): void {
  for (const outcome of ['done', 'retry', 'dead', 'duplicate']) metrics.jobsProcessed.inc({ queue, outcome }, 0);
  metrics.deadLettered.inc({ queue }, 0);
  metrics.consumerRedeliveries.inc({ queue }, 0);
}

/** How long a scrape waits for one source of its figures (the database, the broker). */
const SCRAPE_BUDGET_MS = 500;

/** Database-wide facts read when Prometheus scrapes (every process reports the same figures: take their max). */
export interface ScrapeReadings {
  /** Whether this process can serve: the /readyz check. */
  ready(): Promise<boolean>;
  /** Orders waiting for their payment outcome (orders' pendingOrderStats). */
  pendingOrders(): Promise<{ count: number; overdue: number; oldestAgeSeconds: number }>;
}

/**
 * Registers the gauges read from the database at scrape time. Each reading
 * is bounded by timeoutMs, so /metrics answers while the database does not:
 * readiness then reads 0, and the pending-order gauges are left out of that
 * scrape (absent, not stale) and the failure is logged.
 */
export function readAtScrape(
  metrics: Metrics,
  readings: ScrapeReadings,
  log: Logger,
  timeoutMs = SCRAPE_BUDGET_MS,
): void {
  const registers = [metrics.registry];
  new Gauge({
    name: 'orderflow_ready',
    help: '1 while this process is ready to serve (what GET /readyz answers 200 for), else 0; read at scrape time',
    registers,
    aggregator: 'min',
    async collect() {
      this.set((await bounded(readings.ready(), timeoutMs).catch(() => false)) ? 1 : 0);
    },
  });
  // Three gauges, one query: the registry calls every collect in one
  // synchronous loop, so the first starts the reading and the other two
  // share it; once it settles, the next scrape reads afresh.
  let reading: Promise<{ count: number; overdue: number; oldestAgeSeconds: number } | undefined> | undefined;
  const pending = () =>
    (reading ??= bounded(readings.pendingOrders(), timeoutMs)
      .catch((error: unknown) => {
        log.warn({ err: error }, 'could not read the pending orders for /metrics');
        return undefined;
      })
      .finally(() => (reading = undefined)));
  const gauge = (
    name: string,
    help: string,
    pick: (stats: { count: number; overdue: number; oldestAgeSeconds: number }) => number,
  ) =>
    new Gauge({
      name,
      help,
      registers,
      aggregator: 'max',
      async collect() {
        const stats = await pending();
        if (stats === undefined) this.remove();
        else this.set(pick(stats));
      },
    });
  gauge(
    'orderflow_pending_orders',
    'Orders waiting for their payment outcome (status pending), database-wide; read at scrape time',
    (s) => s.count,
  );
  gauge(
    'orderflow_pending_orders_overdue',
    'Pending orders untouched for longer than PENDING_DEADLINE_MS (the sweeper re-drives them), database-wide; read at scrape time',
    (s) => s.overdue,
  );
  gauge(
    'orderflow_pending_order_oldest_age_seconds',
    'Age of the oldest pending order in seconds (0 when none), database-wide; read at scrape time',
    (s) => s.oldestAgeSeconds,
  );
}

function bounded<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  return withDeadline(promise, timeoutMs, () => new Error(`no answer within ${timeoutMs} ms`));
}

/**
 * Reads one source of scrape-time figures within SCRAPE_BUDGET_MS: its value,
 * or undefined when it fails or is late (a dependency that is down must
 * never hold /metrics up). Sets orderflow_backlog_up for the source.
 */
export async function readForScrape<T>(
  metrics: Metrics,
  log: Logger,
  source: 'database' | 'broker',
  read: () => Promise<T>,
): Promise<T | undefined> {
  try {
    const value = await bounded(read(), SCRAPE_BUDGET_MS);
    metrics.backlogUp.set({ source }, 1);
    return value;
  } catch (error) {
    metrics.backlogUp.set({ source }, 0);
    log.warn({ err: error, source }, 'metrics: the backlog figures that need this source are left out of this scrape');
    return undefined;
  }
}
