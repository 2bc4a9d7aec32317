// The simulated gateway served over HTTP, speaking the wire format HttpGateway
// calls. A distributed deployment's workers share one gateway, so a cluster
// on one machine (and its tests) can count every charge outside Orderflow
// through GET /v1/ledger. Development and testing only: it keeps its ledger
// in memory, all of it only when its SimulatedGateway was made with
// `retain: 'all'` (tests, benchmarks); otherwise the ledger lists what the
// gateway still remembers, and `remembered` says how much it forgot.
//
// Like a real gateway it answers bad input with a 4xx, never a 500: a body
// that is not a JSON object with the right field types is 400, and so is an
// amount the gateway cannot charge (see SimulatedGateway). Only a fault of
// the server itself is a 500.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { GatewayRequestError, TransientGatewayError } from './gateway.ts';
import { SimulatedGateway } from './simulated-gateway.ts';

export interface GatewayServer {
  readonly url: string;
  readonly gateway: SimulatedGateway;
  close(): Promise<void>;
}

/** Request bodies are a few hundred bytes; anything past this is refused (413) without being buffered. */
const MAX_BODY_BYTES = 64 * 1024;

/** A refusal of the request as sent: answered with its status and message. */
class BadRequest extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

export async function startGatewayServer(
  options: { port?: number; host?: string; gateway?: SimulatedGateway } = {},
): Promise<GatewayServer> {
  const gateway = options.gateway ?? new SimulatedGateway();
  const server = createServer((request, response) => {
    route(gateway, request, response).catch((error: unknown) => {
      if (error instanceof BadRequest) return reply(response, error.status, { error: error.message });
      if (error instanceof TransientGatewayError) return reply(response, 503, { error: error.message });
      if (error instanceof GatewayRequestError) return reply(response, error.status ?? 400, { error: error.message });
      return reply(response, 500, { error: (error as Error).message });
    });
  });
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  return { url: `http://${host}:${port}`, gateway, close: () => closeServer(server) };
}

async function route(gateway: SimulatedGateway, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const path = (request.url ?? '/').split('?')[0];
  if (request.method === 'GET' && path === '/v1/ledger') {
    return reply(response, 200, {
      charges: [...gateway.charges.values()],
      refunds: [...gateway.refunds.values()],
      voided: [...gateway.voided],
      chargeCalls: gateway.chargeCalls,
      voidCalls: gateway.voidCalls,
      remembered: gateway.remembered,
    });
  }
  if (path !== '/v1/charges' && path !== '/v1/refunds' && path !== '/v1/voids')
    return reply(response, 404, { error: 'not found' });
  if (request.method !== 'POST') return reply(response, 405, { error: 'use POST' }, { allow: 'POST' });
  const idempotencyKey = request.headers['idempotency-key'];
  if (typeof idempotencyKey !== 'string' || idempotencyKey === '')
    throw new BadRequest(400, 'Idempotency-Key header required');
  const body = await readJson(request);
  if (path === '/v1/charges') {
    const result = await gateway.charge({
      idempotencyKey,
      amountCents: field(body, 'amountCents', 'number'),
      currency: field(body, 'currency', 'string'),
      token: field(body, 'token', 'string'),
      reference: field(body, 'reference', 'string'),
    });
    return result.status === 'succeeded'
      ? reply(response, 201, { id: result.chargeId, status: 'succeeded' })
      : reply(response, 402, { code: result.code });
  }
  if (path === '/v1/voids') {
    const voided = await gateway.voidCharge({
      chargeKey: field(body, 'chargeKey', 'string'),
      reference: field(body, 'reference', 'string'),
    });
    return reply(response, 200, voided.status === 'succeeded' ? { status: 'succeeded', id: voided.chargeId } : voided);
  }
  const refund = await gateway.refund({
    idempotencyKey,
    chargeId: field(body, 'chargeId', 'string'),
    amountCents: field(body, 'amountCents', 'number'),
  });
  return reply(response, 201, { id: refund.refundId });
}

function field<K extends 'string' | 'number'>(
  body: Record<string, unknown>,
  name: string,
  type: K,
): K extends 'string' ? string : number {
  const value = body[name];
  if (typeof value !== type) throw new BadRequest(400, `"${name}" must be a ${type}`);
  return value as K extends 'string' ? string : number;
}

async function readJson(request: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new BadRequest(413, `the body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new BadRequest(400, 'body must be a JSON object');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new BadRequest(400, 'body must be a JSON object');
  return value as Record<string, unknown>;
}

function reply(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    ...headers,
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  response.end(text);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((error) => (error ? reject(error) : resolve()));
    server.closeAllConnections();
  });
}
