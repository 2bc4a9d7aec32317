// The HTTP payment gateway adapter against a fake Stripe-like gateway served
// by this test (the gateway is the outside world, so a fake server is the
// real thing here). It checks the wire format of the contract, how answers
// map to outcomes, and the resilience policy around it: retries with the same
// idempotency key, a timeout per attempt, and a circuit breaker that only
// transient failures open. Then the simulated gateway's own HTTP server
// (`orderflow gateway`): whatever it is sent, it answers 4xx, never 500.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { createMetrics } from '../src/observability/metrics.ts';
import {
  GatewayAnswerError,
  GatewayRequestError,
  TransientGatewayError,
  type ChargeRequest,
} from '../src/payments/gateway.ts';
import { startGatewayServer, type GatewayServer } from '../src/payments/gateway-server.ts';
import { HttpGateway } from '../src/payments/http-gateway.ts';
import { ResilientGateway } from '../src/payments/resilient-gateway.ts';
import { ALL_SCOPES, client, createProduct, placeOrder, quiesce } from './support/harness.ts';

interface Received {
  method: string;
  path: string;
  idempotencyKey: string | undefined;
  contentType: string | undefined;
  body: any;
}

/** 'cut': a 201 whose body breaks off (the connection is destroyed half-way through it). */
type Answer = { status: number; body?: unknown } | 'hang' | 'cut';

/**
 * A fake payment gateway. Every request is recorded; script() decides the
 * answer to each one. A key that once got a 201 gets the same answer again,
 * as the contract's gateway does, and only then is a charge booked.
 */
class FakeGateway {
  readonly received: Received[] = [];
  readonly charges = new Map<string, { id: string; amountCents: number; reference: string }>();
  readonly #answers = new Map<string, { status: number; body: unknown }>();
  readonly #hanging = new Set<ServerResponse>();
  script: (request: Received, attempt: number) => Answer = () => ({ status: 201 });
  closedWhileHanging = 0;
  /** TCP connections accepted since the last reset. */
  connections = 0;
  #server!: Server;
  url = '';

  async start(): Promise<void> {
    this.#server = createServer((request, response) => void this.#handle(request, response));
    this.#server.on('connection', () => this.connections++);
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.#server.address() as AddressInfo).port}`;
  }

  reset(): void {
    this.received.length = 0;
    this.charges.clear();
    this.#answers.clear();
    this.script = () => ({ status: 201 });
    this.closedWhileHanging = 0;
    this.connections = 0;
  }

