// PostgreSQL server through the `postgres` driver: a pool of connections,
// prepared statements for every parameterised query.
//
// The driver is patched (patches/postgres+3.4.9.patch, applied by
// patch-package on install): upstream, a connection that went away under a
// reserved connection could crash the process from a timer, hang the
// statements queued behind it, or run them on the next session, outside
// their transaction. docs/architecture.md ("PostgreSQL goes away") has the
// list; test/postgres-driver.test.ts replays each case.
//
// PostgreSQL may vanish at any moment, and no call may wait for it without
// bound. Three things see to that:
//   - a deadline per call: waiting for a pool connection plus the query, or
//     the whole transaction, gets `timeoutMs`, and PostgreSQL cancels any
//     statement running longer (statement_timeout); past it, 503;
//   - a circuit breaker: once a new connection cannot be made, calls fail at
//     once for CIRCUIT_HALF_OPEN_MS, then one call probes the server;
//   - a short reconnect backoff, so the pool is back within about a second
//     of the server (the driver's default grows to 20 s).
import { BrokenCircuitError, CircuitState, ConsecutiveBreaker, circuitBreaker, handleWhen } from 'cockatiel';
import postgres from 'postgres';
import { withDeadline } from '../deadline.ts';
import {
  assertSafeIntegers,
  DatabaseUnavailableError,
  parseInt8,
  type Database,
  TransactionRolledBackError,
  type Row,
  type Transaction,
} from './database.ts';

/** Default of DATABASE_TIMEOUT_MS. */
const DEFAULT_DATABASE_TIMEOUT_MS = 10_000;
/** How long calls fail fast after a connection attempt failed, before one call tries again. */
const CIRCUIT_HALF_OPEN_MS = 500;
/** Longest pause between two attempts to reconnect a pool connection, in seconds. */
const RECONNECT_BACKOFF_MAX_S = 1;

// Errors that say "the server cannot be reached or is going away", whatever
// the statement: socket errors while connecting, writing or reading, the
// driver's own connection states, SQLSTATE class 08 (connection exception),
// 57P01-57P03 (shutting down, crashed, starting up) and 53300 (no free
// connection slot). All of them are worth a retry later: 503, not 500.
const CONNECTION_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  'CONNECT_TIMEOUT',
  '57P01',
  '57P02',
  '57P03',
  '53300',
]);

// Of those, the ones that say a new connection could not be made: the server
// takes none right now, and every other call would wait to learn the same.
// A connection that breaks (57P01, CONNECTION_CLOSED) does not open the
// circuit: one backend killed is no outage.
const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'CONNECT_TIMEOUT',
  '57P03',
  '53300',
]);

/** 57014 query_canceled: statement_timeout ran out. */
const STATEMENT_TIMEOUT = '57014';

function codeOf(error: unknown): unknown {
  return (error as { code?: unknown } | null)?.code;
}

function isConnectionError(code: unknown): boolean {
  return typeof code === 'string' && (CONNECTION_ERRORS.has(code) || code.startsWith('08'));
}

function translate(error: unknown): unknown {
  const code = codeOf(error);
  if (isConnectionError(code)) {
    return new DatabaseUnavailableError(`PostgreSQL is unavailable (${String(code)})`, { cause: error });
  }
  if (code === STATEMENT_TIMEOUT) {
    return new DatabaseUnavailableError('PostgreSQL did not finish a statement within its statement_timeout', {
      cause: error,
    });
  }
  return error;
}

const isConnectFailure = (error: unknown) =>
  error instanceof DatabaseUnavailableError && CONNECT_FAILURES.has(codeOf(error.cause) as string);

export interface PostgresOptions {
  /** Longest wait, in ms, for one call: a pool connection and then its query, or a whole transaction; also PostgreSQL's statement_timeout. 0: no limit. */
  timeoutMs?: number;
  /** Told when the circuit opens (true: calls fail fast) and closes again (false). */
  onCircuitChange?: (open: boolean) => void;
}

