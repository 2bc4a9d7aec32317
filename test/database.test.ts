// The database port's transaction, on the embedded PGlite and on PostgreSQL
// (where BEGIN travels with the first statement and independent statements
// are pipelined): statements run in the order issued, a failing transaction
// leaves nothing behind however its statements were in flight, and the
// connection it used serves the next transaction. Both adapters read int8
// and numeric columns the same way, and neither rounds an integer.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { DatabaseUnavailableError, UnsafeIntegerError, type Database } from '../src/storage/database.ts';
import { GroupCommit, type UnitOutcome } from '../src/storage/group-commit.ts';
import { openPGlite } from '../src/storage/pglite.ts';
import { openPostgres } from '../src/storage/postgres.ts';
import { freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { startPrivatePrimary, type PrivatePostgres } from './support/private-postgres.ts';
import { privateServersUnavailable, startTcpProxy, type TcpProxy } from './support/servers.ts';

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

    const notes = async () =>
      (await db.query<{ id: number; body: string }>('SELECT id, body FROM notes ORDER BY id')).map(
        (r) => `${r.id}:${r.body}`,
      );
    /** Nothing of the failed transaction is in the table, and the next transaction (writing `id`) commits. */
    const assertLeftNothing = async (id: number) => {
      assert.deepEqual(await notes(), []);
      await db.transaction((tx) => tx.query('INSERT INTO notes VALUES ($1, $2)', [id, 'next']));
      assert.deepEqual(await notes(), [`${id}:next`]);
    };

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
      await assertLeftNothing(3);
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
      await assertLeftNothing(4);
    });

    it('commit(): a statement before the last batch that failed leaves nothing, even when the body catches its error', async () => {
      await db.exec('DELETE FROM notes');
      await assert.rejects(
        db.transaction(async (tx) => {
          const kept = tx.query('INSERT INTO notes VALUES (1, $1)', ['kept?']);
          const failing = tx.query('INSERT INTO notes VALUES (1, $1)', ['duplicate key']);
          failing.catch(() => undefined);
          await tx
            .commit([kept, tx.query('INSERT INTO notes VALUES (2, $1)', ['after the failure'])])
            .catch(() => undefined);
          return 'the body says all is well';
        }),
        // The failed statement's own error, not the one of a statement it aborted.
        /duplicate key|unique/i,
      );
      await assertLeftNothing(3);
    });

    it('commit() sends the last statements with COMMIT and answers with their results', async () => {
      await db.exec('DELETE FROM notes');
      const result = await db.transaction(async (tx) => {
        await tx.query('INSERT INTO notes VALUES (1, $1)', ['first']);
        const [inserted, count] = await tx.commit([
          tx.query<{ id: number }>('INSERT INTO notes VALUES (2, $1) RETURNING id', ['last']),
          tx.query<{ n: number }>('SELECT count(*)::int AS n FROM notes').then((rows) => rows[0]!.n),
        ]);
        return { ids: inserted.map((r) => r.id), count };
      });
      assert.deepEqual(result, { ids: [2], count: 2 });
      assert.deepEqual(await notes(), ['1:first', '2:last']);
    });

    it('commit() writes nothing when a statement of the last batch fails, and rejects with its error', async () => {
      await db.exec('DELETE FROM notes');
      let refused: unknown;
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.query('INSERT INTO notes VALUES (1, $1)', ['kept?']);
          try {
            await tx.commit([
              tx.query('INSERT INTO notes VALUES (2, $1)', ['fine']),
              tx.query('INSERT INTO notes VALUES (1, $1)', ['duplicate key']),
              tx.query('INSERT INTO notes VALUES (3, $1)', ['after the failure']),
            ]);
          } catch (error) {
            // Swallowed on purpose: the transaction must still fail with it.
            refused = error;
          }
          return 'committed?';
        }),
        (error: unknown) => {
          assert.match(String(error), /duplicate key|unique/i);
          assert.equal(error, refused);
          return true;
        },
      );
      assert.deepEqual(await notes(), []);
      await db.transaction((tx) => tx.commit([tx.query('INSERT INTO notes VALUES (5, $1)', ['next'])]));
      assert.deepEqual(await notes(), ['5:next']);
    });

    it('fails when the body caught a statement error and returned', async () => {
      await db.exec('DELETE FROM notes');
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.query('INSERT INTO notes VALUES (1, $1)', ['kept?']);
          await tx.query('INSERT INTO notes VALUES (1, $1)', ['duplicate key']).catch(() => undefined);
          return 'committed?';
        }),
      );
      assert.deepEqual(await notes(), []);
    });

    it('commit() refuses later statements, and a throw after it undoes nothing', async () => {
      await db.exec('DELETE FROM notes');
      let late: unknown;
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.commit([tx.query('INSERT INTO notes VALUES (1, $1)', ['committed'])]);
          late = await tx.query('INSERT INTO notes VALUES (2, $1)', ['too late']).catch((error: unknown) => error);
          throw new Error('thrown after commit');
        }),
        /thrown after commit/,
      );
      assert.match(String(late), /committing/);
      assert.deepEqual(await notes(), ['1:committed']);
    });

    it('group commit: a unit whose statement fails in the batch sent with COMMIT fails alone, the others commit', async () => {
      await db.exec("DELETE FROM notes; INSERT INTO notes VALUES (12, 'taken')");
      const batches: number[] = [];
      const group = new GroupCommit<number, number>(
        db,
        async (tx, ids) => {
          const inserted = await tx.commit(
            ids.map((id) => tx.query<{ id: number }>('INSERT INTO notes VALUES ($1, $2) RETURNING id', [id, 'unit'])),
          );
          return inserted.map((rows): UnitOutcome<number> => ({ ok: true, value: rows[0]!.id }));
        },
        { onBatch: (size) => batches.push(size) },
      );
      const results = await Promise.allSettled([11, 12, 13].map((id) => group.submit(id)));
      assert.deepEqual(
        results.map((r) => (r.status === 'fulfilled' ? r.value : 'rejected')),
        [11, 'rejected', 13],
      );
      assert.match(String((results[1] as PromiseRejectedResult).reason), /duplicate key|unique/i);
      assert.deepEqual(batches, [3, 1, 1, 1], 'the batch, then each unit alone');
      assert.deepEqual(await notes(), ['11:unit', '12:taken', '13:unit']);
    });

    it('reads int8 as exact numbers, numeric as text, in and out of a transaction', async () => {
      const query = `SELECT 9007199254740991::int8 AS max, (-9007199254740991)::int8 AS min, 99999999::int8 AS cents, 0::int8 AS zero,
        12345678901234567890::numeric AS big, sum(x)::numeric AS summed FROM (VALUES (9007199254740991::int8), (1::int8)) AS v(x)`;
      const expected = {
        max: 9007199254740991,
        min: -9007199254740991,
        cents: 99999999,
        zero: 0,
        big: '12345678901234567890',
        summed: '9007199254740992',
      };
      assert.deepEqual({ ...(await db.query(query))[0] }, expected);
      assert.deepEqual({ ...(await db.transaction((tx) => tx.query(query)))[0] }, expected);
    });

    it('refuses an int8 a number cannot hold exactly, and the connection serves the next statement', async () => {
      for (const value of ['9007199254740992', '-9007199254740992', '9223372036854775807']) {
        await assert.rejects(db.query(`SELECT 1::int8 AS fine, ${value}::int8 AS amount`), (error: unknown) => {
          assert.ok(error instanceof UnsafeIntegerError, String(error));
          assert.equal(error.column, 'amount');
          assert.match(error.message, new RegExp(value.replace('-', '\\-')));
          return true;
        });
        await assert.rejects(
          db.transaction((tx) => tx.query(`SELECT ${value}::int8 AS amount`)),
          UnsafeIntegerError,
        );
      }
      assert.deepEqual({ ...(await db.query('SELECT 2::int8 AS n'))[0] }, { n: 2 });
    });
  });
}

