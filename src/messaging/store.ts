// SQL of the messaging module: its tables are messaging.jobs and
// messaging.dead_jobs (the database queue), messaging.outbox (messages
// waiting for the relay) and messaging.inbox (messages a consumer has
// applied). Only this module touches them; the queue and relay classes
// call these functions.
import { invalidDeadLetterCursor, type DeadLetter, type DeadLetterPage } from './dead-letters.ts';
import type { JsonObject } from './queue.ts';
import type { Queryable } from '../storage/database.ts';

/** A bigint[] parameter as its text form: ids travel as text and are cast once, not per element. */
const idArray = (ids: readonly string[]) => `{${ids.join(',')}}`;

// --- jobs (the database queue) ----------------------------------------------

/** $1 queue, $2 payloads (JSON text[]), $3 keys (text[], null: no key), $4 delay in seconds, $5 max attempts, $6 trace contexts (JSON text[], null: none). */
export const INSERT_JOBS_SQL = `INSERT INTO messaging.jobs (queue, payload, key, run_at, max_attempts, trace_context)
       SELECT $1, j.payload::jsonb, j.key, now() + make_interval(secs => $4::float8), $5, j.trace::jsonb
         FROM unnest($2::text[], $3::text[], $6::text[]) AS j(payload, key, trace)
       ON CONFLICT (key) DO NOTHING`;

export interface NewRow {
  payload: JsonObject;
  key: string | null;
  /** The trace the message continues, as JSON text (see traceColumn), or null. */
  trace: string | null;
}

/** Queues jobs; a job whose key is already queued is skipped. */
export async function insertJobs(
  tx: Queryable,
  queue: string,
  jobs: readonly NewRow[],
  delayMs: number,
  maxAttempts: number,
): Promise<void> {
  await tx.query(INSERT_JOBS_SQL, [
    queue,
    jobs.map((j) => JSON.stringify(j.payload)),
    jobs.map((j) => j.key),
    delayMs / 1000,
    maxAttempts,
    jobs.map((j) => j.trace),
  ]);
}

export interface ClaimedJob {
  id: string;
  queue: string;
  /** Whatever the row holds: it is checked against the consumer's schema before use. */
  payload: unknown;
  attempts: number;
  max_attempts: number;
  /** The trace the job continues (see inMessageSpan). */
  trace_context: unknown;
  [column: string]: unknown;
}

/** Claims up to limit ready jobs of a queue and leases them for leaseMs, counting the attempt. */
export function claimJobs(db: Queryable, queue: string, limit: number, leaseMs: number): Promise<ClaimedJob[]> {
  return db.query<ClaimedJob>(
    `UPDATE messaging.jobs
        SET attempts = attempts + 1, locked_until = now() + make_interval(secs => $3::float8)
      WHERE id IN (SELECT id FROM messaging.jobs
                    WHERE queue = $1 AND run_at <= now() AND (locked_until IS NULL OR locked_until < now())
                    ORDER BY run_at, id LIMIT $2
                    FOR UPDATE SKIP LOCKED)
     RETURNING id::text AS id, queue, payload, attempts, max_attempts, trace_context`,
    [queue, limit, leaseMs / 1000],
  );
}

/** Removes finished jobs (in the transaction that applied their effect). */
export async function deleteJobs(tx: Queryable, ids: readonly string[]): Promise<void> {
  await tx.query('DELETE FROM messaging.jobs WHERE id = ANY($1::text::bigint[])', [idArray(ids)]);
}

/** Moves a job to messaging.dead_jobs with the reason. */
export async function buryJob(db: Queryable, id: string, reason: string): Promise<void> {
  await db.query(
    `WITH dead AS (DELETE FROM messaging.jobs WHERE id = $1 RETURNING *)
     INSERT INTO messaging.dead_jobs (id, queue, payload, key, attempts, last_error, created_at)
     SELECT id, queue, payload, key, attempts, $2, created_at FROM dead`,
    [id, reason],
  );
}

/** Releases a failed job's lease and runs it again after delayMs. */
export async function retryJobLater(db: Queryable, id: string, delayMs: number, reason: string): Promise<void> {
  await db.query(
    `UPDATE messaging.jobs SET run_at = now() + make_interval(secs => $2::float8), locked_until = NULL, last_error = $3 WHERE id = $1`,
    [id, delayMs / 1000, reason],
  );
}

