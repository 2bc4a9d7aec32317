// Traces, end to end, in every mode: real Orderflow processes started the way
// `npm start` and `npm run cluster` start them (node --import of the tracing
// module), each role in its own process where the mode has several, export
// their spans over OTLP/HTTP to a receiver in this test. One placed, paid and
// confirmed order and one cancelled and refunded order must each be one
// connected trace, from the HTTP request to the gateway call, with every
// parent and link exported (no span left open), the service name of the
// process that did each step, log lines that lead to their span, and no
// secret in any log line or span.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freePortRange, startCluster, type Cluster } from '../scripts/cluster.ts';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { startGatewayServer, type GatewayServer } from '../src/payments/gateway-server.ts';
import { SimulatedGateway } from '../src/payments/simulated-gateway.ts';
import {
  BROKER_URL_VARIABLE,
  eventually,
  freshPostgresDatabase,
  isBrokerMode,
  modes,
  requiredServiceUrl,
  type Mode,
} from './support/harness.ts';
import {
  countProtobufSpans,
  SPAN_KIND,
  startOtlpReceiver,
  type OtlpReceiver,
  type ReceivedSpan,
} from './support/otlp.ts';
import { callApi as call } from './support/http.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The gateway behind a proxy that records the headers of each call, to see the trace context arrive. */
async function recordingGateway(): Promise<{
  server: GatewayServer;
  calls: { path: string; headers: IncomingHttpHeaders }[];
}> {
  const inner = await startGatewayServer({ gateway: new SimulatedGateway({ retain: 'all', latencyMs: 0 }) });
  const calls: { path: string; headers: IncomingHttpHeaders }[] = [];
  const proxy = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      calls.push({ path: request.url ?? '', headers: request.headers });
      const headers: Record<string, string> = {};
      for (const name of ['content-type', 'idempotency-key'])
        if (typeof request.headers[name] === 'string') headers[name] = request.headers[name];
      fetch(inner.url + (request.url ?? '/'), {
        method: request.method,
        headers,
        ...(chunks.length > 0 ? { body: Buffer.concat(chunks) } : {}),
      })
        .then(async (answer) =>
          response.writeHead(answer.status, { 'content-type': 'application/json' }).end(await answer.text()),
        )
        .catch((error: unknown) => response.writeHead(502).end(String(error)));
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  return {
    calls,
    server: {
      url,
      gateway: inner.gateway,
      close: async () => (await new Promise((resolve) => proxy.close(resolve)), await inner.close()),
    },
  };
}

/** `npm start`'s environment and node arguments, so the test starts a process exactly as the script does. */
async function npmStart(): Promise<{ env: Record<string, string>; args: string[] }> {
  const scripts = (
    JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } }
  ).scripts;
  const words = scripts.start.split(/\s+/);
  const env: Record<string, string> = {};
  while (/^[A-Z_]+=/.test(words[0] ?? '')) {
    const [name, ...value] = words.shift()!.split('=');
    env[name!] = value.join('=');
  }
  // The script execs Node, so that npm's signals reach Orderflow rather than a shell.
  if (words[0] === 'exec') words.shift();
  assert.equal(words.shift(), 'node');
  assert.ok(words.includes('--import'), 'npm start loads the tracing module first (--import)');
  return { env, args: words };
}

interface Running {
  url: string;
  /** The service name of the process that runs each role. */
  services: { api: string; worker: string; relay: string };
  stop(): Promise<void>;
}

