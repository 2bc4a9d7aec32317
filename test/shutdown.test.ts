// Graceful shutdown as clients meet it: real `orderflow serve` processes,
// raw HTTP/1.1 over real sockets, SIGTERM. Every request that reaches a
// process while it shuts down gets either its full answer or a 503
// problem+json with Retry-After and Connection: close, before any work; none
// meets a connection torn down with no answer. The cases: a keep-alive
// connection's next request, the first request on a connection the process
// had accepted before it stopped listening, a request whose body is still
// arriving, one waiting for 100 Continue (which it does not get), a request
// pipelined behind one in flight, and requests in flight.
//
// Nothing here waits for time to pass: requests are held in flight by their
// bodies (Expect: 100-continue tells when the process has read their
// headers), and "the shutdown has begun" is the listener refusing connections.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import postgres from 'postgres';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { openPGlite } from '../src/storage/pglite.ts';
import { ALL_SCOPES, eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { callApi } from './support/http.ts';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One client connection speaking HTTP/1.1 by hand, so that what the server does to it is seen as it is. */
class RawConnection {
  readonly #socket: net.Socket;
  #received = Buffer.alloc(0);
  /** How the connection ended, once it has: "closed by the server" or the socket error. */
  #ended: string | undefined;
  #wake: (() => void) | undefined;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#received = Buffer.concat([this.#received, chunk]);
      this.#wake?.();
    });
    socket.on('end', () => this.#end('was closed by the server'));
    socket.on('error', (error: NodeJS.ErrnoException) => this.#end(`failed: ${error.code ?? error.message}`));
    socket.on('close', () => this.#end('was closed'));
  }

  /** A connection the server's kernel has completed (the client's `connect`). */
  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawConnection(socket));
      });
    });
  }

  #end(how: string): void {
    this.#ended ??= how;
    this.#wake?.();
  }

  write(bytes: string): void {
    this.#socket.write(bytes);
  }

  /** The next response (a 100 Continue counts), complete by its Content-Length; fails if the connection ends first. */
  async response(): Promise<Answer> {
    for (;;) {
      const end = this.#received.indexOf('\r\n\r\n');
      if (end >= 0) {
        const [statusLine, ...fields] = this.#received.subarray(0, end).toString('latin1').split('\r\n');
        const headers = Object.fromEntries(
          fields.map((f) => [f.slice(0, f.indexOf(':')).toLowerCase(), f.slice(f.indexOf(':') + 1).trim()]),
        );
        const length = Number(headers['content-length'] ?? 0);
        if (this.#received.length >= end + 4 + length) {
          const body = this.#received.subarray(end + 4, end + 4 + length).toString('utf8');
          this.#received = this.#received.subarray(end + 4 + length);
          return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine!)?.[1]), headers, body };
        }
      }
      if (this.#ended !== undefined) {
        throw new Error(
          `the connection ${this.#ended} with no (complete) answer; received: ${JSON.stringify(this.#received.toString('latin1'))}`,
        );
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** Resolves once the server has closed the connection cleanly, after everything it sent was read. */
  async closedByServer(): Promise<void> {
    while (this.#ended === undefined) await new Promise<void>((resolve) => (this.#wake = resolve));
    assert.equal(this.#received.length, 0, 'no bytes after the last answer');
    assert.equal(this.#ended, 'was closed by the server');
  }

  destroy(): void {
    this.#socket.destroy();
  }
}

/** True once a connection to port is refused: the process has stopped listening. */
function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code === 'ECONNREFUSED'));
  });
}

function request(method: string, target: string, headers: Record<string, string>, body = ''): string {
  const fields = Object.entries({ host: 'orderflow.test', ...headers }).map(([name, value]) => `${name}: ${value}\r\n`);
  return `${method} ${target} HTTP/1.1\r\n${fields.join('')}\r\n${body}`;
}

/** The shutdown 503: problem+json, Retry-After, and the connection closed after it. */
async function assertShutdownRefusal(connection: RawConnection, what: string): Promise<void> {
  const answer = await connection.response();
  assert.equal(answer.status, 503, `${what}: ${answer.body}`);
  assert.equal(answer.headers['content-type'], 'application/problem+json; charset=utf-8', what);
  assert.equal(answer.headers.connection, 'close', what);
  assert.equal(answer.headers['retry-after'], '2', what);
  const problem = JSON.parse(answer.body);
  assert.equal(problem.type, '/problems/unavailable', what);
  assert.match(problem.detail, /shutting down/, what);
  await connection.closedByServer();
}

interface Served {
  port: number;
  dataDir: string;
  stop(): void;
  exited: Promise<[number | null, string | null]>;
  output(): string;
}