/** Jobs queued and dead, per queue, in one round trip. */
export async function jobCounts(
  db: Queryable,
): Promise<{ queued: Record<string, number>; dead: Record<string, number> }> {
  const rows = await db.query<{ dead: boolean; queue: string; count: number }>(
    `SELECT false AS dead, queue, count(*)::int AS count FROM messaging.jobs GROUP BY queue
     UNION ALL
     SELECT true, queue, count(*)::int FROM messaging.dead_jobs GROUP BY queue`,
  );
  return {
    queued: Object.fromEntries(rows.filter((r) => !r.dead).map((r) => [r.queue, r.count])),
    dead: Object.fromEntries(rows.filter((r) => r.dead).map((r) => [r.queue, r.count])),
  };
}

// --- outbox (broker mode: the relay publishes it) ---------------------------

/** $1 queue, $2 payloads (JSON text[]), $3 keys (text[]), $4 max attempts, $5 delay in seconds, $6 trace contexts (JSON text[], null: none). */
export const INSERT_OUTBOX_SQL = `INSERT INTO messaging.outbox (queue, payload, key, max_attempts, available_at, trace_context)
       SELECT $1, j.payload::jsonb, j.key, $4, now() + make_interval(secs => $5::float8), j.trace::jsonb
         FROM unnest($2::text[], $3::text[], $6::text[]) AS j(payload, key, trace)
       ON CONFLICT (key) DO NOTHING`;

/** Writes outbox rows; a row whose key is still unsent is skipped. */
export async function insertOutbox(
  tx: Queryable,
  queue: string,
  jobs: readonly NewRow[],
  delayMs: number,
  maxAttempts: number,
): Promise<void> {
  await tx.query(INSERT_OUTBOX_SQL, [
    queue,
    jobs.map((j) => JSON.stringify(j.payload)),
    jobs.map((j) => j.key),
    maxAttempts,
    delayMs / 1000,
    jobs.map((j) => j.trace),
  ]);
}

export interface OutboxRow {
  id: string;
  message_id: string;
  queue: string;
  payload: JsonObject;
  max_attempts: number;
  /** The trace the message continues (the relay's publish span continues it). */
  trace_context: unknown;
  [column: string]: unknown;
}

/** Whether any row is ready to publish: one cheap read for an idle relay. */
export async function outboxHasReady(db: Queryable): Promise<boolean> {
  // Through the primary key, like the pass itself: the table churns (a row
  // per message, deleted once sent), and a sequential scan would read every
  // dead row autovacuum has not yet removed, while an index scan learns to
  // skip them.
  const rows = await db.query('SELECT 1 FROM messaging.outbox WHERE available_at <= now() ORDER BY id LIMIT 1');
  return rows.length > 0;
}

/** Up to limit ready rows, oldest first. */
export function readyOutbox(tx: Queryable, limit: number): Promise<OutboxRow[]> {
  return tx.query<OutboxRow>(
    // Ordered by the bigint column, not the text alias (text order puts 10 before 9).
    `SELECT o.id::text AS id, o.message_id, o.queue, o.payload, o.max_attempts, o.trace_context FROM messaging.outbox o
      WHERE o.available_at <= now() ORDER BY o.id LIMIT $1`,
    [limit],
  );
}

/** Removes published rows, exactly these: a row committed meanwhile with a lower id stays for the next pass. */
export async function deleteOutbox(tx: Queryable, ids: readonly string[]): Promise<void> {
  await tx.query('DELETE FROM messaging.outbox WHERE id = ANY($1::text::bigint[])', [idArray(ids)]);
}

/** Unsent rows per queue. */
export async function outboxCounts(db: Queryable): Promise<Record<string, number>> {
  const rows = await db.query<{ queue: string; count: number }>(
    'SELECT queue, count(*)::int AS count FROM messaging.outbox GROUP BY queue',
  );
  return Object.fromEntries(rows.map((row) => [row.queue, row.count]));
}

// Any constant works; it only has to be the same in every Orderflow process
// (the migrator uses 727_001).
const RELAY_LOCK = 727_002;

/**
 * Up to limit ready rows, oldest first, if this transaction takes the relays'
 * transaction-scoped advisory lock (no other relay holds it: only one
 * publishes at a time); none if it does not. One statement: the lock is
 * tried once, as an InitPlan whose result is a one-time filter, before the
 * outbox is read, so a pass that finds the lock held reads no row. An empty
 * answer does not say which: either way there is nothing to publish.
 */
export function lockedReadyOutbox(tx: Queryable, limit: number): Promise<OutboxRow[]> {
  return tx.query<OutboxRow>(
    `SELECT o.id::text AS id, o.message_id, o.queue, o.payload, o.max_attempts, o.trace_context FROM messaging.outbox o
      WHERE (SELECT pg_try_advisory_xact_lock($2)) AND o.available_at <= now() ORDER BY o.id LIMIT $1`,
    [limit, RELAY_LOCK],
  );
}

