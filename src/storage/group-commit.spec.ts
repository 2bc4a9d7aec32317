// Group commit must never let one unit's failure cost another unit its
// commit, nor let a failed unit's writes survive.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Database } from './database.ts';
import { GroupCommit, type UnitOutcome } from './group-commit.ts';
import { openPGlite } from './pglite.ts';

describe('group commit', () => {
  let db: Database;
  before(async () => {
    db = await openPGlite(undefined);
    await db.exec('CREATE TABLE notes (id int PRIMARY KEY)');
  });
  after(() => db.close());

  /** Inserts each unit's note in one statement; the unit 11 is broken and throws. */
  function notes(onBatch: (size: number) => void) {
    return new GroupCommit<number, number>(
      db,
      async (tx, ids): Promise<UnitOutcome<number>[]> => {
        const rows = await tx.query<{ id: number }>('INSERT INTO notes SELECT unnest($1::int[]) RETURNING id', [ids]);
        if (ids.includes(11)) throw new Error('this unit is broken');
        return rows.map((row) => ({ ok: true, value: row.id }));
      },
      { onBatch },
    );
  }

  it('commits units submitted together in one transaction', async () => {
    const batches: number[] = [];
    const group = notes((size) => batches.push(size));
    const ids = await Promise.all([1, 2, 3].map((id) => group.submit(id)));
    assert.deepEqual(ids, [1, 2, 3]);
    assert.deepEqual(batches, [3]);
  });

  it('retries every unit alone when one breaks the batch: the others commit, the broken one fails alone and writes nothing', async () => {
    const batches: number[] = [];
    const group = notes((size) => batches.push(size));
    const results = await Promise.allSettled([10, 11, 12].map((id) => group.submit(id)));
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
