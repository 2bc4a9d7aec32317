// The PostgreSQL driver (`postgres`, porsager) when a connection goes away,
// against a private server this file may stop. Each case is an open upstream
// report that patches/postgres+3.4.9.patch fixes; on the unpatched 3.4.9 each
// either crashes the test process (an uncaught TypeError from a timer),
// hangs, runs a statement outside its transaction or leaks a connection.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import postgres from 'postgres';
import { startPrivatePrimary, type PrivatePostgres } from './support/private-postgres.ts';
import { privateServersUnavailable, startTcpProxy } from './support/servers.ts';

const missing = privateServersUnavailable('postgresql');
if (missing && process.env.REQUIRE_SERVICES === '1')
  throw new Error(`the driver tests need a private PostgreSQL (REQUIRE_SERVICES=1): ${missing}`);

/** Settles within ms, or fails the test: the driver must never leave a caller waiting forever. */
async function settles<T>(what: string, promise: Promise<T>, ms = 10_000): Promise<PromiseSettledResult<T>> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>(
    (_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)),
  );
  try {
    const [result] = await Promise.race([Promise.allSettled([promise]), timeout]);
    return result;
  } finally {
    clearTimeout(timer);
  }
}

async function backendPid(sql: postgres.Sql | postgres.ReservedSql | postgres.TransactionSql): Promise<number> {
  const [row] = await sql<{ pid: number }[]>`SELECT pg_backend_pid() AS pid`;
  return row!.pid;
}

function codeOf(result: PromiseSettledResult<unknown>): string | undefined {
  return result.status === 'rejected' ? (result.reason as { code?: string }).code : undefined;
}

