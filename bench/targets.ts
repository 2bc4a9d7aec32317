// The system under test, in either shape, behind one interface: where to send
// HTTP, how to mint tokens, a direct database handle for the end-of-run
// checks, the gateway's ledger, and the server processes' memory.
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import postgres from 'postgres';
import { pino } from 'pino';
import { childPids, freePortRange, startCluster, type ClusterShape } from '../scripts/cluster.ts';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import type { GatewayServer } from '../src/payments/gateway-server.ts';
import type { LedgerCharge, LedgerRefund } from '../src/payments/simulated-gateway.ts';
import { SimulatedGateway } from '../src/payments/simulated-gateway.ts';
import type { Database } from '../src/storage/database.ts';
import { initEmbeddedDataDir } from '../src/storage/pglite.ts';
import { openPostgres } from '../src/storage/postgres.ts';

export type Mode = 'embedded' | 'distributed';

export const GATEWAY_LATENCY_MS = 20;
export const DEFAULT_POSTGRES_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const DEFAULT_BROKER_URL = 'nats://127.0.0.1:4222';
/** application_name of the bench's own connections to the system's database. */
export const BENCH_APPLICATION_NAME = 'orderflow-bench';

export interface Ledger {
  charges: LedgerCharge[];
  refunds: LedgerRefund[];
}

export interface ProcessMemory {
  name: string;
  rssBytes: number;
}

export interface Target {
  readonly mode: Mode;
  readonly url: string;
  /** Where accept writes the payment job: the jobs table, or the outbox in broker mode. */
  readonly brokerUrl: string | undefined;
  /** A short description for the report (processes, database, broker). */
  readonly shape: string;
  /** A direct connection to the system's database, for counts and invariant checks. */
  readonly db: Database;
  issue(sub: string, scope: string): Promise<string>;
  ledger(): Promise<Ledger>;
  memory(): Promise<ProcessMemory[]>;
  /** The server processes (distributed: each role process and its node:cluster copies), by name. */
  processes(): Promise<{ name: string; pid: number }[]>;
  /** Where each serving process answers /metrics on its own (split shape: every api process; otherwise none). */
  readonly apiMetricsUrls: string[];
  /** The last lines the server processes logged (shown when something breaks). */
  logTail(): string[];
  stop(): Promise<void>;
}

/** The PostgreSQL server benchmarks run on: DATABASE_URL if set, else the local default. */
export function postgresBaseUrl(): string {
  return process.env.DATABASE_URL ?? DEFAULT_POSTGRES_URL;
}

/** BROKER_URL if set; else a local NATS if one answers; else none (the database queue). */
export async function resolveBrokerUrl(): Promise<string | undefined> {
  if (process.env.BROKER_URL !== undefined) return process.env.BROKER_URL || undefined;
  const url = new URL(DEFAULT_BROKER_URL);
  return (await reachable(url.hostname, Number(url.port))) ? DEFAULT_BROKER_URL : undefined;
}

function reachable(host: string, port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.connect(port, host, () => done(true));
  });
}

/** A brand-new database on the server (the way the test harness makes one), and its dropper. */
export async function freshDatabase(
  baseUrl: string,
): Promise<{ url: string; name: string; drop: () => Promise<void> }> {
  const name = `orderflow_bench_${randomBytes(6).toString('hex')}`;
  const admin = postgres(baseUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    name,
    drop: async () => {
      const sql = postgres(baseUrl, { max: 1, onnotice: () => {} });
      try {
        await sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await sql.end();
      }
    },
  };
}

export interface DistributedOptions {
  /** Run on this existing database (kept afterwards) instead of a fresh one on postgresBaseUrl(). */
  databaseUrl?: string;
  /** null: no broker (the database queue); undefined: resolveBrokerUrl(). */
  brokerUrl?: string | null;
  /** More environment for every process (e.g. DATABASE_READ_URL). */
  env?: Record<string, string>;
  /** A gateway the caller owns, so that one ledger spans several targets on one database. */
  gateway?: GatewayServer;
  /** Combined shape: `api` runs two accepting copies and nothing that pays (payments paused). */
  combinedRole?: 'all' | 'api';
  /** Write a V8 CPU profile of every server process into this directory when it exits (`--cpu-prof`). */
  cpuProfileDir?: string;
}

export async function startTarget(
  mode: Mode,
  shape: ClusterShape = 'combined',
  options: DistributedOptions = {},
): Promise<Target> {
  return mode === 'embedded' ? startEmbedded() : startDistributed(shape, options);
}

/**
 * The performance settings of the caller's environment (to compare, e.g.,
 * GROUP_COMMIT_MAX_BATCH=1 with the default), without its service URLs: the
 * embedded target must not pick up a DATABASE_URL meant for the distributed one.
 */
function tuningFromEnvironment(): Record<string, string> {
  const tuning: Record<string, string> = {};
  for (const name of ['GROUP_COMMIT_MAX_BATCH', 'WORKER_CONCURRENCY']) {
    const value = process.env[name];
    if (value !== undefined) tuning[name] = value;
  }
  return tuning;
}

