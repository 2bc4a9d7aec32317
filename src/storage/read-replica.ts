// Reads that a streaming replica may serve, without ever answering with
// older data than the primary would have when the request arrived.
//
// A replica replays the primary's WAL a little later, so a plain read there
// can miss what a client has just been told is committed: its order after a
// 202, a sale that took the last unit. Knowing which commits "the caller"
// made would need state shared between processes (a client may write through
// one api process and read through another), so each read waits for a
// stronger, simpler condition: the replica has replayed everything the
// primary had flushed when the read began. Every commit acknowledged before
// the request arrived, the caller's and everyone else's, is then visible,
// and the answer is one the primary could have given. Concretely:
//
//   1. Probe the primary: SELECT pg_current_wal_flush_lsn(). Concurrent reads
//      share one probe, but only one sent after they arrived (FlushLsnProbe).
//   2. Poll the replica's pg_last_wal_replay_lsn() until it reaches that LSN.
//      One poll at a time serves every waiting read (ReplayWatch).
//   3. Run the read on the replica. Its snapshot is taken after the poll saw
//      the replay position at or past the target, and replay only moves
//      forward, so the snapshot holds every commit up to the target.
//
// "Only moves forward" has one exception: a standby that crashes (not a clean
// stop, which checkpoints) may accept connections again at its last
// consistent point, behind what it had replayed. A read that passed step 2
// just before such a crash and reached the restarted server before it
// replayed the rest could miss the newest commits. The read is sent in the
// same turn of the event loop as the poll's answer, so that needs a read that
// waits in the client's connection queue for longer than the standby takes to
// crash and start again; reads that begin after the crash see the connection
// errors, go to the primary, and the replica is used again only once a poll
// shows it past a fresh target.
//
// Whatever goes wrong with the replica, the read goes to the primary: the
// replica is down or answers an error (reason `down`/`error`), it has not
// caught up within maxWaitMs (`lagging`), it is no longer a standby
// (`promoted`: it may be diverging from the primary), or it was never a copy
// of this primary (`unrelated`: another system identifier, checked before
// the replica is used at all). After a failure, reads
// go straight to the primary and a background check every recheckMs brings
// the replica back when it answers caught up again. A replica never fails a
// request; the primary's own errors (PostgreSQL down: 503) stay what they are.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Gauge } from 'prom-client';
import { AppError } from '../errors.ts';
import type { Metrics } from '../observability/metrics.ts';
import { DatabaseUnavailableError, type Database, type Queryable } from './database.ts';

