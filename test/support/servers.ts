// Private servers for tests that must stop, kill or restart a dependency:
// a nats-server with JetStream, a redis-server and a RabbitMQ node, each on
// free ports with its data in a temporary directory (PostgreSQL's are in
// private-postgres.ts), and a TCP proxy that cuts or silences connections.
// The machine's shared servers are never touched, so other test runs on the
// same machine are not disturbed. Each server keeps its data across stop()
// and start(), as a real restart does.
//
// Programs are found at run time: in a Debian location that must come first
// (RabbitMQ's), on PATH, then in the sbin directories.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { privatePostgresUnavailable } from './private-postgres.ts';
import { freePort } from './programs.ts';

/** A dependency of Orderflow running for one test, on its own ports and data directory. */
export interface PrivateServer<StopMode extends string = string> {
  readonly name: string;
  /** The URL Orderflow's configuration takes (DATABASE_URL, BROKER_URL, REDIS_URL). */
  readonly url: string;
  readonly port: number;
  /** Starts it again on the same port with the same data; resolves once it takes clients. */
  start(): Promise<void>;
  /** Stops it the way the mode says; resolves once the process is gone. */
  stop(mode: StopMode): Promise<void>;
  /** Stops it for good and deletes its data. */
  destroy(): Promise<void>;
}

/** terminate: SIGTERM, the server's own orderly shutdown; kill: SIGKILL. */
export type ProcessStopMode = 'terminate' | 'kill';

