// The operational tunables: attempts, backoffs, deadlines and batch sizes,
// in one place. Each is the default of an option the code also takes (tests
// shorten them); what an operator sets through the environment is in
// config.ts instead. docs/architecture.md and docs/operations.md quote
// these figures: change them together.
//
// Every backoff below is computed by backoffMs (src/backoff.ts): attempt n
// waits a random time between half and all of min(maxMs, baseMs * 2^(n-1)).

/** A job (database queue) or message (broker): how often it is tried, and how long it waits between tries. */
export const JOBS = {
  /** Attempts a job gets unless its producer says otherwise; then it is dead-lettered. */
  maxAttempts: 10,
  /** Backoff between attempts: 0.5–1 s after the first, doubling, at most 30–60 s. */
  retry: { baseMs: 1_000, maxMs: 60_000 },
} as const;

/** The database queue (no broker): messaging.jobs rows. */
export const DATABASE_QUEUE = {
  /** Idle polling interval; a local enqueue wakes the workers sooner. */
  pollIntervalMs: 50,
  /** A claimed job not finished within its lease is handed to another worker. */
  leaseMs: 60_000,
  /** While claiming fails (the database is away): backoff from twice the poll interval up to this. */
  claimRetryMaxMs: 1_000,
  /** A failed job that cannot be released (the database is away) is tried again after this, doubling up to claimRetryMaxMs. */
  releaseRetryMs: 100,
} as const;

/** The outbox relay (broker mode). */
export const RELAY = {
  /** Rows published per pass. */
  batchSize: 500,
  /** Polling interval while the outbox is empty; a local enqueue wakes the relay sooner. */
  idlePollMs: 10,
  /** Backoff after a failed pass (the broker is away). */
  retry: { baseMs: 100, maxMs: 5_000 },
} as const;

/** The broker adapters (NATS JetStream, RabbitMQ) and the consumers on them. */
export const BROKER = {
  /** How long a publish (or a broker call) may wait for the broker's answer. */
  publishTimeoutMs: 5_000,
  /** How long a connection attempt may take. */
  connectTimeoutMs: 3_000,
  /** NATS: a delivery not acknowledged within this time is delivered again (a consumer that died mid-message). */
  natsAckWaitMs: 30_000,
  /** NATS: how long the stream remembers message ids to drop re-published duplicates. */
  natsDuplicateWindowMs: 120_000,
  /** NATS: how long one pull request waits for messages before the consumer asks again. */
  natsFetchExpiresMs: 1_000,
  /** NATS: the client's wait between reconnection attempts. */
  natsReconnectWaitMs: 500,
  /** A consumer whose subscription broke subscribes again after this backoff. */
  resubscribe: { baseMs: 200, maxMs: 5_000 },
  /** How long inbox rows are kept: longer than any message can still be redelivered. */
  inboxRetentionMs: 7 * 86_400_000,
  /** How often a consuming process prunes the inbox. */
  inboxPruneEveryMs: 3_600_000,
} as const;

/** Calls to the payment gateway (ResilientGateway; its backoff is cockatiel's ExponentialBackoff, with its own jitter). */
export const GATEWAY = {
  /** Deadline of one attempt. */
  attemptTimeoutMs: 3_000,
  /** Attempts of one call, with backoff between them. */
  maxAttempts: 3,
  backoff: { initialMs: 100, maxMs: 2_000 },
  /** The circuit opens after this many consecutive failures, and lets one call through again after halfOpenAfterMs. */
  breakAfter: 5,
  halfOpenAfterMs: 5_000,
} as const;

/** The pay worker and the sweeper. */
export const PAYMENTS = {
  /** Refund consumers per charge consumer (at least one). */
  refundConcurrencyShare: 1 / 4,
  /** Orders (and refunds) the sweeper re-drives per pass, each. */
  sweepBatch: 500,
  /** The sweeper runs every PENDING_DEADLINE_MS / 4, at least this often. */
  sweepMinIntervalMs: 1_000,
} as const;

/**
 * The built-in simulated gateway when it runs inside a serving process
 * (`serve` without PAYMENT_GATEWAY_URL, and the `gateway` command): what it
 * remembers of settled charges, refunds and voids. See retentionFor in
 * src/payments/simulated-gateway.ts for the window, which follows
 * PENDING_DEADLINE_MS.
 */
export const SIMULATED_GATEWAY = {
  /** The window is never shorter than this, whatever the replay horizon. */
  minRetentionMs: 3_600_000,
  /**
   * The backstop: settled answers kept at most, charge keys and refund keys
   * each (~0.3 KB a charge, so ~30 MB of heap at most; `npm start` runs with
   * a 160 MB old space). Oldest go first.
   */
  maxEntries: 100_000,
} as const;

/** Group commit: the most requests one transaction carries (GROUP_COMMIT_MAX_BATCH sets it per deployment). */
export const GROUP_COMMIT = {
  maxBatch: 64,
  /** How long a lone request waits for company before its transaction starts. */
  windowMs: 1,
} as const;

/** Starting and stopping a process. */
export const PROCESS = {
  /** A process that starts while PostgreSQL is unreachable tries this many times, with backoff, then exits with a configuration error (~20 s). */
  databaseConnectAttempts: 8,
  databaseConnectRetry: { baseMs: 500, maxMs: 4_000 },
  /** Graceful shutdown gets this long before the process exits anyway. */
  shutdownGraceMs: 25_000,
} as const;