/** Where a read goes. Routes that use it are listed in docs/architecture.md ("Read replica"). */
export interface ReadRouter {
  /**
   * Runs `read` on the replica once it has replayed every commit the primary
   * had made durable when this call began, else on the primary. `read` may
   * run on the replica and then again on the primary, so it must only read.
   * Errors: those of `read` on the primary; the replica's are never thrown.
   */
  read<T>(read: (db: Queryable) => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** No replica configured: every read goes to the primary. */
export function primaryReads(primary: Database): ReadRouter {
  return { read: (read) => read(primary), close: async () => {} };
}

/** Why a read went to the primary rather than the replica. */
export type FallbackReason = 'down' | 'lagging' | 'promoted' | 'unrelated' | 'error';
type WaitOutcome = 'caught_up' | Exclude<FallbackReason, 'error'>;

export interface ReplicaOptions {
  /** How long a read waits for the replica to catch up before it goes to the primary (DATABASE_READ_MAX_WAIT_MS). */
  maxWaitMs: number;
  /** How often a replica that failed is checked again. */
  recheckMs?: number;
  /**
   * Least time between two probes of the primary, and between two polls of
   * the replica, while reads wait. Longer spacing makes each serve more reads
   * under load and costs each read up to that much more waiting.
   */
  pollIntervalMs?: number;
}

/**
 * A PostgreSQL log sequence number ("16/B374D848") as a number that compares
 * like the position it names (the high and low 32 bits of a 64-bit offset).
 */
function parseLsn(text: string): bigint {
  const match = /^([0-9A-F]{1,8})\/([0-9A-F]{1,8})$/i.exec(text);
  if (!match) throw new Error(`not a PostgreSQL LSN: "${text}"`);
  return (BigInt(`0x${match[1]}`) << 32n) | BigInt(`0x${match[2]}`);
}

// Both values come from one statement, so "standby" describes the server
// whose replay position is reported. pg_last_wal_replay_lsn() stays frozen on
// a promoted server, and is NULL on one that was never a standby.
const REPLAY_POSITION = 'SELECT pg_is_in_recovery() AS standby, pg_last_wal_replay_lsn()::text AS replayed';
type ReplayRow = { standby: boolean; replayed: string | null };

function judge(row: ReplayRow | undefined, target: bigint): 'caught_up' | 'promoted' | 'behind' {
  if (!row || !row.standby || row.replayed === null) return 'promoted';
  return parseLsn(row.replayed) >= target ? 'caught_up' : 'behind';
}

/**
 * The primary's flushed WAL position, shared by concurrent callers. A probe
 * already in flight may have run before a caller's own commit was
 * acknowledged, so a caller only joins a probe sent after it asked: at most
 * one runs, and the callers that arrive meanwhile share the next one.
 *
 * Flushed, not written or inserted: with synchronous_commit on (which a 202
 * relies on for durability) every acknowledged commit is flushed, and the
 * standby receives only flushed WAL, so this is the smallest sufficient target.
 */
class FlushLsnProbe {
  readonly #primary: Database;
  readonly #minIntervalMs: number;
  #inFlight: Promise<bigint> | undefined;
  #queued: Promise<bigint> | undefined;
  #lastStart = -Infinity;

  /** Probes start at least minIntervalMs apart, so that under load one probe serves many reads. */
  constructor(primary: Database, minIntervalMs: number) {
    this.#primary = primary;
    this.#minIntervalMs = minIntervalMs;
  }

  current(): Promise<bigint> {
    if (this.#queued) return this.#queued;
    const wait = this.#lastStart + this.#minIntervalMs - performance.now();
    if (!this.#inFlight && wait <= 0) return this.#start();
    const queued = (this.#inFlight ?? Promise.resolve(0n))
      .then(
        () => undefined,
        () => undefined,
      )
      .then(async () => {
        const remaining = this.#lastStart + this.#minIntervalMs - performance.now();
        if (remaining > 0) await sleep(remaining);
        this.#queued = undefined;
        return this.#start();
      });
    this.#queued = queued;
    return queued;
  }

  #start(): Promise<bigint> {
    this.#lastStart = performance.now();
    const probe = this.#primary
      .query<{ lsn: string }>('SELECT pg_current_wal_flush_lsn()::text AS lsn')
      .then((rows) => parseLsn(rows[0]!.lsn))
      .finally(() => {
        if (this.#inFlight === probe) this.#inFlight = undefined;
      });
    this.#inFlight = probe;
    return probe;
  }
}

interface Waiter {
  target: bigint;
  resolve: (outcome: WaitOutcome) => void;
}

/**
 * Waits for the replica to replay up to a target LSN. One poll loop serves
 * every waiting read, and runs only while some read waits. A waiter that is
 * not satisfied within its deadline gets `lagging`, also when the replica
 * does not answer at all (a hung connection costs a read its bound, never more).
 */
class ReplayWatch {
  readonly #replica: Database;
  readonly #pollIntervalMs: number;
  readonly #waiting: Gauge;
  readonly #waiters = new Set<Waiter>();
  #polling = false;
  /** The error that made the last poll fail, for the log line. */
  lastError: unknown;

  constructor(replica: Database, pollIntervalMs: number, waiting: Gauge) {
    this.#replica = replica;
    this.#pollIntervalMs = pollIntervalMs;
    this.#waiting = waiting;
  }

  waitFor(target: bigint, maxWaitMs: number): Promise<WaitOutcome> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => settle('lagging'), maxWaitMs);
      const waiter: Waiter = {
        target,
        resolve: (outcome) => settle(outcome),
      };
      const settle = (outcome: WaitOutcome) => {
        if (!this.#waiters.delete(waiter)) return;
        this.#waiting.dec();
        clearTimeout(timer);
        resolve(outcome);
      };
      this.#waiters.add(waiter);
      this.#waiting.inc();
      if (!this.#polling) void this.#poll();
    });
  }

  async #poll(): Promise<void> {
    this.#polling = true;
    try {
      while (this.#waiters.size > 0) {
        let row: ReplayRow | undefined;
        try {
          [row] = await this.#replica.query<ReplayRow>(REPLAY_POSITION);
        } catch (error) {
          this.lastError = error;
          for (const waiter of [...this.#waiters]) waiter.resolve('down');
          return;
        }
        for (const waiter of [...this.#waiters]) {
          const outcome = judge(row, waiter.target);
          if (outcome !== 'behind') waiter.resolve(outcome);
        }
        if (this.#waiters.size > 0) await sleep(this.#pollIntervalMs);
      }
    } finally {
      this.#polling = false;
    }
  }
}

const FALLBACK_MESSAGES: Record<FallbackReason, string> = {
  down: 'the read replica is unreachable; its reads go to the primary until it answers again',
  lagging:
    'the read replica has not replayed the primary within DATABASE_READ_MAX_WAIT_MS; its reads go to the primary until it catches up',
  promoted:
    'the server at DATABASE_READ_URL is no longer a standby (promoted?); its reads go to the primary until it is one again',
  unrelated:
    'the server at DATABASE_READ_URL is not a copy of the primary (its system identifier differs); reads go to the primary',
  error: 'a read on the replica failed; it and the next reads go to the primary until the replica has caught up again',
};

// Equal on a primary and every physical standby made from it; a restored or
// unrelated cluster has its own, and its LSNs mean nothing to the primary.
const SYSTEM_ID = 'SELECT system_identifier::text AS id FROM pg_control_system()';

/** Reads through a streaming replica (see the top of this file). */
export class ReplicaReads implements ReadRouter {
  readonly #primary: Database;
  readonly #replica: Database;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #maxWaitMs: number;
  readonly #recheckMs: number;
  readonly #probe: FlushLsnProbe;
  readonly #watch: ReplayWatch;
  /** undefined while reads go to the replica; otherwise why they do not. */
  #fallback: FallbackReason | undefined;
  /** Until the first check passes, reads go to the primary, and a failed check is news worth a log line. */
  #checkedOnce = false;
  #recheck: Promise<void> | undefined;
  #closed = new AbortController();

  constructor(deps: { primary: Database; replica: Database; metrics: Metrics; log: Logger }, options: ReplicaOptions) {
    this.#primary = deps.primary;
    this.#replica = deps.replica;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#maxWaitMs = options.maxWaitMs;
    this.#recheckMs = options.recheckMs ?? 1_000;
    const pollIntervalMs = options.pollIntervalMs ?? 5;
    this.#probe = new FlushLsnProbe(deps.primary, pollIntervalMs);
    this.#watch = new ReplayWatch(deps.replica, pollIntervalMs, deps.metrics.replicaWaiting);
    this.#fallback = 'down';
    this.#metrics.readReplicaUp.set(0);
    this.#startRecheck(0);
  }

  async read<T>(read: (db: Queryable) => Promise<T>): Promise<T> {
    if (this.#fallback !== undefined) return this.#onPrimary(read, this.#fallback);
    // The primary being down is not the replica's business: the read fails
    // there as it would without a replica (503).
    const target = await this.#probe.current();
    const began = performance.now();
    const outcome = await this.#watch.waitFor(target, this.#maxWaitMs);
    this.#metrics.replicaWait.observe((performance.now() - began) / 1000);
    if (outcome !== 'caught_up') {
      this.#fail(outcome, outcome === 'down' ? this.#watch.lastError : undefined);
      return this.#onPrimary(read, outcome);
    }
    let result: T;
    try {
      result = await read(this.#replica);
    } catch (error) {
      // A refusal of the request (a cursor naming no order of the caller's)
      // is the read's answer, the same on either database: failing over
      // would take the replica out of use for every request until the next
      // check, on one client's bad input.
      if (error instanceof AppError) {
        this.#metrics.routedReads.inc({ database: 'replica', reason: 'caught_up' });
        throw error;
      }
      const reason: FallbackReason = error instanceof DatabaseUnavailableError ? 'down' : 'error';
      this.#fail(reason, error);
      return this.#onPrimary(read, reason);
    }
    this.#metrics.routedReads.inc({ database: 'replica', reason: 'caught_up' });
    return result;
  }

  async close(): Promise<void> {
    this.#closed.abort();
    await this.#recheck;
    await this.#replica.close();
    this.#metrics.readReplicaUp.set(0);
  }

  #onPrimary<T>(read: (db: Queryable) => Promise<T>, reason: FallbackReason): Promise<T> {
    this.#metrics.routedReads.inc({ database: 'primary', reason });
    return read(this.#primary);
  }

  /** Sends reads to the primary, says so once, and starts checking the replica again. */
  #fail(reason: FallbackReason, error?: unknown): void {
    if (this.#fallback !== undefined) return;
    this.#fallback = reason;
    this.#metrics.readReplicaUp.set(0);
    this.#log.warn({ reason, ...(error !== undefined ? { err: error } : {}) }, FALLBACK_MESSAGES[reason]);
    this.#startRecheck(this.#recheckMs);
  }

  #startRecheck(firstDelayMs: number): void {
    if (this.#recheck || this.#closed.signal.aborted) return;
    const loop: Promise<void> = this.#recheckLoop(firstDelayMs)
      .catch((error: unknown) =>
        this.#log.error({ err: error }, 'checking the read replica failed; its reads stay on the primary'),
      )
      .finally(() => {
        if (this.#recheck === loop) this.#recheck = undefined;
      });
    this.#recheck = loop;
  }

  /** Checks the replica every recheckMs until it has caught up with the primary within the bound. */
  async #recheckLoop(delayMs: number): Promise<void> {
    const signal = this.#closed.signal;
    try {
      for (;;) {
        if (delayMs > 0) await sleep(delayMs, undefined, { signal });
        delayMs = this.#recheckMs;
        const outcome = await this.#check();
        if (signal.aborted) return;
        if (outcome === undefined) continue; // the primary is unreachable: nothing to compare with yet
        if (outcome === 'caught_up') {
          const previous = this.#fallback;
          // Cleared first: a read failing from here on must start a new loop.
          this.#recheck = undefined;
          this.#fallback = undefined;
          this.#metrics.readReplicaUp.set(1);
          if (this.#checkedOnce)
            this.#log.info(
              { previous },
              'the read replica has caught up with the primary; reads that may use it go to it again',
            );
          this.#checkedOnce = true;
          return;
        }
        // Said once per reason: at the first check, and when the reason changes.
        if (!this.#checkedOnce || outcome !== this.#fallback) {
          this.#log.warn(
            { reason: outcome, ...(outcome === 'down' ? { err: this.#watch.lastError } : {}) },
            FALLBACK_MESSAGES[outcome],
          );
        }
        this.#checkedOnce = true;
        this.#fallback = outcome;
      }
    } catch (error) {
      if (!signal.aborted) throw error;
    }
  }

  /** Whether the replica is a copy of the primary that has replayed its latest commits; undefined when the primary cannot say. */
  async #check(): Promise<WaitOutcome | 'unrelated' | undefined> {
    let primaryId: string | undefined;
    try {
      const [row] = await this.#primary.query<{ id: string }>(SYSTEM_ID);
      primaryId = row?.id;
    } catch {
      return undefined;
    }
    try {
      const [row] = await this.#replica.query<{ id: string }>(SYSTEM_ID);
      if (row?.id !== primaryId) return 'unrelated';
    } catch (error) {
      this.#watch.lastError = error;
      return 'down';
    }
    let target: bigint;
    try {
      target = await this.#probe.current();
    } catch {
      return undefined;
    }
    return this.#watch.waitFor(target, this.#maxWaitMs);
  }
}
