// The database-backed job queue: jobs are rows in messaging.jobs, claimed
// with FOR UPDATE SKIP LOCKED and leased, so any number of workers (threads of
// one process or many processes) share them without handing one out twice
// while its lease holds. A job whose handler fails is retried with jittered
// exponential backoff (backoffMs); after max_attempts it moves to messaging.dead_jobs,
// and so does, at once, a job that can never succeed (a payload that does not
// match its consumer's schema, a PermanentJobError).
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { backoffMs } from '../backoff.ts';
import { DATABASE_QUEUE } from '../tunables.ts';
import { DatabaseUnavailableError, type Database, type Queryable } from '../storage/database.ts';
import { declareQueue, readForScrape, type Metrics } from '../observability/metrics.ts';
import { failActiveSpan } from '../observability/tracing.ts';
import { storableText } from '../text.ts';
import type { Static, TSchema } from 'typebox';
import { buryJob, claimJobs, deleteJobs, insertJobs, jobCounts, retryJobLater, type ClaimedJob } from './store.ts';
import {
  consumerOf,
  inMessageSpan,
  PermanentJobError,
  retryPolicy,
  traceColumn,
  type RetryOptions,
  type Consumer as ConsumerSpec,
  type EnqueueOptions,
  type Job,
  type JobHandler,
  type JobQueue,
  type JsonObject,
  type NewJob,
  type WorkerOptions,
} from './queue.ts';

export interface DatabaseQueueOptions extends RetryOptions {
  /** Idle polling interval; a local enqueue wakes the workers sooner. */
  pollIntervalMs?: number;
  /** A claimed job not finished within the lease is handed to another worker. */
  leaseMs?: number;
}

interface Consumer extends ConsumerSpec {
  running: number;
}

