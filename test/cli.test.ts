// The command line as an operator meets it: `node src/main.ts <command>` in a
// clean environment (no servers configured, DATA_DIR in a temp directory).
// Bad configuration exits non-zero with one line naming the variable; `token`
// mints a usable JWT; `migrate` is idempotent; `serve` listens, answers
// /healthz and shuts down cleanly on SIGTERM.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { childPids, clusterSettings, freePortRange } from '../scripts/cluster.ts';
import { skipUnlessInstalled } from './support/programs.ts';
import { NODE_ENGINES, nodeVersionProblem } from '../src/node-version.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Only what a process needs to run, none of the service variables of the caller's environment. */
function cleanEnv(dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '',
    HOME: dataDir,
    DATA_DIR: dataDir,
    HOST: '127.0.0.1',
    ...extra,
  };
}

function start(args: string[], env: Record<string, string>): ChildProcess {
  return spawn(process.execPath, ['src/main.ts', ...args], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Runs the CLI to completion. */
async function run(
  args: string[],
  env: Record<string, string>,
  options: { killAfterMs?: number; launch?: (args: string[], env: Record<string, string>) => ChildProcess } = {},
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = (options.launch ?? start)(args, env);
  // A command that should have exited at once (a refused serve) would
  // otherwise hang the test instead of failing it.
  const deadline =
    options.killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), options.killAfterMs);
  child.once('exit', () => clearTimeout(deadline));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const [code, signal] = await new Promise<[number | null, string | null]>((resolve) =>
    child.once('close', (c, sig) => resolve([c, sig])),
  );
  return { code, signal, stdout, stderr };
}

/**
 * Starts `serve` and resolves once it prints where it listens. The process is
 * killed after the test if it is still running.
 */
async function serve(
  env: Record<string, string>,
  t: { after(fn: () => Promise<void> | void): void },
  launch: (env: Record<string, string>) => ChildProcess = (env) => start(['serve'], env),
) {
  const child = launch(env);
  const exited = new Promise<[number | null, string | null]>((resolve) =>
    child.once('exit', (code, signal) => resolve([code, signal])),
  );
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  let stderrText = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderrText += chunk.toString()));
  let stdout = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      const match = /listening on (https?:\/\/\S+?)[\s,]/.exec(stdout);
      if (match) resolve(match[1]!);
    });
    void exited.then(([code]) =>
      reject(new Error(`serve exited (${code}) before listening:\n${stdout}\n${stderrText}`)),
    );
  });
  /** SIGTERM, then a clean exit (code 0, no signal) within 10 s: generous for a graceful stop of an idle process. */
  const stopGracefully = async () => {
    child.kill('SIGTERM');
    const [code, signal] = await Promise.race([
      exited,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('the process did not exit within 10 s of SIGTERM')), 10_000).unref(),
      ),
    ]);
    assert.equal(signal, null);
    assert.equal(code, 0, stderrText);
  };
  return { child, exited, url, stdout: () => stdout, stderr: () => stderrText, stopGracefully };
}

/**
 * `npm start` itself, as a newcomer or a process manager runs it: npm runs
 * package.json's command through a shell, and only that command's `exec`
 * makes Node npm's child, so that the signal npm forwards reaches
 * Orderflow rather than the shell.
 */