async function serve(env: Record<string, string>, t: { after(fn: () => Promise<void>): void }): Promise<Served> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-shutdown-'));
  const child = spawn(process.execPath, ['src/main.ts', 'serve'], {
    cwd: REPO,
    env: { PATH: process.env.PATH ?? '', HOME: dataDir, DATA_DIR: dataDir, HOST: '127.0.0.1', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<[number | null, string | null]>((resolve) =>
    child.once('exit', (code, signal) => resolve([code, signal])),
  );
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await rm(dataDir, { recursive: true, force: true });
  });
  let output = '';
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /"msg":"orderflow listening"/.test(output) && /"url":"http:\/\/[^:]+:(\d+)"/.exec(output);
      if (match) resolve(Number(match[1]));
    });
    void exited.then(([code]) => reject(new Error(`serve exited (${code}) before listening:\n${output}`)));
  });
  return { port, dataDir, stop: () => child.kill('SIGTERM'), exited, output: () => output };
}

/** What one role serves: a request with no body and a request with a JSON body, and their normal answers. */
interface Routes {
  probe: { target: string; status: number };
  withBody: { method: string; target: string; body: (key: string) => string; status: number };
  headers: Record<string, string>;
  /** A stream that stays open until the shutdown ends it (the live figures). */
  stream?: { target: string; headers: Record<string, string> };
}

/** Opens a Server-Sent Events stream, reads its first event, and resolves `ended` once the server ends it cleanly. */
async function openStream(port: number, stream: NonNullable<Routes['stream']>): Promise<{ ended: Promise<void> }> {
  const response = await fetch(`http://127.0.0.1:${port}${stream.target}`, { headers: stream.headers });
  assert.equal(response.status, 200);
  const reader = response.body!.getReader();
  let text = '';
  while (!text.includes('event: figures')) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'the stream sends its first event');
    text += new TextDecoder().decode(value);
  }
  return {
    ended: (async () => {
      while (!(await reader.read()).done);
    })(),
  };
}

/**
 * Puts one process through every way a request can meet its shutdown and
 * checks each answer. Returns the Idempotency-Keys of the requests that got
 * their full answer (the rest must have left nothing behind).
 */
async function shutDownWhileRequestsArrive(served: Served, routes: Routes): Promise<string[]> {
  const { port } = served;
  const probe = () => request('GET', routes.probe.target, routes.headers);
  const withBody = (key: string, extra: Record<string, string> = {}) => {
    const body = routes.withBody.body(key);
    return {
      head: request(routes.withBody.method, routes.withBody.target, {
        ...routes.headers,
        'content-type': 'application/json',
        'content-length': String(Buffer.byteLength(body)),
        'idempotency-key': key,
        ...extra,
      }),
      body,
    };
  };

  // Opened first and left silent: accepted by the process before the next
  // connection is (the kernel hands connections out in order), so once that
  // one is answered, this one is a connection the process holds.
  const fresh = await RawConnection.open(port);
  const keptAlive = await RawConnection.open(port);
  keptAlive.write(probe());
  assert.equal((await keptAlive.response()).status, routes.probe.status);
  const bodyLater = await RawConnection.open(port);
  bodyLater.write(probe());
  assert.equal((await bodyLater.response()).status, routes.probe.status);
  const expecting = await RawConnection.open(port);
  expecting.write(probe());
  assert.equal((await expecting.response()).status, routes.probe.status);
  // In flight: the process has read their headers (100 Continue) and waits for their bodies.
  const held = await RawConnection.open(port);
  const heldRequest = withBody('held', { expect: '100-continue' });
  held.write(heldRequest.head);
  assert.equal((await held.response()).status, 100);
  const last = await RawConnection.open(port);
  const lastRequest = withBody('last', { expect: '100-continue' });
  last.write(lastRequest.head);
  assert.equal((await last.response()).status, 100);
  const stream = routes.stream && (await openStream(port, routes.stream));

  served.stop();
  // The process has begun to shut down once it refuses new connections.
  await eventually('the process to stop listening after SIGTERM', async () =>
    (await refused(port)) ? true : undefined,
  );

  // A keep-alive connection's next request.
  keptAlive.write(probe());
  await assertShutdownRefusal(keptAlive, 'the next request on a keep-alive connection');
  // The first request on a connection accepted before the listener closed.
  fresh.write(withBody('fresh').head + withBody('fresh').body);
  await assertShutdownRefusal(fresh, 'the first request on a connection accepted before the listener closed');
  // A request whose body is still arriving when it reaches the process.
  const later = withBody('body-later');
  const half = Math.floor(later.body.length / 2);
  bodyLater.write(later.head + later.body.slice(0, half));
  bodyLater.write(later.body.slice(half));
  await assertShutdownRefusal(bodyLater, 'a request whose body was still arriving');
  // A request that waits for 100 Continue before sending its body: the 503
  // comes at once, with no 100 inviting a body only to refuse it, and the
  // client that sends none does not hold the shutdown open.
  expecting.write(withBody('expect-continue', { expect: '100-continue' }).head);
  await assertShutdownRefusal(expecting, 'a request waiting for 100 Continue');
  // A request in flight gets its full answer; one pipelined behind it is
  // refused; one behind that gets no answer, and the connection closes
  // cleanly (no bytes after the 503), having written nothing of it.
  const pipelined = withBody('pipelined');
  const behind = withBody('pipelined-behind');
  held.write(heldRequest.body + pipelined.head + pipelined.body + behind.head + behind.body);
  const heldAnswer = await held.response();
  assert.equal(heldAnswer.status, routes.withBody.status, heldAnswer.body);
  await assertShutdownRefusal(held, 'a request pipelined behind one in flight');
  // The last request in flight on its connection: its answer closes the connection.
  last.write(lastRequest.body);
  const lastAnswer = await last.response();
  assert.equal(lastAnswer.status, routes.withBody.status, lastAnswer.body);
  assert.equal(lastAnswer.headers.connection, 'close', 'the last answer in flight closes its connection');
  await last.closedByServer();

  const [code, signal] = await served.exited;
  assert.equal(signal, null);
  assert.equal(code, 0, served.output());
  // An open stream does not hold the shutdown up: it is ended, not cut off.
  await stream?.ended;
  return ['held', 'last'];
}

