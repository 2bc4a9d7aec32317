// The migrator: on an empty database every migration applies once, a second
// run applies nothing, and several processes starting at once (separate
// connections racing for the advisory lock) all succeed with each migration
// recorded exactly once. On PostgreSQL (a brand-new database) and on the
// embedded PGlite. The architecture document lists them all.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { loadMigrations, migrate } from '../src/storage/migrate.ts';
import type { Database } from '../src/storage/database.ts';
import { openPGlite } from '../src/storage/pglite.ts';
import { openPostgres } from '../src/storage/postgres.ts';
import { freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';

async function recorded(db: Database): Promise<{ version: number; name: string }[]> {
  const rows = await db.query<{ version: number; name: string }>(
    'SELECT version, name FROM public.schema_migrations ORDER BY version',
  );
  return rows.map((r) => ({ version: r.version, name: r.name }));
}

async function expectedMigrations(): Promise<{ version: number; name: string }[]> {
  const migrations = await loadMigrations();
  assert.ok(migrations.length > 0, 'the build ships migrations');
  return migrations.map((m) => ({ version: m.version, name: m.name }));
}

/** Every module table the first migration creates exists. */
async function assertSchema(db: Database): Promise<void> {
  const rows = await db.query<{ name: string }>(
    `SELECT table_schema || '.' || table_name AS name FROM information_schema.tables
      WHERE table_schema IN ('catalog', 'inventory', 'orders', 'payments', 'messaging')`,
  );
  const tables = new Set(rows.map((r) => r.name));
  for (const table of [
    'catalog.products',
    'inventory.stock',
    'orders.orders',
    'orders.order_lines',
    'orders.idempotency_keys',
    'payments.payments',
    'messaging.jobs',
    'messaging.dead_jobs',
  ]) {
    assert.ok(tables.has(table), `missing table ${table}`);
  }
}

describe('migrations (postgres)', () => {
  it('apply on a fresh database, then apply nothing', async (t) => {
    const base = requiredServiceUrl('DATABASE_URL');
    if (!base) return t.skip('DATABASE_URL is not set');
    const expected = await expectedMigrations();
    const fresh = await freshPostgresDatabase(base);
    const db = openPostgres(fresh.url, 2);
    try {
      assert.deepEqual(
        await migrate(db),
        expected.map((m) => m.name),
      );
      await assertSchema(db);
      assert.deepEqual(await recorded(db), expected);
      assert.deepEqual(await migrate(db), [], 'a second run applied something');
      assert.deepEqual(await recorded(db), expected);
    } finally {
      await db.close();
      await fresh.drop();
    }
  });

  it('4 concurrent migrate() calls from 4 connections all succeed, each migration recorded once', async (t) => {
    const base = requiredServiceUrl('DATABASE_URL');
    if (!base) return t.skip('DATABASE_URL is not set');
    const expected = await expectedMigrations();
    // Several rounds: the race is between separate servers' connections, so
    // give it more than one chance to show.
    for (let round = 0; round < 5; round++) {
      const fresh = await freshPostgresDatabase(base);
      const dbs = Array.from({ length: 4 }, () => openPostgres(fresh.url, 1));
      try {
        // Open every connection first, so the four runs really start together.
        await Promise.all(dbs.map((db) => db.query('SELECT 1')));
        const results = await Promise.allSettled(dbs.map((db) => migrate(db)));
        const failures = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
        assert.deepEqual(failures, [], `round ${round}: concurrent migrate() failed`);
        const applied = results.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
        assert.deepEqual(
          applied.sort(),
          expected.map((m) => m.name).sort(),
          `round ${round}: each migration applied by exactly one caller`,
        );
        assert.deepEqual(await recorded(dbs[0]!), expected);
        await assertSchema(dbs[0]!);
      } finally {
        await Promise.all(dbs.map((db) => db.close()));
        await fresh.drop();
      }
    }
  });
});

describe('migrations (embedded PGlite in memory)', () => {
  it('apply on a fresh database, then apply nothing; concurrent calls apply each migration once', async () => {
    const expected = await expectedMigrations();
    const db = await openPGlite(undefined);
    try {
      const results = await Promise.all([migrate(db), migrate(db), migrate(db), migrate(db)]);
      assert.deepEqual(results.flat().sort(), expected.map((m) => m.name).sort());
      await assertSchema(db);
      assert.deepEqual(await recorded(db), expected);
      assert.deepEqual(await migrate(db), []);
      assert.deepEqual(await recorded(db), expected);
    } finally {
      await db.close();
    }
  });
});

describe('migrations in the docs', () => {
  it("architecture.md's table lists every migration the build ships, in order, and no other", async () => {
    const text = await readFile(new URL('../docs/architecture.md', import.meta.url), 'utf8');
    const listed = [...text.matchAll(/^\| `(\d+_[^`]+\.sql)` *\|/gm)].map((m) => m[1]);
    assert.deepEqual(
      listed,
      (await loadMigrations()).map((m) => m.name),
    );
  });
});