  async stop(): Promise<void> {
    for (const response of this.#hanging) response.destroy();
    this.#server.closeAllConnections();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  async #handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let text = '';
    for await (const chunk of request) text += String(chunk);
    const received: Received = {
      method: request.method ?? '',
      path: request.url ?? '',
      idempotencyKey: request.headers['idempotency-key'] as string | undefined,
      contentType: request.headers['content-type'],
      body: text ? JSON.parse(text) : undefined,
    };
    this.received.push(received);
    const replayKey = `${received.path} ${received.idempotencyKey}`;
    const replay = this.#answers.get(replayKey);
    if (replay) return this.#send(response, replay.status, replay.body);
    const attempt = this.received.filter(
      (r) => r.idempotencyKey === received.idempotencyKey && r.path === received.path,
    ).length;
    const answer = this.script(received, attempt);
    if (answer === 'cut') {
      response.writeHead(201, { 'content-type': 'application/json', 'content-length': '64' });
      response.write('{"id":"ch_');
      setImmediate(() => response.destroy());
      return;
    }
    if (answer === 'hang') {
      this.#hanging.add(response);
      response.on('close', () => {
        if (this.#hanging.delete(response)) this.closedWhileHanging++;
      });
      return;
    }
    let body = answer.body;
    if (answer.status === 201 && body === undefined) {
      if (received.path.endsWith('/v1/charges')) {
        const id = `ch_${this.charges.size + 1}`;
        this.charges.set(id, { id, amountCents: received.body.amountCents, reference: received.body.reference });
        body = { id, status: 'succeeded' };
      } else {
        body = { id: `re_${received.idempotencyKey}` };
      }
    }
    if (answer.status === 201 || answer.status === 402) this.#answers.set(replayKey, { status: answer.status, body });
    this.#send(response, answer.status, body);
  }

  #send(response: ServerResponse, status: number, body: unknown): void {
    response
      .writeHead(status, { 'content-type': 'application/json' })
      .end(body === undefined ? '' : JSON.stringify(body));
  }
}

const charge = (orderId: string, token = 'tok_visa'): ChargeRequest => ({
  idempotencyKey: `orderflow-charge-${orderId}`,
  amountCents: 2598,
  currency: 'EUR',
  token,
  reference: orderId,
});

describe('HTTP payment gateway', () => {
  const fake = new FakeGateway();
  const opened: HttpGateway[] = [];
  const http = (options: { timeoutMs?: number; baseUrl?: string; connections?: number } = {}) => {
    const gateway = new HttpGateway(options.baseUrl ?? fake.url, {
      timeoutMs: options.timeoutMs ?? 5_000,
      connections: options.connections,
    });
    opened.push(gateway);
    return gateway;
  };
  const resilient = (
    inner: HttpGateway,
    options: ConstructorParameters<typeof ResilientGateway>[2] = {},
    metrics = createMetrics(),
  ) =>
    new ResilientGateway(inner, metrics, { initialBackoffMs: 1, maxBackoffMs: 2, halfOpenAfterMs: 60_000, ...options });
  const timesOpened = async (metrics: ReturnType<typeof createMetrics>) =>
    (await metrics.gatewayCircuitOpened.get()).values[0]?.value ?? 0;

  /** An app (embedded, workers running) whose PAYMENT_GATEWAY_URL is the fake gateway. */
  async function appPayingThroughFake() {
    const app = await createApp({
      config: loadConfig({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', PAYMENT_GATEWAY_URL: fake.url }),
      log: pino({ level: 'silent' }),
      inMemory: true,
      queue: { pollIntervalMs: 5, retryBaseMs: 5, retryMaxMs: 50 },
      resilience: { initialBackoffMs: 1, maxBackoffMs: 5, halfOpenAfterMs: 20, attemptTimeoutMs: 2_000 },
    });
    await app.server.ready();
    app.startWorkers();
    return app;
  }

  before(() => fake.start());
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((g) => g.close()));
    fake.reset();
  });
  after(() => fake.stop());

  it('speaks the contract: POST /v1/charges with Idempotency-Key and the JSON body; 201 is a success', async () => {
    const result = await http().charge(charge('ord_1'));
    assert.deepEqual(result, { status: 'succeeded', chargeId: 'ch_1' });
    assert.equal(fake.received.length, 1);
    const [request] = fake.received;
    assert.equal(request!.method, 'POST');
    assert.equal(request!.path, '/v1/charges');
    assert.equal(request!.idempotencyKey, 'orderflow-charge-ord_1');
    assert.match(request!.contentType ?? '', /^application\/json/);
    assert.deepEqual(request!.body, { amountCents: 2598, currency: 'EUR', token: 'tok_visa', reference: 'ord_1' });
  });

  it('refunds with POST /v1/refunds { chargeId, amountCents } and returns the refund id', async () => {
    const result = await http().refund({
      idempotencyKey: 'orderflow-refund-ord_2',
      chargeId: 'ch_9',
      amountCents: 2598,
    });
    assert.deepEqual(result, { refundId: 're_orderflow-refund-ord_2' });
    assert.deepEqual(
      fake.received.map((r) => [r.path, r.idempotencyKey, r.body]),
      [['/v1/refunds', 'orderflow-refund-ord_2', { chargeId: 'ch_9', amountCents: 2598 }]],
    );
  });

  it('keeps a path prefix of PAYMENT_GATEWAY_URL, with or without a trailing slash', async () => {
    await http({ baseUrl: `${fake.url}/gw/` }).charge(charge('ord_3'));
    await http({ baseUrl: `${fake.url}/gw` }).charge(charge('ord_4'));
    assert.deepEqual(
      fake.received.map((r) => r.path),
      ['/gw/v1/charges', '/gw/v1/charges'],
    );
  });

  it('voids with POST /v1/voids { chargeKey, reference } under a key of its own, and reads the three answers', async () => {
    const answers: Record<string, unknown> = {
      ord_v1: { status: 'voided' },
      ord_v2: { status: 'succeeded', id: 'ch_42' },
      ord_v3: { status: 'declined', code: 'card_declined' },
    };
    fake.script = (request) => ({ status: 200, body: answers[request.body.reference] });
    const gateway = http();
    const void_ = (orderId: string) =>
      gateway.voidCharge({ chargeKey: `orderflow-charge-${orderId}`, reference: orderId });
    assert.deepEqual(await void_('ord_v1'), { status: 'voided' });
    assert.deepEqual(await void_('ord_v2'), { status: 'succeeded', chargeId: 'ch_42' });
    assert.deepEqual(await void_('ord_v3'), { status: 'declined', code: 'card_declined' });
    assert.deepEqual(
      fake.received[0] && [
        fake.received[0].method,
        fake.received[0].path,
        fake.received[0].idempotencyKey,
        fake.received[0].body,
      ],
      [
        'POST',
        '/v1/voids',
        'orderflow-charge-ord_v1-void',
        { chargeKey: 'orderflow-charge-ord_v1', reference: 'ord_v1' },
      ],
    );
  });

  it('a gateway without a void (404, 405, 501) is told apart from one that fails: unsupported, transient, request error, unreadable answer', async () => {
    const gateway = http();
    const void_ = () => gateway.voidCharge({ chargeKey: 'orderflow-charge-ord_nv', reference: 'ord_nv' });
    for (const status of [404, 405, 501]) {
      fake.script = () => ({ status, body: { error: 'not here' } });
      assert.deepEqual(await void_(), { status: 'unsupported' }, `HTTP ${status}`);
    }
    fake.script = () => ({ status: 503 });
    await assert.rejects(void_(), TransientGatewayError);
    fake.script = () => ({ status: 400, body: { error: 'bad key' } });
    await assert.rejects(void_(), (e: unknown) => e instanceof GatewayRequestError && e.status === 400);
    fake.script = () => ({ status: 200, body: { status: 'maybe' } });
    await assert.rejects(void_(), GatewayAnswerError);
    fake.script = () => ({ status: 200, body: { status: 'succeeded' } });
    await assert.rejects(void_(), GatewayAnswerError, 'a charge without its id may exist');
  });

  it('reuses its connections: 20 more charges, refunds, declines and a retried 503 open no TCP connection', async () => {
    fake.script = (request, attempt) =>
      request.body?.token === 'tok_declined'
        ? { status: 402 }
        : attempt === 1 && request.body?.reference === 'ord_k3'
          ? { status: 503 }
          : { status: 201 };
    const gateway = resilient(http());
    for (let i = 0; i < 3; i++) await gateway.charge(charge(`ord_w${i}`));
    // The pool frees a connection only after the answer's end is processed,
    // so a call made right after the previous one returned may open a second.
    const warm = fake.connections;
    assert.ok(warm >= 1 && warm <= 2, `${warm} connections for 3 charges one after another`);
    for (let i = 0; i < 20; i++) {
      const token = i % 5 === 4 ? 'tok_declined' : 'tok_visa';
      const result = await gateway.charge(charge(`ord_k${i}`, token));
      if (result.status === 'succeeded')
        await gateway.refund({
          idempotencyKey: `orderflow-refund-ord_k${i}`,
          chargeId: result.chargeId,
          amountCents: 2598,
        });
    }
    assert.equal(
      fake.received.length,
      3 + 20 + 16 + 1,
      'every charge, every refund of a success and the retry of the 503 reached the gateway',
    );
    assert.equal(fake.connections, warm);
  });

  it('keeps at most `connections` sockets open: 40 charges at once over 3 connections, which later calls reuse', async () => {
    const gateway = http({ connections: 3 });
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => gateway.charge(charge(`ord_p${i}`))));
    assert.equal(results.filter((r) => r.status === 'succeeded').length, 40);
    assert.equal(fake.charges.size, 40);
    const opened = fake.connections;
    assert.ok(opened >= 1 && opened <= 3, `${opened} connections for 40 charges with 3 allowed`);
    for (let i = 0; i < 10; i++) await gateway.charge(charge(`ord_q${i}`));
    assert.equal(fake.connections, opened, 'later charges opened no connection');
  });

  it('a 503 is transient; the resilient gateway retries with the same key and the gateway books one charge', async () => {
    fake.script = (_request, attempt) => (attempt <= 2 ? { status: 503, body: { error: 'busy' } } : { status: 201 });
    await assert.rejects(http().charge(charge('ord_5')), TransientGatewayError, 'a bare 503 is a transient failure');
    fake.reset();
    fake.script = (_request, attempt) => (attempt <= 2 ? { status: 503, body: { error: 'busy' } } : { status: 201 });
    const result = await resilient(http()).charge(charge('ord_5'));
    assert.deepEqual(result, { status: 'succeeded', chargeId: 'ch_1' });
    assert.equal(fake.received.length, 3);
    assert.deepEqual(new Set(fake.received.map((r) => r.idempotencyKey)), new Set(['orderflow-charge-ord_5']));
    assert.deepEqual(
      new Set(fake.received.map((r) => JSON.stringify(r.body))).size,
      1,
      'every attempt sends the same body',
    );
    assert.equal(fake.charges.size, 1);
  });

  it('402 card_declined is a final decline: reported as declined, never retried', async () => {
    fake.script = () => ({ status: 402, body: { code: 'card_declined' } });
    assert.deepEqual(await resilient(http()).charge(charge('ord_6', 'tok_declined')), {
      status: 'declined',
      code: 'card_declined',
    });
    assert.equal(fake.received.length, 1);
    fake.reset();
    fake.script = () => ({ status: 402 });
    assert.deepEqual(
      await http().charge(charge('ord_7', 'tok_declined')),
      { status: 'declined', code: 'card_declined' },
      'a 402 without a body',
    );
  });

  it('another 4xx is a request error: not retried, not transient', async () => {
    fake.script = () => ({ status: 400, body: { error: 'bad amount' } });
    const error = await resilient(http())
      .charge(charge('ord_8'))
      .then(
        () => assert.fail('a 400 must not succeed'),
        (e: unknown) => e,
      );
    assert.ok(error instanceof GatewayRequestError, String(error));
    assert.equal(error.status, 400);
    assert.equal(fake.received.length, 1);
  });

  it('429 and 408 are transient: retried with the same key until the gateway takes the charge', async () => {
    for (const status of [429, 408]) {
      fake.reset();
      fake.script = (_request, attempt) => (attempt === 1 ? { status, body: { error: 'slow down' } } : { status: 201 });
      await assert.rejects(
        http().charge(charge(`ord_t${status}`)),
        TransientGatewayError,
        `a bare ${status} is transient`,
      );
      fake.reset();
      fake.script = (_request, attempt) => (attempt === 1 ? { status, body: { error: 'slow down' } } : { status: 201 });
      assert.equal((await resilient(http()).charge(charge(`ord_t${status}`))).status, 'succeeded');
      assert.equal(fake.received.length, 2);
    }
  });

  it('a request that cannot be built is a request error raised before sending: never sent, never retried, never opens the circuit', async () => {
    const metrics = createMetrics();
    const gateway = resilient(http(), { maxAttempts: 3, breakAfter: 2 }, metrics);
    // A float, a non-positive amount, one past 2^53, and a BigInt (which JSON cannot serialise).
    const amounts: unknown[] = [12.5, 0, -100, 2 ** 53, Number.NaN, 10n ** 17n];
    for (const amountCents of amounts) {
      for (let i = 0; i < 3; i++) {
        const error = await gateway.charge({ ...charge('ord_bad'), amountCents: amountCents as number }).then(
          () => assert.fail(`an amount of ${String(amountCents)} was charged`),
          (e: unknown) => e,
        );
        assert.ok(error instanceof GatewayRequestError, String(error));
        assert.equal(error.status, undefined, 'nothing was sent, so the gateway gave no status');
      }
      await assert.rejects(
        gateway.refund({
          idempotencyKey: 'orderflow-refund-ord_bad',
          chargeId: 'ch_1',
          amountCents: amountCents as number,
        }),
        GatewayRequestError,
      );
    }
    assert.equal(fake.received.length, 0, 'no request reached the gateway');
    assert.equal(await timesOpened(metrics), 0);
    assert.equal((await gateway.charge(charge('ord_good'))).status, 'succeeded', 'the circuit is still closed');
  });

  it('request errors never open the circuit; transient failures do', async () => {
    const metrics = createMetrics();
    const gateway = resilient(http(), { maxAttempts: 0, breakAfter: 2 }, metrics);
    fake.script = () => ({ status: 400, body: { error: 'no such token' } });
    for (let i = 0; i < 5; i++) await assert.rejects(gateway.charge(charge(`ord_r${i}`)), GatewayRequestError);
    assert.equal(fake.received.length, 5, 'each was sent once, none retried');
    assert.equal(await timesOpened(metrics), 0);
    fake.script = () => ({ status: 503 });
    for (let i = 0; i < 2; i++) await assert.rejects(gateway.charge(charge(`ord_s${i}`)), TransientGatewayError);
    assert.equal(await timesOpened(metrics), 1);
  });

  it('a success without the charge id is an answer error: the charge may exist, and retrying cannot help', async () => {
    fake.script = () => ({ status: 201, body: { status: 'succeeded' } });
    await assert.rejects(resilient(http()).charge(charge('ord_noid')), GatewayAnswerError);
    assert.equal(fake.received.length, 1, 'not retried');
  });

  it('a gateway that does not answer hits the adapter timeout: a transient failure', async () => {
    fake.script = () => 'hang';
    await assert.rejects(http({ timeoutMs: 100 }).charge(charge('ord_9')), TransientGatewayError);
    assert.equal(fake.received.length, 1);
  });

  it('the resilient gateway abandons a hanging attempt at its timeout, retries with the same key, then gives up as transient', async () => {
    fake.script = () => 'hang';
    await assert.rejects(
      resilient(http(), { attemptTimeoutMs: 50, maxAttempts: 2 }).charge(charge('ord_10')),
      TransientGatewayError,
    );
    assert.equal(fake.received.length, 3, 'the first attempt and two retries');
    assert.deepEqual(new Set(fake.received.map((r) => r.idempotencyKey)), new Set(['orderflow-charge-ord_10']));
  });

  it('an answer that breaks off is transient, and the resilient gateway retries it with the same key', async () => {
    fake.script = () => 'cut';
    const error = await http()
      .charge(charge('ord_cut'))
      .then(
        () => assert.fail('a broken-off answer was taken as a success'),
        (e: unknown) => e,
      );
    assert.ok(error instanceof TransientGatewayError, String(error));
    assert.match(error.message, /answer lost/);
    fake.reset();
    fake.script = (_request, attempt) => (attempt === 1 ? 'cut' : { status: 201 });
    assert.deepEqual(await resilient(http()).charge(charge('ord_cut')), { status: 'succeeded', chargeId: 'ch_1' });
    assert.deepEqual(
      fake.received.map((r) => r.idempotencyKey),
      ['orderflow-charge-ord_cut', 'orderflow-charge-ord_cut'],
    );
  });

  it('an unreachable gateway is transient', async () => {
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    await assert.rejects(http({ baseUrl: `http://127.0.0.1:${port}` }).charge(charge('ord_11')), TransientGatewayError);
  });

  it('the circuit opens after consecutive failures and then fails fast without calling the gateway', async () => {
    fake.script = () => ({ status: 503 });
    const gateway = resilient(http(), { maxAttempts: 0, breakAfter: 3 });
    for (let i = 0; i < 3; i++) await assert.rejects(gateway.charge(charge(`ord_b${i}`)), TransientGatewayError);
    assert.equal(fake.received.length, 3);
    fake.script = () => ({ status: 201 });
    await assert.rejects(gateway.charge(charge('ord_b3')), /circuit is open/);
    assert.equal(fake.received.length, 3, 'an open circuit does not call the gateway');
  });

  it('a declined charge does not count towards opening the circuit', async () => {
    fake.script = () => ({ status: 402, body: { code: 'card_declined' } });
    const gateway = resilient(http(), { maxAttempts: 0, breakAfter: 2 });
    for (let i = 0; i < 4; i++) assert.equal((await gateway.charge(charge(`ord_d${i}`))).status, 'declined');
    fake.script = () => ({ status: 201 });
    assert.equal((await gateway.charge(charge('ord_d4'))).status, 'succeeded');
  });

  it('an app whose gateway refuses a charge (with text the database cannot store) rejects the order at once, without a retry', async () => {
    fake.script = () => ({ status: 400, body: { error: 'no such token: tok_\u0000\ud800' } });
    const app = await appPayingThroughFake();
    try {
      const admin = client(app, await app.devIssuer!.issue({ sub: 'admin', scope: ALL_SCOPES }));
      await createProduct(admin, { sku: 'WIRE-2', stock: 5, priceCents: 1299 });
      const placed = await placeOrder(admin, [{ sku: 'WIRE-2', quantity: 1 }], 'tok_unknown');
      await quiesce(app);
      const order = (await admin.request('GET', `/v1/orders/${placed.body.id}`)).body;
      assert.deepEqual([order.status, order.rejectReason], ['rejected', 'payment_failed']);
      assert.equal(fake.received.filter((r) => r.path === '/v1/charges').length, 1, 'sent once, never retried');
      const [payment] = await app.db.query<{ status: string; last_error: string }>(
        'SELECT status, last_error FROM payments.payments',
      );
      assert.equal(payment!.status, 'failed');
      assert.match(payment!.last_error, /HTTP 400: no such token: tok_\ufffd\ufffd/);
      const [dead] = await app.db.query<{ last_error: string }>('SELECT last_error FROM messaging.dead_jobs');
      assert.match(dead!.last_error, /^payment can never succeed: .*HTTP 400/);
    } finally {
      await app.close();
    }
  });

  it('an app configured with PAYMENT_GATEWAY_URL pays through it: one charge per order, same key on every retry', async () => {
    fake.script = (request, attempt) =>
      request.path === '/v1/charges' && attempt === 1 ? { status: 503 } : { status: 201 };
    const app = await appPayingThroughFake();
    try {
      const admin = client(app, await app.devIssuer!.issue({ sub: 'admin', scope: ALL_SCOPES }));
      await createProduct(admin, { sku: 'WIRE-1', stock: 5, priceCents: 1299 });
      const placed = await placeOrder(admin, [{ sku: 'WIRE-1', quantity: 2 }]);
      assert.equal(placed.status, 202);
      await quiesce(app);
      assert.equal((await admin.request('GET', `/v1/orders/${placed.body.id}`)).body.status, 'confirmed');
      const charges = fake.received.filter((r) => r.path === '/v1/charges');
      assert.ok(charges.length >= 2, 'the 503 was retried');
      assert.deepEqual(new Set(charges.map((r) => r.idempotencyKey)).size, 1);
      assert.deepEqual(charges[0]!.body, {
        amountCents: 2598,
        currency: 'EUR',
        token: 'tok_visa',
        reference: placed.body.id,
      });
      assert.deepEqual([...fake.charges.values()], [{ id: 'ch_1', amountCents: 2598, reference: placed.body.id }]);
    } finally {
      await app.close();
    }
  });
});

