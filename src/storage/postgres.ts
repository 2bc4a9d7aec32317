// PostgreSQL server through the `postgres` driver: a pool of connections,
// prepared statements for every parameterised query.
import postgres from 'postgres';
import { DatabaseUnavailableError, type Database, type Queryable, type Row } from './database.ts';

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

function isConnectionError(code: unknown): boolean {
  return typeof code === 'string' && (CONNECTION_ERRORS.has(code) || code.startsWith('08'));
}

function translate(error: unknown): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (isConnectionError(code)) {
    return new DatabaseUnavailableError(`PostgreSQL is unavailable (${String(code)})`, { cause: error });
  }
  return error;
}

export function openPostgres(url: string, poolSize: number): Database {
  const sql = postgres(url, {
    max: poolSize,
    connect_timeout: 5,
    idle_timeout: 30,
    onnotice: () => {},
    // Plan every execution for the tables as they are now. A prepared
    // statement's cached generic plan is made on its sixth run: on a fresh
    // or small table that is a sequential scan, kept for the connection's
    // life (until an autoanalyze invalidates it) while the table grows to
    // millions of rows. Planning these short statements costs far less than
    // one such scan (docs/performance.md).
    connection: { plan_cache_mode: 'force_custom_plan' },
    // int8 (money in minor units, counts) as a JavaScript number, as PGlite
    // returns it: exact up to 2^53, far beyond any order total.
    types: { int8: { to: 20, from: [20], serialize: (v: number) => String(v), parse: (v: string) => Number(v) } },
  });
  const scoped = (target: postgres.Sql | postgres.TransactionSql): Queryable => ({
    query: async <T extends Row>(text: string, params?: readonly unknown[]) => {
      try {
        return (await target.unsafe(text, (params ?? []) as postgres.ParameterOrJSON<never>[], { prepare: true })) as unknown as T[];
      } catch (error) {
        throw translate(error);
      }
    },
  });
  const root = scoped(sql);
  return {
    kind: 'postgres',
    query: (text, params) => root.query(text, params),
    transaction: async (fn) => {
      let connection: postgres.ReservedSql;
      try {
        connection = await sql.reserve();
      } catch (error) {
        throw translate(error);
      }
      const tx = scoped(connection);
      try {
        // BEGIN is not awaited on its own: it goes out with the first
        // statement (pipelined), which saves a round trip per transaction.
        // If it fails, so does every statement after it.
        const begun = tx.query('BEGIN');
        begun.catch(() => undefined); // awaited below; this only keeps an early failure from counting as unhandled
        const result = await fn(tx);
        await begun;
        await tx.query('COMMIT');
        return result;
      } catch (error) {
        // The original error is what the caller must see; a failed ROLLBACK
        // means the connection is gone, and the server rolls back by itself.
        await connection.unsafe('ROLLBACK').catch(() => undefined);
        throw error;
      } finally {
        connection.release();
      }
    },
    exec: async (script) => {
      try {
        await sql.unsafe(script);
      } catch (error) {
        throw translate(error);
      }
    },
    close: () => sql.end({ timeout: 5 }),
  };
}
