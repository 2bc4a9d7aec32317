// HTTP/1.0 requests on a raw socket. They are legal (RFC 9110, section 2.5;
// RFC 9112, section 2.3) and differ from HTTP/1.1 in what matters here: Host
// may be left out (RFC 1945 has none), and there is no chunked coding, so
// Transfer-Encoding makes the framing faulty (RFC 9112, section 6.1). A
// refusal names the rule of the request's own version, never "HTTP/1.1" for
// an HTTP/1.0 request.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { ERRORS } from '../src/errors.ts';
import { ALL_SCOPES, client, createProduct, startTestApp, type TestApp } from './support/harness.ts';

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Whether the server closed the connection after its answer (the request half-closes only after reading it). */
  closedByServer: boolean;
}

/**
 * Writes a request and reads one answer (framed by Content-Length). The
 * request side never closes, so a close is the server's: an answer that says
 * `Connection: keep-alive` resolves at once (closedByServer false), any other
 * when the server closes.
 */
function exchange(port: number, request: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = Buffer.alloc(0);
    let answer: Omit<Answer, 'closedByServer'> | undefined;
    const parse = () => {
      const end = received.indexOf('\r\n\r\n');
      if (end < 0) return undefined;
      const [statusLine, ...lines] = received.subarray(0, end).toString('latin1').split('\r\n');
      const headers: Record<string, string> = {};
      for (const line of lines)
        headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
      const length = Number(headers['content-length']);
      const body = received.subarray(end + 4);
      if (!Number.isInteger(length) || body.length < length) return undefined;
      return { status: Number(statusLine!.split(' ')[1]), headers, body: body.subarray(0, length).toString('utf8') };
    };
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      answer ??= parse();
      // An answer that keeps the connection: nothing more to wait for.
      if (answer && answer.headers.connection?.toLowerCase() === 'keep-alive') {
        socket.destroy();
        resolve({ ...answer, closedByServer: false });
      }
    });
    socket.on('error', reject);
    socket.on('end', () => {
      socket.destroy();
      if (answer) resolve({ ...answer, closedByServer: true });
      else reject(new Error(`the connection closed without a complete answer: ${received.toString('latin1')}`));
    });
    socket.write(request);
  });
}

/**
 * In the calling describe: an embedded app listening on a port of its own,
 * with a product `sku` (stock 10) and a token for `subject` with every scope;
 * closed after the describe. Read its fields inside tests (they are set in before).
 */
function servedApp(
  subject: string,
  sku: string,
): { readonly t: TestApp; readonly port: number; readonly token: string } {
  const served = {} as { t: TestApp; port: number; token: string };
  before(async () => {
    served.t = await startTestApp('embedded');
    served.port = Number(new URL(await served.t.app.server.listen({ port: 0, host: '127.0.0.1' })).port);
    served.token = await served.t.token(subject, ALL_SCOPES);
    await createProduct(client(served.t.app, served.token), { sku, stock: 10 });
  });
  after(async () => {
    await served.t?.close();
  });
  return served;
}

