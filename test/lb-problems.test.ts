// What the load balancers answer themselves is the api's vocabulary too:
// problem+json (RFC 9457) with the api's problem types and titles, 503 with
// Retry-After when no api process can take a request. The bodies written in
// deploy/haproxy/haproxy.cfg and deploy/nginx/problems.conf are held to the
// catalogue (src/errors.ts), and HAProxy and nginx, plain and terminating
// TLS, are run for real from those files with every api process stopped,
// with an api process whose answer breaks off, and with malformed and
// over-long requests written on a raw socket.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect as connectTcp } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect as connectTls } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { Agent, fetch } from 'undici';
import { HAPROXY_CONFIG } from '../scripts/cluster.ts';
import { ERRORS, type ErrorCode } from '../src/errors.ts';
import { PROBLEM_CONTENT_TYPE, RETRY_AFTER_SECONDS, problemType } from '../src/http/problems.ts';
import { eventually } from './support/harness.ts';
import { startHaproxy, startNginx, type LoadBalancer, type StartLoadBalancer } from './support/load-balancers.ts';
import { skipUnlessInstalled } from './support/programs.ts';
import { makeTestCertificates, type TestCertificates } from './support/tls.ts';

const root = path.resolve(import.meta.dirname, '..');
const NGINX_PROBLEMS = path.join(root, 'deploy/nginx/problems.conf');

/** Every status HAProxy can generate (its errorfile list, but 200 for monitor-uri). */
const HAPROXY_STATUSES = [400, 401, 403, 404, 405, 407, 408, 410, 413, 425, 429, 500, 501, 502, 503, 504];
/** The statuses nginx generates in front of a proxy (494: header too large; 497: plain HTTP to the HTTPS port). */
const NGINX_STATUSES = [400, 404, 405, 408, 413, 414, 494, 497, 500, 501, 502, 503, 504];
/** Where a retry later is the remedy, and so Retry-After is sent. */
const RETRY_STATUSES = [429, 502, 503, 504];

interface ProblemBody {
  type: string;
  title: string;
  status: number;
  detail: string;
}

/** Asserts that a body is a problem of the catalogue with this status (and this code, when given); returns it. */
function assertCatalogued(text: string, status: number, code?: ErrorCode): ProblemBody {
  const body = JSON.parse(text) as ProblemBody;
  assert.deepEqual(Object.keys(body).sort(), ['detail', 'status', 'title', 'type'], text);
  const entry = (Object.keys(ERRORS) as ErrorCode[]).find((c) => problemType(c) === body.type);
  assert.ok(entry, `${body.type} is a problem type of the catalogue (src/errors.ts)`);
  if (code) assert.equal(entry, code, text);
  assert.equal(body.title, ERRORS[entry].title, `the catalogue's title for ${body.type}`);
  assert.equal(body.status, status, text);
  assert.equal(
    ERRORS[entry].status,
    status,
    `${body.type} is a ${ERRORS[entry].status} in the catalogue, not a ${status}`,
  );
  assert.ok(body.detail.length > 0);
  return body;
}