export class DatabaseQueue implements JobQueue {
  readonly #db: Database;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #pollIntervalMs: number;
  readonly #leaseMs: number;
  readonly #retry: ReturnType<typeof retryPolicy>;
  readonly #consumers = new Map<string, Consumer>();
  readonly #inFlight = new Set<Promise<void>>();
  readonly #enqueueListeners = new Set<() => void>();
  /** Jobs whose handler recorded them done in its own transaction (markDone). */
  readonly #done = new WeakSet<Job>();
  #running = false;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(db: Database, log: Logger, metrics: Metrics, options: DatabaseQueueOptions = {}) {
    this.#db = db;
    this.#log = log;
    this.#metrics = metrics;
    this.#pollIntervalMs = options.pollIntervalMs ?? DATABASE_QUEUE.pollIntervalMs;
    this.#leaseMs = options.leaseMs ?? DATABASE_QUEUE.leaseMs;
    this.#retry = retryPolicy(options);
  }

  enqueue(tx: Queryable, queue: string, payload: JsonObject, options: EnqueueOptions = {}): Promise<void> {
    return this.enqueueMany(tx, queue, [{ payload, key: options.key }], options);
  }

  async enqueueMany(
    tx: Queryable,
    queue: string,
    jobs: readonly NewJob[],
    options: Omit<EnqueueOptions, 'key'> = {},
  ): Promise<void> {
    if (jobs.length === 0) return;
    const traces = traceColumn(jobs);
    await insertJobs(
      tx,
      queue,
      jobs.map((j, i) => ({ payload: j.payload, key: j.key ?? null, trace: traces[i] ?? null })),
      options.delayMs ?? 0,
      options.maxAttempts ?? this.#retry.defaultMaxAttempts,
    );
    // The jobs are visible only after the caller commits; waking early is
    // harmless (an empty poll), and saves a full polling interval.
    setImmediate(() => {
      this.#wake?.();
      this.#enqueueListeners.forEach((listener) => listener());
    });
  }

  onEnqueue(listener: () => void): () => void {
    this.#enqueueListeners.add(listener);
    return () => this.#enqueueListeners.delete(listener);
  }

  handle<S extends TSchema>(
    queue: string,
    handler: JobHandler<Static<S> & JsonObject>,
    options: WorkerOptions<S>,
  ): void {
    this.#consumers.set(queue, { ...consumerOf(queue, handler, options), running: 0 });
    declareQueue(this.#metrics, queue);
  }

  start(): void {
    if (this.#running || this.#consumers.size === 0) return;
    this.#running = true;
    this.#loop = this.#pollLoop();
  }

  async stop(): Promise<void> {
    this.#running = false;
    this.#wake?.();
    await this.#loop;
    await Promise.allSettled([...this.#inFlight]);
  }

  /** Rows in messaging.jobs per queue; also sets orderflow_dead_jobs from messaging.dead_jobs (one round trip for both). */
  async backlog(): Promise<Record<string, number>> {
    const { queued, dead } = await jobCounts(this.#db);
    this.#metrics.deadJobs.reset();
    // A queue this process consumes reads 0 rather than vanishing when it holds none.
    for (const queue of this.#consumers.keys()) this.#metrics.deadJobs.set({ queue }, 0);
    for (const [queue, count] of Object.entries(dead)) this.#metrics.deadJobs.set({ queue }, count);
    return queued;
  }

  async refreshMetrics(): Promise<void> {
    const backlog = await readForScrape(this.#metrics, this.#log, 'database', () => this.backlog());
    this.#metrics.jobBacklog.reset();
    // backlog() sets the dead-job gauge too; unread, it is left out rather than stale.
    if (backlog === undefined) this.#metrics.deadJobs.reset();
    for (const [queue, count] of Object.entries(backlog ?? {})) this.#metrics.jobBacklog.set({ queue }, count);
  }

  async #pollLoop(): Promise<void> {
    let failures = 0;
    while (this.#running) {
      let claimed = 0;
      try {
        for (const consumer of this.#consumers.values()) claimed += await this.#claim(consumer);
        if (failures > 0) this.#log.info({ failedPolls: failures }, 'job queue: claiming jobs works again');
        failures = 0;
      } catch (error) {
        // Once per outage, not once per poll: while the database is away every poll fails.
        if (failures++ === 0)
          this.#log.error({ err: error }, 'job queue: claiming jobs failed; retrying with backoff (up to 1 s)');
      }
      if (failures > 0 && this.#running)
        await this.#idle(
          backoffMs(failures, { baseMs: this.#pollIntervalMs * 2, maxMs: DATABASE_QUEUE.claimRetryMaxMs }),
        );
      else if (claimed === 0 && this.#running) await this.#idle(this.#pollIntervalMs);
      else if (this.#inFlight.size > 0 && this.#allBusy()) await Promise.race(this.#inFlight);
    }
  }

  #allBusy(): boolean {
    for (const consumer of this.#consumers.values()) if (consumer.running < consumer.concurrency) return false;
    return true;
  }

  async #idle(ms: number): Promise<void> {
    const controller = new AbortController();
    this.#wake = () => controller.abort();
    await sleep(ms, undefined, { signal: controller.signal }).catch(() => undefined);
    this.#wake = undefined;
  }

  async #claim(consumer: Consumer): Promise<number> {
    const free = consumer.concurrency - consumer.running;
    if (free <= 0) return 0;
    const rows = await claimJobs(this.#db, consumer.queue, free, this.#leaseMs);
    for (const row of rows) {
      consumer.running++;
      const run = this.#run(consumer, row).finally(() => {
        consumer.running--;
        this.#inFlight.delete(run);
      });
      this.#inFlight.add(run);
    }
    return rows.length;
  }

  async markDoneMany(tx: Queryable, jobs: readonly Job[]): Promise<void> {
    if (jobs.length === 0) return;
    await deleteJobs(
      tx,
      jobs.map((job) => job.id),
    );
    for (const job of jobs) this.#done.add(job);
  }

  #run(consumer: Consumer, row: ClaimedJob): Promise<void> {
    return inMessageSpan({ queue: row.queue, id: row.id, attempt: row.attempts, trace: row.trace_context }, () =>
      this.#runJob(consumer, row),
    );
  }

  async #runJob(consumer: Consumer, row: ClaimedJob): Promise<void> {
    const started = performance.now();
    try {
      const job: Job = {
        id: row.id,
        queue: row.queue,
        payload: consumer.parse(row.payload),
        attempt: row.attempts,
        maxAttempts: row.max_attempts,
        markDone: (tx) => this.markDoneMany(tx, [job]),
      };
      await consumer.handler(job);
      if (!this.#done.has(job)) await this.markDoneMany(this.#db, [job]);
      this.#metrics.jobsProcessed.inc({ queue: row.queue, outcome: 'done' });
    } catch (error) {
      // We MUST release the job once we have attempted it, success or error,
      // or it stays leased until the lease runs out.
      await this.#fail(row, error, performance.now() - started);
    }
  }

  async #fail(
    row: ClaimedJob,
    error: unknown,
    durationMs: number,
    started = performance.now() - durationMs,
    releaseAttempt = 1,
  ): Promise<void> {
    // Recorded with the job: whatever the error says, it must be storable.
    failActiveSpan(error);
    const message = storableText(error instanceof Error ? error.message : String(error));
    const context = {
      jobId: row.id,
      queue: row.queue,
      attempt: row.attempts,
      maxAttempts: row.max_attempts,
      durationMs: Math.round(durationMs),
      err: error,
    };
    const permanent = error instanceof PermanentJobError;
    try {
      if (permanent || row.attempts >= row.max_attempts) {
        await buryJob(this.#db, row.id, message);
        this.#metrics.jobsProcessed.inc({ queue: row.queue, outcome: 'dead' });
        this.#log.error(
          context,
          permanent
            ? 'job can never succeed; moved to messaging.dead_jobs at once'
            : 'job failed for the last time; moved to messaging.dead_jobs',
        );
        return;
      }
      const delayMs = this.#retry.delayMs(row.attempts);
      await retryJobLater(this.#db, row.id, delayMs, message);
      this.#metrics.jobsProcessed.inc({ queue: row.queue, outcome: 'retry' });
      this.#log.warn({ ...context, retryInMs: Math.round(delayMs) }, 'job failed; will retry');
    } catch (releaseError) {
      // A job that failed because the database went away cannot be released
      // while it is away either. Left to its lease it would wait a minute
      // after the database is back; tried again every moment, it is released
      // (and retried after its backoff) within a second of the return.
      const pause = backoffMs(releaseAttempt, {
        baseMs: DATABASE_QUEUE.releaseRetryMs,
        maxMs: DATABASE_QUEUE.claimRetryMaxMs,
      });
      if (
        releaseError instanceof DatabaseUnavailableError &&
        this.#running &&
        this.#leaseMs - (performance.now() - started) > pause
      ) {
        await sleep(pause);
        return this.#fail(row, error, durationMs, started, releaseAttempt + 1);
      }
      // The lease will expire and another worker will take the job again.
      this.#log.error(
        { ...context, releaseError },
        'job failed and could not be released; it is retried when its lease expires',
      );
    }
  }
}
