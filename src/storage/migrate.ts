// Versioned SQL migrations: src/storage/migrations/NNN_name.sql, applied in
// order, each in its own transaction, recorded in public.schema_migrations.
// An advisory lock lets several processes start at once: one migrates, the
// others wait and then find nothing left to do.
import { readdir, readFile } from 'node:fs/promises';
import type { Database } from './database.ts';

const MIGRATIONS_DIR = new URL('./migrations/', import.meta.url);
// Any constant works; it only has to be the same in every Orderflow process.
const MIGRATION_LOCK = 727_001;
// A migration may rewrite a large table, and a process that starts meanwhile
// waits on the lock for it: neither has the request path's time limit.
const UNBOUNDED = { timeoutMs: 0 };

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export async function loadMigrations(): Promise<Migration[]> {
  const files = (await readdir(MIGRATIONS_DIR)).filter((f) => /^\d+_.+\.sql$/.test(f)).sort();
  // Two files with one number would apply only the first, silently: a
  // branch that numbered its migration while another landed the same one.
  const versions = files.map((f) => f.slice(0, f.indexOf('_')));
  const repeated = files.filter((_, i) => versions.indexOf(versions[i]!) !== i);
  if (repeated.length > 0)
    throw new Error(`two migrations share a number: ${repeated.join(', ')} and another; renumber one`);
  return Promise.all(
    files.map(async (file) => ({
      version: Number(file.slice(0, file.indexOf('_'))),
      name: file,
      sql: await readFile(new URL(file, MIGRATIONS_DIR), 'utf8'),
    })),
  );
}

/** Applies every migration not yet applied; returns the names it applied. */
export async function migrate(db: Database): Promise<string[]> {
  const migrations = await loadMigrations();
  // Under the lock too: two processes running CREATE TABLE IF NOT EXISTS at
  // the same moment can both try to create it, and one fails.
  await db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
    await tx.query(`CREATE TABLE IF NOT EXISTS public.schema_migrations (
      version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
  }, UNBOUNDED);
  const applied: string[] = [];
  for (const migration of migrations) {
    const done = await db.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK]);
      const rows = await tx.query('SELECT 1 FROM public.schema_migrations WHERE version = $1', [migration.version]);
      if (rows.length > 0) return false;
      for (const statement of splitStatements(migration.sql)) await tx.query(statement);
      await tx.query('INSERT INTO public.schema_migrations (version, name) VALUES ($1, $2)', [
        migration.version,
        migration.name,
      ]);
      return true;
    }, UNBOUNDED);
    if (done) applied.push(migration.name);
  }
  return applied;
}

// Migrations hold plain DDL: statements end with a semicolon at the end of a
// line, and no statement body contains one (no functions, no DO blocks).
function splitStatements(sql: string): string[] {
  return sql
    .split(/;\s*$/m)
    .map((s) => s.replace(/^\s*--.*$/gm, '').trim())
    .filter((s) => s.length > 0);
}