async function startEmbedded(): Promise<Target> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-bench-'));
  const gateway = new SimulatedGateway({ latencyMs: GATEWAY_LATENCY_MS, retain: 'all' });
  const config = loadConfig({
    ...tuningFromEnvironment(),
    PORT: '0',
    HOST: '127.0.0.1',
    DATA_DIR: dataDir,
    LOG_LEVEL: 'warn',
  });
  const lines: string[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void pushLine(lines, 'app', line.trimEnd()) });
  // As `serve` does: the database's files are created in a child process, whose memory is then returned.
  await initEmbeddedDataDir(dataDir);
  const app = await createApp({ config, log, gateway });
  let url: string;
  try {
    url = await app.start();
  } catch (error) {
    await app.close();
    throw error;
  }
  return {
    mode: 'embedded',
    url,
    brokerUrl: undefined,
    shape: `one process (API + workers), PGlite in a temporary DATA_DIR, in-process simulated gateway (${GATEWAY_LATENCY_MS} ms)`,
    db: app.db,
    issue: (sub, scope) => app.devIssuer!.issue({ sub, scope }),
    ledger: async () => ({ charges: [...gateway.charges.values()], refunds: [...gateway.refunds.values()] }),
    memory: async () => [{ name: 'app', rssBytes: process.memoryUsage().rss }],
    processes: async () => [{ name: 'app', pid: process.pid }],
    apiMetricsUrls: [],
    logTail: () => lines.slice(),
    stop: async () => {
      await app.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

async function startDistributed(shape: ClusterShape, options: DistributedOptions): Promise<Target> {
  const fresh = options.databaseUrl
    ? { url: options.databaseUrl, name: new URL(options.databaseUrl).pathname.slice(1), drop: async () => {} }
    : await freshDatabase(postgresBaseUrl());
  const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-bench-'));
  const brokerUrl = options.brokerUrl === null ? undefined : (options.brokerUrl ?? (await resolveBrokerUrl()));
  // The key exists before any process starts, so they all verify with it.
  const issuer = await openDevIssuer(dataDir);
  const lines: string[] = [];
  let cluster;
  try {
    cluster = await startCluster({
      databaseUrl: fresh.url,
      brokerUrl,
      shape,
      basePort: await freePortRange(8),
      gatewayLatencyMs: GATEWAY_LATENCY_MS,
      // The final checks count every order of the run against the ledger.
      gatewayRetain: 'all',
      isolatedBroker: true,
      ...(options.gateway ? { gateway: options.gateway } : {}),
      ...(options.combinedRole ? { combinedRole: options.combinedRole } : {}),
      ...(options.cpuProfileDir ? { nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${options.cpuProfileDir}`] } : {}),
      env: { DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...options.env },
      onOutput: (name, line) => pushLine(lines, name, line),
    });
  } catch (error) {
    await fresh.drop();
    await rm(dataDir, { recursive: true, force: true });
    // What the processes said before one failed to start is the reason.
    throw new Error(`${(error as Error).message}; the processes logged:\n${lines.slice(-20).join('\n')}`, {
      cause: error,
    });
  }
  const started = cluster;
  // Named, so that the bench's own queries are not counted as Orderflow's PostgreSQL backends.
  const benchUrl = new URL(fresh.url);
  benchUrl.searchParams.set('application_name', BENCH_APPLICATION_NAME);
  const db = openPostgres(benchUrl.toString(), 4);
  const counts = started.processes.reduce<Record<string, number>>(
    (acc, p) => ({ ...acc, [p.role]: (acc[p.role] ?? 0) + 1 }),
    {},
  );
  return {
    mode: 'distributed',
    url: started.url,
    brokerUrl,
    shape:
      (shape === 'combined'
        ? counts.api
          ? '2 processes (node:cluster, WEB_CONCURRENCY=2), ROLE=api only: accepting, nothing relayed or paid, no load balancer'
          : `2 processes (node:cluster, WEB_CONCURRENCY=2), each api + worker${counts.all && brokerUrl ? ' + relay' : ''}, no load balancer`
        : `HAProxy → ${counts.api ?? 0} api, ${counts.worker ?? 0} worker` +
          (counts.relay ? `, ${counts.relay} relay` : '') +
          ' processes') +
      `; PostgreSQL database ${fresh.name}; ${brokerUrl ? `broker ${new URL(brokerUrl).protocol.replace(':', '')}` : 'database queue'}; HTTP simulated gateway (${GATEWAY_LATENCY_MS} ms)`,
    db,
    issue: (sub, scope) => issuer.issue({ sub, scope }),
    ledger: async () => {
      const response = await fetch(`${started.gateway.url}/v1/ledger`);
      if (!response.ok) throw new Error(`gateway ledger answered ${response.status}`);
      return (await response.json()) as Ledger;
    },
    processes: () => serverProcesses(started),
    apiMetricsUrls: started.processes.filter((p) => p.role === 'api').map((p) => `http://127.0.0.1:${p.port}/metrics`),
    memory: async () => {
      const result: ProcessMemory[] = [];
      for (const { name, pid } of await serverProcesses(started)) {
        const rss = await vmRss(pid);
        if (rss !== undefined) result.push({ name, rssBytes: rss });
      }
      return result;
    },
    logTail: () => lines.slice(),
    stop: async () => {
      try {
        await started.stop();
      } finally {
        await db.close();
        await fresh.drop();
        await rm(dataDir, { recursive: true, force: true });
      }
    },
  };
}

/** Each role process, and the serving copies node:cluster forked (combined shape). */
async function serverProcesses(cluster: {
  processes: { name: string; child: { pid?: number } }[];
}): Promise<{ name: string; pid: number }[]> {
  const result: { name: string; pid: number }[] = [];
  for (const p of cluster.processes) {
    const pid = p.child.pid;
    if (pid === undefined) continue;
    result.push({ name: p.name, pid });
    let copy = 1;
    for (const child of await childPids(pid)) result.push({ name: `${p.name}${copy++}`, pid: child });
  }
  return result;
}

async function vmRss(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

function pushLine(lines: string[], name: string, line: string): void {
  lines.push(`[${name}] ${line}`);
  if (lines.length > 200) lines.splice(0, lines.length - 200);
}

/**
 * The cluster takes consecutive ports from its base; other runs (tests, other
 * benchmarks) may hold the usual ones, so find a free block.
 */
