// Embedded PostgreSQL (PGlite): one single-user PostgreSQL in WebAssembly,
// persisted in DATA_DIR. PGlite serialises transactions itself, so a
// transaction here holds the whole database until it ends: keep them short.
import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import { assertSafeIntegers, parseInt8, type Database, type Queryable, type Row } from './database.ts';

/** PostgreSQL's type oid of int8 (bigint). */
const INT8 = 20;

export async function openPGlite(dataDir: string | undefined): Promise<Database> {
  if (dataDir !== undefined) await mkdir(dataDir, { recursive: true });
  // int8 is read as on PostgreSQL (parseInt8): a number, or refused if a number cannot hold it exactly.
  const db = await PGlite.create(dataDir === undefined ? undefined : `file://${dataDir}`, { parsers: { [INT8]: parseInt8 } });
  const run = async <T extends Row>(target: Pick<PGlite, 'query'>, text: string, params?: readonly unknown[]) =>
    assertSafeIntegers((await target.query<T>(text, params as unknown[] | undefined)).rows);
  return {
    kind: 'pglite',
    query: (text, params) => run(db, text, params),
    transaction: (fn) =>
      db.transaction((tx) => {
        const scoped: Queryable = { query: (text, params) => run(tx, text, params) };
        return fn(scoped);
      }),
    exec: async (script) => {
      await db.exec(script);
    },
    close: () => db.close(),
  };
}
