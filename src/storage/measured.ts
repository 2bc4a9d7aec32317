// The storage port, measured: how much of its connection pool a process
// uses. postgres.js does not publish its pool's state, so the time spent in
// statements and transactions is summed at the port instead; over an interval
// its rate is the average number of connections wanted, which divided by the
// pool size is the pool's use (above 1: calls queue for a connection).
import type { Metrics } from '../observability/metrics.ts';
import type { Database, Transaction, TransactionOptions } from './database.ts';

/** db with every statement and transaction timed into orderflow_db_pool_busy_seconds_total; poolSize is reported as orderflow_db_pool_size. */
export function measureDatabase(db: Database, metrics: Metrics, poolSize: number): Database {
  metrics.dbPoolSize.set(poolSize);
  const timed = async <T>(work: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    try {
      return await work();
    } finally {
      metrics.dbBusySeconds.inc((performance.now() - started) / 1000);
    }
  };
  return {
    kind: db.kind,
    concurrentTransactions: db.concurrentTransactions,
    // Statements inside a transaction run on its connection, which the transaction's own time already counts.
    query: (text, params) => timed(() => db.query(text, params)),
    transaction: <T>(fn: (tx: Transaction) => Promise<T>, options?: TransactionOptions) =>
      timed(() => db.transaction(fn, options)),
    exec: (script) => timed(() => db.exec(script)),
    close: () => db.close(),
  };
}
