// The job queue port. Producers enqueue inside their own database transaction
// (so a job exists exactly when the change that caused it was committed);
// consumers get at-least-once delivery and make their effects idempotent by
// calling markDone(tx) in the transaction that applies them.
//
// Every consumer declares the schema of its payload. A message is checked
// against it before its handler sees it: whatever is in the queue (a row an
// operator inserted, a message another program published), the handler gets
// the type it declared, and a message that is not of that type is
// dead-lettered at once with the reason, never retried.
import type { Static, TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import {
  activeCarrier,
  contextOf,
  inSpan,
  SpanKind,
  tracingEnabled,
  type TraceCarrier,
} from '../observability/tracing.ts';
import { backoffMs, type Backoff } from '../backoff.ts';
import type { Queryable } from '../storage/database.ts';
import { JOBS } from '../tunables.ts';

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export interface EnqueueOptions {
  /** At most one live job per key; enqueueing a key that is already queued is a no-op. */
  key?: string;
  delayMs?: number;
  maxAttempts?: number;
}

export interface Job<P extends JsonObject = JsonObject> {
  id: string;
  queue: string;
  payload: P;
  /** 1 on the first delivery. */
  attempt: number;
  maxAttempts: number;
  /** Records, in the handler's own transaction, that this job's effect has been applied. */
  markDone(tx: Queryable): Promise<void>;
}

export type JobHandler<P extends JsonObject = JsonObject> = (job: Job<P>) => Promise<void>;

export interface WorkerOptions<S extends TSchema = TSchema> {
  concurrency: number;
  /** The payload's schema; a message that does not match it is dead-lettered unhandled. */
  payload: S;
}

/**
 * Thrown by a handler (or the queue itself) for a job that can never succeed
 * as it stands: a malformed message, a payment the gateway refused. The
 * queue dead-letters it at once with this message as the reason, whatever
 * attempts it has left; retrying would only repeat the failure and hold up
 * the jobs behind it.
 */
export class PermanentJobError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PermanentJobError';
  }
}

/** Checks payloads against a consumer's schema: returns the payload typed, or throws PermanentJobError saying what is wrong. */
function payloadParser<S extends TSchema>(schema: S): (payload: unknown) => Static<S> {
  const compiled = Compile(schema);
  return (payload) => {
    if (compiled.Check(payload)) return payload;
    const reasons = [...compiled.Errors(payload)].slice(0, 5).map((e) => `${e.instancePath || '/'} ${e.message}`);
    throw new PermanentJobError(`malformed payload: ${reasons.join('; ')}`);
  };
}

/** How a queue retries a failed job; both queues take these, with the defaults of tunables.ts (JOBS). */
export interface RetryOptions {
  /** Backoff between attempts (see backoffMs): from retryBaseMs, doubling, up to retryMaxMs. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Attempts a job gets when its producer does not say. */
  defaultMaxAttempts?: number;
}

/** RetryOptions with the defaults filled in, and the delay before a failed job's next attempt. */
export function retryPolicy(options: RetryOptions): { defaultMaxAttempts: number; delayMs(attempt: number): number } {
  const backoff: Backoff = {
    baseMs: options.retryBaseMs ?? JOBS.retry.baseMs,
    maxMs: options.retryMaxMs ?? JOBS.retry.maxMs,
  };
  return {
    defaultMaxAttempts: options.defaultMaxAttempts ?? JOBS.maxAttempts,
    delayMs: (attempt) => backoffMs(attempt, backoff),
  };
}

export interface NewJob {
  payload: JsonObject;
  /** At most one live job per key (see EnqueueOptions.key). */
  key?: string;
  /** The trace the job continues; the trace active at enqueue when omitted. Stored with the job (trace_context). */
  trace?: TraceCarrier;
}

/** The trace_context column of new jobs (JSON text, or null when there is no trace): each job's own trace, else the one active now. */
export function traceColumn(jobs: readonly NewJob[]): (string | null)[] {
  const active = activeCarrier();
  return jobs.map((job) => {
    const trace = job.trace ?? active;
    return trace ? JSON.stringify(trace) : null;
  });
}

/** What the consumer span of one message is told about it. */
export interface ReceivedMessage {
  queue: string;
  id: string;
  attempt: number;
  /** The broker (messaging.system), or undefined for the database queue. */
  system?: string;
  /** The message's trace carrier as received: a header or a column anything may have written (see contextOf). */
  trace: unknown;
}

/**
 * Runs the handling of one message in a consumer span that continues the
 * message's trace (OpenTelemetry messaging conventions,
 * https://opentelemetry.io/docs/specs/semconv/messaging/): one trace from
 * the request that queued the work to what the work did.
 */
export function inMessageSpan<T>(message: ReceivedMessage, fn: () => Promise<T>): Promise<T> {
  if (!tracingEnabled()) return fn();
  return inSpan(
    `process ${message.queue}`,
    {
      kind: SpanKind.CONSUMER,
      parent: contextOf(message.trace),
      attributes: {
        ...(message.system ? { 'messaging.system': message.system } : {}),
        'messaging.operation.type': 'process',
        'messaging.destination.name': message.queue,
        'messaging.message.id': message.id,
        'orderflow.delivery.attempt': message.attempt,
      },
    },
    fn,
  );
}

/** What a queue keeps of a registered consumer: its handler, the parser of its payloads (see payloadParser) and its concurrency. */
export interface Consumer {
  queue: string;
  handler: JobHandler<JsonObject>;
  parse: (payload: unknown) => JsonObject;
  concurrency: number;
}

/** The Consumer record of a handle() call, for JobQueue implementations. */
export function consumerOf<S extends TSchema>(
  queue: string,
  handler: JobHandler<Static<S> & JsonObject>,
  options: WorkerOptions<S>,
): Consumer {
  return {
    queue,
    handler: handler as JobHandler<JsonObject>,
    parse: payloadParser(options.payload),
    concurrency: options.concurrency,
  };
}

export interface JobQueue {
  enqueue(tx: Queryable, queue: string, payload: JsonObject, options?: EnqueueOptions): Promise<void>;
  /** Several jobs in one statement (a batch of accepted orders queues all its charges at once). */
  enqueueMany(
    tx: Queryable,
    queue: string,
    jobs: readonly NewJob[],
    options?: Omit<EnqueueOptions, 'key'>,
  ): Promise<void>;
  /** job.markDone(tx) for several of this queue's jobs in one statement (handlers whose transactions are group-committed). */
  markDoneMany(tx: Queryable, jobs: readonly Job[]): Promise<void>;
  /** Registers the handler of a queue and the schema of its payloads; deliveries start with start(). */
  handle<S extends TSchema>(
    queue: string,
    handler: JobHandler<Static<S> & JsonObject>,
    options: WorkerOptions<S>,
  ): void;
  /** Called soon after each enqueue in this process (before the caller commits: a listener may find nothing yet); returns the unsubscribe. */
  onEnqueue(listener: () => void): () => void;
  start(): void;
  /** Stops claiming new jobs and waits for the ones in flight. */
  stop(): Promise<void>;
  /** Jobs waiting or running, per queue; rejects when a source it reads (the database, and in broker mode the broker) fails. */
  backlog(): Promise<Record<string, number>>;
  /**
   * Sets the backlog gauges for a metrics scrape (readForScrape): a source
   * that fails or is late has the gauges that need it left out. Never rejects.
   */
  refreshMetrics(): Promise<void>;
}
