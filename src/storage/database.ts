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
  /**
   * In a PostgreSQL transaction: sends COMMIT right behind the statements
   * issued so far, in their round trip, instead of after the transaction's
   * function resolves; undefined elsewhere (call it as `tx.commitNow?.()`).
   * Call it only once every statement of the transaction has been issued
   * (synchronously, before awaiting any of them): a statement issued after it
   * is refused, but too late to undo what was committed. The COMMIT commits
   * only if every statement before it succeeded (a failed one makes it a
   * rollback and the transaction rejects), so whatever the caller checks of
   * those statements' answers must be checked by the database itself, as an
   * error, not by the caller once the answers are in.
   */
  commitNow?(): void;
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
   * Runs fn in one transaction: committed when fn resolves, rolled back when
   * it throws. Rejects with DatabaseUnavailableError when the database cannot
   * be reached or does not answer in time; a COMMIT whose answer was lost
   * that way may still have committed.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>, options?: TransactionOptions): Promise<T>;
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
