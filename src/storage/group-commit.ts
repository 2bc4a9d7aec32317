// Application-level group commit. A commit costs a WAL flush however little
// the transaction wrote, so committing many small units of work together
// multiplies what the database can take. GroupCommit gathers the work
// submitted while a batch is being committed and commits it as the next
// batch: with no load a unit goes at once (no added latency); under load the
// batches grow by themselves, up to maxBatch.
//
// Each unit still gets its own answer. commitBatch reports per-unit
// refusals as outcomes; if the batch's transaction fails as a whole (a
// deadlock with another process, a unit that threw) every unit is retried
// alone, so no unit pays for another's problem. Units must therefore be pure
// database work: safe to run again after a rollback.
//
// Traced, each batch is a span of its own (a new trace) linked to the span of
// every unit it carries, and each unit's span links back to its batch: one
// batch serves many traces, and either end leads to the other.
import { activeSpan, inSpan, outsideTraces, type Span } from '../observability/tracing.ts';
import { DatabaseUnavailableError, type Database, type Transaction } from './database.ts';
import { GROUP_COMMIT } from '../tunables.ts';

export type UnitOutcome<R> = { ok: true; value: R } | { ok: false; error: unknown };

export interface GroupCommitOptions<I> {
  /** How long a batch waits for company while another one is being committed. */
  windowMs?: number;
  maxBatch?: number;
  /** Batches committed at the same time (each holds a database connection). */
  maxInFlight?: number;
  /** Units with the same key never share a batch (e.g. one idempotency key). */
  keyOf?: (unit: I) => string | undefined;
  /** Reports each batch's size (a metric). */
  onBatch?: (size: number) => void;
  /** The name of each batch's span while tracing (e.g. "orders.accept batch"). */
  spanName?: string;
}

interface Waiting<I, R> {
  unit: I;
  resolve(value: R): void;
  reject(error: unknown): void;
  /** The span active when the unit was submitted (its request or job). */
  span: Span | undefined;
}

export class GroupCommit<I, R> {
  readonly #db: Database;
  readonly #commitBatch: (tx: Transaction, units: readonly I[]) => Promise<UnitOutcome<R>[]>;
  readonly #windowMs: number;
  readonly #maxBatch: number;
  readonly #maxInFlight: number;
  readonly #keyOf: ((unit: I) => string | undefined) | undefined;
  readonly #onBatch: ((size: number) => void) | undefined;
  readonly #spanName: string;
  #waiting: Waiting<I, R>[] = [];
  #inFlight = 0;
  #timer: NodeJS.Timeout | undefined;
  #immediate = false;

  constructor(
    db: Database,
    commitBatch: (tx: Transaction, units: readonly I[]) => Promise<UnitOutcome<R>[]>,
    options: GroupCommitOptions<I> = {},
  ) {
    this.#db = db;
    this.#commitBatch = commitBatch;
    this.#windowMs = options.windowMs ?? GROUP_COMMIT.windowMs;
    this.#maxBatch = options.maxBatch ?? GROUP_COMMIT.maxBatch;
    // PGlite runs one transaction at a time; more in flight would only queue.
    // On PostgreSQL one batch at a time is the default too: the next batch
    // grows while this one commits, so fewer, fuller transactions do the
    // same work. For the pay worker's two steps it measured 1.18x the
    // orders/s of two in flight (docs/performance.md); accepting sets its
    // own limit (app.ts), where 1 and 5 measured the same.
    this.#maxInFlight = db.concurrentTransactions ? (options.maxInFlight ?? 1) : 1;
    this.#keyOf = options.keyOf;
    this.#onBatch = options.onBatch;
    this.#spanName = options.spanName ?? 'group commit batch';
  }

  /** Commits the unit with others; resolves with its own outcome once its batch has committed. */
  submit(unit: I): Promise<R> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ unit, resolve, reject, span: activeSpan() });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#inFlight >= this.#maxInFlight || this.#immediate) return;
    if (this.#inFlight === 0 || this.#waiting.length >= this.#maxBatch) {
      // Go now, once the requests already read in this turn of the event loop have joined.
      this.#immediate = true;
      setImmediate(() => this.#flush());
    } else {
      this.#timer ??= setTimeout(() => this.#flush(), this.#windowMs);
    }
  }

  #flush(): void {
    this.#immediate = false;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    while (this.#waiting.length > 0 && this.#inFlight < this.#maxInFlight) void this.#run(this.#takeBatch());
  }

  #takeBatch(): Waiting<I, R>[] {
    const batch: Waiting<I, R>[] = [];
    const later: Waiting<I, R>[] = [];
    const keys = new Set<string>();
    for (const waiting of this.#waiting) {
      const key = this.#keyOf?.(waiting.unit);
      if (batch.length >= this.#maxBatch || (key !== undefined && keys.has(key))) later.push(waiting);
      else {
        if (key !== undefined) keys.add(key);
        batch.push(waiting);
      }
    }
    this.#waiting = later;
    return batch;
  }

  #commit(batch: Waiting<I, R>[]): Promise<UnitOutcome<R>[]> {
    const work = () =>
      this.#db.transaction((tx) =>
        this.#commitBatch(
          tx,
          batch.map((w) => w.unit),
        ),
      );
    const units = batch.flatMap((w) => (w.span ? [w.span] : []));
    if (units.length === 0) return outsideTraces(work);
    return inSpan(
      this.#spanName,
      {
        root: true,
        links: units.map((unit) => ({ context: unit.spanContext() })),
        attributes: { 'orderflow.batch.size': batch.length },
      },
      (span) => {
        if (span)
          for (const unit of units)
            unit.addLink({ context: span.spanContext(), attributes: { 'orderflow.link': 'batch' } });
        return work();
      },
    );
  }

  async #run(batch: Waiting<I, R>[]): Promise<void> {
    this.#inFlight++;
    this.#onBatch?.(batch.length);
    try {
      const outcomes = await this.#commit(batch);
      outcomes.forEach((outcome, i) =>
        outcome.ok ? batch[i]!.resolve(outcome.value) : batch[i]!.reject(outcome.error),
      );
    } catch (error) {
      if (batch.length === 1 || error instanceof DatabaseUnavailableError) {
        for (const waiting of batch) waiting.reject(error);
      } else {
        for (const waiting of batch) void this.#run([waiting]);
      }
    } finally {
      this.#inFlight--;
      if (this.#waiting.length > 0) this.#schedule();
    }
  }
}