function npmStart(env: Record<string, string>): ChildProcess {
  return spawn('npm', ['start', '--silent'], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Every process below pid, children first. */
async function descendants(pid: number): Promise<number[]> {
  const children = await childPids(pid);
  return [...children, ...(await Promise.all(children.map(descendants))).flat()];
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function lines(text: string): string[] {
  return text.split('\n').filter((line) => line.trim() !== '');
}

describe('command line', () => {
  let dataDir: string;
  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-'));
  });
  after(() => rm(dataDir, { recursive: true, force: true }));

  for (const [variable, value] of [
    ['PORT', 'abc'],
    ['ROLE', 'bogus'],
    ['DATABASE_URL', 'mysql://db.example/orders'],
  ] as const) {
    it(`serve with ${variable}=${value} exits non-zero with one stderr line naming ${variable}`, async () => {
      const result = await run(['serve'], cleanEnv(dataDir, { [variable]: value }));
      assert.notEqual(result.code, 0);
      assert.equal(result.signal, null);
      const errorLines = lines(result.stderr);
      assert.equal(errorLines.length, 1, `stderr was:\n${result.stderr}`);
      assert.match(errorLines[0]!, new RegExp(`\\b${variable}\\b`));
      assert.ok(!result.stderr.includes('    at '), 'no stack trace');
    });
  }

  it('token --sub alice --scope "orders:write orders:read" prints a JWT with that subject and those scopes', async () => {
    const result = await run(['token', '--sub', 'alice', '--scope', 'orders:write orders:read'], cleanEnv(dataDir));
    assert.equal(result.code, 0, result.stderr);
    const out = lines(result.stdout);
    assert.equal(out.length, 1, `stdout was:\n${result.stdout}`);
    const parts = out[0]!.split('.');
    assert.equal(parts.length, 3, 'a compact JWS');
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString());
    const payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString());
    assert.notEqual(header.alg, 'none');
    assert.equal(payload.sub, 'alice');
    assert.deepEqual(String(payload.scope).split(' ').sort(), ['orders:read', 'orders:write']);
    assert.ok(payload.exp > Date.now() / 1000, 'not expired');
  });

  it('token with an unknown scope or without --sub is a usage error', async () => {
    const unknown = await run(['token', '--sub', 'alice', '--scope', 'orders:everything'], cleanEnv(dataDir));
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /orders:everything/);
    assert.equal(unknown.stdout, '');
    const noSub = await run(['token'], cleanEnv(dataDir));
    assert.notEqual(noSub.code, 0);
    assert.match(noSub.stderr, /--sub/);
  });

  it('token refuses a --sub the server would refuse (a control character, over 255 characters): no token, exit non-zero', async () => {
    for (const sub of ['a\tb', '\u001b[31mred', 'line\nbreak', 'x'.repeat(256), 'del\u007f']) {
      const result = await run(['token', '--sub', sub], cleanEnv(dataDir));
      assert.notEqual(result.code, 0, JSON.stringify(sub));
      assert.equal(result.stdout, '', JSON.stringify(sub));
      assert.match(result.stderr, /--sub .* cannot name a customer: its "sub" claim must be 1-255 characters of text/);
      assert.ok(!result.stderr.includes('    at '), 'no stack trace');
    }
    // The longest and the least ordinary subjects the server takes are signed.
    for (const sub of ['x'.repeat(255), 'Zoë 😀']) {
      assert.equal((await run(['token', '--sub', sub], cleanEnv(dataDir))).code, 0, JSON.stringify(sub));
    }
  });

  it('token says on stderr which key file signed, and when it made a new key', async () => {
    const fresh = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-key-'));
    try {
      const keyFile = path.join(fresh, 'dev-issuer-key.json');
      const first = await run(['token', '--sub', 'alice'], cleanEnv(fresh));
      assert.equal(first.code, 0, first.stderr);
      assert.ok(first.stderr.includes(`created a new one in ${keyFile}`), first.stderr);
      assert.match(first.stderr, /another DATA_DIR refuses this token/);
      assert.equal(lines(first.stdout).length, 1, 'stdout is the token alone');
      const second = await run(['token', '--sub', 'alice'], cleanEnv(fresh));
      assert.equal(second.code, 0, second.stderr);
      assert.ok(
        second.stderr.includes(`signed with the development key in ${keyFile} (DATA_DIR=${fresh})`),
        second.stderr,
      );
      assert.doesNotMatch(second.stderr, /created/);
    } finally {
      await rm(fresh, { recursive: true, force: true });
    }
  });

  // migrate and serve share DATA_DIR: serve then opens the database migrate made.
  it('migrate applies the migrations, then reports the database up to date', async () => {
    const first = await run(['migrate'], cleanEnv(dataDir));
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, /applied .*001_initial\.sql/);
    assert.match(first.stdout, /Creating the embedded database/, 'the first open creates it, and says so');
    const second = await run(['migrate'], cleanEnv(dataDir));
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /up to date/);
    assert.doesNotMatch(second.stdout, /applied/);
    assert.doesNotMatch(second.stdout, /Creating the embedded database/, 'the database exists');
  });

  it('serve with PORT=0 prints where it listens, answers /healthz, takes `token` tokens, and exits 0 on SIGTERM', async (t) => {
    const minted = await run(['token', '--sub', 'alice', '--scope', 'orders:read'], cleanEnv(dataDir));
    assert.equal(minted.code, 0, minted.stderr);
    const { url, stopGracefully } = await serve(cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' }), t);
    const port = Number(new URL(url).port);
    assert.ok(port > 0, `a real port, not 0: ${url}`);
    const health = await fetch(new URL('/healthz', url));
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { status: 'ok' });
    // The token command signs with the key in DATA_DIR, which the server verifies with.
    const orders = await fetch(new URL('/v1/orders', url), {
      headers: { authorization: `Bearer ${minted.stdout.trim()}` },
    });
    assert.equal(orders.status, 200, await orders.clone().text());
    assert.deepEqual(await orders.json(), { items: [], nextCursor: null });
    await stopGracefully();
  });

  // Its V8 flags are not checked anywhere else: one Node does not know would stop it before it listens.
  it("npm start's command, with its memory flags, prints where it listens, answers /healthz and exits 0 on SIGTERM", async (t) => {
    const { child, url, stopGracefully } = await serve(
      cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' }),
      t,
      npmStart,
    );
    const health = await fetch(new URL('/healthz', url));
    assert.equal(health.status, 200);
    const below = await descendants(child.pid!);
    assert.ok(below.length > 0);
    // A server the signal missed would outlive the test and hold its pipes open.
    t.after(() => below.filter(alive).forEach((pid) => process.kill(pid, 'SIGKILL')));
    await stopGracefully();
    // The server got the signal too: nothing npm started is left running.
    await eventually('every process npm started to exit', async () =>
      below.every((pid) => !alive(pid)) ? true : undefined,
    );
  });
});

