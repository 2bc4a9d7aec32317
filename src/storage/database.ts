// The storage port. Module code talks SQL (PostgreSQL dialect, $1 parameters)
// through this small interface, so the same statements run on the embedded
// PGlite and on a PostgreSQL server.

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

export interface TransactionOptions {
  /**
   * On PostgreSQL, the longest the transaction may take, in ms, from waiting
   * for its connection to COMMIT, and each of its statements' timeout; 0 for
   * none (migrations). Default: the database's own timeout (DATABASE_TIMEOUT_MS).
   */
  timeoutMs?: number;
}

export interface Database extends Queryable {
  readonly kind: 'pglite' | 'postgres';
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

const UNIQUE_VIOLATION = '23505';

export function isUniqueViolation(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === UNIQUE_VIOLATION;
}
