// Prometheus metrics. Each app instance owns its registry, so several
// instances (tests, one process per role) never share counters by accident.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return {
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
      help: 'Jobs waiting or running in the database queue, per queue',
      labelNames: ['queue'] as const,
      registers: [registry],
    }),
    outboxBacklog: new Gauge({
      name: 'orderflow_outbox_backlog',
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
      help: '1 while the circuit breaker around the payment gateway is open or half-open, else 0',
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
      help: '1 while the last command to Memcached at CACHE_URL succeeded; 0 while it is unreachable (reads then go to the database) or when CACHE_URL is unset',
      registers: [registry],
    }),
    readReplicaUp: new Gauge({
      name: 'orderflow_read_replica_up',
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
      help: '1 while connected to Redis at REDIS_URL; 0 while disconnected (rate limits are then not enforced) or when REDIS_URL is unset',
      registers: [registry],
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