describe('load balancer problems: the bodies in the configurations', () => {
  it('HAProxy has an http-error for every status it can generate, each a problem of the catalogue, with Retry-After where retrying helps', async () => {
    const config = await readFile(HAPROXY_CONFIG, 'utf8');
    const rules = [...config.matchAll(/^\s*http-error status (\d+) content-type (\S+) string '([^']*)'(.*)$/gm)];
    assert.equal(
      rules.length,
      (config.match(/^\s*http-error /gm) ?? []).length,
      'every http-error line has the form this test reads',
    );
    assert.deepEqual(
      rules.map((r) => Number(r[1])),
      HAPROXY_STATUSES,
    );
    for (const [, status, contentType, body, rest] of rules) {
      assert.equal(contentType, PROBLEM_CONTENT_TYPE);
      assertCatalogued(body!, Number(status));
      const retry = RETRY_STATUSES.includes(Number(status));
      assert.equal(rest!.trim(), retry ? `hdr Retry-After ${RETRY_AFTER_SECONDS}` : '', `Retry-After on ${status}`);
    }
  });

  it('nginx sends every status it generates to a location answering a problem of the catalogue, with Retry-After where retrying helps', async () => {
    const config = await readFile(NGINX_PROBLEMS, 'utf8');
    const locations = new Map([...config.matchAll(/^location = (\S+) \{\n([\s\S]*?)^\}/gm)].map((m) => [m[1]!, m[2]!]));
    const covered: number[] = [];
    for (const [, statuses, overwrite, uri] of config.matchAll(/^error_page ([\d ]+) =(\d*) (\S+);$/gm)) {
      const codes = statuses!.trim().split(' ').map(Number);
      covered.push(...codes);
      const location = locations.get(uri!);
      assert.ok(location, `a location for ${uri}`);
      assert.match(location, /^ {2}internal;$/m, `${uri} is internal`);
      assert.match(location, /^ {2}types \{\}$/m, `${uri}: no extension picks another type`);
      assert.match(location, new RegExp(`^ {2}default_type ${PROBLEM_CONTENT_TYPE.replace('+', '\\+')};$`, 'm'));
      const answers = [...location.matchAll(/return (\d+) '([^']*)';/g)];
      assert.ok(answers.length > 0, `${uri} answers`);
      for (const [, status, body] of answers) assertCatalogued(body!, Number(status));
      // The final answer keeps the status (or the =status) nginx was asked for; a 502 or 504 may become 503.
      const final = Number(answers.at(-1)![1]);
      if (overwrite) assert.equal(final, Number(overwrite), uri);
      else assert.deepEqual(codes, [final], uri);
      const retry = codes.some((c) => RETRY_STATUSES.includes(c));
      assert.equal(
        location.includes(`set $orderflow_retry_after ${RETRY_AFTER_SECONDS};`),
        retry,
        `Retry-After for ${codes.join(', ')}`,
      );
    }
    assert.deepEqual(covered.sort(), [...NGINX_STATUSES].sort());
    assert.match(config, /^add_header Retry-After \$orderflow_retry_after always;$/m);
    for (const main of ['nginx.conf', 'nginx-tls.conf']) {
      const text = await readFile(path.join(root, 'deploy/nginx', main), 'utf8');
      assert.equal(
        (text.match(/^\s*server \{/gm) ?? []).length,
        (text.match(/^\s*include problems\.conf;/gm) ?? []).length,
        `every server of ${main} includes problems.conf`,
      );
    }
  });
});

const skip = skipUnlessInstalled('the load balancer problem test', {
  haproxy: ['-v'],
  nginx: ['-v'],
  openssl: ['version'],
});

interface RawAnswer {
  status: number;
  headers: Map<string, string>;
  body: string;
}

describe('load balancer problems: HAProxy and nginx for real', { skip }, () => {
  let dir: string;
  let certificates: TestCertificates;
  let client: Agent;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'orderflow-lb-problems-'));
    certificates = await makeTestCertificates(dir);
    client = new Agent({ connect: { ca: certificates.ca }, allowH2: true });
  });
  after(async () => {
    await client?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** A stand-in api process: 200 JSON for everything, but /v1/garbage, whose answer breaks off in its headers. */
  async function standIn(): Promise<{ server: Server; address: string }> {
    const server = createServer((request, response) => {
      if (request.url === '/v1/garbage') {
        // (Bytes that are not HTTP at all nginx would pass on as HTTP/0.9.)
        request.socket.end('HTTP/1.1 200 OK\r\nContent-Type: applic');
        return;
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ready"}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { server, address: `127.0.0.1:${(server.address() as { port: number }).port}` };
  }

  async function stop(server: Server): Promise<void> {
    const closed = new Promise((resolve) => server.close(resolve));
    server.closeAllConnections();
    await closed;
  }

  /** Where clients talk to the load balancer: HTTPS when TLS is on. */
  const base = (lb: LoadBalancer) =>
    lb.httpsPort === undefined ? `http://127.0.0.1:${lb.httpPort}` : `https://localhost:${lb.httpsPort}`;
  const get = (lb: LoadBalancer, target: string) => fetch(`${base(lb)}${target}`, { dispatcher: client });

  async function ready(lb: LoadBalancer): Promise<void> {
    await eventually(`${lb.name} to pass /readyz to the stand-in`, async () => {
      const response = await get(lb, '/readyz').catch(() => undefined);
      await response?.body?.cancel();
      return response?.status === 200 ? true : undefined;
    });
  }

  /**
   * Writes bytes on a raw connection (TLS when on, HTTP/1.1 by ALPN) and
   * reads one HTTP/1.1 response, complete by its Content-Length.
   */
  function raw(lb: LoadBalancer, request: Buffer | string): Promise<RawAnswer> {
    return new Promise((resolve, reject) => {
      const socket =
        lb.httpsPort === undefined
          ? connectTcp({ host: '127.0.0.1', port: lb.httpPort })
          : connectTls({
              host: '127.0.0.1',
              port: lb.httpsPort,
              servername: 'localhost',
              ca: certificates.ca,
              ALPNProtocols: ['http/1.1'],
            });
      let received = Buffer.alloc(0);
      const parse = (): RawAnswer | undefined => {
        const end = received.indexOf('\r\n\r\n');
        if (end < 0) return undefined;
        const [statusLine, ...fields] = received.subarray(0, end).toString('latin1').split('\r\n');
        const headers = new Map(
          fields.map((f) => [f.slice(0, f.indexOf(':')).toLowerCase(), f.slice(f.indexOf(':') + 1).trim()]),
        );
        const length = Number(headers.get('content-length'));
        const body = received.subarray(end + 4);
        if (!Number.isInteger(length) || body.length < length) return undefined;
        return { status: Number(statusLine!.split(' ')[1]), headers, body: body.subarray(0, length).toString('utf8') };
      };
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        const answer = parse();
        if (answer) {
          socket.destroy();
          resolve(answer);
        }
      });
      // A request the proxy refuses mid-send may reset the connection after its answer; the answer is what counts.
      socket.on('error', (error: Error) => {
        if (!parse()) reject(error);
      });
      socket.on('close', () =>
        reject(
          new Error(
            `the connection closed without a complete response: ${JSON.stringify(received.toString('latin1').slice(0, 300))}`,
          ),
        ),
      );
      socket.write(request);
    });
  }

  function assertProblem(
    answer: {
      status: number;
      contentType: string | null | undefined;
      retryAfter: string | null | undefined;
      body: string;
    },
    status: number,
    code: ErrorCode,
  ): void {
    assert.equal(answer.status, status, answer.body);
    assert.equal(answer.contentType, PROBLEM_CONTENT_TYPE, answer.body);
    assertCatalogued(answer.body, status, code);
    assert.equal(
      answer.retryAfter ?? undefined,
      RETRY_STATUSES.includes(status) ? String(RETRY_AFTER_SECONDS) : undefined,
      `Retry-After on ${status}`,
    );
  }

  const assertRawProblem = (answer: RawAnswer, status: number, code: ErrorCode) =>
    assertProblem(
      {
        status: answer.status,
        contentType: answer.headers.get('content-type'),
        retryAfter: answer.headers.get('retry-after'),
        body: answer.body,
      },
      status,
      code,
    );

  const MALFORMED: Record<string, string> = {
    'a space in the path': 'GET /v1/products /x HTTP/1.1\r\nHost: localhost\r\n\r\n',
    'a NUL in the path': 'GET /v1/products\0 HTTP/1.1\r\nHost: localhost\r\n\r\n',
    'two Host headers': 'GET /v1/products HTTP/1.1\r\nHost: localhost\r\nHost: example.com\r\n\r\n',
    'a header name with a space': 'GET /v1/products HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n',
    'two different Content-Lengths':
      'POST /v1/products HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}',
    'a chunk size that is not hex':
      'POST /v1/products HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n',
  };
  const longUri = `GET /v1/products?q=${'a'.repeat(20_000)} HTTP/1.1\r\nHost: localhost\r\n\r\n`;
  const otherCoding =
    'POST /v1/products HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n';
  const longHeader = `GET /v1/products HTTP/1.1\r\nHost: localhost\r\nX-Long: ${'a'.repeat(20_000)}\r\n\r\n`;

  for (const [name, start] of [
    ['haproxy', startHaproxy],
    ['nginx', startNginx],
  ] as const satisfies readonly (readonly [string, StartLoadBalancer])[]) {
    for (const tls of [false, true]) {
      const label = `${name}${tls ? ' (TLS)' : ''}`;

      it(`${label}: with every api process stopped, 503 problem+json with Retry-After`, async () => {
        const upstreams = [await standIn(), await standIn()];
        const lb = await start(
          upstreams.map((u) => u.address),
          dir,
          tls ? certificates : undefined,
        );
        try {
          await ready(lb);
          for (const upstream of upstreams) await stop(upstream.server);
          // Before and after the load balancer has marked them down (over HTTP/2 when TLS is on).
          for (let i = 0; i < 4; i++) {
            const response = await get(lb, '/v1/products');
            assertProblem(
              {
                status: response.status,
                contentType: response.headers.get('content-type'),
                retryAfter: response.headers.get('retry-after'),
                body: await response.text(),
              },
              503,
              'unavailable',
            );
            if (tls) assert.equal(response.headers.get('strict-transport-security'), 'max-age=31536000');
          }
        } finally {
          await lb.stop();
          for (const upstream of upstreams) if (upstream.server.listening) await stop(upstream.server);
        }
      });

      it(`${label}: an api process whose answer breaks off, 502 problem+json with Retry-After`, async () => {
        // One process: nginx would try a second one with the same request,
        // and once both count as failed, rightly answer 503.
        const upstream = await standIn();
        const lb = await start([upstream.address], dir, tls ? certificates : undefined);
        try {
          await ready(lb);
          // HTTP/1.1: over HTTP/2, HAProxy 2.6 resets the stream (REFUSED_STREAM) instead.
          assertRawProblem(await raw(lb, 'GET /v1/garbage HTTP/1.1\r\nHost: localhost\r\n\r\n'), 502, 'bad_gateway');
        } finally {
          await lb.stop();
          await stop(upstream.server);
        }
      });

      it(`${label}: malformed and over-long requests`, async (t) => {
        const upstream = await standIn();
        const lb = await start([upstream.address], dir, tls ? certificates : undefined);
        try {
          await ready(lb);
          if (name === 'nginx') {
            for (const [what, request] of Object.entries(MALFORMED)) {
              await t.test(what, async () => assertRawProblem(await raw(lb, request), 400, 'malformed_request'));
            }
            await t.test('a 20 KB request target is 414', async () =>
              assertRawProblem(await raw(lb, longUri), 414, 'uri_too_long'),
            );
            await t.test('a 20 KB header is 431', async () =>
              assertRawProblem(await raw(lb, longHeader), 431, 'header_fields_too_large'),
            );
            await t.test('a transfer coding other than chunked alone is 501', async () =>
              assertRawProblem(await raw(lb, otherCoding), 501, 'not_implemented'),
            );
            return;
          }
          // HAProxy 2.6's HTTP/1 parser answers what it refuses (these and a
          // request over its 16 KiB buffer) with its built-in page: errorfile
          // and http-error do not reach that layer (docs/deploy.md). The
          // refusal must still be a 400 that closes the connection; when a
          // newer HAProxy answers with the configured body, it must be ours.
          for (const [what, request] of Object.entries({
            ...MALFORMED,
            'a 20 KB request target': longUri,
            'a 20 KB header': longHeader,
          })) {
            await t.test(what, async () => {
              const answer = await raw(lb, request);
              assert.equal(answer.status, 400, answer.body);
              if (answer.headers.get('content-type') === PROBLEM_CONTENT_TYPE)
                assertRawProblem(answer, 400, 'malformed_request');
              else {
                assert.equal(answer.headers.get('content-type'), 'text/html', "HAProxy's built-in page, or ours");
                assert.match(answer.body, /400 Bad request/);
                t.diagnostic(`HAProxy answered ${what} with its built-in HTML page`);
              }
            });
          }
          // Its built-in 422 for a transfer coding other than chunked alone,
          // which no http-error reaches either (docs/deploy.md).
          await t.test('a transfer coding other than chunked alone', async () => {
            const answer = await raw(lb, otherCoding);
            assert.equal(answer.status, 422, answer.body);
            assert.equal(answer.headers.get('content-type'), 'text/html', "HAProxy's built-in page");
            assert.match(answer.body, /422 Unprocessable Content/);
          });
        } finally {
          await lb.stop();
          await stop(upstream.server);
        }
      });
    }
  }
});
