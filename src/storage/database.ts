// The storage port. Each module's store.ts talks SQL (PostgreSQL dialect, $1
// parameters) through this small interface, so the same statements run on
// the embedded PGlite and on a PostgreSQL server.

export type Row = Record<string, unknown>;

/**
 * Something that runs statements: the database itself or an open transaction.
 * In a transaction, statements issued before the previous one has answered
 * run in the order issued, and on PostgreSQL they are pipelined: several
 * independent statements awaited together cost one round trip, not one each.
 * If one fails, the transaction fails with it.
 */
export interface Queryable {
  query<T extends Row = Row>(text: string, params?: readonly unknown[]): Promise<T[]>;
}

/**
 * An open transaction. commit() lets a transaction's last statements and its
 * COMMIT travel together: on PostgreSQL in the same write, so committing
 * costs no round trip of its own.
 */
export interface Transaction extends Queryable {
  /**
   * Commits now, without waiting for the answers of the statements already
   * issued: COMMIT is sent right behind them. `last` are those statements'
   * promises (or promises built on them, e.g. a store function's); commit
   * resolves with their values, in order, once COMMIT has succeeded.
   *
   * Use it only when nothing in those answers could make fn want to roll
   * back: COMMIT is on its way before they arrive. If any statement of the
   * transaction failed, PostgreSQL rolls back instead of committing, and
   * commit rejects with the first of `last` to reject (else with a
   * TransactionRolledBackError), whatever fn does with that rejection: the
   * transaction rejects too. An error that is not the database's (a mapping
   * of rows that throws) arrives too late to roll back; commit rejects with
   * it though the transaction committed.
   *
   * After commit the transaction takes no more statements (they reject), and
   * fn's result is the transaction's; a throw after commit resolved no longer
   * undoes anything. Called at most once.
   */
  commit<const P extends readonly unknown[]>(last: P): Promise<{ -readonly [K in keyof P]: Awaited<P[K]> }>;
}

/** COMMIT came back as ROLLBACK: a statement in the transaction had failed (and fn went on). */
export class TransactionRolledBackError extends Error {
  constructor(options?: { cause?: unknown }) {
    super('the transaction was rolled back: one of its statements failed', options);
    this.name = 'TransactionRolledBackError';
  }
}

export interface TransactionOptions {
  /**
   * On PostgreSQL, the longest the transaction may take, in ms, from waiting
   * for its connection to COMMIT, and each of its statements' timeout; 0 for
   * none (migrations). Default: the database's own timeout (DATABASE_TIMEOUT_MS).
   */
  timeoutMs?: number;
}

export interface Database extends Queryable {
  /** Which adapter this is, for logs and metrics only: code asks the capabilities below instead. */
  readonly kind: 'pglite' | 'postgres';
  /**
   * Whether several transactions run at once. False for the embedded
   * database: it runs one transaction at a time, an open transaction holds
   * it whole, and it belongs to this process alone (nothing to lock against
   * other processes).
   */
  readonly concurrentTransactions: boolean;
  /**
   * Runs fn in one transaction: committed when fn resolves (or when it
   * calls tx.commit), rolled back when it throws before that. A statement
   * that failed rolls the transaction back even if fn caught its error: the
   * transaction then rejects with that error. Rejects with
   * DatabaseUnavailableError when the database cannot be reached or does not
   * answer in time; a COMMIT whose answer was lost that way may still have
   * committed.
   */
  transaction<T>(fn: (tx: Transaction) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /** Runs a script of several statements without parameters (migrations). */
  exec(script: string): Promise<void>;
  close(): Promise<void>;
}

/** The database could not be reached, answered with a connection-level failure, or did not answer in time: worth a retry later (503). */
export class DatabaseUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DatabaseUnavailableError';
  }
}

/**
 * A bigint (int8) value outside JavaScript's safe integers, ±(2^53 − 1),
 * which a number cannot hold exactly. Both adapters refuse such a row rather
 * than round it: money must never change on its way out of the database.
 */
export class UnsafeIntegerError extends Error {
  readonly column: string;
  constructor(column: string, value: bigint) {
    super(
      `column "${column}" holds ${value}, outside JavaScript's safe integers (±${Number.MAX_SAFE_INTEGER}); it cannot be read without rounding`,
    );
    this.name = 'UnsafeIntegerError';
    this.column = column;
  }
}

/**
 * How both adapters read int8 (bigint) columns: a number when it is a safe
 * integer, else a bigint that assertSafeIntegers then refuses. The parser
 * itself must not throw: the PostgreSQL driver would take a throwing parser
 * for a broken connection.
 */
export function parseInt8(text: string): number | bigint {
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : BigInt(text);
}

/** Throws UnsafeIntegerError for the first int8 value parseInt8 could not turn into a number; returns the rows otherwise. */
export function assertSafeIntegers<T extends Row>(rows: T[]): T[] {
  for (const row of rows) {
    for (const column in row) {
      const value = row[column];
      if (typeof value === 'bigint') throw new UnsafeIntegerError(column, value);
    }
  }
  return rows;
}

const UNIQUE_VIOLATION = '23505';

export function isUniqueViolation(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === UNIQUE_VIOLATION;
}
