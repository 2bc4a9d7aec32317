// Group commit must never let one unit's failure cost another unit its
// commit, nor let a failed unit's writes survive.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Database } from './database.ts';
import { transactionGroup } from './group-commit.ts';
import { openPGlite } from './pglite.ts';

describe('group commit', () => {
  let db: Database;
  before(async () => {
    db = await openPGlite(undefined);
    await db.exec('CREATE TABLE notes (id int PRIMARY KEY)');
  });
  after(() => db.close());

  it('commits units submitted together in one transaction', async () => {
    const batches: number[] = [];
    const group = transactionGroup(db, { onBatch: (size) => batches.push(size) });
    const ids = await Promise.all([1, 2, 3].map((id) => group.transaction(async (tx) => (await tx.query('INSERT INTO notes VALUES ($1) RETURNING id', [id]))[0]!.id)));
    assert.deepEqual(ids, [1, 2, 3]);
    assert.deepEqual(batches, [3]);
  });

  it('retries every unit alone when one breaks the batch: the others commit, the broken one fails alone and writes nothing', async () => {
    const batches: number[] = [];
    const group = transactionGroup(db, { onBatch: (size) => batches.push(size) });
    const results = await Promise.allSettled([
      group.transaction((tx) => tx.query('INSERT INTO notes VALUES (10)')),
      group.transaction(async (tx) => {
        await tx.query('INSERT INTO notes VALUES (11)');
        throw new Error('this unit is broken');
      }),
      group.transaction((tx) => tx.query('INSERT INTO notes VALUES (12)')),
    ]);
    assert.deepEqual(
      results.map((r) => r.status),
      ['fulfilled', 'rejected', 'fulfilled'],
    );
    assert.equal((results[1] as PromiseRejectedResult).reason.message, 'this unit is broken');
    assert.deepEqual(batches, [3, 1, 1, 1], 'the batch, then each unit alone');
    const rows = await db.query<{ id: number }>('SELECT id FROM notes WHERE id >= 10 ORDER BY id');
    assert.deepEqual(
      rows.map((r) => r.id),
      [10, 12],
    );
  });
});
