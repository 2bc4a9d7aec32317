// The command line as an operator meets it: `node src/main.ts <command>` in a
// clean environment (no servers configured, DATA_DIR in a temp directory).
// Bad configuration exits non-zero with one line naming the variable; `token`
// mints a usable JWT; `migrate` is idempotent; `serve` listens, answers
// /healthz and shuts down cleanly on SIGTERM.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { childPids, clusterSettings } from '../scripts/cluster.ts';

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
  options: { killAfterMs?: number } = {},
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = start(args, env);
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
  const url = await new Promise<string>((resolve, reject) => {
    let stdout = '';
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
  return { child, exited, url, stderr: () => stderrText, stopGracefully };
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
    const second = await run(['migrate'], cleanEnv(dataDir));
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stdout, /up to date/);
    assert.doesNotMatch(second.stdout, /applied/);
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
  it('a second serve and a migrate on a DATA_DIR that serve has open exit non-zero naming it and its pid; the first keeps its orders, and after SIGKILL a new serve starts at once and has them', async (t) => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-lock-'));
    t.after(() => rm(dataDir, { recursive: true, force: true }));
    const minted = await run(
      ['token', '--sub', 'bob', '--scope', 'orders:write orders:read catalog:write'],
      cleanEnv(dataDir),
    );
    assert.equal(minted.code, 0, minted.stderr);
    const headers = { authorization: `Bearer ${minted.stdout.trim()}`, 'content-type': 'application/json' };
    const post = (url: string, route: string, body: unknown, extra: Record<string, string> = {}) =>
      fetch(new URL(route, url), { method: 'POST', headers: { ...headers, ...extra }, body: JSON.stringify(body) });
    const order = async (url: string, key: string) => {
      const response = await post(
        url,
        '/v1/orders',
        { items: [{ sku: 'LOCK-1', quantity: 1 }], payment: { token: 'tok_visa' } },
        { 'idempotency-key': key },
      );
      assert.equal(response.status, 202, await response.clone().text());
      return ((await response.json()) as { id: string }).id;
    };
    const orderIds = async (url: string) => {
      const response = await fetch(new URL('/v1/orders?limit=100', url), { headers });
      assert.equal(response.status, 200);
      return ((await response.json()) as { items: { id: string }[] }).items.map((o) => o.id).sort();
    };

    const env = cleanEnv(dataDir, { PORT: '0', LOG_LEVEL: 'warn' });
    const first = await serve(env, t);
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
      const refused = await run([command], env, { killAfterMs: 60_000 });
      assert.equal(refused.code, 1, `${command}: ${refused.stderr}`);
      assert.equal(refused.signal, null);
      const errorLines = lines(refused.stderr);
      assert.equal(errorLines.length, 1, `${command}: stderr was:\n${refused.stderr}`);
      assert.ok(errorLines[0]!.includes(`DATA_DIR: ${dataDir} is in use`), errorLines[0]);
      assert.ok(errorLines[0]!.includes(`(pid ${first.child.pid})`), errorLines[0]);
      assert.ok(!refused.stderr.includes('    at '), 'no stack trace');
    }

    // Even with the lock file deleted under it, the first process's pid file still guards the directory.
    await rm(path.join(dataDir, 'orderflow.lock'));
    const afterDelete = await run(['serve'], env, { killAfterMs: 60_000 });
    assert.equal(afterDelete.code, 1, afterDelete.stderr);
    assert.ok(afterDelete.stderr.includes(`(pid ${first.child.pid})`), afterDelete.stderr);

    // The first process was not disturbed: it still serves, with what it had.
    accepted.push(await order(first.url, 'lock-2'));
    assert.deepEqual(await orderIds(first.url), accepted.sort());

    first.child.kill('SIGKILL');
    await first.exited;
    const second = await serve(env, t);
    assert.deepEqual(await orderIds(second.url), accepted.sort(), 'orders lost across the SIGKILL');
    await second.stopGracefully();
  });
});

describe('serve with WEB_CONCURRENCY', () => {
  const baseUrl = requiredServiceUrl('DATABASE_URL');

  it(
    'runs that many serving processes on one port, replaces one that dies, and stops them all on SIGTERM',
    { skip: baseUrl === undefined ? 'DATABASE_URL is not set' : undefined },
    async (t) => {
      const database = await freshPostgresDatabase(baseUrl!);
      const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cli-'));
      t.after(async () => {
        await database.drop();
        await rm(dataDir, { recursive: true, force: true });
      });
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
      // node:cluster hands new connections to the copies in turn, so six ready
      // answers on fresh connections in a row mean both copies are serving.
      let readyInARow = 0;
      await eventually(
        'both copies to serve',
        async () => ((readyInARow = (await readyOnFreshConnection(url)) ? readyInARow + 1 : 0) >= 6 ? true : undefined),
        60_000,
      );

      process.kill(copies[0]!, 'SIGKILL');
      const replaced = await eventually('the killed copy to be replaced', async () => {
        const now = copiesOf(child.pid!);
        return now.length === 2 && !now.includes(copies[0]!) ? now : undefined;
      });
      assert.ok(replaced.includes(copies[1]!), 'the other copy kept running');
      await eventually(
        'the port to answer again',
        async () => ((await readyOnFreshConnection(url)) ? true : undefined),
        60_000,
      );

      child.kill('SIGTERM');
      const [code] = await exited;
      assert.equal(code, 0, stderr());
      assert.deepEqual(copiesOf(child.pid!), [], 'no serving process outlives the supervisor');
    },
  );
});

/** GET /readyz on a new connection (no keep-alive), with a deadline: true when it answers 200. */
function readyOnFreshConnection(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get(new URL('/readyz', url), { agent: false, timeout: 2_000 }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
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
  const clusterCommand = (env: Record<string, string>) =>
    spawnSync(process.execPath, ['scripts/cluster.ts'], {
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
    for (const name of ['PAYMENT_GATEWAY_URL', 'ROLE', 'PORT', 'HOST']) {
      const result = clusterCommand({ DATABASE_URL: 'postgres://127.0.0.1:1/none', [name]: 'x' });
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, new RegExp(`^cluster: ${name} is not used by npm run cluster: .+\\n$`));
    }
    const missing = clusterCommand({});
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /^cluster: set DATABASE_URL/);
  });
});
