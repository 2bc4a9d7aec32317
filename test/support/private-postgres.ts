// PostgreSQL servers of a test's (or a benchmark's) own, for what must never
// be done to the machine's shared server: stopping it, delaying its replay,
// promoting it. A primary is made with initdb on a free port in a temporary
// directory; a standby of it with pg_basebackup -R (streaming replication,
// hot standby). Both are stopped and deleted by destroy(), and, should the
// process die first, by an exit hook, so no server outlives its test.
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import postgres from 'postgres';
import { freePort } from './programs.ts';

/**
 * A PostgreSQL program (pg_ctl, initdb, pgbench, …): from PATH, else next to
 * `pg_config --bindir`, else the newest Debian-style /usr/lib/postgresql/<version>/bin.
 * Throws, naming where it looked, when there is none.
 */
export function findPostgresProgram(name: string): string {
  const found = postgresProgramCandidates(name).find((candidate) => existsSync(candidate));
  if (!found) {
    throw new Error(
      `${name} not found (looked in PATH, \`pg_config --bindir\` and /usr/lib/postgresql/*/bin); install the PostgreSQL server package or put ${name} on PATH`,
    );
  }
  return found;
}

function postgresProgramCandidates(name: string): string[] {
  const candidates: string[] = [];
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) if (dir) candidates.push(path.join(dir, name));
  try {
    candidates.push(
      path.join(
        execFileSync('pg_config', ['--bindir'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
        name,
      ),
    );
  } catch {
    // no pg_config on PATH
  }
  try {
    const versions = execFileSync('ls', ['/usr/lib/postgresql'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    })
      .split('\n')
      .filter((v) => /^\d+$/.test(v))
      .sort((x, y) => Number(y) - Number(x));
    for (const v of versions) candidates.push(`/usr/lib/postgresql/${v}/bin/${name}`);
  } catch {
    // not a Debian-style layout
  }
  return candidates;
}

/** Why private servers cannot be made here, or undefined when they can. */
export function privatePostgresUnavailable(): string | undefined {
  for (const program of ['initdb', 'pg_ctl', 'pg_basebackup']) {
    try {
      findPostgresProgram(program);
    } catch (error) {
      return (error as Error).message;
    }
  }
  if (process.getuid?.() === 0 && serverUser() === undefined)
    return 'running as root, and there is no "postgres" user to run a private PostgreSQL server as';
  return undefined;
}

export interface PrivatePostgres {
  readonly port: number;
  readonly dataDir: string;
  /** postgres://postgres@127.0.0.1:<port>/<database> (trust authentication on the loopback interface). */
  url(database?: string): string;
  start(): Promise<void>;
  /** `fast` disconnects clients and checkpoints; `immediate` is a crash. */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Ends recovery: a standby becomes a primary of its own. */
  promote(): Promise<void>;
  /** Appends settings to postgresql.conf and reloads them (the last line of a setting wins). */
  configure(settings: Record<string, string>): Promise<void>;
  /** Stops the server if it runs and deletes its directory. */
  destroy(): Promise<void>;
  /** The server's log so far (for a failing test's message). */
  log(): string;
  /** The postmaster's process id while the server runs (its backends are its children). */
  pid(): number | undefined;
}

/** A primary with WAL for streaming replicas (wal_level replica), on a free loopback port. */
export async function startPrivatePrimary(settings: Record<string, string> = {}): Promise<PrivatePostgres> {
  const dataDir = await serverDirectory('orderflow-pg-primary-');
  const server = new Server(dataDir, await freePort());
  try {
    await run('initdb', ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
    // initdb's pg_hba.conf already trusts replication connections from 127.0.0.1.
    server.appendSettings({
      // Throwaway data: durability costs here would only slow the tests.
      fsync: 'off',
      full_page_writes: 'off',
      wal_level: 'replica',
      max_wal_senders: '10',
      shared_buffers: '64MB',
      ...settings,
    });
    await server.start();
    return server;
  } catch (error) {
    await server.destroy();
    throw error;
  }
}

/** A hot standby of the primary, streaming from it (pg_basebackup -R), on a free loopback port. */
export async function startPrivateStandby(
  primary: PrivatePostgres,
  settings: Record<string, string> = {},
): Promise<PrivatePostgres> {
  const dataDir = await serverDirectory('orderflow-pg-standby-');
  const server = new Server(dataDir, await freePort());
  try {
    await run('pg_basebackup', [
      '-h',
      '127.0.0.1',
      '-p',
      String(primary.port),
      '-U',
      'postgres',
      '-D',
      dataDir,
      '-R',
      '-X',
      'stream',
      '--checkpoint=fast',
      '--no-sync',
    ]);
    server.appendSettings({ hot_standby: 'on', ...settings });
    await server.start();
    return server;
  } catch (error) {
    await server.destroy();
    throw error;
  }
}

/** Waits until the standby has replayed everything the primary had flushed when this was called. */
export async function waitForReplay(
  primary: PrivatePostgres,
  standby: PrivatePostgres,
  database = 'postgres',
  timeoutMs = 30_000,
): Promise<void> {
  const p = postgres(primary.url(database), { max: 1, onnotice: () => {} });
  const s = postgres(standby.url(database), { max: 1, onnotice: () => {} });
  try {
    const [current] = await p<{ lsn: string }[]>`SELECT pg_current_wal_flush_lsn()::text AS lsn`;
    const lsn = current!.lsn;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const [row] = await s<{ done: boolean }[]>`SELECT pg_last_wal_replay_lsn() >= ${lsn}::pg_lsn AS done`;
        if (row?.done) return;
      } catch (error) {
        // The database itself may not have been replayed yet.
        if (Date.now() > deadline) throw error;
      }
      if (Date.now() > deadline)
        throw new Error(`the standby on port ${standby.port} did not replay ${lsn} within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    await Promise.all([p.end(), s.end()]);
  }
}

const live = new Set<Server>();
// Last resort for a process that ends without destroy(): synchronous, so it
// runs on exit, and on the signals that would otherwise end the process
// without an exit event (the signal is raised again once the servers are gone).
process.once('exit', () => {
  for (const server of live) server.destroySync();
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const server of live) server.destroySync();
    process.kill(process.pid, signal);
  });
}

class Server implements PrivatePostgres {
  readonly dataDir: string;
  readonly port: number;
  #running = false;

  constructor(dataDir: string, port: number) {
    this.dataDir = dataDir;
    this.port = port;
    live.add(this);
  }

  url(database = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  appendSettings(settings: Record<string, string>): void {
    const lines = Object.entries({
      port: String(this.port),
      listen_addresses: "'127.0.0.1'",
      // No Unix socket: the default directory may not be writable by this user.
      unix_socket_directories: "''",
      ...settings,
    }).map(([name, value]) => `${name} = ${value}`);
    appendFileSync(path.join(this.dataDir, 'postgresql.conf'), `\n${lines.join('\n')}\n`);
  }

  async start(): Promise<void> {
    await run('pg_ctl', ['start', '-D', this.dataDir, '-w', '-t', '60', '-l', path.join(this.dataDir, 'server.log')]);
    this.#running = true;
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    await run('pg_ctl', ['stop', '-D', this.dataDir, '-w', '-t', '60', '-m', mode]);
    this.#running = false;
  }

  async promote(): Promise<void> {
    await run('pg_ctl', ['promote', '-D', this.dataDir, '-w', '-t', '60']);
  }

  async configure(settings: Record<string, string>): Promise<void> {
    appendFileSync(
      path.join(this.dataDir, 'postgresql.conf'),
      `\n${Object.entries(settings)
        .map(([name, value]) => `${name} = ${value}`)
        .join('\n')}\n`,
    );
    await run('pg_ctl', ['reload', '-D', this.dataDir]);
  }

  async destroy(): Promise<void> {
    if (this.#running) await this.stop('immediate').catch(() => undefined);
    rmSync(this.dataDir, { recursive: true, force: true });
    live.delete(this);
  }

  destroySync(): void {
    live.delete(this);
    if (this.#running) {
      try {
        execFileSync(findPostgresProgram('pg_ctl'), ['stop', '-D', this.dataDir, '-w', '-m', 'immediate'], {
          stdio: 'ignore',
          ...asServerUser(),
        });
      } catch {
        // already gone
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  pid(): number | undefined {
    try {
      const pid = Number(readFileSync(path.join(this.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      return Number.isInteger(pid) && pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  log(): string {
    try {
      return readFileSync(path.join(this.dataDir, 'server.log'), 'utf8');
    } catch {
      return '';
    }
  }
}

/** PostgreSQL refuses to run as root: then its programs run as the "postgres" user. */
function serverUser(): { uid: number; gid: number } | undefined {
  try {
    const uid = Number(
      execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    );
    const gid = Number(
      execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(),
    );
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

function asServerUser(): { uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return {};
  const user = serverUser();
  if (!user) throw new Error(privatePostgresUnavailable());
  return user;
}

async function serverDirectory(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), prefix));
  const user = asServerUser();
  if (user.uid !== undefined) chownSync(dir, user.uid, user.gid!);
  return dir;
}

function run(program: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(findPostgresProgram(program), args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: tmpdir(),
      ...asServerUser(),
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${program} ${args.join(' ')} exited with ${code}:\n${output.trim()}`)),
    );
  });
}