export function openPostgres(url: string, poolSize: number, options: PostgresOptions = {}): Database {
  const timeoutMs = options.timeoutMs ?? DEFAULT_DATABASE_TIMEOUT_MS;
  const sql = postgres(url, {
    max: poolSize,
    connect_timeout: 5,
    idle_timeout: 30,
    // Seconds; jittered, doubling from 50 ms to the cap.
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, RECONNECT_BACKOFF_MAX_S) * (0.5 + Math.random() / 2),
    onnotice: () => {},
    connection: {
      // Plan every execution for the tables as they are now. A prepared
      // statement's cached generic plan is made on its sixth run: on a fresh
      // or small table that is a sequential scan, kept for the connection's
      // life (until an autoanalyze invalidates it) while the table grows to
      // millions of rows. Planning these short statements costs far less than
      // one such scan (docs/performance.md).
      plan_cache_mode: 'force_custom_plan',
      statement_timeout: timeoutMs,
    },
    // int8 (money in minor units, counts) as a JavaScript number, read the
    // same way as on PGlite (parseInt8): a value a number cannot hold
    // exactly is refused, never rounded.
    types: { int8: { to: 20, from: [20], serialize: (v: number | bigint) => String(v), parse: parseInt8 } },
  });

  const breaker = circuitBreaker(handleWhen(isConnectFailure), {
    halfOpenAfter: CIRCUIT_HALF_OPEN_MS,
    breaker: new ConsecutiveBreaker(1),
  });
  if (options.onCircuitChange) {
    const notify = options.onCircuitChange;
    breaker.onStateChange((state) => notify(state !== CircuitState.Closed));
  }

  /**
   * One call to PostgreSQL: through the circuit, bounded by the deadline.
   * `abandoned()` turns true once the caller has been answered, so the work
   * (which cannot be recalled from the server) stops at its next step.
   */
  const call = async <T>(limitMs: number, work: (abandoned: () => boolean) => Promise<T>): Promise<T> => {
    try {
      return await breaker.execute(() => {
        let expired = false;
        return withDeadline(
          work(() => expired),
          limitMs,
          () => {
            expired = true;
            return new DatabaseUnavailableError(`PostgreSQL did not answer within ${limitMs} ms`);
          },
        );
      });
    } catch (error) {
      if (error instanceof BrokenCircuitError) {
        throw new DatabaseUnavailableError(
          `PostgreSQL is unavailable: a connection attempt failed, the next is tried within ${CIRCUIT_HALF_OPEN_MS} ms`,
          {
            cause: breaker.lastFailure && 'error' in breaker.lastFailure ? breaker.lastFailure.error : error,
          },
        );
      }
      throw error;
    }
  };

  const run = async <T extends Row>(
    target: postgres.Sql | postgres.ReservedSql,
    text: string,
    params?: readonly unknown[],
  ): Promise<T[]> => {
    try {
      return assertSafeIntegers(
        (await target.unsafe(text, (params ?? []) as postgres.ParameterOrJSON<never>[], {
          prepare: true,
        })) as unknown as T[],
      );
    } catch (error) {
      throw translate(error);
    }
  };

  const abandonedError = () =>
    new DatabaseUnavailableError('the transaction ran past its deadline and was rolled back');

  const transaction = async <T>(
    fn: (tx: Transaction) => Promise<T>,
    limitMs: number,
    abandoned: () => boolean,
  ): Promise<T> => {
    let connection: postgres.ReservedSql;
    try {
      connection = await sql.reserve();
    } catch (error) {
      throw translate(error);
    }
    // The first statement error: what the caller hears when COMMIT comes back as ROLLBACK.
    let failed: { error: unknown } | undefined;
    // Set once COMMIT is on its way (tx.commit): nothing may follow it on this connection but ROLLBACK.
    let committing: Promise<unknown> | undefined;
    // Every statement's answer, settled or not: a ROLLBACK in COMMIT's place waits for them to learn which failed first.
    const issued: Promise<unknown>[] = [];
    const statement = <R extends Row>(text: string, params?: readonly unknown[]): Promise<R[]> => {
      if (committing) return Promise.reject(new Error('the transaction is committing: it takes no more statements'));
      if (abandoned()) return Promise.reject(abandonedError());
      const answer = run<R>(connection, text, params).catch((error: unknown) => {
        failed ??= { error };
        throw error;
      });
      issued.push(answer.catch(() => undefined));
      return answer;
    };
    // COMMIT may go out before fn has seen its statements' answers (tx.commit);
    // if one of them failed, the server answers the COMMIT with ROLLBACK (no
    // error), and the transaction must not pass for committed, even if fn
    // caught that statement's error.
    const sendCommit = async () => {
      if (abandoned()) throw abandonedError();
      let answer: { command: string };
      try {
        answer = await connection.unsafe('COMMIT');
      } catch (error) {
        throw translate(error);
      }
      if (answer.command !== 'COMMIT') {
        await Promise.all(issued);
        throw (failed?.error as Error | undefined) ?? new TransactionRolledBackError();
      }
    };
    const tx: Transaction = {
      query: statement,
      commit: async <const P extends readonly unknown[]>(last: P) => {
        if (committing) throw new Error('commit() was called twice');
        // Not awaited before the statements are: COMMIT goes out in the same write as them.
        const committed = sendCommit();
        committing = committed;
        committed.catch(() => undefined); // awaited below, after the statements' own answers
        const settled = await Promise.allSettled(last);
        await committed.catch((error: unknown) => {
          // A statement's own error tells more than the ROLLBACK it caused.
          if (!settled.some((s) => s.status === 'rejected')) throw error;
        });
        const rejected = settled.find((s) => s.status === 'rejected');
        if (rejected) {
          // The first statement that failed, not one it aborted (25P02) or a promise built on it.
          await Promise.all(issued);
          throw failed?.error ?? rejected.reason;
        }
        return settled.map((s) => (s as PromiseFulfilledResult<unknown>).value) as {
          -readonly [K in keyof P]: Awaited<P[K]>;
        };
      },
    };
    try {
      if (abandoned()) throw abandonedError();
      // BEGIN is not awaited on its own: it goes out with the first statement
      // (pipelined), which saves a round trip per transaction. If it fails,
      // so does every statement after it.
      const begun = Promise.all([
        run(connection, 'BEGIN'),
        ...(limitMs === timeoutMs ? [] : [run(connection, `SET LOCAL statement_timeout = ${Math.floor(limitMs)}`)]),
      ]);
      begun.catch(() => undefined); // awaited below; this only keeps an early failure from counting as unhandled
      let result: T;
      try {
        result = await fn(tx);
      } catch (error) {
        // Thrown after commit() was called: the transaction's fate is COMMIT's.
        if (committing) await committing.catch(() => undefined);
        throw error;
      }
      await begun;
      // fn may have caught commit's rejection: the transaction still failed.
      await (committing ?? sendCommit());
      return result;
    } catch (error) {
      // The original error is what the caller must see. A ROLLBACK on a
      // connection that has closed fails at once (the server has rolled back
      // by itself), and releasing it is then a no-op: the pool has it back.
      // After a COMMIT (or the ROLLBACK it turned into) it only draws a warning.
      await run(connection, 'ROLLBACK').catch(() => undefined);
      throw error;
    } finally {
      connection.release();
    }
  };

  return {
    kind: 'postgres',
    concurrentTransactions: true,
    query: (text, params) => call(timeoutMs, () => run(sql, text, params)),
    transaction: (fn, transactionOptions) => {
      const limitMs = transactionOptions?.timeoutMs ?? timeoutMs;
      return call(limitMs, (abandoned) => transaction(fn, limitMs, abandoned));
    },
    exec: (script) =>
      call(timeoutMs, async () => {
        try {
          await sql.unsafe(script);
        } catch (error) {
          throw translate(error);
        }
      }),
    close: () => sql.end({ timeout: 5 }),
  };
}
