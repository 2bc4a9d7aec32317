// The distributed shape on one machine: a simulated payment gateway over
// HTTP and, on the PostgreSQL (and broker, and Redis) named by the
// environment, either
//   - split (default): N api processes behind HAProxy, M workers and a relay,
//     each role in its own processes, as a multi-machine deployment runs; or
//   - combined: one `serve` with ROLE=all and WEB_CONCURRENCY=N, so N
//     processes each run every role and share the port through node:cluster,
//     with no load balancer hop: fewer processes for a machine with few
//     cores (both shapes measure alike on 2; docs/performance.md). `npm run
// cluster` runs it until Ctrl-C; the cluster test drives the same code and
// kills processes in it.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//   BROKER_URL=nats://127.0.0.1:4222 REDIS_URL=redis://127.0.0.1:6379 npm run cluster
//
// What the command honours and refuses, shape by shape, is decided in one
// place (clusterSettings) and listed in the README: every variable is either
// used or refused with exit 2, never silently replaced.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../src/config.ts';
import { deleteBrokerTopology } from '../src/messaging/topology.ts';
import { PAYMENT_QUEUES } from '../src/payments/payments.ts';
import { startGatewayServer, type GatewayServer } from '../src/payments/gateway-server.ts';
import { retentionFor, SimulatedGateway, type Retention } from '../src/payments/simulated-gateway.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MAIN = path.join(ROOT, 'src', 'main.ts');
/** HAProxy's policy; the api servers come from a second file (haproxyServers). */
export const HAPROXY_CONFIG = path.join(ROOT, 'deploy', 'haproxy', 'haproxy.cfg');
// The same V8 flags as `npm start` (see package.json and docs/performance.md):
// small young-generation semi-spaces, and an old generation capped at 160 MB
// so that V8 collects it before RSS passes 200 MB instead of growing the
// heap it has no need for on a machine with plenty of RAM.
// Tracing loads first, as with `npm start` (src/observability/instrument.ts):
// it stays off unless the OTEL_* variables turn it on.
export const SERVE_FLAGS = [
  '--max-semi-space-size=4',
  '--max-old-space-size=160',
  '--import',
  path.join(ROOT, 'src', 'observability', 'instrument.ts'),
];

export interface ClusterOptions {
  databaseUrl: string;
  brokerUrl?: string;
  redisUrl?: string;
  apis?: number;
  workers?: number;
  relays?: number;
  /** split (default) or combined; see the top of this file. */
  shape?: ClusterShape;
  /** combined: how many processes (WEB_CONCURRENCY, 1–64); default 2. The caller's own WEB_CONCURRENCY is never inherited. */
  copies?: number;
  /** combined: the role every copy runs; default all. `api` alone accepts orders and pays none (the bench's accept-only run). */
  combinedRole?: 'all' | 'api';
  /** First port; the load balancer takes it, each process the next ones. */
  basePort?: number;
  /** Extra environment for every Orderflow process (e.g. LOG_LEVEL). */
  env?: Record<string, string>;
  /** More Node flags for every Orderflow process (e.g. --cpu-prof; node:cluster copies inherit them). */
  nodeFlags?: string[];
  gatewayLatencyMs?: number;
  /** What the gateway the cluster starts remembers; 'all' for a caller that checks every order against its ledger. Default: bounded, as in SimulatedGateway. */
  gatewayRetain?: Retention;
  /** A payment gateway server the caller owns (and may stop and start again) instead of one the cluster starts. */
  gateway?: GatewayServer;
  /**
   * Give this cluster its own broker names (BROKER_PREFIX) and delete them
   * on stop, so runs sharing a broker never see each other's messages.
   */
  isolatedBroker?: boolean;
  /** How long each process may take to become ready (default 30 s; a loaded machine starts Node slowly). */
  readyTimeoutMs?: number;
  /** Called with each line a process prints (default: prefixed to this process' stderr). */
  onOutput?: (process: string, line: string) => void;
}

export type ClusterShape = 'split' | 'combined';

