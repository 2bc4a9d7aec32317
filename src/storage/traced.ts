// The storage port, traced: each statement and each transaction becomes a
// client span (OpenTelemetry database conventions,
// https://opentelemetry.io/docs/specs/semconv/database/). It wraps our own
// port rather than the driver: the one postgres.js instrumentation on npm
// breaks ordinary tagged queries, and this way PGlite is traced the same.
// Only work inside a trace is traced: the relay's and the job queue's idle
// polls, and the metrics scrapes, would otherwise each start a trace of one
// statement, many times a second.
import { activeSpan, bindActive, inSpan, SpanKind } from '../observability/tracing.ts';
import type { Database, Queryable, Row, Transaction, TransactionOptions } from './database.ts';

/** db.query.text holds the statement with its $n placeholders, never the values bound to them (a card token, an amount). */
function statementAttributes(text: string, kind: Database['kind']) {
  const operation = /^\s*([A-Za-z]+)/.exec(text)?.[1]?.toUpperCase() ?? 'QUERY';
  const table = /\b(?:FROM|INTO|UPDATE|JOIN)\s+([A-Za-z_][\w.]*)/i.exec(text)?.[1];
  return {
    name: table ? `${operation} ${table}` : operation,
    attributes: {
      'db.system': 'postgresql',
      'db.system.name': 'postgresql',
      'db.operation.name': operation,
      ...(table ? { 'db.collection.name': table } : {}),
      'db.query.text': text,
      // PGlite is PostgreSQL compiled into this process.
      'orderflow.database': kind,
    },
  };
}

function tracedQuery(target: Queryable, kind: Database['kind']): Queryable['query'] {
  return <T extends Row = Row>(text: string, params?: readonly unknown[]): Promise<T[]> => {
    if (!activeSpan()) return target.query<T>(text, params);
    const { name, attributes } = statementAttributes(text, kind);
    return inSpan(name, { kind: SpanKind.CLIENT, attributes }, () => target.query<T>(text, params));
  };
}

/** db with a span per statement and per transaction (statements in a transaction are its children), inside traces only. */
export function traceDatabase(db: Database): Database {
  const attributes = { 'db.system': 'postgresql', 'db.system.name': 'postgresql', 'orderflow.database': db.kind };
  return {
    kind: db.kind,
    concurrentTransactions: db.concurrentTransactions,
    query: tracedQuery(db, db.kind),
    transaction: <T>(fn: (tx: Transaction) => Promise<T>, options?: TransactionOptions) => {
      if (!activeSpan()) return db.transaction(fn, options);
      return inSpan('transaction', { kind: SpanKind.CLIENT, attributes }, () =>
        db.transaction(
          // A traced statement, and COMMIT, are still issued at once (inSpan calls them synchronously): pipelining holds.
          bindActive((tx: Transaction) =>
            fn({
              query: tracedQuery(tx, db.kind),
              commit: (last) => inSpan('COMMIT', { kind: SpanKind.CLIENT, attributes }, () => tx.commit(last)),
            }),
          ),
          options,
        ),
      );
    },
    exec: (script) => db.exec(script),
    close: () => db.close(),
  };
}