describe('postgres driver: a connection that goes away', { skip: missing }, () => {
  let server: PrivatePostgres;
  let admin: postgres.Sql;
  const pools: postgres.Sql[] = [];
  const pool = (options: postgres.Options<Record<string, postgres.PostgresType>> = {}) => {
    // A short backoff: the default waits seconds between reconnects after a few failures.
    const sql = postgres(server.url(), { onnotice: () => {}, backoff: () => 0.05, connect_timeout: 5, ...options });
    pools.push(sql);
    return sql;
  };
  /** One connection, with a short backoff, to the server through a proxy on `port`. */
  const throughProxy = (port: number) => {
    const sql = postgres({
      host: '127.0.0.1',
      port,
      user: 'postgres',
      database: 'postgres',
      max: 1,
      backoff: () => 0.05,
      onnotice: () => {},
    });
    pools.push(sql);
    return sql;
  };
  const terminate = async (pid: number) => {
    await admin`SELECT pg_terminate_backend(${pid})`;
  };

  before(async () => {
    server = await startPrivatePrimary();
    admin = postgres(server.url(), { max: 1, onnotice: () => {} });
    await admin`CREATE TABLE notes (id int PRIMARY KEY, body text)`;
  });
  after(async () => {
    await Promise.allSettled([admin, ...pools].map((sql) => sql.end({ timeout: 1 })));
    await server?.destroy();
  });

  it('a reserved connection whose backend died rejects its next statements, and the pool serves on (#1208)', async () => {
    const sql = pool({ max: 2 });
    const reserved = await sql.reserve();
    const pid = await backendPid(reserved);
    await terminate(pid);
    const first = await settles('the first statement after the kill', reserved`SELECT 1`);
    assert.equal(first.status, 'rejected');
    // Upstream: this one reached a null socket from a timer and killed the process.
    const second = await settles('the second statement after the kill', reserved`SELECT 1`);
    assert.equal(codeOf(second), 'CONNECTION_CLOSED');
    reserved.release();
    for (let i = 0; i < 4; i++) assert.deepEqual([...(await sql`SELECT ${i}::int AS n`)], [{ n: i }]);
  });

  it('sql.begin(): a backend killed under a statement rejects the transaction; its own ROLLBACK does not crash (#1208)', async () => {
    const sql = pool({ max: 2 });
    let pid: number | undefined;
    const tx = settles(
      'the transaction',
      sql.begin(async (t) => {
        pid = await backendPid(t);
        await t`SELECT pg_sleep(5)`;
      }),
    );
    while (pid === undefined) await sleep(10);
    await terminate(pid);
    const result = await tx;
    assert.equal(result.status, 'rejected');
    assert.deepEqual([...(await sql`SELECT 1 AS n`)], [{ n: 1 }]);
  });

  it('statements queued behind a reserved connection settle when it closes (#1186)', async () => {
    const sql = pool({ max: 1 });
    const reserved = await sql.reserve();
    const pid = await backendPid(reserved);
    // A statement with parameters the connection has not prepared yet is
    // described first, and the ones after it wait in the reservation's queue.
    const statements = [
      reserved`SELECT pg_sleep(5), ${1}::int AS a`,
      reserved`SELECT ${2}::int AS b`,
      reserved`SELECT ${3}::text AS c`,
      reserved`SELECT 4`,
    ].map((statement, i) => settles(`statement ${i}`, statement));
    await sleep(100);
    await terminate(pid);
    for (const result of await Promise.all(statements)) assert.equal(result.status, 'rejected');
    reserved.release();
    assert.deepEqual([...(await sql`SELECT 5 AS n`)], [{ n: 5 }]);
  });

  it('a reservation whose connection closed never runs a statement on the next session (#1216)', async () => {
    await admin`DELETE FROM notes`;
    const sql = pool({ max: 1 });
    const reserved = await sql.reserve();
    await reserved`BEGIN`;
    await reserved`INSERT INTO notes VALUES (1, 'in the transaction')`;
    const pid = await backendPid(reserved);
    await terminate(pid);
    // The pool reconnects the same connection object for the next query.
    const next = settles(
      'a pool query',
      sql`SELECT 1 AS n`.then((rows) => [...rows]),
    );
    await sleep(200);
    const late = await settles(
      'an INSERT on the dead reservation',
      reserved`INSERT INTO notes VALUES (2, 'outside any transaction?')`,
    );
    const commit = await settles('a COMMIT on the dead reservation', reserved`COMMIT`);
    assert.equal(codeOf(late), 'CONNECTION_CLOSED');
    assert.equal(codeOf(commit), 'CONNECTION_CLOSED');
    reserved.release();
    assert.deepEqual(await next, { status: 'fulfilled', value: [{ n: 1 }] });
    assert.deepEqual(
      [...(await admin`SELECT id FROM notes`)],
      [],
      'the killed transaction rolled back and nothing ran after it',
    );
  });

  it('releasing a reservation after its connection closed hands no dead connection to the pool (#1168)', async () => {
    const sql = pool({ max: 1 });
    const reserved = await sql.reserve();
    const pid = await backendPid(reserved);
    await terminate(pid);
    await settles('a statement after the kill', reserved`SELECT 1`);
    reserved.release();
    for (let i = 0; i < 3; i++)
      assert.equal((await settles(`pool query ${i}`, sql`SELECT 1 AS n`)).status, 'fulfilled');
    const again = await settles('a new reservation', sql.reserve());
    assert.equal(again.status, 'fulfilled');
    if (again.status === 'fulfilled') again.value.release();
  });

  it('a reservation waiting while its connection reconnects is answered, and the pool serves on', async () => {
    // The first two connection attempts are reset, the next ones reach the server.
    let attempts = 0;
    const proxy = await startTcpProxy(server.port);
    proxy.mode = () => (++attempts <= 2 ? 'reset' : 'forward');
    try {
      const sql = throughProxy(proxy.port);
      // The first connects for itself; the second waits in the pool's queue,
      // and upstream was taken out of it to reconnect with, then never answered.
      const first = settles('the first reservation', sql.reserve());
      const second = settles('the second reservation', sql.reserve());
      for (const result of [await first, await second]) {
        if (result.status === 'fulfilled') result.value.release();
      }
      const again = await settles('a reservation once the server answers', sql.reserve());
      assert.equal(again.status, 'fulfilled');
      if (again.status === 'fulfilled') again.value.release();
      assert.equal((await settles('a pool query', sql`SELECT 1`)).status, 'fulfilled');
    } finally {
      await proxy.close();
    }
  });

  it('a server that closes during startup without an error fails the query instead of reconnecting forever (#1193)', async () => {
    let accepted = 0;
    const closer: Server = createServer((socket) => {
      accepted++;
      socket.end();
    });
    await new Promise<void>((resolve) => closer.listen(0, '127.0.0.1', resolve));
    try {
      const port = (closer.address() as { port: number }).port;
      const sql = postgres({
        host: '127.0.0.1',
        port,
        user: 'postgres',
        database: 'postgres',
        max: 1,
        connect_timeout: 2,
        onnotice: () => {},
      });
      pools.push(sql);
      const result = await settles('a query to a server that hangs up', sql`SELECT 1`, 5_000);
      assert.equal(codeOf(result), 'CONNECTION_CLOSED');
      assert.ok(accepted < 10, `${accepted} connection attempts for one query`);
    } finally {
      closer.close();
    }
  });

  it("a connection dropped while it reads the server's types fails the query; the failure is handled, and the next connection works", async () => {
    // Cut when the driver asks for the array types, the first thing it does on every new connection.
    let cut = true;
    const proxy = await startTcpProxy(server.port);
    proxy.cutWhen = (chunk) => cut && chunk.includes('typcategory');
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      const sql = throughProxy(proxy.port);
      assert.equal(
        codeOf(await settles('a query on a connection cut while it starts', sql`SELECT 1`)),
        'CONNECTION_CLOSED',
      );
      cut = false;
      assert.equal((await settles('a query on the next connection', sql`SELECT 1`)).status, 'fulfilled');
      await sleep(50);
      assert.deepEqual(unhandled, [], 'no promise rejection went unhandled');
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await proxy.close();
    }
  });

  for (const mode of ['fast', 'immediate'] as const) {
    it(`transactions in flight through a ${mode} shutdown all settle, and the same pool serves after the restart`, async () => {
      await admin`CREATE TABLE IF NOT EXISTS counters (id serial PRIMARY KEY, n int NOT NULL)`;
      const sql = pool({ max: 10 });
      let running = true;
      let committed = 0;
      const failures = new Map<string, number>();
      const worker = async () => {
        while (running) {
          const reserved = await sql.reserve().catch(() => undefined);
          if (!reserved) {
            await sleep(20);
            continue;
          }
          try {
            // Pipelined as the storage port sends it: BEGIN with the first statements.
            await Promise.all([
              reserved`BEGIN`,
              reserved`INSERT INTO counters (n) VALUES (${1})`,
              reserved`SELECT pg_sleep(0.002)`,
            ]);
            await reserved`UPDATE counters SET n = n + 1 WHERE id = (SELECT max(id) FROM counters)`;
            await reserved`COMMIT`;
            committed++;
          } catch (error) {
            const code = String((error as { code?: string }).code);
            failures.set(code, (failures.get(code) ?? 0) + 1);
            await reserved`ROLLBACK`.catch(() => undefined);
          } finally {
            reserved.release();
          }
        }
      };
      const workers = Array.from({ length: 30 }, worker);
      while (committed < 200) await sleep(10);
      await server.stop(mode);
      await sleep(500);
      const duringOutage = committed;
      await server.start();
      await settles(
        'a commit after the restart',
        (async () => {
          while (committed === duringOutage) await sleep(10);
        })(),
        30_000,
      );
      running = false;
      await settles('every worker to finish', Promise.all(workers), 30_000);
      // Every connection of the pool is back: none was lost to a reservation
      // refused during the outage, or to one handed out while reconnecting.
      const all = await settles(
        'ten reservations at once',
        Promise.all(Array.from({ length: 10 }, () => sql.reserve())),
      );
      assert.equal(all.status, 'fulfilled');
      if (all.status === 'fulfilled') for (const r of all.value) r.release();
      assert.ok(failures.size > 0, 'transactions were in flight when the server went away');
      for (const code of failures.keys())
        assert.match(
          code,
          /^(CONNECTION_CLOSED|CONNECTION_DESTROYED|ECONNREFUSED|ECONNRESET|57P0[123]|08\w{3})$/,
          `failure code ${code}`,
        );
    });
  }
});