describe('HTTP/1.0 requests', () => {
  const served = servedApp('http10', 'H10-1');

  const assertMalformed = (answer: Answer, detail: RegExp) => {
    assert.equal(answer.status, 400, answer.body);
    const problem = JSON.parse(answer.body) as { type: string; title: string; detail: string };
    assert.equal(problem.type, '/problems/malformed-request');
    assert.equal(problem.title, ERRORS.malformed_request.title);
    assert.match(problem.detail, detail);
    return problem;
  };

  it('are served without Host, which HTTP/1.0 does not require', async () => {
    const health = await exchange(served.port, 'GET /healthz HTTP/1.0\r\n\r\n');
    assert.equal(health.status, 200, health.body);
    const products = await exchange(
      served.port,
      `GET /v1/products HTTP/1.0\r\nAuthorization: Bearer ${served.token}\r\n\r\n`,
    );
    assert.equal(products.status, 200, products.body);
    assert.match(products.body, /H10-1/);
  });

  it('refused by the field-line check: the problem does not call the request HTTP/1.1, and the connection is closed', async () => {
    const answer = await exchange(
      served.port,
      'GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\nHost: a.example\r\nHost: b.example\r\n\r\n',
    );
    const problem = assertMalformed(answer, /one Host header, not several/);
    assert.doesNotMatch(`${problem.title} ${problem.detail}`, /HTTP\/1\.1/);
    assert.equal(answer.closedByServer, true, 'a refused request does not keep its connection');
  });

  it('refused by the parser: the problem names both versions it reads, not HTTP/1.1 alone', async () => {
    const answer = await exchange(served.port, 'GET /healthz HTTP/1.0\r\nNo-Colon\r\n\r\n');
    const problem = assertMalformed(answer, /could not be parsed as HTTP\/1\.0 or HTTP\/1\.1 \(HPE_/);
    assert.doesNotMatch(problem.title, /HTTP\/1\.1/);
  });

  it('with Transfer-Encoding: refused as faulty framing, nothing done, the connection closed', async () => {
    const order = JSON.stringify({ items: [{ sku: 'H10-1', quantity: 1 }], payment: { token: 'tok_visa' } });
    const body = `${order.length.toString(16)}\r\n${order}\r\n0\r\n\r\n`;
    const answer = await exchange(
      served.port,
      `POST /v1/orders HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: Bearer ${served.token}\r\n` +
        `Idempotency-Key: h10-chunked\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${body}`,
    );
    assertMalformed(answer, /an HTTP\/1\.0 request cannot carry Transfer-Encoding/);
    assert.equal(answer.closedByServer, true, 'RFC 9112, section 6.1: the connection is closed');
    const orders = await client(served.t.app, served.token).request('GET', '/v1/orders');
    assert.equal(orders.status, 200);
    assert.deepEqual(orders.body.items, [], 'no order was placed');
  });

  it('the same order with Content-Length is placed, and an HTTP/1.1 request without Host is refused as HTTP/1.1', async () => {
    const order = JSON.stringify({ items: [{ sku: 'H10-1', quantity: 1 }], payment: { token: 'tok_visa' } });
    const placed = await exchange(
      served.port,
      `POST /v1/orders HTTP/1.0\r\nAuthorization: Bearer ${served.token}\r\nIdempotency-Key: h10-length\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${order.length}\r\n\r\n${order}`,
    );
    assert.ok(placed.status === 201 || placed.status === 202, `${placed.status} ${placed.body}`);
    assertMalformed(
      await exchange(served.port, 'GET /healthz HTTP/1.1\r\n\r\n'),
      /an HTTP\/1\.1 request must carry a Host/,
    );
  });

  it('asking for a development token without Host: the refusal says there is no Host, not that it is empty', async () => {
    const answer = await exchange(
      served.port,
      'POST /console/dev-token HTTP/1.0\r\nX-Orderflow-Console: dev-token\r\n\r\n',
    );
    assert.equal(answer.status, 403, answer.body);
    const problem = JSON.parse(answer.body) as { type: string; detail: string };
    assert.equal(problem.type, '/problems/dev-token-refused');
    assert.match(problem.detail, /the request has no Host header$/);
  });
});

// Other versions on the request line: Node's parser passes HTTP/0.9 and
// HTTP/2.0 on as if they were HTTP/1.x, and refuses the rest. Every one is
// refused, whatever else the request carries; so is a transfer coding other
// than chunked alone, which the parser would drop without a word (reading
// "gzip, chunked" as chunked). RFC 9110 and 9112 allow 505 and suggest 501;
// both are 400 /problems/malformed-request here, since the contract promises
// that no input yields a 5xx. Nothing is done, and the connection is closed.
describe('HTTP versions other than 1.0 and 1.1, and transfer codings other than chunked', () => {
  const served = servedApp('http-other', 'HV-1');

  const order = JSON.stringify({ items: [{ sku: 'HV-1', quantity: 1 }], payment: { token: 'tok_visa' } });
  const chunked = `${order.length.toString(16)}\r\n${order}\r\n0\r\n\r\n`;

  const assertRefused = (answer: Answer, detail: RegExp) => {
    const code = 'malformed_request';
    assert.equal(answer.status, ERRORS[code].status, answer.body);
    assert.match(answer.headers['content-type'] ?? '', /^application\/problem\+json(;|$)/);
    const problem = JSON.parse(answer.body) as { type: string; title: string; status: number; detail: string };
    assert.equal(problem.type, `/problems/${code.replaceAll('_', '-')}`);
    assert.equal(problem.title, ERRORS[code].title);
    assert.equal(problem.status, ERRORS[code].status);
    assert.match(problem.detail, detail);
    assert.equal(answer.closedByServer, true, 'the connection is closed');
  };

  const assertNoOrders = async () => {
    const orders = await client(served.t.app, served.token).request('GET', '/v1/orders');
    assert.equal(orders.status, 200);
    assert.deepEqual(orders.body.items, [], 'no order was placed');
  };

  it('an order as HTTP/2.0, without Host and with Transfer-Encoding: chunked, is refused and places nothing', async () => {
    const answer = await exchange(
      served.port,
      `POST /v1/orders HTTP/2.0\r\nConnection: keep-alive\r\nAuthorization: Bearer ${served.token}\r\n` +
        `Idempotency-Key: hv-2.0\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${chunked}`,
    );
    assertRefused(answer, /HTTP\/2\.0 is not served here/);
    await assertNoOrders();
  });

  for (const version of ['2.0', '0.9', '1.2', '3.0']) {
    it(`GET /healthz as HTTP/${version}, with or without Host, is refused`, async () => {
      for (const host of ['', 'Host: localhost\r\n'])
        assertRefused(
          await exchange(served.port, `GET /healthz HTTP/${version}\r\nConnection: keep-alive\r\n${host}\r\n`),
          /HTTP\/[\d.]+ is not served here|could not be parsed as HTTP\/1\.0 or HTTP\/1\.1 \(HPE_INVALID_VERSION/,
        );
    });
  }

  for (const [what, codings] of [
    ['gzip, chunked', 'Transfer-Encoding: gzip, chunked\r\n'],
    ['gzip and chunked on two lines', 'Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n'],
  ]) {
    it(`an HTTP/1.1 order with Transfer-Encoding ${what} is refused and places nothing`, async () => {
      const answer = await exchange(
        served.port,
        `POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${served.token}\r\n` +
          `Idempotency-Key: hv-${what}\r\nContent-Type: application/json\r\n${codings}\r\n${chunked}`,
      );
      assertRefused(answer, /the only transfer coding this server takes is chunked, alone/);
      await assertNoOrders();
    });
  }

  it('the same order with Transfer-Encoding: chunked alone is placed', async () => {
    const answer = await exchange(
      served.port,
      `POST /v1/orders HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer ${served.token}\r\n` +
        `Idempotency-Key: hv-chunked\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${chunked}`,
    );
    assert.equal(answer.status, 202, answer.body);
  });
});