/** The program's path, or undefined when this machine lacks it; preferredDirs are searched before PATH. */
function findProgram(name: string, preferredDirs: readonly string[] = []): string | undefined {
  const dirs = [
    ...preferredDirs,
    ...(process.env.PATH ?? '').split(path.delimiter),
    '/usr/local/sbin',
    '/usr/sbin',
    '/sbin',
  ];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

const PROGRAMS = {
  nats: { name: 'nats-server', path: findProgram('nats-server') },
  redis: { name: 'redis-server', path: findProgram('redis-server') },
  // Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the
  // rabbitmq user, who cannot write this test's directories; the script it
  // wraps runs the node as the caller.
  rabbitmq: { name: 'rabbitmq-server', path: findProgram('rabbitmq-server', ['/usr/lib/rabbitmq/bin']) },
};

export type PrivateServerKind = 'postgresql' | keyof typeof PROGRAMS;

/**
 * Why private servers of these kinds cannot run here (a skip reason, or a
 * failure under REQUIRE_SERVICES=1), or undefined when they can.
 */
export function privateServersUnavailable(...kinds: PrivateServerKind[]): string | undefined {
  const reasons = kinds.map((kind) =>
    kind === 'postgresql'
      ? privatePostgresUnavailable()
      : PROGRAMS[kind].path
        ? undefined
        : `${PROGRAMS[kind].name} is not installed`,
  );
  const missing = reasons.filter((r) => r !== undefined);
  return missing.length === 0 ? undefined : missing.join('; ');
}

function programOf(kind: keyof typeof PROGRAMS): string {
  const program = PROGRAMS[kind].path;
  if (!program) throw new Error(privateServersUnavailable(kind));
  return program;
}

// Servers left running by a test process that ends without destroy() are
// killed on its way out, on the signals that would end it too (the signal
// is raised again once they are gone).
const live = new Set<() => void>();
process.once('exit', () => {
  for (const stop of live) stop();
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const stop of live) stop();
    process.kill(process.pid, signal);
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

/** Resolves once the port accepts (listening: true) or refuses (false) TCP connections. */
async function waitForPort(
  port: number,
  listening: boolean,
  what: string,
  exited?: () => boolean,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while ((await accepts(port)) !== listening) {
    if (exited?.()) throw new Error(`${what} exited while starting`);
    if (Date.now() > deadline)
      throw new Error(
        `${what} ${listening ? 'did not listen' : 'still listens'} on port ${port} after ${timeoutMs} ms`,
      );
    await sleep(50);
  }
}

async function waitForExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((resolve) => child.once('exit', resolve));
}

/** A process-per-server dependency (NATS, Redis, RabbitMQ): start spawns it, stop signals it. */
function processServer(
  name: string,
  url: string,
  port: number,
  dir: string,
  launch: () => ChildProcess,
): PrivateServer<ProcessStopMode> {
  let child: ChildProcess | undefined;
  const signalGroup = (signal: NodeJS.Signals) => {
    if (!child?.pid) return;
    try {
      // The whole process group (RabbitMQ's start script runs the Erlang VM as
      // its child), even after its leader exited.
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  const killNow = () => signalGroup('SIGKILL');
  const server: PrivateServer<ProcessStopMode> = {
    name,
    url,
    port,
    async start() {
      const started = launch();
      child = started;
      let exited = false;
      started.once('exit', () => (exited = true));
      await waitForPort(port, true, name, () => exited);
    },
    async stop(mode) {
      const current = child;
      if (!current) return;
      const gone = waitForExit(current);
      if (mode === 'kill') killNow();
      else if (current.pid) process.kill(current.pid, 'SIGTERM');
      await gone;
      // SIGTERM reaches the main process only; nothing of the group may outlive it.
      killNow();
      child = undefined;
      // A process that was SIGKILLed can hold its port for a moment while it is torn down.
      await waitForPort(port, false, name);
    },
    async destroy() {
      killNow();
      if (child) await waitForExit(child);
      child = undefined;
      live.delete(killNow);
      await rm(dir, { recursive: true, force: true });
    },
  };
  live.add(killNow);
  return server;
}

// detached: its own process group, so a SIGKILL reaches every process of the server.
const DETACHED: SpawnOptions = { detached: true, stdio: ['ignore', 'ignore', 'ignore'] };

/** nats-server with JetStream, storing its streams in a temporary directory. */
export async function startNats(): Promise<PrivateServer<ProcessStopMode>> {
  const program = programOf('nats');
  const dir = await mkdtemp(path.join(tmpdir(), 'orderflow-nats-'));
  const port = await freePort();
  const server = processServer('nats', `nats://127.0.0.1:${port}`, port, dir, () =>
    spawn(
      program,
      [
        '-js',
        '-a',
        '127.0.0.1',
        '-p',
        String(port),
        '-sd',
        path.join(dir, 'store'),
        '-l',
        path.join(dir, 'server.log'),
      ],
      DETACHED,
    ),
  );
  await server.start();
  return server;
}

/** redis-server without persistence: a restart starts empty, as a cache may. */
export async function startRedis(): Promise<PrivateServer<ProcessStopMode>> {
  const program = programOf('redis');
  const dir = await mkdtemp(path.join(tmpdir(), 'orderflow-redis-'));
  const port = await freePort();
  const server = processServer('redis', `redis://127.0.0.1:${port}`, port, dir, () =>
    spawn(
      program,
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        dir,
        '--logfile',
        path.join(dir, 'server.log'),
      ],
      DETACHED,
    ),
  );
  await server.start();
  return server;
}

/**
 * A RabbitMQ node of its own: its own node name, AMQP and distribution
 * ports, database and log directories, an empty plugin list and its own
 * configuration and environment files, so nothing of the machine's node is
 * read or shared except the Erlang port mapper (epmd), where it registers its
 * own name. HOME points into its directory, so its Erlang cookie stays there.
 */
export async function startRabbitMq(): Promise<PrivateServer<ProcessStopMode>> {
  const program = programOf('rabbitmq');
  const dir = await mkdtemp(path.join(tmpdir(), 'orderflow-rabbitmq-'));
  const port = await freePort();
  const distPort = await freePort();
  const node = `orderflow-${path.basename(dir).slice(-6)}@localhost`;
  for (const sub of ['home', 'mnesia', 'log']) await mkdir(path.join(dir, sub));
  await writeFile(path.join(dir, 'enabled_plugins'), '[].\n');
  await writeFile(path.join(dir, 'rabbitmq.conf'), `listeners.tcp.local = 127.0.0.1:${port}\n`);
  await writeFile(path.join(dir, 'rabbitmq-env.conf'), '');
  const env = {
    ...process.env,
    HOME: path.join(dir, 'home'),
    RABBITMQ_CONF_ENV_FILE: path.join(dir, 'rabbitmq-env.conf'),
    RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq.conf'),
    RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
    RABBITMQ_NODENAME: node,
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(distPort),
    RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: path.join(dir, 'log'),
  };
  const server = processServer('rabbitmq', `amqp://guest:guest@127.0.0.1:${port}`, port, dir, () =>
    spawn(program, [], { ...DETACHED, env }),
  );
  await server.start();
  return server;
}

/** What a TcpProxy does with a connection: pass it on, reset it at once, or accept it and never answer. */
export type ProxyMode = 'forward' | 'reset' | 'blackhole';

export interface TcpProxy {
  readonly port: number;
  /** Decides each new connection; existing ones are kept. */
  mode: ProxyMode | (() => ProxyMode);
  /** Cuts every forwarded connection whose client sends a chunk this says yes to. */
  cutWhen: (chunk: Buffer) => boolean;
  /** While true, forwarded connections stay open and pass no byte either way: a server that stopped answering. */
  frozen: boolean;
  /** Cuts every connection open now (the server itself stays up). */
  cutAll(): void;
  close(): Promise<void>;
}

/**
 * A TCP proxy on a free port in front of a server: a dependency whose network
 * misbehaves on command, with connections dropped mid-request or answered by
 * nobody, where stopping the server would be too blunt.
 */
export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const mode = typeof proxy.mode === 'function' ? proxy.mode() : proxy.mode;
    if (mode === 'reset') return client.resetAndDestroy();
    open.add(client);
    client.on('close', () => open.delete(client));
    client.on('error', () => client.destroy());
    if (mode === 'blackhole') return;
    const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
    open.add(upstream);
    upstream.on('close', () => open.delete(upstream));
    client.on('data', (chunk: Buffer) => {
      if (proxy.cutWhen(chunk)) return (client.destroy(), upstream.destroy());
      if (!proxy.frozen) upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => proxy.frozen || client.write(chunk));
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxy: TcpProxy = {
    port: (server.address() as AddressInfo).port,
    mode: 'forward',
    cutWhen: () => false,
    frozen: false,
    cutAll: () => {
      for (const socket of open) socket.destroy();
    },
    close: async () => {
      proxy.cutAll();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  return proxy;
}
