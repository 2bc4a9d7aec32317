// Embedded PostgreSQL (PGlite): one single-user PostgreSQL in WebAssembly,
// persisted in DATA_DIR. PGlite serialises transactions itself, so a
// transaction here holds the whole database until it ends: keep them short.
import { mkdir } from 'node:fs/promises';
import { PGlite } from '@electric-sql/pglite';
import type { Database, Queryable, Row } from './database.ts';

export async function openPGlite(dataDir: string | undefined): Promise<Database> {
  if (dataDir !== undefined) await mkdir(dataDir, { recursive: true });
  const db = await PGlite.create(dataDir === undefined ? undefined : `file://${dataDir}`);
  const run = async <T extends Row>(target: Pick<PGlite, 'query'>, text: string, params?: readonly unknown[]) =>
    (await target.query<T>(text, params as unknown[] | undefined)).rows;
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