describe('one process per embedded DATA_DIR', () => {
  it('a second serve and a migrate on a DATA_DIR that serve has open exit non-zero naming it and its pid, also with its lock and pid files deleted; the first keeps its orders; a SIGKILLed or stopped holder is followed at once, a SIGKILLed one without its lock file once the operator recreates it', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-lock-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    const lockFile = path.join(dataDir, 'orderflow.lock');
    const pidFile = path.join(dataDir, 'orderflow.pid');
    const minted = await run(
      ['token', '--sub', 'bob', '--scope', 'orders:write orders:read catalog:write'],
      cleanEnv(dataDir),
    );
    assert.equal(minted.code, 0, minted.stderr);
    const headers = { authorization: `Bearer ${minted.stdout.trim()}`, 'content-type': 'application/json' };
    const post = (url: string, route: string, body: unknown, extra: Record<string, string> = {}) =>
      fetch(new URL(route, url), { method: 'POST', headers: { ...headers, ...extra }, body: JSON.stringify(body) });
    const { order, orderIds } = ordersOver(headers, 'LOCK-1');
    /** A start that must be refused: exit 1 at once, one stderr line, no stack trace, and nothing said of creating a database. */
    const refused = async (command: string) => {
      const result = await run([command], env, { killAfterMs: 60_000 });
      assert.equal(result.code, 1, `${command}: ${result.stderr}`);
      assert.equal(result.signal, null);
      const errorLines = lines(result.stderr);
      assert.equal(errorLines.length, 1, `${command}: stderr was:\n${result.stderr}`);
      assert.ok(!result.stderr.includes('    at '), 'no stack trace');
      assert.doesNotMatch(result.stdout, /Creating the embedded database/);
      return errorLines[0]!;
    };
    const creating = /Creating the embedded database in .* \(its first start; this takes about 20 s\)/;

    const env = cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' });
    const first = await serve(env, t);
    // The key `token` made was there, the database was not: this start created it, and said so.
    assert.match(first.stdout(), creating);
    const created = await post(first.url, '/v1/products', {
      name: 'Lock',
      priceCents: 500,
      currency: 'EUR',
      sku: 'LOCK-1',
      stock: 10,
    });
    assert.equal(created.status, 201, await created.clone().text());
    const accepted = [await order(first.url, 'lock-1')];

    for (const command of ['serve', 'migrate']) {
      const line = await refused(command);
      assert.ok(line.includes(`DATA_DIR: ${dataDir} is in use`), line);
      assert.ok(line.includes(`(pid ${first.child.pid})`), line);
    }

    // With the lock file deleted under it, the first process's pid file still names it.
    await rm(lockFile);
    const afterDelete = await refused('serve');
    assert.ok(afterDelete.includes(`(pid ${first.child.pid})`), afterDelete);
    // With both deleted (a cleanup of *.lock and *.pid), the files it has
    // open in DATA_DIR still name it: refused, and no new lock file is made.
    await rm(pidFile);
    for (const command of ['serve', 'migrate']) {
      const line = await refused(command);
      assert.ok(line.includes(`(pid ${first.child.pid})`), line);
      assert.ok(!existsSync(lockFile), `${command} made a new lock file`);
    }

    // The first process was not disturbed: it still serves, with what it had.
    accepted.push(await order(first.url, 'lock-2'));
    assert.deepEqual(await orderIds(first.url), accepted.sort());

    // Stopped cleanly, its database is closed: the next start makes the lock file again by itself.
    await first.stopGracefully();
    const second = await serve(env, t);
    assert.ok(existsSync(lockFile));
    assert.doesNotMatch(second.stdout(), creating, 'the database existed');
    assert.deepEqual(await orderIds(second.url), accepted.sort(), 'orders lost across the restart');
    accepted.push(await order(second.url, 'lock-3'));

    // The kernel drops the lock of a killed process: a new serve starts at once.
    second.child.kill('SIGKILL');
    await second.exited;
    const third = await serve(env, t);
    assert.deepEqual(await orderIds(third.url), accepted.sort(), 'orders lost across the SIGKILL');

    // Killed with its lock file deleted, a holder leaves a database that is
    // not closed: no process here has it open, yet one in another container
    // could, and only the operator can tell; recreating the lock file says so.
    await rm(lockFile);
    third.child.kill('SIGKILL');
    await third.exited;
    const afterKill = await refused('serve');
    assert.ok(afterKill.includes(`${lockFile} was deleted`), afterKill);
    assert.ok(afterKill.includes('has a file in it open (checked in /proc'), afterKill);
    assert.ok(afterKill.includes(`touch ${lockFile}`), afterKill);
    await writeFile(lockFile, '');
    const fourth = await serve(env, t);
    assert.deepEqual(await orderIds(fourth.url), accepted.sort(), 'orders lost');
    await fourth.stopGracefully();
  });

  it('npm start with its lock and pid files deleted and the lock file made again by hand: a second npm start is refused naming the running server, which loses no order', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-holder-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    const lockFile = path.join(dataDir, 'orderflow.lock');
    const env = cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' });
    const minted = await run(['token', '--sub', 'dave', '--scope', 'orders:write orders:read catalog:write'], env);
    assert.equal(minted.code, 0, minted.stderr);
    const headers = { authorization: `Bearer ${minted.stdout.trim()}`, 'content-type': 'application/json' };
    const { order, orderIds } = ordersOver(headers, 'HOLD-1');

    const first = await serve(env, t, npmStart);
    // npm's shell execs Node: the server is npm's only child, and the process that has DATA_DIR open.
    const [server, ...others] = await descendants(first.child.pid!);
    assert.deepEqual(others, []);
    t.after(() => (alive(server!) ? process.kill(server!, 'SIGKILL') : undefined));
    const product = await fetch(new URL('/v1/products', first.url), {
      method: 'POST',
      headers,
      body: JSON.stringify({ name: 'Hold', priceCents: 300, currency: 'EUR', sku: 'HOLD-1', stock: 50 }),
    });
    assert.equal(product.status, 201, await product.clone().text());
    const accepted: string[] = [];
    for (let i = 0; i < 5; i++) accepted.push(await order(first.url, `hold-${i}`));

    // The operator cleans up and follows the advice to recreate the lock file, while the server still runs.
    await rm(lockFile);
    await rm(path.join(dataDir, 'orderflow.pid'));
    await writeFile(lockFile, '');
    const second = npmStart(env);
    let output = '';
    second.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    second.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const secondExit = new Promise<number | null>((resolve) => second.once('exit', (code) => resolve(code)));
    // A second server that listens is the fault itself: stopped at once, so that it writes no more.
    const listened = new Promise<void>((resolve) =>
      second.stdout!.on('data', () => /listening on/.test(output) && resolve()),
    );
    const outcome = await Promise.race([secondExit, listened.then(() => 'listened' as const)]);
    if (outcome === 'listened') {
      for (const pid of await descendants(second.pid!)) process.kill(pid, 'SIGKILL');
      await secondExit;
      assert.fail(`a second server started beside the running one:\n${output}`);
    }
    assert.equal(outcome, 1, output);
    const errorLines = lines(output);
    assert.equal(errorLines.length, 1, output);
    assert.ok(errorLines[0]!.includes(`DATA_DIR: ${dataDir} is in use`), errorLines[0]);
    assert.ok(errorLines[0]!.includes(`(pid ${server})`), errorLines[0]);

    // The first server kept serving, and everything it accepted survives its restart.
    for (let i = 5; i < 8; i++) accepted.push(await order(first.url, `hold-${i}`));
    await first.stopGracefully();
    const restarted = await serve(env, t);
    assert.deepEqual(await orderIds(restarted.url), accepted.sort(), 'orders lost');
    await restarted.stopGracefully();
  });
});