/** Embedded: one `npm start` process (ROLE=all) on its own data directory. */
async function startEmbedded(env: Record<string, string>, output: string[]): Promise<Running> {
  // PORT=0: the process picks a free port and logs its URL.
  // Nothing of this test's environment: DATABASE_URL would make it a PostgreSQL process.
  const start = await npmStart();
  const processEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    ...start.env,
    ...env,
    PORT: '0',
    HOST: '127.0.0.1',
    ROLE: 'all',
  };
  const child = spawn(process.execPath, start.args, { cwd: ROOT, env: processEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  for (const stream of [child.stdout, child.stderr]) {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      output.push(...lines);
    });
  }
  const exited = new Promise((resolve) => child.once('exit', resolve));
  let url: string;
  try {
    url = await eventually(
      'the process to listen',
      async () => {
        if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${output.slice(-20).join('\n')}`);
        const listening = output.find((line) => line.includes('"msg":"orderflow listening"'));
        return listening ? String((JSON.parse(listening) as { url: string }).url) : undefined;
      },
      90_000,
    );
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  return {
    url,
    services: { api: 'orderflow', worker: 'orderflow', relay: 'orderflow' },
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** The other modes: `npm run cluster`'s split shape, one process per role, behind HAProxy. */
async function startSplit(
  mode: Mode,
  env: Record<string, string>,
  gateway: GatewayServer,
  output: string[],
): Promise<Running> {
  const database = await freshPostgresDatabase(requiredServiceUrl('DATABASE_URL')!);
  let cluster: Cluster;
  try {
    cluster = await startCluster({
      databaseUrl: database.url,
      brokerUrl: isBrokerMode(mode) ? requiredServiceUrl(BROKER_URL_VARIABLE[mode]) : undefined,
      apis: 1,
      workers: 1,
      relays: 1,
      isolatedBroker: true,
      basePort: await freePortRange(8),
      gateway,
      env,
      // Each process loads the OpenTelemetry SDK first: slow to start on a busy machine.
      readyTimeoutMs: 120_000,
      onOutput: (name, line) => output.push(line),
    });
  } catch (error) {
    await database.drop();
    throw error;
  }
  return {
    url: cluster.url,
    services: { api: 'orderflow-api', worker: 'orderflow-worker', relay: 'orderflow-relay' },
    stop: async () => {
      await cluster.stop();
      await database.drop();
    },
  };
}

/** The one span matching, with a message naming what was looked for. */
function one(spans: readonly ReceivedSpan[], what: string, match: (span: ReceivedSpan) => boolean): ReceivedSpan {
  const found = spans.filter(match);
  assert.equal(
    found.length,
    1,
    `exactly one ${what} span; got ${found.length}: ${JSON.stringify(found.map((s) => s.name))}`,
  );
  return found[0]!;
}

function childOf(parent: ReceivedSpan) {
  return (span: ReceivedSpan) => span.traceId === parent.traceId && span.parentSpanId === parent.spanId;
}

/** Whether span is below ancestor in its trace, following parents. */
function descendsFrom(spans: readonly ReceivedSpan[], span: ReceivedSpan, ancestor: ReceivedSpan): boolean {
  for (let current: ReceivedSpan | undefined = span; current?.parentSpanId;) {
    if (current.traceId !== ancestor.traceId) return false;
    if (current.parentSpanId === ancestor.spanId) return true;
    const parentId: string = current.parentSpanId;
    current = spans.find((s) => s.traceId === ancestor.traceId && s.spanId === parentId);
  }
  return false;
}

/**
 * The trace of one order's request, checked step by step: the HTTP span, the
 * message's publish (broker modes) and consumer spans, the gateway call and
 * its HTTP request, each below the one before (the gateway spans its
 * children), in the process of its role. Returns the consumer span.
 */
function checkPath(
  spans: readonly ReceivedSpan[],
  mode: Mode,
  services: Running['services'],
  start: ReceivedSpan,
  queue: string,
  operation: 'charge' | 'refund',
): ReceivedSpan {
  // The message continues the trace from where it was queued: the request
  // itself, or a transaction within it.
  const below = (ancestor: ReceivedSpan) => (span: ReceivedSpan) => descendsFrom(spans, span, ancestor);
  let parent = start;
  if (isBrokerMode(mode)) {
    const publish = one(spans, `publish ${queue}`, (s) => below(parent)(s) && s.name === `publish ${queue}`);
    assert.equal(publish.kind, SPAN_KIND.producer);
    assert.equal(publish.service, services.relay);
    assert.equal(publish.attributes['messaging.system'], mode);
    assert.equal(publish.attributes['messaging.destination.name'], queue);
    parent = publish;
  }
  const consumer = one(
    spans,
    `process ${queue}`,
    (s) => (isBrokerMode(mode) ? childOf(parent) : below(parent))(s) && s.name === `process ${queue}`,
  );
  assert.equal(consumer.kind, SPAN_KIND.consumer);
  assert.equal(consumer.service, services.worker);
  assert.equal(consumer.attributes['messaging.destination.name'], queue);
  const gatewayCall = one(
    spans,
    `payment gateway ${operation}`,
    (s) => childOf(consumer)(s) && s.name === `payment gateway ${operation}`,
  );
  const request = one(
    spans,
    `POST /v1/${operation}s`,
    (s) => childOf(gatewayCall)(s) && s.name === `POST /v1/${operation}s`,
  );
  assert.equal(request.kind, SPAN_KIND.client);
  assert.ok(String(request.attributes['url.full']).endsWith(`/v1/${operation}s`));
  assert.ok(
    Number(request.attributes['http.response.status_code']) >= 200 &&
      Number(request.attributes['http.response.status_code']) < 300,
  );
  return consumer;
}

for (const mode of modes()) {
  describe(`traces (${mode})`, () => {
    it('one connected trace per order from the HTTP request to the gateway, across the processes of each role; logs lead to their spans; secrets stay out', async () => {
      const receiver: OtlpReceiver = await startOtlpReceiver();
      const gateway = await recordingGateway();
      const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-traces-'));
      const output: string[] = [];
      const paymentToken = `tok_secret_${randomBytes(6).toString('hex')}`;
      const secrets = [paymentToken];
      let running: Running | undefined;
      let paid = '';
      let cancelled: string;
      try {
        const issuer = await openDevIssuer(dataDir);
        // Debug: the pay worker then logs the payment it charges, card token (redacted) included.
        const env = {
          ...receiver.env(),
          DATA_DIR: dataDir,
          LOG_LEVEL: 'debug',
          PAYMENT_GATEWAY_URL: gateway.server.url,
        };
        running =
          mode === 'embedded' ? await startEmbedded(env, output) : await startSplit(mode, env, gateway.server, output);
        const admin = await issuer.issue({ sub: 'admin', scope: 'catalog:write orders:read orders:admin' });
        const alice = await issuer.issue({ sub: 'alice', scope: 'orders:write orders:read' });
        secrets.push(admin, alice);
        assert.equal(
          (
            await call(running.url, admin, 'POST', '/v1/products', {
              sku: 'TRACE-1',
              name: 'Traced',
              priceCents: 1250,
              currency: 'EUR',
              stock: 10,
            })
          ).status,
          201,
        );

        const place = async (key: string) => {
          const placed = await call(
            running!.url,
            alice,
            'POST',
            '/v1/orders',
            { items: [{ sku: 'TRACE-1', quantity: 1 }], payment: { token: paymentToken } },
            { 'idempotency-key': key },
          );
          assert.equal(placed.status, 202, JSON.stringify(placed.body));
          const id = String(placed.body.id);
          await eventually(
            `order ${id} to be confirmed`,
            async () =>
              (await call(running!.url, alice, 'GET', `/v1/orders/${id}`)).body.status === 'confirmed'
                ? true
                : undefined,
            60_000,
          );
          return id;
        };
        paid = await place('trace-paid');
        cancelled = await place('trace-cancelled');
        const cancel = await call(running.url, alice, 'POST', `/v1/orders/${cancelled}/cancel`, {});
        assert.equal(cancel.status, 200, JSON.stringify(cancel.body));
        await eventually(
          'the refund to reach the gateway',
          async () => ([...gateway.server.gateway.refunds.values()].length === 1 ? true : undefined),
          60_000,
        );
      } finally {
        // A graceful stop exports what each process still buffers.
        await running?.stop();
        await gateway.server.close();
        await receiver.close();
        await rm(dataDir, { recursive: true, force: true });
      }
      const { spans } = receiver;
      const services = running.services;

      // The paid order: its request, its accept batch (linked both ways), then the charge.
      const placeSpans = spans.filter((s) => s.kind === SPAN_KIND.server && s.name === 'POST /v1/orders');
      assert.equal(placeSpans.length, 2, 'one server span per order placed');
      for (const http of placeSpans) {
        assert.equal(http.service, services.api);
        assert.equal(http.parentSpanId, undefined, 'the request starts the trace');
        assert.equal(http.attributes['http.route'], '/v1/orders');
        const batch = one(
          spans,
          'accept batch',
          (s) =>
            s.name === 'orders.accept batch' &&
            s.links.some((l) => l.spanId === http.spanId && l.traceId === http.traceId),
        );
        assert.equal(batch.parentSpanId, undefined, 'a batch serves many traces: it is a trace of its own');
        assert.ok(
          http.links.some((l) => l.spanId === batch.spanId && l.traceId === batch.traceId),
          'the request span points at its batch',
        );
        // The batch's statements are spans, with the SQL text but never the values bound to it.
        const transaction = one(spans, 'accept transaction', (s) => childOf(batch)(s) && s.name === 'transaction');
        const insert = one(
          spans,
          'INSERT orders.orders',
          (s) => childOf(transaction)(s) && s.name === 'INSERT orders.orders',
        );
        assert.equal(insert.attributes['db.system'], 'postgresql');
        assert.match(String(insert.attributes['db.query.text']), /INSERT INTO orders\.orders/);
        const consumer = checkPath(spans, mode, services, http, 'payments.charge', 'charge');
        // Confirmed in a record batch linked to the job.
        const record = one(
          spans,
          'record_charge batch',
          (s) => s.name === 'payments.record_charge batch' && s.links.some((l) => l.spanId === consumer.spanId),
        );
        assert.equal(record.service, services.worker);
        assert.ok(
          spans.some((s) => s.traceId === record.traceId && s.name === 'UPDATE orders.orders'),
          'the confirmation is in the record batch',
        );
      }
      const paidRequest = one(placeSpans, 'paid order request', (s) => s.attributes['orderflow.order_id'] === paid);

      // The cancel and its refund: a trace of its own, down to the gateway.
      const cancelRequest = one(
        spans,
        'cancel request',
        (s) => s.kind === SPAN_KIND.server && s.name === 'POST /v1/orders/:id/cancel',
      );
      assert.equal(cancelRequest.service, services.api);
      assert.equal(cancelRequest.attributes['orderflow.order_id'], cancelled);
      checkPath(spans, mode, services, cancelRequest, 'payments.refund', 'refund');

      // The gateway received the context of the client span that called it.
      const charges = gateway.calls.filter((c) => c.path === '/v1/charges');
      assert.equal(charges.length, 2);
      const clientSpans = spans.filter((s) => s.name === 'POST /v1/charges');
      for (const { headers } of charges) {
        const [, traceId, spanId] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/.exec(String(headers.traceparent)) ?? [];
        assert.ok(
          clientSpans.some((s) => s.traceId === traceId && s.spanId === spanId),
          `traceparent ${String(headers.traceparent)} names a client span`,
        );
      }

      // No span left open: every parent and every link target was exported (a span is exported when it ends).
      const ids = new Set(spans.map((s) => `${s.traceId}/${s.spanId}`));
      for (const span of spans) {
        if (span.parentSpanId)
          assert.ok(
            ids.has(`${span.traceId}/${span.parentSpanId}`),
            `the parent of ${span.name} (${span.service}) was exported`,
          );
        for (const link of span.links)
          assert.ok(ids.has(`${link.traceId}/${link.spanId}`), `the link target of ${span.name} was exported`);
        assert.ok(span.endNs >= span.startNs, `${span.name} ended`);
      }

      // Log lines written inside a span carry its ids, and those about an order its id.
      const lines = output
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      const paidConsumer = spans.find(
        (s) => s.traceId === paidRequest.traceId && s.name === 'process payments.charge',
      )!;
      const charging = lines.filter((l) => l.msg === 'charging the order' && l.order_id === paid);
      assert.equal(charging.length, 1, 'one "charging the order" line for the paid order');
      assert.equal(charging[0]!.trace_id, paidConsumer.traceId);
      assert.equal(charging[0]!.span_id, paidConsumer.spanId);
      assert.equal((charging[0]!.payment as Record<string, unknown>).cardToken, '[redacted]');

      // Secrets: neither the bearer tokens nor the card token appear in any log line or span.
      const everything = `${output.join('\n')}\n${JSON.stringify(spans, (_key, value: unknown) => (typeof value === 'bigint' ? String(value) : value))}`;
      for (const secret of secrets)
        assert.ok(!everything.includes(secret), `the secret ${secret.slice(0, 12)}… is in no log line and no span`);
    });
  });
}

// The bench's tracing runs count spans with this receiver: a count that
// missed the exporters' default encoding would report tracing as doing nothing.
describe('the counting receiver (npm run bench -- throughput --tracing on)', () => {
  /** A process that starts the SDK as instrument.ts does, ends `count` spans and shuts down (which exports them). */
  const export_ = async (env: Record<string, string>, count: number) => {
    const script = [
      `import { trace } from '@opentelemetry/api';`,
      `import { startTracing } from ${JSON.stringify(path.join(ROOT, 'src', 'observability', 'tracing-sdk.ts'))};`,
      `import { shutdownTracing } from ${JSON.stringify(path.join(ROOT, 'src', 'observability', 'tracing.ts'))};`,
      `startTracing(process.env);`,
      `for (let i = 0; i < ${count}; i++) trace.getTracer('count').startSpan('span ' + i).end();`,
      `await shutdownTracing();`,
    ].join('\n');
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, stderr);
    assert.equal(stderr, '', 'the export reported no failure');
  };

  for (const protocol of ['http/protobuf', 'http/json']) {
    it(`counts every span of an export in ${protocol}, by service, and keeps none`, async () => {
      const receiver = await startOtlpReceiver({ countOnly: true });
      try {
        await export_(
          {
            OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
            OTEL_SERVICE_NAME: 'counted',
          },
          7,
        );
        await export_(
          {
            OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
            OTEL_SERVICE_NAME: 'other',
          },
          3,
        );
      } finally {
        await receiver.close();
      }
      assert.deepEqual(Object.fromEntries(receiver.counts), { counted: 7, other: 3 });
      assert.equal(receiver.spans.length, 0);
    });
  }

  it('refuses a truncated protobuf message rather than count part of it', () => {
    // Field 1 (ResourceSpans), length 5, but only one byte follows.
    assert.throws(() => countProtobufSpans(Uint8Array.from([0x0a, 0x05, 0x12])), /truncated/);
  });
});