/** The first key of the lock one dead letter is settled under (the second is a hash of its id). */
const DEAD_LETTER_LOCK = 727_003;

/**
 * Waits for, and takes, the transaction-scoped lock of one dead letter: two
 * settles of the same letter (two operators, two processes) run one after
 * the other, so the second sees what the first committed.
 */
export async function lockDeadLetter(tx: Queryable, id: string): Promise<void> {
  await tx.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [DEAD_LETTER_LOCK, id]);
}

// --- inbox (broker mode: what a consumer has applied) -----------------------

/**
 * Records messages as applied. onDuplicate 'fail': a plain INSERT, so if a
 * concurrent delivery of the same message committed first, the caller's
 * transaction fails and its effect is undone; 'ignore': nothing to undo.
 */
export async function insertInbox(
  tx: Queryable,
  messages: readonly { queue: string; id: string }[],
  onDuplicate: 'fail' | 'ignore',
): Promise<void> {
  await tx.query(
    `INSERT INTO messaging.inbox (queue, message_id) SELECT * FROM unnest($1::text[], $2::text[])${onDuplicate === 'ignore' ? ' ON CONFLICT DO NOTHING' : ''}`,
    [messages.map((m) => m.queue), messages.map((m) => m.id)],
  );
}

/** Whether the message was applied before. */
export async function inboxHas(db: Queryable, queue: string, id: string): Promise<boolean> {
  const rows = await db.query('SELECT 1 FROM messaging.inbox WHERE queue = $1 AND message_id = $2', [queue, id]);
  return rows.length > 0;
}

/** Forgets messages applied more than retentionMs ago; returns how many. */
export async function pruneInbox(db: Queryable, retentionMs: number): Promise<number> {
  const [removed] = await db.query<{ rows: number }>(
    `WITH pruned AS (DELETE FROM messaging.inbox WHERE processed_at < now() - make_interval(secs => $1::float8) RETURNING 1)
     SELECT count(*)::int AS rows FROM pruned`,
    [retentionMs / 1000],
  );
  return removed?.rows ?? 0;
}

// --- dead letters an operator inspects and settles (messaging.dead_jobs) ------

interface DeadJobRow {
  id: string;
  queue: string;
  body: string;
  key: string | null;
  attempts: number;
  last_error: string | null;
  died_at: Date;
  [column: string]: unknown;
}

// The id is read as text (a bigint may pass 2^53), under the column's own
// name: an ORDER BY must name the table's column (dead_jobs.id), or it sorts
// the text and "10" comes before "9".
const DEAD_JOB_COLUMNS = 'id::text AS id, queue, payload::text AS body, key, attempts, last_error, died_at';

function toDeadLetter(row: DeadJobRow): DeadLetter {
  return {
    id: row.id,
    queue: row.queue,
    body: row.body,
    reason: row.last_error ?? '',
    attempts: row.attempts,
    diedAt: row.died_at.toISOString(),
    key: row.key,
  };
}

/** A page of messaging.dead_jobs in job order, after the job id `after`; AppError validation_failed for an `after` that is no job id. */
export async function deadJobs(
  db: Queryable,
  options: { queue?: string; limit: number; after?: string },
): Promise<DeadLetterPage> {
  if (options.after !== undefined && !/^\d{1,18}$/.test(options.after)) {
    throw invalidDeadLetterCursor();
  }
  const rows = await db.query<DeadJobRow>(
    `SELECT ${DEAD_JOB_COLUMNS} FROM messaging.dead_jobs
      WHERE ($1::text IS NULL OR queue = $1) AND ($2::bigint IS NULL OR id > $2) ORDER BY dead_jobs.id LIMIT $3`,
    [options.queue ?? null, options.after ?? null, options.limit + 1],
  );
  const page = rows.slice(0, options.limit);
  return { items: page.map(toDeadLetter), next: rows.length > options.limit ? page.at(-1)?.id : undefined };
}

/** Deletes one dead job in the caller's transaction and returns it; undefined when there is none with this id. */
export async function takeDeadJob(tx: Queryable, id: string): Promise<DeadLetter | undefined> {
  const rows = await tx.query<DeadJobRow>(
    `DELETE FROM messaging.dead_jobs WHERE id = $1::bigint RETURNING ${DEAD_JOB_COLUMNS}`,
    [id],
  );
  return rows[0] ? toDeadLetter(rows[0]) : undefined;
}