// The port on PostgreSQL when the server misbehaves, on a private server
// (and a proxy in front of it, for a server that stops answering): every
// call is answered, with DatabaseUnavailableError (503) when it cannot be
// served, in bounded time; the same Database serves again once the server
// does, and exactly the transactions answered as committed are committed.
describe('database port: PostgreSQL going away', { skip: privateServersUnavailable('postgresql') }, () => {
  let server: PrivatePostgres;
  let proxy: TcpProxy;
  let db: Database;
  let quiet: Database;
  const circuit: boolean[] = [];
  const TIMEOUT_MS = 1_000;

  before(async () => {
    server = await startPrivatePrimary();
    proxy = await startTcpProxy(server.port);
    db = openPostgres(server.url(), 4, { timeoutMs: TIMEOUT_MS, onCircuitChange: (open) => circuit.push(open) });
    quiet = openPostgres(`postgres://postgres@127.0.0.1:${proxy.port}/postgres`, 2, { timeoutMs: TIMEOUT_MS });
    await db.exec('CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)');
  });
  after(async () => {
    await Promise.allSettled([db?.close(), quiet?.close()]);
    await proxy?.close();
    await server?.destroy();
  });

  const unavailable = (what: string, call: () => Promise<unknown>) =>
    assert.rejects(
      call(),
      (error: unknown) => error instanceof DatabaseUnavailableError,
      `${what} rejects with DatabaseUnavailableError`,
    );
  const ids = async () => (await db.query<{ id: number }>('SELECT id FROM notes ORDER BY id')).map((r) => r.id);

  it('a statement running past the timeout is cancelled by PostgreSQL; a transaction may ask for more time', async () => {
    await unavailable('a slow query', () => db.query('SELECT pg_sleep(3)'));
    await unavailable('a slow transaction', () => db.transaction((tx) => tx.query('SELECT pg_sleep(3)')));
    const [row] = await db.transaction((tx) => tx.query<{ ok: number }>('SELECT 1 AS ok FROM pg_sleep(1.2)'), {
      timeoutMs: 5_000,
    });
    assert.equal(row?.ok, 1);
  });

  it('a server that stops answering: a transaction and a query get their answer at the deadline, and nothing is committed', async () => {
    await db.exec('DELETE FROM notes');
    await quiet.query('SELECT 1');
    proxy.frozen = true;
    proxy.mode = 'blackhole';
    try {
      await unavailable('a transaction on a connection gone quiet', () =>
        quiet.transaction((tx) => tx.query('INSERT INTO notes VALUES (1, $1)', ['never committed'])),
      );
      await unavailable('a query', () => quiet.query('SELECT 1'));
    } finally {
      proxy.frozen = false;
      proxy.mode = 'forward';
      proxy.cutAll();
    }
    await eventuallyServes(quiet);
    assert.deepEqual(await ids(), []);
  });

  for (const mode of ['fast', 'immediate'] as const) {
    it(`a ${mode} shutdown under transactions: calls fail fast while it lasts, and the same Database serves once the server is back`, async () => {
      await db.exec('DELETE FROM notes');
      circuit.length = 0;
      let next = 100;
      const inFlight = Array.from({ length: 8 }, () =>
        db
          .transaction(async (tx) => {
            const id = next++;
            await tx.query('INSERT INTO notes VALUES ($1, $2)', [id, 'in flight']);
            await tx.query('SELECT pg_sleep(0.2)');
            return id;
          })
          .then(
            (id) => ({ id }),
            (error: unknown) => ({ error }),
          ),
      );
      await new Promise((resolve) => setTimeout(resolve, 50));
      await server.stop(mode);
      try {
        for (const outcome of await Promise.all(inFlight)) {
          if ('error' in outcome) assert.ok(outcome.error instanceof DatabaseUnavailableError, String(outcome.error));
        }
        // The first calls may meet connections whose end the pool has not
        // seen yet; a new connection is refused, and the circuit opens.
        for (let call = 0; circuit.at(-1) !== true; call++) {
          assert.ok(call < 20, 'the circuit opened');
          await unavailable('a call while the server is down', () =>
            call % 2 ? db.query('SELECT 1') : db.transaction((tx) => tx.query('SELECT 1')),
          );
        }
        await unavailable('a call while the circuit is open', () => db.query('SELECT 1'));
      } finally {
        await server.start();
      }
      await eventuallyServes(db);
      assert.equal(circuit.at(-1), false, 'the circuit closed again');
      const answered = (await Promise.all(inFlight)).flatMap((o) => ('id' in o ? [o.id] : []));
      assert.deepEqual(
        await ids(),
        answered.sort((a, b) => a - b),
        'exactly the transactions answered as committed are there',
      );
    });
  }
});

/** Waits until a transaction goes through: the connections cut a moment ago have been replaced. */
async function eventuallyServes(db: Database): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await db.transaction((tx) => tx.query('SELECT 1'));
      return;
    } catch (error) {
      if (attempt > 200) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}
