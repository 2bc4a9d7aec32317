// The job queue port in broker mode (BROKER_URL set). A producer's enqueue
// only writes a messaging.outbox row in its own transaction: nothing leaves
// the request path, and the message exists exactly when the change that
// caused it commits. The relay (relay.ts) later publishes the row. Consumers
// take deliveries from the broker; a delivery whose id is already in
// messaging.inbox was applied before and is acknowledged unhandled, and a
// handler's markDone(tx) writes that inbox row in the transaction that
// applies its effect. A failing handler is retried with jittered exponential
// backoff (backoffMs) and dead-lettered by the broker after its last attempt. A delivery
// that is not one of our messages (not JSON, not of the consumer's schema, an
// unusable id) or that can never succeed (PermanentJobError) is dead-lettered
// at once, with the reason.
import type { Logger } from 'pino';
import { BROKER } from '../tunables.ts';
import { declareQueue, readForScrape, type Metrics } from '../observability/metrics.ts';
import { failActiveSpan, tracingEnabled } from '../observability/tracing.ts';
import { storableText } from '../text.ts';
import { isUniqueViolation, type Database, type Queryable } from '../storage/database.ts';
import type { Broker, Delivery, Subscription } from './broker.ts';
import type { Static, TSchema } from 'typebox';
import { inboxHas, insertInbox, insertOutbox, outboxCounts, pruneInbox } from './store.ts';
import {
  consumerOf,
  inMessageSpan,
  PermanentJobError,
  retryPolicy,
  traceColumn,
  type RetryOptions,
  type Consumer,
  type EnqueueOptions,
  type Job,
  type JobHandler,
  type JobQueue,
  type JsonObject,
  type NewJob,
  type WorkerOptions,
} from './queue.ts';

export interface BrokerQueueOptions extends RetryOptions {
  /** How long inbox rows are kept: longer than any message can still be redelivered. */
  inboxRetentionMs?: number;
}

/** Message ids are inbox keys: the outbox's UUIDs, or what a broker adapter derives; printable ASCII, at most 200 characters. */
const MESSAGE_ID = /^[\x21-\x7e]{1,200}$/;

/** The delivery's body as the consumer's payload type, or PermanentJobError saying why it is not. */
function decode(consumer: Consumer, delivery: Delivery): JsonObject {
  if (!MESSAGE_ID.test(delivery.id))
    throw new PermanentJobError(
      `malformed message: its id ${JSON.stringify(delivery.id.slice(0, 100))} cannot be recorded`,
    );
  let payload: unknown;
  try {
    payload = JSON.parse(delivery.body);
  } catch (error) {
    throw new PermanentJobError(`malformed message: the body is not JSON (${(error as Error).message})`);
  }
  return consumer.parse(payload);
}

/**
 * A delivery as its handler sees it: one object per message, its markDone a
 * method rather than a closure, and whether it was recorded done a field
 * rather than an entry in a WeakSet (which the garbage collector has to
 * visit for every message).
 */
class BrokerJob implements Job {
  readonly id: string;
  readonly queue: string;
  readonly payload: JsonObject;
  readonly attempt: number;
  readonly maxAttempts: number;
  /** True once a handler's transaction recorded the job applied (markDone, markDoneMany). */
  done = false;
  readonly #owner: BrokerQueue;

  constructor(owner: BrokerQueue, queue: string, delivery: Delivery, payload: JsonObject) {
    this.#owner = owner;
    this.id = delivery.id;
    this.queue = queue;
    this.payload = payload;
    this.attempt = delivery.attempt;
    this.maxAttempts = delivery.maxAttempts;
  }

  markDone(tx: Queryable): Promise<void> {
    return this.#owner.markDoneMany(tx, [this]);
  }
}

export class BrokerQueue implements JobQueue {
  readonly #db: Database;
  readonly #broker: Broker;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #retry: ReturnType<typeof retryPolicy>;
  readonly #inboxRetentionMs: number;
  /** While consuming: the hourly pruning of the inbox, and the pass in progress. */
  #pruneTimer: NodeJS.Timeout | undefined;
  #pruning: Promise<void> = Promise.resolve();
  readonly #consumers = new Map<string, Consumer>();
  readonly #subscriptions: Subscription[] = [];
  readonly #enqueueListeners = new Set<() => void>();
  /** Deliveries being handled in this process, per queue (the broker cannot always count them). */
  readonly #inFlight = new Map<string, number>();