export interface ClusterProcess {
  readonly name: string;
  readonly role: 'api' | 'worker' | 'relay' | 'lb' | 'all';
  readonly port: number;
  readonly child: ChildProcess;
  /** SIGKILL: no graceful shutdown, as when a machine dies. */
  kill(): Promise<void>;
  /** Starts the process again with the same role and port; resolves when it is ready. */
  restart(): Promise<void>;
}

export interface Cluster {
  /** The load balancer's URL: where clients connect. */
  readonly url: string;
  readonly gateway: GatewayServer;
  readonly processes: ClusterProcess[];
  process(name: string): ClusterProcess;
  /**
   * Resolves, with a line saying why, once the last process of a role has
   * exited on its own (any exit, code 0 included, that neither kill(),
   * restart() nor stop() asked for): the cluster can no longer serve, and
   * nothing here restarts it. Never rejects; pending while the cluster serves.
   */
  readonly lost: Promise<string>;
  stop(): Promise<void>;
}

/** The highest TCP port. */
const LAST_PORT = 65_535;

/** One port a cluster listens on: a process's, or (split) HAProxy's statistics page. */
export interface ClusterPort {
  readonly name: string;
  readonly role: ClusterProcess['role'] | 'stats';
  readonly port: number;
}

/**
 * Every port startCluster will listen on for these options, in start order:
 * combined, the one `serve` on basePort (its node:cluster copies share it);
 * split, the api, worker and relay processes on basePort+1, +2, ..., then
 * HAProxy on basePort and its statistics page on the port after the last
 * process. The gateway it starts takes a port the kernel picks. Ports may
 * run past 65535: callers check (clusterSettings, startCluster).
 */
export function clusterPorts(
  options: Pick<ClusterOptions, 'shape' | 'basePort' | 'apis' | 'workers' | 'relays' | 'brokerUrl' | 'combinedRole'>,
): ClusterPort[] {
  const basePort = options.basePort ?? 8080;
  if (options.shape === 'combined') {
    const role = options.combinedRole ?? 'all';
    return [{ name: role, role, port: basePort }];
  }
  const ports: ClusterPort[] = [];
  let port = basePort + 1;
  const plan: { role: 'api' | 'worker' | 'relay'; count: number }[] = [
    { role: 'api', count: options.apis ?? 2 },
    { role: 'worker', count: options.workers ?? 2 },
    { role: 'relay', count: options.brokerUrl ? (options.relays ?? 1) : 0 },
  ];
  for (const { role, count } of plan)
    for (let i = 1; i <= count; i++) ports.push({ name: `${role}${i}`, role, port: port++ });
  ports.push({ name: 'haproxy', role: 'lb', port: basePort }, { name: 'haproxy stats', role: 'stats', port });
  return ports;
}

/** The highest basePort whose ports (clusterPorts) all fit below 65536. */
function highestBasePort(ports: readonly ClusterPort[], basePort: number): number {
  return LAST_PORT - (Math.max(...ports.map((p) => p.port)) - basePort);
}

/**
 * Starts the cluster the options describe and resolves once every process
 * answers /readyz; on any failure it stops what it started and rejects.
 *
 * @throws Error before starting anything when a port it needs (clusterPorts) is past 65535.
 */