describe('the simulated gateway over HTTP (orderflow gateway)', () => {
  let server: GatewayServer;
  before(async () => {
    server = await startGatewayServer();
  });
  after(() => server.close());

  async function send(
    method: string,
    path: string,
    body: string | undefined,
    headers: Record<string, string> = { 'idempotency-key': `k-${Math.random()}` },
  ) {
    const response = await fetch(server.url + path, {
      method,
      headers: { 'content-type': 'application/json', ...headers },
      ...(body === undefined ? {} : { body }),
    });
    return { status: response.status, body: (await response.json()) as { error?: string; id?: string } };
  }

  it('answers bad input with a 4xx and a reason, never a 500, and books nothing', async () => {
    const good = { amountCents: 2598, currency: 'EUR', token: 'tok_visa', reference: 'ord_x' };
    const { body: charged } = await send('POST', '/v1/charges', JSON.stringify(good));
    const cases: [string, string, string | undefined, number][] = [
      ['POST', '/v1/charges', 'not json', 400],
      ['POST', '/v1/charges', '[1, 2]', 400],
      ['POST', '/v1/charges', 'null', 400],
      ['POST', '/v1/charges', '', 400],
      ['POST', '/v1/charges', JSON.stringify({ ...good, amountCents: '2598' }), 400],
      ['POST', '/v1/charges', JSON.stringify({ ...good, amountCents: 25.98 }), 400],
      ['POST', '/v1/charges', JSON.stringify({ ...good, amountCents: 0 }), 400],
      ['POST', '/v1/charges', JSON.stringify({ ...good, amountCents: -1 }), 400],
      ['POST', '/v1/charges', JSON.stringify({ ...good, amountCents: 2 ** 53 }), 400],
      ['POST', '/v1/charges', '{"amountCents": 1e400, "currency": "EUR", "token": "t", "reference": "r"}', 400],
      ['POST', '/v1/charges', JSON.stringify({ ...good, token: 42 }), 400],
      ['POST', '/v1/charges', JSON.stringify({ amountCents: 100 }), 400],
      ['POST', '/v1/charges', JSON.stringify({ big: 'x'.repeat(70_000) }), 413],
      ['POST', '/v1/refunds', JSON.stringify({ chargeId: 'ch_nope', amountCents: 100 }), 404],
      ['POST', '/v1/refunds', JSON.stringify({ chargeId: charged.id, amountCents: 2599 }), 400],
      ['POST', '/v1/refunds', JSON.stringify({ chargeId: charged.id, amountCents: 1.5 }), 400],
      ['POST', '/v1/refunds', JSON.stringify({ chargeId: 7, amountCents: 100 }), 400],
      ['POST', '/v1/voids', JSON.stringify({ chargeKey: 7, reference: 'r' }), 400],
      ['POST', '/v1/voids', JSON.stringify({ chargeKey: 'k' }), 400],
      ['GET', '/v1/charges', undefined, 405],
      ['POST', '/v1/elsewhere', '{}', 404],
    ];
    for (const [method, path, body, status] of cases) {
      const response = await send(method, path, body);
      assert.equal(
        response.status,
        status,
        `${method} ${path} ${String(body).slice(0, 80)}: ${JSON.stringify(response.body)}`,
      );
      assert.equal(typeof response.body.error, 'string');
    }
    const noKey = await send('POST', '/v1/charges', JSON.stringify(good), {});
    assert.equal(noKey.status, 400);
    assert.equal(server.gateway.charges.size, 1, 'only the good charge was booked');
    assert.equal(server.gateway.refunds.size, 0);
  });

  it('voids a charge key over HTTP: the charge made under it, or the key spent so that a charge sent later is declined', async () => {
    const gateway = new HttpGateway(server.url);
    try {
      const made = (await gateway.charge(charge('ord_made'))) as { chargeId: string };
      assert.deepEqual(await gateway.voidCharge({ chargeKey: 'orderflow-charge-ord_made', reference: 'ord_made' }), {
        status: 'succeeded',
        chargeId: made.chargeId,
      });
      const booked = server.gateway.charges.size;
      assert.deepEqual(await gateway.voidCharge({ chargeKey: 'orderflow-charge-ord_none', reference: 'ord_none' }), {
        status: 'voided',
      });
      assert.deepEqual(await gateway.charge(charge('ord_none')), { status: 'declined', code: 'charge_voided' });
      assert.deepEqual(
        await gateway.voidCharge({ chargeKey: 'orderflow-charge-ord_none', reference: 'ord_none' }),
        { status: 'voided' },
        'a void is idempotent',
      );
      assert.equal(server.gateway.charges.size, booked, 'nothing was charged under the voided key');
      const ledger = (await (await fetch(`${server.url}/v1/ledger`)).json()) as { voided: string[] };
      assert.ok(ledger.voided.includes('orderflow-charge-ord_none'));
    } finally {
      await gateway.close();
    }
  });

  it('HttpGateway maps its request errors: a refund above the charge is a GatewayRequestError with the status', async () => {
    const gateway = new HttpGateway(server.url);
    try {
      const { chargeId } = (await gateway.charge(charge('ord_srv'))) as { chargeId: string };
      const error = await gateway
        .refund({ idempotencyKey: 'orderflow-refund-ord_srv', chargeId, amountCents: 9_999 })
        .then(
          () => assert.fail('a refund above its charge succeeded'),
          (e: unknown) => e,
        );
      assert.ok(error instanceof GatewayRequestError, String(error));
      assert.equal(error.status, 400);
      assert.match(error.message, /larger than its charge/);
    } finally {
      await gateway.close();
    }
  });
});
