// The simulated gateway served over HTTP, speaking the wire format HttpGateway
// calls. A distributed deployment's workers share one gateway, so a cluster
// on one machine (and its tests) can count every charge outside Orderflow
// through GET /v1/ledger. Development and testing only: it keeps its ledger
// in memory.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TransientGatewayError } from './gateway.ts';
import { SimulatedGateway, UnknownChargeError } from './simulated-gateway.ts';

export interface GatewayServer {
  readonly url: string;
  readonly gateway: SimulatedGateway;
  close(): Promise<void>;
}

export async function startGatewayServer(options: { port?: number; host?: string; gateway?: SimulatedGateway } = {}): Promise<GatewayServer> {
  const gateway = options.gateway ?? new SimulatedGateway();
  const server = createServer((request, response) => {
    route(gateway, request, response).catch((error: unknown) => reply(response, 500, { error: (error as Error).message }));
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
    return reply(response, 200, { charges: [...gateway.charges.values()], refunds: [...gateway.refunds.values()], chargeCalls: gateway.chargeCalls });
  }
  if (request.method !== 'POST' || (path !== '/v1/charges' && path !== '/v1/refunds')) return reply(response, 404, { error: 'not found' });
  const idempotencyKey = request.headers['idempotency-key'];
  if (typeof idempotencyKey !== 'string' || idempotencyKey === '') return reply(response, 400, { error: 'Idempotency-Key header required' });
  const body = await readJson(request);
  if (body === undefined) return reply(response, 400, { error: 'body must be a JSON object' });
  try {
    if (path === '/v1/charges') {
      const result = await gateway.charge({
        idempotencyKey,
        amountCents: Number(body.amountCents),
        currency: String(body.currency),
        token: String(body.token),
        reference: String(body.reference),
      });
      return result.status === 'succeeded' ? reply(response, 201, { id: result.chargeId, status: 'succeeded' }) : reply(response, 402, { code: result.code });
    }
    const refund = await gateway.refund({ idempotencyKey, chargeId: String(body.chargeId), amountCents: Number(body.amountCents) });
    return reply(response, 201, { id: refund.refundId });
  } catch (error) {
    if (error instanceof TransientGatewayError) return reply(response, 503, { error: error.message });
    if (error instanceof UnknownChargeError) return reply(response, 404, { error: error.message });
    throw error;
  }
}

async function readJson(request: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  try {
    const value: unknown = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function reply(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  response.end(text);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve, reject) => {
    server.close((error) => (error ? reject(error) : resolve()));
    server.closeAllConnections();
  });
}
