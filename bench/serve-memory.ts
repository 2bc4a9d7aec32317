// npm start's own memory under the throughput bench's load: `npm start`
// (its exact flags, --max-old-space-size=160 among them, and its in-process
// simulated gateway) runs as a child with a fresh DATA_DIR, and the load
// generator places orders for --duration seconds. Every 10 s it prints the
// server's V8 heap in use (its /metrics) and RSS; then the heap growth per
// accepted order over the run. The embedded throughput bench cannot tell
// this: its app runs in the bench's own process with a gateway that keeps
// its whole ledger.
//
//   node bench/serve-memory.ts [--duration S] [--connections N] [--env NAME=VALUE ...] [--checkout DIR]
import { execFileSync, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { freePortRange } from '../scripts/cluster.ts';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { runLoad } from './load.ts';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '120' },
    connections: { type: 'string', default: '16' },
    env: { type: 'string', multiple: true, default: [] },
    /** Another checkout whose `npm start` to measure (a revision to compare with). */
    checkout: { type: 'string' },
  },
});
const durationS = Number(values.duration);
const connections = Number(values.connections);
const extraEnv = Object.fromEntries(values.env.map((pair) => pair.split('=', 2) as [string, string]));

const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-serve-memory-'));
const port = await freePortRange(1);
const url = `http://127.0.0.1:${port}`;
const server = spawn('npm', ['start', '--silent'], {
  env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...extraEnv },
  stdio: ['ignore', 'ignore', 'inherit'],
  detached: true,
  ...(values.checkout ? { cwd: values.checkout } : {}),
});
const exited = new Promise<number | null>((resolve) => server.once('exit', resolve));

try {
  await waitForServer();
  const issuer = await openDevIssuer(dataDir);
  const merchant = await issuer.issue({ sub: 'bench-merchant', scope: 'catalog:write' });
  const skus = Array.from({ length: 1000 }, (_, i) => `MEM-${i}`);
  for (const sku of skus) {
    const response = await fetch(`${url}/v1/products`, {
      method: 'POST',
      headers: { authorization: `Bearer ${merchant}`, 'content-type': 'application/json' },
      body: JSON.stringify({ sku, name: sku, priceCents: 1000, currency: 'EUR', stock: 100_000_000 }),
    });
    if (response.status !== 201) throw new Error(`creating ${sku}: ${response.status} ${await response.text()}`);
  }
  const tokens = await Promise.all(
    Array.from({ length: connections }, (_, i) =>
      issuer.issue({ sub: `bench-customer-${i}`, scope: 'orders:write orders:read' }),
    ),
  );
  const start = await sample();
  console.log(`t=0s heap ${mb(start.heap)} rss ${mb(start.rss)}`);
  const sampler = (async () => {
    for (let t = 10; t <= durationS; t += 10) {
      await sleep(10_000);
      const now = await sample().catch(() => undefined);
      if (now) console.log(`t=${t}s heap ${mb(now.heap)} rss ${mb(now.rss)}`);
    }
  })();
  const result = await runLoad(
    {
      url,
      connections,
      tokens,
      durationMs: durationS * 1000,
      workload: { kind: 'throughput', skus },
      keyPrefix: `mem-${Date.now()}`,
    },
    () => {},
  );
  await sampler;
  // The queued payments finish, then a few idle seconds for the collector.
  await sleep(15_000);
  const end = await sample();
  console.log(
    `accepted ${result.accepted} orders in ${(result.elapsedMs / 1000).toFixed(0)} s (${(result.accepted / (result.elapsedMs / 1000)).toFixed(0)}/s), failed ${result.failed}`,
  );
  console.log(
    `heap ${mb(start.heap)} -> ${mb(end.heap)} (+${mb(end.heap - start.heap)}), ${Math.round((end.heap - start.heap) / Math.max(1, result.accepted))} B per order; rss ${mb(start.rss)} -> ${mb(end.rss)}`,
  );
} finally {
  // npm's own process may be gone already: the server is found by its process group.
  await stopGroup();
  await rm(dataDir, { recursive: true, force: true });
}
// The load generator's and fetch's idle sockets would hold the process a while longer.
process.exit(0);

async function stopGroup(): Promise<void> {
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(-server.pid!, name);
    } catch {
      // Nothing is left in the group.
    }
  };
  signal('SIGTERM');
  await exited;
  // Graceful shutdown takes at most 25 s; then it is killed.
  for (let i = 0; i < 300 && groupAlive(); i++) await sleep(100);
  if (groupAlive()) signal('SIGKILL');
  for (let i = 0; i < 50 && groupAlive(); i++) await sleep(100);
}

function groupAlive(): boolean {
  try {
    process.kill(-server.pid!, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitForServer(): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (server.exitCode !== null) throw new Error(`npm start exited with ${server.exitCode}`);
    const ok = await fetch(`${url}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return;
    await sleep(100);
  }
  throw new Error('npm start did not become ready in 60 s');
}

/** The server's V8 heap in use (prom-client's default metric) and the RSS of its `serve` process. */
async function sample(): Promise<{ heap: number; rss: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const heap = Number(/^nodejs_heap_size_used_bytes(?:\{[^}]*\})? (\S+)/m.exec(text)?.[1]);
  const ps = execFileSync('ps', ['-o', 'rss=,args=', '-g', String(server.pid)], { encoding: 'utf8' });
  const line = ps.split('\n').find((l) => /^\s*\d+ \S*node /.test(l) && l.includes('src/main.ts serve'));
  return { heap, rss: line ? Number(line.trim().split(/\s+/)[0]) * 1024 : Number.NaN };
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}