  constructor(db: Database, broker: Broker, log: Logger, metrics: Metrics, options: BrokerQueueOptions = {}) {
    this.#db = db;
    this.#broker = broker;
    this.#log = log;
    this.#metrics = metrics;
    this.#retry = retryPolicy(options);
    this.#inboxRetentionMs = options.inboxRetentionMs ?? BROKER.inboxRetentionMs;
  }

  get broker(): Broker {
    return this.#broker;
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
    await insertOutbox(
      tx,
      queue,
      jobs.map((j, i) => ({ payload: j.payload, key: j.key ?? null, trace: traces[i] ?? null })),
      options.delayMs ?? 0,
      options.maxAttempts ?? this.#retry.defaultMaxAttempts,
    );
    // The rows are visible only after the caller commits; an early wake of a
    // relay in this process costs one empty pass and saves a polling interval.
    if (this.#enqueueListeners.size > 0) setImmediate(() => this.#enqueueListeners.forEach((listener) => listener()));
  }

  markDoneMany(tx: Queryable, jobs: readonly Job[]): Promise<void> {
    // A plain INSERT: if a concurrent delivery of the same message committed
    // first, this transaction fails and its effect is undone.
    return this.#recordApplied(tx, jobs, 'fail');
  }

  async #recordApplied(tx: Queryable, jobs: readonly Job[], onDuplicate: 'fail' | 'ignore'): Promise<void> {
    if (jobs.length === 0) return;
    await insertInbox(tx, jobs, onDuplicate);
    for (const job of jobs) if (job instanceof BrokerJob) job.done = true;
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
    this.#consumers.set(queue, consumerOf(queue, handler, options));
    declareQueue(this.#metrics, queue);
  }

  start(): void {
    if (this.#subscriptions.length > 0) return;
    for (const consumer of this.#consumers.values()) {
      this.#subscriptions.push(
        this.#broker.consume(consumer.queue, (delivery) => this.#deliver(consumer, delivery), {
          concurrency: consumer.concurrency,
        }),
      );
    }
    // The inbox is the consumers' record, so they keep it from growing.
    if (this.#subscriptions.length > 0 && !this.#pruneTimer) {
      this.#pruneTimer = setInterval(() => (this.#pruning = this.#pruneInbox()), BROKER.inboxPruneEveryMs);
      this.#pruneTimer.unref();
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.#pruneTimer);
    this.#pruneTimer = undefined;
    await Promise.allSettled(this.#subscriptions.splice(0).map((s) => s.stop()));
    await this.#pruning;
  }

  /** Forgets inbox rows older than the retention: no message can be redelivered that late. */
  async #pruneInbox(): Promise<void> {
    try {
      const rows = await pruneInbox(this.#db, this.#inboxRetentionMs);
      if (rows > 0) this.#log.info({ rows }, 'pruned old inbox rows');
    } catch (error) {
      this.#log.error({ err: error }, 'pruning the inbox failed; the next pass retries');
    }
  }

  /** Unsent outbox rows per queue, plus, for the queues this process consumes, what the broker holds and what is being handled here. */
  async backlog(): Promise<Record<string, number>> {
    return addCounts(await this.#outboxBacklog(), await this.#brokerBacklog());
  }

  async refreshMetrics(): Promise<void> {
    // Read side by side: the broker being down must not hide the outbox
    // growing, the one figure that shows what waits for it.
    const [outbox, held] = await Promise.all([
      readForScrape(this.#metrics, this.#log, 'database', () => this.#outboxBacklog()),
      this.#consumers.size === 0 ? {} : readForScrape(this.#metrics, this.#log, 'broker', () => this.#brokerBacklog()),
    ]);
    this.#metrics.outboxBacklog.reset();
    for (const [queue, count] of Object.entries(outbox ?? {})) this.#metrics.outboxBacklog.set({ queue }, count);
    this.#metrics.jobBacklog.reset();
    if (outbox && held)
      for (const [queue, count] of Object.entries(addCounts(outbox, held)))
        this.#metrics.jobBacklog.set({ queue }, count);
  }

  async #outboxBacklog(): Promise<Record<string, number>> {
    return outboxCounts(this.#db);
  }

  async #brokerBacklog(): Promise<Record<string, number>> {
    const result: Record<string, number> = {};
    for (const queue of this.#consumers.keys())
      result[queue] = (await this.#broker.pending(queue)) + (this.#inFlight.get(queue) ?? 0);
    return result;
  }

  async #deliver(consumer: Consumer, delivery: Delivery): Promise<void> {
    const { queue } = consumer;
    this.#inFlight.set(queue, (this.#inFlight.get(queue) ?? 0) + 1);
    try {
      // The span's description of the message is built only while tracing.
      if (!tracingEnabled()) await this.#process(consumer, delivery);
      else
        await inMessageSpan(
          { queue, id: delivery.id, attempt: delivery.attempt, system: this.#broker.kind, trace: delivery.trace },
          () => this.#process(consumer, delivery),
        );
    } finally {
      this.#inFlight.set(queue, (this.#inFlight.get(queue) ?? 1) - 1);
    }
  }

  async #process(consumer: Consumer, delivery: Delivery): Promise<void> {
    const { queue } = consumer;
    if (delivery.attempt > 1) this.#metrics.consumerRedeliveries.inc({ queue });
    let started = performance.now();
    try {
      // Redeliveries are checked up front. A first delivery almost never is
      // a duplicate (a re-publish after a relay crash); when it is, the
      // handler's inbox INSERT fails on the primary key below and the
      // message is acknowledged then, so the common case saves a query.
      if (delivery.attempt > 1 && (await inboxHas(this.#db, queue, delivery.id))) {
        // Applied before (an ack lost in a crash).
        await delivery.ack();
        this.#metrics.jobsProcessed.inc({ queue, outcome: 'duplicate' });
        return;
      }
      const job = new BrokerJob(this, queue, delivery, decode(consumer, delivery));
      started = performance.now();
      await consumer.handler(job);
      // A handler that did not record the job itself (nothing to apply) is
      // recorded now, so a redelivery skips it.
      if (!job.done) await this.#recordApplied(this.#db, [job], 'ignore');
      await delivery.ack();
      this.#metrics.jobsProcessed.inc({ queue, outcome: 'done' });
    } catch (error) {
      if (isUniqueViolation(error) && (await inboxHas(this.#db, queue, delivery.id).catch(() => false))) {
        await delivery.ack();
        this.#metrics.jobsProcessed.inc({ queue, outcome: 'duplicate' });
        return;
      }
      await this.#fail(delivery, error, {
        messageId: delivery.id,
        queue,
        attempt: delivery.attempt,
        maxAttempts: delivery.maxAttempts,
        durationMs: Math.round(performance.now() - started),
      });
    }
  }

  async #fail(delivery: Delivery, error: unknown, context: Record<string, unknown>): Promise<void> {
    const { queue } = delivery;
    // Recorded with the job: whatever the error says, it must be storable.
    failActiveSpan(error);
    const message = storableText(error instanceof Error ? error.message : String(error));
    const permanent = error instanceof PermanentJobError;
    if (permanent || delivery.attempt >= delivery.maxAttempts) {
      await delivery.deadLetter(message);
      this.#metrics.jobsProcessed.inc({ queue, outcome: 'dead' });
      this.#metrics.deadLettered.inc({ queue });
      this.#log.error(
        { ...context, err: error },
        permanent
          ? 'message can never succeed; dead-lettered in the broker at once'
          : 'message failed for the last time; dead-lettered in the broker',
      );
      return;
    }
    const delayMs = this.#retry.delayMs(delivery.attempt);
    await delivery.retry(delayMs);
    this.#metrics.jobsProcessed.inc({ queue, outcome: 'retry' });
    this.#log.warn({ ...context, err: error, retryInMs: Math.round(delayMs) }, 'message failed; will retry');
  }
}

function addCounts(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const sum = { ...a };
  for (const [queue, count] of Object.entries(b)) sum[queue] = (sum[queue] ?? 0) + count;
  return sum;
}