const ORDER_SCOPES = 'orders:write orders:read';

async function orderRoutes(served: Served, url: string): Promise<Routes> {
  const issuer = await openDevIssuer(served.dataDir);
  const admin = await issuer.issue({ sub: 'admin', scope: ALL_SCOPES });
  const created = await callApi(url, admin, 'POST', '/v1/products', {
    sku: 'SHUT-1',
    name: 'Drained',
    priceCents: 500,
    currency: 'EUR',
    stock: 100,
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const shopper = await issuer.issue({ sub: 'sam', scope: ORDER_SCOPES });
  return {
    probe: { target: '/v1/products/SHUT-1', status: 200 },
    withBody: {
      method: 'POST',
      target: '/v1/orders',
      body: () => JSON.stringify({ items: [{ sku: 'SHUT-1', quantity: 1 }], payment: { token: 'tok_visa' } }),
      status: 202,
    },
    headers: { authorization: `Bearer ${shopper}` },
    stream: { target: '/v1/admin/figures/stream', headers: { authorization: `Bearer ${admin}` } },
  };
}

describe('graceful shutdown, as clients meet it', () => {
  const databaseUrl = requiredServiceUrl('DATABASE_URL');
  /** An empty database of the test's own on the PostgreSQL server, dropped after it. */
  const freshDatabase = async (t: { after(fn: () => Promise<void>): void }) => {
    const database = await freshPostgresDatabase(databaseUrl!);
    t.after(database.drop);
    return database.url;
  };

  const acceptedKeys = async (url: string) => {
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      return (await sql<{ key: string }[]>`SELECT key FROM orders.idempotency_keys ORDER BY key`).map((r) => r.key);
    } finally {
      await sql.end();
    }
  };

  it(
    'ROLE=api: every request gets its full answer or the shutdown 503, and only the answered orders exist',
    {
      skip: databaseUrl ? false : 'DATABASE_URL not set',
    },
    async (t) => {
      const url = await freshDatabase(t);
      const served = await serve({ ROLE: 'api', DATABASE_URL: url, LOG_LEVEL: 'info' }, t);
      const routes = await orderRoutes(served, `http://127.0.0.1:${served.port}`);
      const answered = await shutDownWhileRequestsArrive(served, routes);
      assert.deepEqual(await acceptedKeys(url), answered.sort());
    },
  );

  it(
    'ROLE=worker: its health and metrics server drains the same way',
    {
      skip: databaseUrl ? false : 'DATABASE_URL not set',
    },
    async (t) => {
      const served = await serve({ ROLE: 'worker', DATABASE_URL: await freshDatabase(t), LOG_LEVEL: 'info' }, t);
      await shutDownWhileRequestsArrive(served, {
        probe: { target: '/readyz', status: 200 },
        // No route of a worker takes a body: a path it does not serve reads the body, then answers 404.
        withBody: { method: 'POST', target: '/nowhere', body: (key) => JSON.stringify({ key }), status: 404 },
        headers: {},
      });
    },
  );

  it('embedded, all roles in one process: the same, on the embedded database', async (t) => {
    const served = await serve({ LOG_LEVEL: 'info' }, t);
    const routes = await orderRoutes(served, `http://127.0.0.1:${served.port}`);
    const answered = await shutDownWhileRequestsArrive(served, routes);
    const db = await openPGlite(served.dataDir);
    try {
      const rows = await db.query<{ key: string }>('SELECT key FROM orders.idempotency_keys ORDER BY key');
      assert.deepEqual(
        rows.map((r) => r.key),
        answered.sort(),
      );
    } finally {
      await db.close();
    }
  });
});
