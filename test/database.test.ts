// The database port's transaction, on the embedded PGlite and on PostgreSQL
// (where BEGIN travels with the first statement and independent statements
// are pipelined): statements run in the order issued, a failing transaction
// leaves nothing behind however its statements were in flight, and the
// connection it used serves the next transaction.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Database } from '../src/storage/database.ts';
import { openPGlite } from '../src/storage/pglite.ts';
import { openPostgres } from '../src/storage/postgres.ts';
import { freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';

const databaseUrl = requiredServiceUrl('DATABASE_URL');

const engines: { name: string; open: () => Promise<{ db: Database; drop: () => Promise<void> }> }[] = [
  { name: 'pglite', open: async () => ({ db: await openPGlite(undefined), drop: async () => {} }) },
  ...(databaseUrl
    ? [
        {
          name: 'postgres',
          open: async () => {
            const fresh = await freshPostgresDatabase(databaseUrl);
            // One connection: a transaction that left it in a bad state would break the next one.
            const db = openPostgres(fresh.url, 1);
            return { db, drop: async () => (await db.close(), await fresh.drop()) };
          },
        },
      ]
    : []),
];

for (const engine of engines) {
  describe(`database transactions (${engine.name})`, () => {
    let db: Database;
    let drop: () => Promise<void>;
    before(async () => {
      ({ db, drop } = await engine.open());
      await db.exec('CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)');
    });
    after(() => drop());

    const notes = async () => (await db.query<{ id: number; body: string }>('SELECT id, body FROM notes ORDER BY id')).map((r) => `${r.id}:${r.body}`);

    it('runs statements issued together in the order issued, and commits them', async () => {
      await db.exec('DELETE FROM notes');
      await db.transaction((tx) =>
        Promise.all([
          tx.query('INSERT INTO notes VALUES (1, $1)', ['first']),
          tx.query("UPDATE notes SET body = body || ', then updated' WHERE id = 1"),
          tx.query('INSERT INTO notes VALUES (2, $1)', ['second']),
        ]),
      );
      assert.deepEqual(await notes(), ['1:first, then updated', '2:second']);
    });

    it('writes nothing when a statement in flight fails, and the connection serves the next transaction', async () => {
      await db.exec('DELETE FROM notes');
      await assert.rejects(
        db.transaction((tx) =>
          Promise.all([
            tx.query('INSERT INTO notes VALUES (1, $1)', ['kept?']),
            tx.query('INSERT INTO notes VALUES (1, $1)', ['duplicate key']),
            tx.query('INSERT INTO notes VALUES (2, $1)', ['after the failure']),
          ]),
        ),
        /duplicate key|unique/i,
      );
      assert.deepEqual(await notes(), []);
      await db.transaction((tx) => tx.query('INSERT INTO notes VALUES (3, $1)', ['next']));
      assert.deepEqual(await notes(), ['3:next']);
    });

    it('writes nothing when the body throws after its statements succeeded', async () => {
      await db.exec('DELETE FROM notes');
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.query('INSERT INTO notes VALUES (1, $1)', ['written, then abandoned']);
          throw new Error('the caller changed its mind');
        }),
        /changed its mind/,
      );
      assert.deepEqual(await notes(), []);
      await db.transaction((tx) => tx.query('INSERT INTO notes VALUES (4, $1)', ['next']));
      assert.deepEqual(await notes(), ['4:next']);
    });
  });
}