export async function startCluster(options: ClusterOptions): Promise<Cluster> {
  const basePort = options.basePort ?? 8080;
  const ports = clusterPorts(options);
  if (highestBasePort(ports, basePort) < basePort)
    throw new Error(
      `ports from ${basePort} run past ${LAST_PORT}; the highest base port that fits is ${highestBasePort(ports, basePort)}`,
    );
  const output = options.onOutput ?? ((name, line) => process.stderr.write(`[${name}] ${line}\n`));
  const brokerPrefix = options.isolatedBroker && options.brokerUrl ? `c${randomBytes(5).toString('hex')}` : undefined;
  const gateway =
    options.gateway ??
    (await startGatewayServer({
      gateway: new SimulatedGateway({
        latencyMs: options.gatewayLatencyMs ?? 20,
        ...(options.gatewayRetain ? { retain: options.gatewayRetain } : {}),
      }),
    }));
  const closeGateway = () => (options.gateway ? Promise.resolve() : gateway.close());
  const env: Record<string, string> = {
    ...inheritedEnv(),
    HOST: '127.0.0.1',
    DATABASE_URL: options.databaseUrl,
    PAYMENT_GATEWAY_URL: gateway.url,
    LOG_LEVEL: 'warn',
    ...(options.brokerUrl ? { BROKER_URL: options.brokerUrl } : {}),
    ...(options.redisUrl ? { REDIS_URL: options.redisUrl } : {}),
    ...(brokerPrefix ? { BROKER_PREFIX: brokerPrefix } : {}),
    ...options.env,
  };

  const processes: ClusterProcess[] = [];
  /** The HAProxy servers file of the split shape. */
  let lbDir: string | undefined;
  /** Set once stop() begins: the exits it causes (or Ctrl-C's, sent to every process) are not news. */
  let stopping = false;
  let markLost: (why: string) => void = () => {};
  const lost = new Promise<string>((resolve) => (markLost = resolve));
  // A role with no process left is a part of the order path gone for good
  // (nothing restarts it): the cluster can no longer serve. While others of
  // its role run, HAProxy routes around the gap and the exit is only reported.
  const exited = (gone: ClusterProcess, how: string) => {
    const alive = processes.filter(
      (p) => p.role === gone.role && p.child.exitCode === null && p.child.signalCode === null,
    );
    if (alive.length === 0) markLost(`${gone.name} exited (${how}), the last process with role ${gone.role}`);
  };
  const managed = (name: string, role: ClusterProcess['role'], port: number, launch: () => ChildProcess) =>
    managedProcess(name, role, port, launch, output, { stopping: () => stopping, exited });
  const serving = (name: string, role: ClusterProcess['role'], port: number, roleEnv: Record<string, string>) =>
    managed(name, role, port, () =>
      spawn(process.execPath, [...SERVE_FLAGS, ...(options.nodeFlags ?? []), MAIN, 'serve'], {
        env: { ...env, ...roleEnv, PORT: String(port) },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
  try {
    // Migrate once up front so the roles do not race for the advisory lock at start.
    await run(process.execPath, [MAIN, 'migrate'], env, 'migrate', output);

    if (options.shape === 'combined') {
      const { name, role, port } = ports[0]!;
      if (role === 'lb' || role === 'stats') throw new Error(`the combined shape has no ${role} process`);
      processes.push(serving(name, role, port, { ROLE: role, WEB_CONCURRENCY: String(options.copies ?? 2) }));
      await waitReady(processes[0]!, options.readyTimeoutMs);
    } else {
      for (const { name, role, port } of ports)
        if (role === 'api' || role === 'worker' || role === 'relay')
          processes.push(serving(name, role, port, { ROLE: role }));
      await Promise.all(processes.map((p) => waitReady(p, options.readyTimeoutMs)));

      lbDir = await mkdtemp(path.join(tmpdir(), 'orderflow-haproxy-'));
      const servers = path.join(lbDir, 'servers.cfg');
      await writeFile(
        servers,
        haproxyServers(processes.filter((p) => p.role === 'api').map((p) => `127.0.0.1:${p.port}`)),
      );
      const lbEnv = {
        ...inheritedEnv(),
        ORDERFLOW_LB_BIND: `127.0.0.1:${basePort}`,
        ORDERFLOW_LB_STATS: `127.0.0.1:${ports.find((p) => p.role === 'stats')!.port}`,
      };
      const lb = managed('haproxy', 'lb', basePort, () =>
        spawn('haproxy', ['-db', '-f', HAPROXY_CONFIG, '-f', servers], {
          env: lbEnv,
          stdio: ['ignore', 'pipe', 'pipe'],
        }),
      );
      processes.push(lb);
      await waitReady(lb);
    }
  } catch (error) {
    stopping = true;
    await Promise.all(processes.map((p) => p.kill()));
    await closeGateway();
    if (lbDir) await rm(lbDir, { recursive: true, force: true });
    if (brokerPrefix) await deleteBrokerTopology(options.brokerUrl!, brokerPrefix, PAYMENT_QUEUES);
    throw error;
  }

  return {
    url: `http://127.0.0.1:${basePort}`,
    gateway,
    processes,
    process(name) {
      const found = processes.find((p) => p.name === name);
      if (!found) throw new Error(`no cluster process named ${name}`);
      return found;
    },
    lost,
    async stop() {
      stopping = true;
      // Graceful: the load balancer first, then the api processes, then the
      // workers and relays, so nothing accepted is left without a consumer.
      for (const role of ['lb', 'api', 'relay', 'worker', 'all'] as const) {
        await Promise.all(processes.filter((p) => p.role === role).map((p) => terminate(p.child)));
      }
      await closeGateway();
      if (lbDir) await rm(lbDir, { recursive: true, force: true });
      if (brokerPrefix) await deleteBrokerTopology(options.brokerUrl!, brokerPrefix, PAYMENT_QUEUES);
    },
  };
}

/**
 * The second HAProxy configuration file for a fixed set of api processes
 * (host:port each): `backend api` with the policy of deploy/haproxy/haproxy.cfg
 * (`defaults api-policy`) and one server per process. Load it after that file:
 * `haproxy -f deploy/haproxy/haproxy.cfg -f servers.cfg`. Where DNS finds the
 * processes, deploy/haproxy/servers-dns.cfg takes its place.
 */
export function haproxyServers(addresses: readonly string[]): string {
  if (addresses.length === 0) throw new Error('HAProxy needs at least one api process');
  return [
    'backend api from api-policy',
    ...addresses.map((address, i) => `  server api${i + 1} ${address} check`),
    '',
  ].join('\n');
}

/** The processes a process started (Linux): the serving copies of a combined shape's supervisor. */
export async function childPids(pid: number): Promise<number[]> {
  try {
    const text = await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8');
    return text
      .split(' ')
      .filter((t) => t.trim() !== '')
      .map(Number);
  } catch {
    return [];
  }
}

function managedProcess(
  name: string,
  role: ClusterProcess['role'],
  port: number,
  launch: () => ChildProcess,
  output: (process: string, line: string) => void,
  cluster: { stopping: () => boolean; exited: (process: ClusterProcess, how: string) => void },
): ClusterProcess {
  let child = launch();
  /** Set while this runner stops the process itself: an expected exit is not reported. */
  let stopping = false;
  const attach = (c: ChildProcess) => {
    // A program that cannot start (haproxy not installed) is reported here;
    // waitReady then fails, and startCluster stops the processes it started.
    c.on('error', (error) => output(name, `could not start: ${error.message}`));
    // A process that exits says so, whatever its code: nothing restarts it
    // here, and a silent gap in the cluster is what an operator must not
    // miss. Code 0 is news too (a serve someone sent SIGTERM drains and
    // exits 0); only the exits this runner asks for are not.
    c.once('exit', (code, signal) => {
      if (stopping || cluster.stopping()) return;
      const how = signal ?? `code ${code}`;
      output(name, `exited (${how}); it is not restarted`);
      cluster.exited(handle, how);
    });
    for (const stream of [c.stdout, c.stderr]) {
      let partial = '';
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const line of lines) if (line.trim() !== '') output(name, line);
      });
    }
  };
  attach(child);
  const handle: ClusterProcess = {
    name,
    role,
    port,
    get child() {
      return child;
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      stopping = true;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    },
    async restart() {
      await handle.kill();
      stopping = false;
      child = launch();
      attach(child);
      await waitReady(handle);
    },
  };
  return handle;
}