describe('a first start killed while it creates the embedded database', () => {
  it('the next start creates it again (or puts a complete one in place) and serves orders: killed during initdb, when the creation begins, after initdb before anything is put in place; and one cut short while it is put in place is finished', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-initdb-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    const lockFile = path.join(dataDir, 'orderflow.lock');
    const env = cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' });
    const creatingDirs = async () => (await readdir(dataDir)).filter((name) => name.startsWith('.orderflow-creating-'));
    const createdDir = path.join(dataDir, '.orderflow-created');
    /** /proc's state of pid: 'Z' for a zombie, undefined once it is gone. */
    const procState = (pid: number) => {
      try {
        return /\) (\S)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[1];
      } catch {
        return undefined;
      }
    };

    /**
     * Starts `serve` on the new DATA_DIR as the leader of its own process
     * group, polls until `reached` (given the process and the creating
     * directories the previous start left) says the creation got to the
     * point under test, then SIGKILLs the group: the server and its initdb
     * child together, as a power loss or a Ctrl-C does. Fails if the server
     * exits or listens first: the creation never passed that point.
     */
    const killWhen = async (point: string, reached: (child: ChildProcess, left: string[]) => Promise<boolean>) => {
      const left = await creatingDirs();
      const child = spawn(process.execPath, ['src/main.ts', 'serve'], {
        cwd: REPO,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      let exited = false;
      const exit = new Promise<void>((resolve) =>
        child.once('exit', () => {
          exited = true;
          resolve();
        }),
      );
      t.after(async () => {
        if (!exited) process.kill(-child.pid!, 'SIGKILL');
        await exit;
      });
      while (!(await reached(child, left))) {
        assert.ok(!exited && !/listening on/.test(output), `serve did not get ${point}:\n${output}`);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      process.kill(-child.pid!, 'SIGKILL');
      await exit;
    };

    // initdb has begun writing: PG_VERSION is among its first files. Where
    // it lands in DATA_DIR itself, the next start took the half-made
    // database for a damaged one ("restore DATA_DIR from a backup").
    await killWhen(
      'into initdb',
      async (_, left) =>
        existsSync(path.join(dataDir, 'PG_VERSION')) ||
        (await creatingDirs()).some(
          (name) => !left.includes(name) && existsSync(path.join(dataDir, name, 'PG_VERSION')),
        ),
    );
    // A new creating directory, before initdb wrote anything there.
    await killWhen('to begin the creation', async (_, left) =>
      (await creatingDirs()).some((name) => !left.includes(name)),
    );
    // A killed creation counts as a database that may be open: with its lock
    // file deleted, the start is refused and no new lock file is made.
    await rm(lockFile);
    const refused = await run(['serve'], env, { killAfterMs: 60_000 });
    assert.equal(refused.code, 1, refused.stderr);
    assert.ok(refused.stderr.includes(`touch ${lockFile}`), refused.stderr);
    assert.ok(!existsSync(lockFile), 'the refused start made a lock file');
    await writeFile(lockFile, '');
    // initdb finished (its child exited) while the server was stopped before
    // it learnt so: a complete database, not yet known to be on disk, is in
    // the creating directory and nothing has been put in place.
    let initdbPid: number | undefined;
    await killWhen('past initdb', async (child) => {
      if (initdbPid === undefined) {
        const [pid] = await childPids(child.pid!);
        // Its only child while it creates the database; any other (none is expected) is not it.
        if (pid === undefined || !readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('pglite-initdb')) return false;
        initdbPid = pid;
        process.kill(child.pid!, 'SIGSTOP');
      }
      const state = procState(initdbPid);
      return state === undefined || state === 'Z';
    });
    const minted = await run(['token', '--sub', 'carol', '--scope', 'orders:write orders:read catalog:write'], env);
    assert.equal(minted.code, 0, minted.stderr);
    const headers = { authorization: `Bearer ${minted.stdout.trim()}`, 'content-type': 'application/json' };
    const orderIds = async (url: string) => {
      const response = await fetch(new URL('/v1/orders?limit=100', url), { headers });
      assert.equal(response.status, 200);
      return ((await response.json()) as { items: { id: string }[] }).items.map((o) => o.id);
    };
    const first = await serve(env, t);
    assert.deepEqual(await creatingDirs(), [], 'the killed creations were removed');
    assert.ok(!existsSync(createdDir));
    const product = await fetch(new URL('/v1/products', first.url), {
      method: 'POST',
      headers,
      body: JSON.stringify({ name: 'Initdb', priceCents: 700, currency: 'EUR', sku: 'INITDB-1', stock: 5 }),
    });
    assert.equal(product.status, 201, await product.clone().text());
    const order = await fetch(new URL('/v1/orders', first.url), {
      method: 'POST',
      headers: { ...headers, 'idempotency-key': 'initdb-1' },
      body: JSON.stringify({ items: [{ sku: 'INITDB-1', quantity: 1 }], payment: { token: 'tok_visa' } }),
    });
    assert.equal(order.status, 202, await order.clone().text());
    const { id } = (await order.json()) as { id: string };
    await first.stopGracefully();

    // A kill in the middle of the move into DATA_DIR (renames take
    // microseconds: no poll catches a real process there), made by hand:
    // PG_VERSION and some entries still in the complete database's
    // directory. The next start finishes the move, and keeps what was stored.
    await mkdir(createdDir);
    for (const name of ['PG_VERSION', 'base', 'pg_xact'])
      await rename(path.join(dataDir, name), path.join(createdDir, name));
    const second = await serve(env, t);
    assert.doesNotMatch(second.stdout(), /Creating the embedded database/);
    assert.ok(!existsSync(createdDir));
    assert.deepEqual(await orderIds(second.url), [id]);
    await second.stopGracefully();
  });
});

describe('a DATA_DIR that cannot be used', () => {
  // Root may write wherever a mode forbids it: as root, the commands run as
  // nobody, for whom the modes hold. Paths under /proc are refused to root too.
  const asRoot = process.getuid?.() === 0;
  const NOBODY = 65534;
  const launchAs =
    (uid: number) =>
    (args: string[], env: Record<string, string>): ChildProcess =>
      spawn(process.execPath, ['src/main.ts', ...args], {
        cwd: REPO,
        env,
        uid,
        gid: uid,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
  let parent: string;
  before(async () => {
    parent = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-baddir-'));
    // nobody must reach what is inside (mkdtemp makes it 0700).
    await chmod(parent, 0o755);
  });
  after(() => rm(parent, { recursive: true, force: true }));

  /**
   * Runs serve, migrate and token on DATA_DIR=dataDir: each exits 1 at once
   * with one stderr line that holds every piece of `expected`, no stack
   * trace, and nothing on stdout.
   */
  async function refusedEverywhere(dataDir: string, expected: string[], launch?: typeof start) {
    for (const args of [['serve'], ['migrate'], ['token', '--sub', 'alice']]) {
      const result = await run(args, cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' }), {
        killAfterMs: 60_000,
        ...(launch ? { launch } : {}),
      });
      assert.equal(result.signal, null, `${args[0]} did not exit by itself: ${result.stderr}`);
      assert.equal(result.code, 1, `${args[0]}: ${result.stderr}`);
      const errorLines = lines(result.stderr);
      assert.equal(errorLines.length, 1, `${args[0]}: stderr was:\n${result.stderr}`);
      assert.ok(errorLines[0]!.startsWith('orderflow: configuration error: DATA_DIR: '), errorLines[0]);
      for (const piece of expected)
        assert.ok(errorLines[0]!.includes(piece), `${args[0]}: ${errorLines[0]} lacks ${piece}`);
      assert.ok(!result.stderr.includes('    at '), 'no stack trace');
      assert.equal(result.stdout, '', `${args[0]} said nothing on stdout`);
    }
  }

  it('a file at DATA_DIR, or above it: the line names the file; the file is untouched', async () => {
    const file = path.join(parent, 'a-file');
    await writeFile(file, 'kept');
    await refusedEverywhere(file, [`${file} is a file, not a directory`]);
    const below = path.join(file, 'data', 'deeper');
    await refusedEverywhere(below, [`${below} cannot be created: ${file} is a file, not a directory`]);
    assert.equal(readFileSync(file, 'utf8'), 'kept');
  });

  it('a directory this user may not write in, existing or to be created in one: permission denied, nothing created', async () => {
    const user = asRoot ? NOBODY : process.getuid!();
    const launch = asRoot ? launchAs(NOBODY) : undefined;
    const readOnly = path.join(parent, 'read-only');
    await mkdir(readOnly, { mode: 0o555 });
    await chmod(readOnly, 0o555);
    await refusedEverywhere(readOnly, [`cannot write in ${readOnly}: permission denied for uid ${user}`], launch);
    const inside = path.join(readOnly, 'data', 'deeper');
    await refusedEverywhere(
      inside,
      [
        `cannot create ${path.join(readOnly, 'data')}: permission denied for uid ${user}`,
        `write access to ${readOnly}`,
      ],
      launch,
    );
    assert.deepEqual(await readdir(readOnly), [], 'nothing was created');
  });

  it('a path under /proc (nothing can be created there, not even by root): refused, not a start that never ends', async () => {
    // Node's recursive mkdir never returns on such a path.
    const dataDir = `/proc/orderflow-test-${process.pid}/data`;
    await refusedEverywhere(dataDir, [`cannot create /proc/orderflow-test-${process.pid}`]);
  });

  it('a symbolic link to a directory that does not exist, at DATA_DIR or above it: the line names the link and its target; nothing is created', async () => {
    const target = path.join(parent, 'moved-away');
    const link = path.join(parent, 'dangling');
    await symlink(target, link);
    await refusedEverywhere(link, [`${link} is a symbolic link to ${target}, which does not exist`]);
    const below = path.join(link, 'data');
    await refusedEverywhere(below, [`${below} cannot be created: ${link} is a symbolic link to ${target}`]);
    assert.ok(!existsSync(target), 'the target was not created');
  });

  it("a path under /sys (refused to root too): the line says it is the kernel's sysfs", async (t) => {
    if (!existsSync('/sys/kernel')) {
      t.skip('no /sys here');
      return;
    }
    await refusedEverywhere('/sys/kernel/orderflow-test', [
      'cannot create /sys/kernel/orderflow-test',
      '/sys/kernel is on sysfs',
    ]);
  });

  it('a read-only file system (a read-only bind mount in a mount namespace of its own)', async (t) => {
    const volume = path.join(parent, 'volume');
    await mkdir(volume);
    // unshare -m needs root; -r maps this user to root in a user namespace of its own.
    const unshare = ['unshare', ...(asRoot ? [] : ['-r']), '-m', 'sh', '-c'];
    const script = `mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"`;
    const probe = spawnSync(unshare[0]!, [...unshare.slice(1), `${script}`, volume, 'true'], { encoding: 'utf8' });
    if (probe.status !== 0) {
      // Said, not passed: this machine cannot make a read-only mount for a test.
      t.skip(`no read-only mount can be made here: ${probe.stderr.trim() || probe.error?.message}`);
      return;
    }
    const launch = (args: string[], env: Record<string, string>) =>
      spawn(unshare[0]!, [...unshare.slice(1), script, volume, process.execPath, 'src/main.ts', ...args], {
        cwd: REPO,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    await refusedEverywhere(volume, [`cannot write in ${volume}: ${volume} is on a read-only file system`], launch);
    const inside = path.join(volume, 'data');
    await refusedEverywhere(inside, [`cannot create ${inside}: ${volume} is on a read-only file system`], launch);
    assert.deepEqual(await readdir(volume), []);
  });
});

describe('serve with WEB_CONCURRENCY', () => {
  const baseUrl = requiredServiceUrl('DATABASE_URL');

  it(
    'runs that many serving processes on one port, replaces one that dies, and stops them all on SIGTERM',
    { skip: baseUrl === undefined ? 'DATABASE_URL is not set' : undefined },
    async (t) => {
      const { database, dataDir } = await databaseAndDataDir(t, baseUrl!, 'orderflow-cli-');
      const { child, exited, url, stderr } = await serve(
        cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn', WEB_CONCURRENCY: '2', DATABASE_URL: database.url }),
        t,
      );
      t.after(() => {
        for (const pid of copiesOf(child.pid!)) process.kill(pid, 'SIGKILL');
      });
      const copies = await eventually('two serving processes', async () =>
        copiesOf(child.pid!).length === 2 ? copiesOf(child.pid!) : undefined,
      );
      // What the last readiness check saw, and the supervisor's output, for a failure to say.
      let seen: number | string = 'nothing yet';
      const explain = (error: Error): never => {
        throw new Error(`${error.message}; the last /readyz check saw: ${seen}; the processes wrote:\n${stderr()}`, {
          cause: error,
        });
      };
      // node:cluster hands new connections to the copies in turn, so six ready
      // answers on fresh connections in a row mean both copies are serving.
      let readyInARow = 0;
      await eventually(
        'both copies to serve',
        async () =>
          (readyInARow = (seen = await readyOnFreshConnection(url)) === 200 ? readyInARow + 1 : 0) >= 6
            ? true
            : undefined,
        60_000,
      ).catch(explain);

      process.kill(copies[0]!, 'SIGKILL');
      const replaced = await eventually('the killed copy to be replaced', async () => {
        const now = copiesOf(child.pid!);
        return now.length === 2 && !now.includes(copies[0]!) ? now : undefined;
      });
      assert.ok(replaced.includes(copies[1]!), 'the other copy kept running');
      await eventually(
        'the port to answer again',
        async () => ((seen = await readyOnFreshConnection(url)) === 200 ? true : undefined),
        60_000,
      ).catch(explain);

      child.kill('SIGTERM');
      const [code] = await exited;
      assert.equal(code, 0, stderr());
      assert.deepEqual(copiesOf(child.pid!), [], 'no serving process outlives the supervisor');
    },
  );
});

/**
 * Orders over HTTP with these headers (a bearer token and JSON): order()
 * places one unit of sku under an idempotency key and expects 202, returning
 * the order's id; orderIds() lists the ids of the first 100 orders, sorted.
 */
function ordersOver(headers: Record<string, string>, sku: string) {
  return {
    order: async (url: string, key: string): Promise<string> => {
      const response = await fetch(new URL('/v1/orders', url), {
        method: 'POST',
        headers: { ...headers, 'idempotency-key': key },
        body: JSON.stringify({ items: [{ sku, quantity: 1 }], payment: { token: 'tok_visa' } }),
      });
      assert.equal(response.status, 202, await response.clone().text());
      return ((await response.json()) as { id: string }).id;
    },
    orderIds: async (url: string): Promise<string[]> => {
      const response = await fetch(new URL('/v1/orders?limit=100', url), { headers });
      assert.equal(response.status, 200);
      return ((await response.json()) as { items: { id: string }[] }).items.map((o) => o.id).sort();
    },
  };
}

/** A fresh PostgreSQL database and an empty DATA_DIR (named after prefix), both removed after the test. */
async function databaseAndDataDir(
  t: { after(fn: () => Promise<void>): void },
  baseUrl: string,
  prefix: string,
): Promise<{ database: { url: string }; dataDir: string }> {
  const database = await freshPostgresDatabase(baseUrl);
  const dataDir = await mkdtemp(path.join(tmpdir(), prefix));
  t.after(async () => {
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });
  return { database, dataDir };
}

/** GET /readyz on a new connection (no keep-alive), with a deadline: its status code, or why there was none. */
function readyOnFreshConnection(url: string): Promise<number | string> {
  return new Promise((resolve) => {
    const request = http.get(new URL('/readyz', url), { agent: false, timeout: 2_000 }, (response) => {
      response.resume();
      resolve(response.statusCode!);
    });
    request.on('timeout', () => request.destroy(new Error('no answer within 2 s')));
    request.on('error', (error) => resolve(error.message));
  });
}

/** The process ids of a process's children. */
function copiesOf(pid: number): number[] {
  const result = spawnSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' });
  return result.stdout
    .split('\n')
    .map((line) => Number(line.trim()))
    .filter((n) => n > 0);
}

describe('the Node.js version', () => {
  /** Makes the process it is loaded into report this Node.js version, as an older Node.js would. */
  const posingAs = (version: string) =>
    `--import=data:text/javascript,Object.defineProperty(process.versions,'node',{value:'${version}'})`;

  it('package.json engines is the range the check enforces, and the check names what is needed', () => {
    const { engines } = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
      engines: { node: string };
    };
    assert.equal(engines.node, NODE_ENGINES);
    // 22.18 strips types but predates undici 8's 22.19; 23 never had node:sqlite's timeout option.
    for (const old of ['20.19.0', '22.0.0', '22.16.0', '22.18.0', '23.11.0'])
      assert.match(nodeVersionProblem(old) ?? 'accepted', new RegExp(`this is Node\\.js ${old}, .*needs 22\\.19`), old);
    for (const good of ['22.19.0', '22.22.1', '24.0.0', '24.21.0', '26.1.0'])
      assert.equal(nodeVersionProblem(good), undefined, good);
  });

  it('main.ts on a Node.js that is too old: exit 1 with the version it needs, before anything runs', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-'));
    try {
      const child = spawn(process.execPath, [posingAs('22.18.0'), 'src/main.ts', 'migrate'], {
        cwd: REPO,
        env: cleanEnv(dataDir),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const [code] = await new Promise<[number | null]>((resolve) => child.once('close', (c) => resolve([c])));
      assert.equal(code, 1, stderr);
      assert.match(stderr, /^orderflow: this is Node\.js 22\.18\.0, and Orderflow needs 22\.19 or later/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('npm start on a Node.js that cannot run TypeScript: exit 1 with the version it needs, not "Unknown file extension"', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-'));
    try {
      // NODE_OPTIONS reaches the node that `npm start` execs: it poses as 20, and like 20 strips no types.
      const child = npmStart(
        cleanEnv(dataDir, { PORT: '0', NODE_OPTIONS: `--no-experimental-strip-types ${posingAs('20.19.0')}` }),
      );
      // Without the check it would start serving: stop it and what npm started, so that the test fails rather than hangs.
      const deadline = setTimeout(
        () =>
          void descendants(child.pid!).then((pids) => {
            for (const pid of pids) process.kill(pid, 'SIGKILL');
            child.kill('SIGKILL');
          }),
        60_000,
      );
      let stderr = '';
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      const [code] = await new Promise<[number | null]>((resolve) => child.once('close', (c) => resolve([c])));
      clearTimeout(deadline);
      assert.equal(code, 1, stderr);
      assert.match(stderr, /orderflow: this is Node\.js 20\.19\.0, and Orderflow needs 22\.19 or later/);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('npm scripts', () => {
  it('every script that starts Node execs it, so that the signal npm forwards reaches Node, not a shell', () => {
    const { scripts } = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    const startingNode = Object.entries(scripts).filter(([, command]) =>
      /^(?:[A-Z_]+=\S*\s+)*(?:exec\s+)?node\s/.test(command),
    );
    assert.ok(startingNode.length >= 5, JSON.stringify(startingNode));
    for (const [name, command] of startingNode)
      assert.match(command, /^(?:[A-Z_]+=\S*\s+)*exec node\s/, `npm run ${name}: ${command}`);
  });
});

describe('npm run cluster', () => {
  const clusterCommand = (env: Record<string, string>, args: string[] = []) =>
    spawnSync(process.execPath, ['scripts/cluster.ts', ...args], {
      cwd: REPO,
      env: { PATH: process.env.PATH ?? '', ...env },
      encoding: 'utf8',
    });

  it('passes BROKER_PREFIX, the read replica, Memcached and an outside identity provider on to every process', () => {
    const passedOn = {
      BROKER_PREFIX: 'shop2',
      DATABASE_READ_URL: 'postgres://replica/orders',
      CACHE_URL: 'memcached://cache:11211',
      AUTH_JWKS_URL: 'https://idp.example/jwks',
      AUTH_ISSUER: 'https://idp.example/',
      AUTH_AUDIENCE: 'orderflow',
    };
    const settings = clusterSettings({
      DATABASE_URL: 'postgres://db/orders',
      BROKER_URL: 'nats://broker:4222',
      ...passedOn,
    });
    assert.ok(!('problem' in settings), JSON.stringify(settings));
    assert.equal(settings.brokerUrl, 'nats://broker:4222');
    assert.deepEqual(settings.env, { LOG_LEVEL: 'info', ...passedOn });
  });

  it('refuses, naming it, a variable it sets itself, instead of ignoring it; and a missing DATABASE_URL', () => {
    for (const name of [
      'PAYMENT_GATEWAY_URL',
      'ROLE',
      'PORT',
      'HOST',
      'ORDERFLOW_LB_BIND',
      'ORDERFLOW_LB_STATS',
      'ORDERFLOW_TLS_CERT',
      'ORDERFLOW_LB_TLS_BIND',
      'ORDERFLOW_LB_HTTPS_PORT',
    ]) {
      for (const shape of ['split', 'combined']) {
        const settings = clusterSettings({ DATABASE_URL: 'postgres://127.0.0.1:1/none', [name]: 'x' }, [
          '--shape',
          shape,
        ]);
        assert.ok('problem' in settings, `${name} with --shape ${shape} was accepted`);
        assert.match(settings.problem, new RegExp(`^${name} is not used by npm run cluster: .+$`));
      }
    }
    // The command itself: one line on stderr, exit 2.
    const refused = clusterCommand({ DATABASE_URL: 'postgres://127.0.0.1:1/none', PORT: '8080' });
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /^cluster: PORT is not used by npm run cluster: .+\n$/);
    const missing = clusterCommand({});
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /^cluster: set DATABASE_URL/);
  });

  it('refuses what the chosen shape has no use for, and a malformed value, naming what to use instead', () => {
    const database = { DATABASE_URL: 'postgres://127.0.0.1:1/none' };
    const refusals: [Record<string, string>, string[], RegExp][] = [
      // The split shape's processes are counted with --apis and --workers.
      [{ WEB_CONCURRENCY: '3' }, [], /^WEB_CONCURRENCY is not used by npm run cluster --shape split: .*--apis/],
      // Every copy of the combined shape runs every role.
      [{}, ['--shape', 'combined', '--apis', '3'], /^--apis is not used .*--shape combined: .*WEB_CONCURRENCY/],
      [{}, ['--shape', 'combined', '--workers', '1'], /^--workers is not used .*--shape combined/],
      [{ WEB_CONCURRENCY: '0' }, ['--shape', 'combined'], /^WEB_CONCURRENCY: must be between 1 and 64/],
      [{ SIMULATED_GATEWAY_LATENCY_MS: 'slow' }, [], /^SIMULATED_GATEWAY_LATENCY_MS: expected an integer/],
      [{}, ['--apis', 'two'], /^--apis must be an integer from 1 to 64, got "two"/],
      [{}, ['--port', '0'], /^--port must be an integer/],
      [{}, ['--shape', 'both'], /^--shape is split or combined/],
      [{}, ['--copies', '3'], /^Unknown option '--copies'/],
    ];
    for (const [env, args, message] of refusals) {
      const settings = clusterSettings({ ...database, ...env }, args);
      assert.ok('problem' in settings, `${JSON.stringify(env)} ${args.join(' ')} was accepted`);
      assert.match(settings.problem, message);
    }
    const refused = clusterCommand({ ...database, WEB_CONCURRENCY: '3' });
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /^cluster: WEB_CONCURRENCY is not used by npm run cluster --shape split: .+\n$/);
  });

  it('refuses, before anything starts, a --port whose following ports run past 65535, naming the highest that fits', () => {
    // A database that does not answer: had the check been skipped, the
    // migration would fail with exit 1 instead of the refusal's exit 2.
    const database = { DATABASE_URL: 'postgres://127.0.0.1:1/none' };
    const broker = { BROKER_URL: 'nats://127.0.0.1:1' };
    // Split: HAProxy on --port, then apis, workers, a relay with a broker, then the statistics page.
    const refusals: [Record<string, string>, string[], number][] = [
      [broker, ['--port', '65533'], 65529],
      [{}, ['--port', '65533'], 65530],
      [broker, ['--apis', '3', '--workers', '1', '--port', '65535'], 65529],
      [{}, ['--apis', '64', '--workers', '64', '--port', '65500'], 65406],
    ];
    for (const [env, args, fits] of refusals) {
      const settings = clusterSettings({ ...database, ...env }, args);
      assert.ok('problem' in settings, `${JSON.stringify(env)} ${args.join(' ')} was accepted`);
      assert.match(settings.problem, new RegExp(`^--port \\d+ leaves no room .*highest --port that fits is ${fits}$`));
      const fitting = clusterSettings({ ...database, ...env }, [...args.slice(0, -1), String(fits)]);
      assert.ok(!('problem' in fitting), `${args.join(' ')} at ${fits}: ${JSON.stringify(fitting)}`);
    }
    // The combined shape's copies share the one port: any --port fits.
    const combined = clusterSettings({ ...database, WEB_CONCURRENCY: '64' }, [
      '--shape',
      'combined',
      '--port',
      '65535',
    ]);
    assert.ok(!('problem' in combined), JSON.stringify(combined));
    const refused = clusterCommand({ ...database, ...broker }, ['--port', '65533']);
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /^cluster: --port 65533 leaves no room .*is 65529\n$/);
  });

  it('honours, shape by shape, the counts and the gateway settings it accepts', () => {
    const database = { DATABASE_URL: 'postgres://db/orders' };
    const combined = clusterSettings({ ...database, WEB_CONCURRENCY: '3' }, ['--shape', 'combined', '--port', '9000']);
    assert.ok(!('problem' in combined), JSON.stringify(combined));
    assert.equal(combined.shape, 'combined');
    assert.equal(combined.copies, 3);
    assert.equal(combined.basePort, 9000);
    const byDefault = clusterSettings(database, ['--shape', 'combined']);
    assert.ok(!('problem' in byDefault), JSON.stringify(byDefault));
    assert.equal(byDefault.copies, 2);

    const split = clusterSettings(
      {
        ...database,
        SIMULATED_GATEWAY_LATENCY_MS: '150',
        SIMULATED_GATEWAY_MAX_ENTRIES: '500',
        PENDING_DEADLINE_MS: '3600000',
      },
      ['--apis', '3', '--workers', '1'],
    );
    assert.ok(!('problem' in split), JSON.stringify(split));
    assert.deepEqual([split.shape, split.apis, split.workers, split.copies], ['split', 3, 1, undefined]);
    // The cluster's own gateway, as `orderflow gateway` with the same environment.
    assert.equal(split.gatewayLatencyMs, 150);
    assert.ok(split.gatewayRetain !== 'all' && split.gatewayRetain?.maxEntries === 500, JSON.stringify(split));
    assert.ok(split.gatewayRetain.windowMs > 2 * 3_600_000, JSON.stringify(split));
  });

  const baseUrl = requiredServiceUrl('DATABASE_URL');

  it(
    '--shape combined runs WEB_CONCURRENCY serving copies',
    { skip: baseUrl === undefined ? 'DATABASE_URL is not set' : undefined },
    async (t) => {
      const run = await runningCluster(t, ['--shape', 'combined', '--port', String(await freePortRange(2))], {
        WEB_CONCURRENCY: '3',
      });
      const { child, exited } = run;
      // The script's one child is the combined `serve`; its children are the copies.
      const [supervisor, ...others] = await childPids(child.pid!);
      assert.deepEqual(others, [], run.output);
      const copies = await eventually('the copies to be counted', async () => {
        const now = await childPids(supervisor!);
        return now.length > 0 ? now : undefined;
      });
      assert.equal(copies.length, 3, run.output);
      assert.match(run.output, /node:cluster, 3 copies/);
      child.kill('SIGTERM');
      assert.equal(await exited, 0, run.output);
    },
  );

  /** `npm run cluster` with these arguments (and variables) on a fresh database; resolves once it is ready. */
  async function runningCluster(
    t: { after: (fn: () => Promise<void>) => void },
    args: string[],
    variables: Record<string, string> = {},
  ) {
    const { database, dataDir } = await databaseAndDataDir(t, baseUrl!, 'orderflow-cluster-cli-');
    const child = spawn(process.execPath, ['scripts/cluster.ts', ...args], {
      cwd: REPO,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: dataDir,
        DATA_DIR: dataDir,
        DATABASE_URL: database.url,
        LOG_LEVEL: 'warn',
        ...variables,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const run = { child, exited, output: '' };
    child.stdout.on('data', (chunk: Buffer) => (run.output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (run.output += chunk.toString()));
    t.after(async () => {
      if (child.exitCode !== null) return;
      for (const pid of await descendants(child.pid!)) process.kill(pid, 'SIGKILL');
      child.kill('SIGKILL');
      await exited;
    });
    await eventually(
      'the cluster to be ready',
      async () => {
        if (child.exitCode !== null) throw new Error(`the cluster exited (${child.exitCode}):\n${run.output}`);
        return /cluster ready on/.test(run.output) ? true : undefined;
      },
      90_000,
    );
    return run;
  }

  /** The runner's child listening on `port` (its PORT), or undefined. */
  const childOnPort = async (runner: number, port: number) => {
    for (const pid of await childPids(runner)) {
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
      if (environ.includes(`PORT=${port}`)) return pid;
    }
    return undefined;
  };
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it(
    '--shape combined: its serve exiting with code 0 is reported, and the runner exits non-zero',
    // A runner that carries on after its serve is gone never exits: the timeout fails the test.
    { skip: baseUrl === undefined ? 'DATABASE_URL is not set' : undefined, timeout: 180_000 },
    async (t) => {
      const cluster = await runningCluster(t, ['--shape', 'combined', '--port', String(await freePortRange(1))]);
      const [serve] = await childPids(cluster.child.pid!);
      // SIGTERM drains the supervisor and its copies: exit 0, and nothing serves.
      process.kill(serve!, 'SIGTERM');
      assert.equal(await cluster.exited, 1, cluster.output);
      assert.match(cluster.output, /^\[all\] exited \(code 0\); it is not restarted$/m);
      assert.match(
        cluster.output,
        /^cluster: all exited \(code 0\), the last process with role all; .*stopping the rest$/m,
      );
    },
  );

  it(
    'split: a clean exit is reported; the last api process gone stops the rest and exits non-zero',
    {
      skip:
        baseUrl === undefined
          ? 'DATABASE_URL is not set'
          : skipUnlessInstalled('the split cluster', { haproxy: ['-v'] }),
      timeout: 180_000,
    },
    async (t) => {
      // HAProxy on base, api1 on base+1, worker1 and worker2 on base+2 and +3, statistics on base+4.
      const base = await freePortRange(5);
      const cluster = await runningCluster(t, ['--apis', '1', '--workers', '2', '--port', String(base)]);
      const runner = cluster.child.pid!;
      const [api1, worker1, worker2, haproxy] = await Promise.all(
        [base + 1, base + 2, base + 3, base].map((port) => childOnPort(runner, port)),
      );
      assert.ok(api1 && worker1 && worker2, cluster.output);
      // One worker of two: worker2 still pays, so the runner reports it and carries on.
      process.kill(worker1, 'SIGTERM');
      await eventually('worker1 to be reported', async () =>
        /^\[worker1\] exited \(code 0\); it is not restarted$/m.test(cluster.output) ? true : undefined,
      );
      assert.equal(cluster.child.exitCode, null, cluster.output);
      // The only api: nothing accepts orders any more.
      process.kill(api1, 'SIGTERM');
      assert.equal(await cluster.exited, 1, cluster.output);
      assert.match(cluster.output, /^\[api1\] exited \(code 0\); it is not restarted$/m);
      assert.match(cluster.output, /^cluster: api1 exited \(code 0\), the last process with role api; /m);
      assert.doesNotMatch(cluster.output, /cluster: worker1/);
      // The rest was stopped, not left behind.
      assert.deepEqual(
        [worker2, haproxy].filter((pid) => pid !== undefined && alive(pid)),
        [],
        cluster.output,
      );
    },
  );
});
