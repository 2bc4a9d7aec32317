// The live figures of the distributed shape come from every process, not
// only the one the browser reached: an `api` and a `worker` process, started
// as separate programs on one PostgreSQL database, both appear in the
// figures stream the `api` serves, and the payments only the worker makes
// show in the totals.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { freePort } from './support/programs.ts';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { figuresReadings } from './support/sse.ts';

const MAIN = new URL('../src/main.ts', import.meta.url).pathname;

interface Reading {
  processes: { role: string; pid: number; figures: { orders: { confirmedPerSecond: number }; gateway: unknown } }[];
  totals: { processes: number; orders: { acceptedPerSecond: number; confirmedPerSecond: number } };
}

describe('live figures across processes (postgres)', () => {
  const base = requiredServiceUrl('DATABASE_URL');
  let database: { url: string; drop: () => Promise<void> };
  let dataDir: string;
  const children: ChildProcess[] = [];
  let api: string;

  before(async () => {
    if (!base) return;
    database = await freshPostgresDatabase(base);
    dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-figures-'));
    const start = async (role: string) => {
      const port = await freePort();
      const child = spawn(process.execPath, [MAIN, 'serve'], {
        env: {
          ...process.env,
          ROLE: role,
          PORT: String(port),
          HOST: '127.0.0.1',
          DATABASE_URL: database.url,
          DATA_DIR: dataDir,
          LOG_LEVEL: 'warn',
          BROKER_URL: '',
          REDIS_URL: '',
          SIMULATED_GATEWAY_LATENCY_MS: '5',
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      });
      children.push(child);
      const url = `http://127.0.0.1:${port}`;
      await eventually(
        `the ${role} process to be ready`,
        async () => ((await fetch(`${url}/readyz`).catch(() => undefined))?.ok ? true : undefined),
        60_000,
      );
      return url;
    };
    // The api first: it makes the development key in DATA_DIR that both verify with.
    api = await start('api');
    await start('worker');
  });
  after(async () => {
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(
      children.map(
        (child) =>
          new Promise((resolve) => (child.exitCode !== null ? resolve(undefined) : child.once('exit', resolve))),
      ),
    );
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
    await database?.drop();
  });

  it(
    "the api streams the figures of both processes, the worker's payments included",
    { skip: base ? false : 'DATABASE_URL is not set' },
    async () => {
      const issuer = await openDevIssuer(dataDir);
      const token = await issuer.issue({ sub: 'ops', scope: 'orders:admin orders:write catalog:write' });
      const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
      const created = await fetch(`${api}/v1/products`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ sku: 'FIG-1', name: 'Figure', priceCents: 100, currency: 'EUR', stock: 1000 }),
      });
      assert.equal(created.status, 201);

      const controller = new AbortController();
      const response = await fetch(`${api}/v1/admin/figures/stream`, { headers, signal: controller.signal });
      assert.equal(response.status, 200);
      let placing = true;
      const placed = (async () => {
        for (let i = 0; placing; i++) {
          const order = await fetch(`${api}/v1/orders`, {
            method: 'POST',
            headers: { ...headers, 'idempotency-key': `fig-${i}` },
            body: JSON.stringify({ items: [{ sku: 'FIG-1', quantity: 1 }], payment: { token: 'tok_visa' } }),
          });
          assert.equal(order.status, 202);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
      })();
      let seen: Reading | undefined;
      try {
        const deadline = Date.now() + 30_000;
        for await (const reading of figuresReadings<Reading>(response)) {
          const roles = reading.processes.map((p) => p.role).sort();
          if (roles.join() === 'api,worker' && reading.totals.orders.confirmedPerSecond > 0) seen = reading;
          if (seen || Date.now() >= deadline) break;
        }
      } finally {
        placing = false;
        controller.abort();
        await placed;
      }
      assert.ok(seen, "a reading with both processes and the worker's confirmations");
      const apiRow = seen.processes.find((p) => p.role === 'api')!;
      const workerRow = seen.processes.find((p) => p.role === 'worker')!;
      assert.notEqual(apiRow.pid, workerRow.pid);
      assert.ok(![apiRow.pid, workerRow.pid].includes(process.pid), 'both are other programs than this test');
      assert.equal(apiRow.figures.gateway, null, 'the api calls no gateway');
      assert.notEqual(workerRow.figures.gateway, null);
      assert.equal(
        apiRow.figures.orders.confirmedPerSecond,
        0,
        "the api confirms nothing: the confirmations are the worker's",
      );
      assert.equal(seen.totals.processes, 2);
    },
  );
});