async function waitReady(p: ClusterProcess, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  // Through the load balancer, /readyz proves it reaches a ready api process.
  const url = `http://127.0.0.1:${p.port}/readyz`;
  for (;;) {
    if (p.child.exitCode !== null || p.child.signalCode !== null)
      throw new Error(`${p.name} exited (${p.child.signalCode ?? `code ${p.child.exitCode}`}) while starting`);
    try {
      const response = await fetch(url);
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${p.name} was not ready on ${url} after ${timeoutMs} ms`);
    await sleep(100);
  }
}

async function terminate(child: ChildProcess, graceMs = 20_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

function run(
  command: string,
  args: string[],
  env: Record<string, string>,
  name: string,
  output: (process: string, line: string) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    child.stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (text += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      for (const line of text.split('\n')) if (line.trim() !== '') output(name, line);
      if (code === 0) resolve();
      else reject(new Error(`${name} exited with code ${code}`));
    });
  });
}

/** PATH and friends, without any Orderflow variable of the caller's shell. */
function inheritedEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined) continue;
    if (
      [
        'DATABASE_URL',
        'DATABASE_READ_URL',
        'BROKER_URL',
        'BROKER_PREFIX',
        'REDIS_URL',
        'CACHE_URL',
        'PAYMENT_GATEWAY_URL',
        'ROLE',
        'PORT',
        'HOST',
        'AUTH_JWKS_URL',
        'AUTH_ISSUER',
        'AUTH_AUDIENCE',
        // The shape decides it: each split process is one copy, and the
        // combined shape sets its own count (ClusterOptions.copies).
        'WEB_CONCURRENCY',
        // HAProxy's addresses and TLS are the cluster's (--port; plain HTTP).
        ...LOAD_BALANCER_VARIABLES,
      ].includes(key)
    )
      continue;
    env[key] = value;
  }
  return env;
}

/** Variables `npm run cluster` hands to every process as they are. */
const PASSED_ON = ['DATABASE_READ_URL', 'CACHE_URL', 'BROKER_PREFIX', 'AUTH_JWKS_URL', 'AUTH_ISSUER', 'AUTH_AUDIENCE'];
/** deploy/haproxy/haproxy.cfg's variables: the cluster sets the addresses from --port and serves plain HTTP. */
const LOAD_BALANCER_VARIABLES = [
  'ORDERFLOW_LB_BIND',
  'ORDERFLOW_LB_STATS',
  'ORDERFLOW_TLS_CERT',
  'ORDERFLOW_LB_TLS_BIND',
  'ORDERFLOW_LB_HTTPS_PORT',
];
/** Variables the cluster decides itself, with what to use instead: refused rather than silently replaced. */
const DECIDED_BY_THE_CLUSTER: Record<string, string> = {
  PAYMENT_GATEWAY_URL:
    'it runs its own simulated gateway; to use another one, run the roles yourself (README, "Each role in its own terminal")',
  ROLE: 'it gives each process its role; choose the layout with --shape',
  PORT: 'choose the first port with --port',
  HOST: 'every process listens on 127.0.0.1',
  ...Object.fromEntries(
    LOAD_BALANCER_VARIABLES.map((name) => [
      name,
      'it sets HAProxy\'s addresses from --port and serves plain HTTP; for TLS, run HAProxy yourself (docs/deploy.md, "TLS at the load balancers")',
    ]),
  ),
};
/** Variables one shape has no use for, with what to use instead. */
const NOT_FOR_THE_SHAPE: Record<ClusterShape, Record<string, string>> = {
  split: {
    WEB_CONCURRENCY:
      'the split shape runs one process per api and worker: choose how many with --apis and --workers, or run --shape combined, whose copies WEB_CONCURRENCY counts',
  },
  combined: {},
};
/** Options one shape has no use for, with what to use instead. */
const OPTIONS_NOT_FOR_THE_SHAPE: Record<ClusterShape, Record<string, string>> = {
  split: {},
  combined: {
    apis: 'every copy of the combined shape runs every role: choose how many copies with WEB_CONCURRENCY',
    workers: 'every copy of the combined shape runs every role: choose how many copies with WEB_CONCURRENCY',
  },
};
/** Copies of the combined shape when WEB_CONCURRENCY is not set. */
const DEFAULT_COPIES = 2;

/** What `npm run cluster` runs: the options for startCluster. */
export type ClusterSettings = Pick<
  ClusterOptions,
  | 'databaseUrl'
  | 'brokerUrl'
  | 'redisUrl'
  | 'env'
  | 'shape'
  | 'apis'
  | 'workers'
  | 'copies'
  | 'basePort'
  | 'gatewayLatencyMs'
  | 'gatewayRetain'
>;

/**
 * What `npm run cluster` takes from its environment and command line
 * (`--shape split|combined`, `--apis N`, `--workers N`, `--port N`): the
 * options for startCluster, or the problem to report (exit 2) when a
 * variable or option is missing, malformed, or one the cluster or the
 * chosen shape has no use for, so that nothing a user sets is silently
 * ignored. Both shapes: DATABASE_URL (required), BROKER_URL, REDIS_URL; the
 * PASSED_ON variables and LOG_LEVEL go to every process; the cluster's own
 * gateway follows SIMULATED_GATEWAY_LATENCY_MS, SIMULATED_GATEWAY_MAX_ENTRIES
 * and PENDING_DEADLINE_MS as `orderflow gateway` does; any other Orderflow
 * variable is inherited by every process. Split: --apis and --workers;
 * WEB_CONCURRENCY is refused. Combined: WEB_CONCURRENCY (default 2) copies;
 * --apis and --workers are refused.
 */
export function clusterSettings(env: NodeJS.ProcessEnv, args: string[] = []): ClusterSettings | { problem: string } {
  let values: { shape?: string; apis?: string; workers?: string; port?: string };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        shape: { type: 'string' },
        apis: { type: 'string' },
        workers: { type: 'string' },
        port: { type: 'string' },
      },
    }));
  } catch (error) {
    return { problem: (error as Error).message };
  }
  const shape = values.shape ?? 'split';
  if (shape !== 'split' && shape !== 'combined') return { problem: '--shape is split or combined' };
  const databaseUrl = env.DATABASE_URL;
  if (!databaseUrl) return { problem: 'set DATABASE_URL (and optionally BROKER_URL, REDIS_URL); see the README' };
  const given = (name: string) => env[name] !== undefined && env[name] !== '';
  for (const [name, instead] of Object.entries(DECIDED_BY_THE_CLUSTER))
    if (given(name)) return { problem: `${name} is not used by npm run cluster: ${instead}` };
  for (const [name, instead] of Object.entries(NOT_FOR_THE_SHAPE[shape]))
    if (given(name)) return { problem: `${name} is not used by npm run cluster --shape ${shape}: ${instead}` };
  for (const [name, instead] of Object.entries(OPTIONS_NOT_FOR_THE_SHAPE[shape]))
    if (values[name as keyof typeof values] !== undefined)
      return { problem: `--${name} is not used by npm run cluster --shape ${shape}: ${instead}` };
  // The processes would refuse a bad value only after the migration, each
  // with exit 1; checked here with the same rules, it is one line and exit 2.
  let config;
  try {
    config = loadConfig(env);
  } catch (error) {
    if (error instanceof ConfigError) return { problem: error.message };
    throw error;
  }
  const counts: Record<string, number> = {};
  for (const [name, fallback, min, max] of [
    ['apis', 2, 1, 64],
    ['workers', 2, 1, 64],
    ['port', 8080, 1, 65535],
  ] as const) {
    const raw = values[name];
    const value = raw === undefined ? fallback : /^\d+$/.test(raw) ? Number(raw) : NaN;
    if (!(value >= min && value <= max))
      return { problem: `--${name} must be an integer from ${min} to ${max}, got "${raw}"` };
    counts[name] = value;
  }
  const copies = given('WEB_CONCURRENCY') ? config.webConcurrency : DEFAULT_COPIES;
  // The ports past --port (processes, HAProxy's statistics page) must exist
  // too: otherwise the migration runs and then a process fails on PORT 65537.
  const ports = clusterPorts({
    shape,
    basePort: counts.port,
    apis: counts.apis,
    workers: counts.workers,
    brokerUrl: env.BROKER_URL,
  });
  const fits = highestBasePort(ports, counts.port!);
  if (counts.port! > fits)
    return {
      problem: `--port ${counts.port} leaves no room for the ports after it (up to ${Math.max(...ports.map((p) => p.port))}; ports end at ${LAST_PORT}): with ${shape === 'split' ? `--apis ${counts.apis}, --workers ${counts.workers}${env.BROKER_URL ? ' and a relay' : ''}` : '--shape combined'} the highest --port that fits is ${fits}`,
    };
  const passed: Record<string, string> = { LOG_LEVEL: env.LOG_LEVEL ?? 'info' };
  for (const name of PASSED_ON) if (env[name] !== undefined) passed[name] = env[name];
  return {
    databaseUrl,
    brokerUrl: env.BROKER_URL,
    redisUrl: env.REDIS_URL,
    env: passed,
    shape,
    basePort: counts.port,
    ...(shape === 'split' ? { apis: counts.apis, workers: counts.workers } : { copies }),
    // The gateway's workers replay keys for as long as their PENDING_DEADLINE_MS allows: the same rule as `orderflow gateway`.
    gatewayLatencyMs: config.simulatedGatewayLatencyMs,
    gatewayRetain: retentionFor(config.pendingDeadlineMs, config.simulatedGatewayMaxEntries),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const settings = clusterSettings(process.env, process.argv.slice(2));
  if ('problem' in settings) {
    process.stderr.write(`cluster: ${settings.problem}\n`);
    process.exit(2);
  }
  let cluster: Cluster;
  try {
    cluster = await startCluster(settings);
  } catch (error) {
    // startCluster has stopped what it started; the processes' own lines say more.
    process.stderr.write(`cluster: could not start: ${(error as Error).message}\n`);
    process.exit(1);
  }
  const shape = settings.shape === 'combined' ? ` (node:cluster, ${settings.copies} copies)` : ' (HAProxy)';
  process.stdout.write(
    `\nOrderflow cluster ready on ${cluster.url}${shape}\n` +
      cluster.processes.map((p) => `  ${p.name.padEnd(8)} http://127.0.0.1:${p.port}`).join('\n') +
      `\n  gateway  ${cluster.gateway.url} (ledger: ${cluster.gateway.url}/v1/ledger)\nCtrl-C stops every process.\n`,
  );
  let stopping = false;
  const stop = (code: number) => {
    if (stopping) return;
    stopping = true;
    void cluster.stop().then(() => process.exit(code));
  };
  process.once('SIGINT', () => stop(0));
  process.once('SIGTERM', () => stop(0));
  // A runner with nothing behind its URL must not look alive: stop the rest and fail.
  void cluster.lost.then((why) => {
    if (stopping) return;
    process.stderr.write(`cluster: ${why}; the cluster can no longer serve, stopping the rest\n`);
    stop(1);
  });
}

/** The first port of the block tests and benches give a cluster: below the kernel's ephemeral ports (32768 and up on Linux). */
const BLOCK_PORTS = { from: 20_000, to: 32_000 };

/**
 * The first of `size` consecutive TCP ports on 127.0.0.1 that nothing
 * listens on, for a cluster's `basePort`. The block is taken below the
 * ephemeral range, where the kernel picks the local ports of outgoing
 * connections and of listen(0): a port there can be taken by another
 * process's connection between this check and the cluster's listen.
 *
 * @throws Error when 50 random blocks were all partly taken.
 */
export async function freePortRange(size: number): Promise<number> {
  for (let tries = 0; tries < 50; tries++) {
    const base = BLOCK_PORTS.from + Math.floor(Math.random() * (BLOCK_PORTS.to - BLOCK_PORTS.from - size));
    let free = true;
    for (let port = base; port < base + size && free; port++) free = await portFree(port);
    if (free) return base;
  }
  throw new Error('found no block of free ports for the cluster');
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}
