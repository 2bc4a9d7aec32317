// TLS at the load balancers, for real: HAProxy (deploy/haproxy/haproxy.cfg)
// and nginx (deploy/nginx/nginx-tls.conf) terminate TLS with a certificate
// from a throwaway CA in front of a running cluster (two api processes and a
// worker on PostgreSQL). A client that verifies the certificate places and
// reads an order over HTTPS; plain HTTP is redirected; HTTP/2 is offered;
// TLS below 1.2 is refused; the api processes learn the scheme.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { Agent, fetch } from 'undici';
import { freePortRange, startCluster, type Cluster } from '../scripts/cluster.ts';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { startHaproxy, startNginx, type LoadBalancer } from './support/load-balancers.ts';
import { skipUnlessInstalled } from './support/programs.ts';
import { makeTestCertificates, type TestCertificates } from './support/tls.ts';

const databaseUrl = requiredServiceUrl('DATABASE_URL');
const skip =
  skipUnlessInstalled('the TLS test', { haproxy: ['-v'], nginx: ['-v'], openssl: ['version'] }) ??
  (databaseUrl === undefined ? 'set DATABASE_URL to run the TLS test' : undefined);

describe('TLS at the load balancers', { skip }, () => {
  let dir: string;
  let certificates: TestCertificates;
  let client: Agent;
  let database: Awaited<ReturnType<typeof freshPostgresDatabase>>;
  let cluster: Cluster;
  let dataDir: string;

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'orderflow-tls-'));
    certificates = await makeTestCertificates(dir);
    // Verifies the certificate against the throwaway CA (and nothing else), and speaks HTTP/2 when offered.
    client = new Agent({ connect: { ca: certificates.ca }, allowH2: true });
    database = await freshPostgresDatabase(databaseUrl!);
    dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-tls-data-'));
    cluster = await startCluster({
      databaseUrl: database.url,
      apis: 2,
      workers: 1,
      basePort: await freePortRange(8),
      env: { DATA_DIR: dataDir, LOG_LEVEL: 'warn' },
      gatewayLatencyMs: 0,
      onOutput: () => {},
    });
  });

  after(async () => {
    await cluster?.stop();
    await client?.close();
    await database?.drop();
    await rm(dir, { recursive: true, force: true });
    await rm(dataDir, { recursive: true, force: true });
  });

  const apiAddresses = () => cluster.processes.filter((p) => p.role === 'api').map((p) => `127.0.0.1:${p.port}`);

  async function ready(lb: LoadBalancer): Promise<void> {
    await eventually(
      `${lb.name} to answer /readyz over HTTPS`,
      async () => {
        const response = await fetch(`https://127.0.0.1:${lb.httpsPort!}/readyz`, { dispatcher: client }).catch(
          () => undefined,
        );
        return response?.status === 200 ? true : undefined;
      },
      30_000,
    );
  }

  for (const [name, start] of [
    ['haproxy', startHaproxy],
    ['nginx', startNginx],
  ] as const) {
    it(`${name}: an order placed and read over HTTPS with a verified certificate; plain HTTP redirected; HSTS; HTTP/2`, async () => {
      const lb = await start(apiAddresses(), dir, certificates);
      try {
        await ready(lb);
        const base = `https://localhost:${lb.httpsPort!}`;
        const issuer = await openDevIssuer(dataDir);
        const token = await issuer.issue({ sub: `tls-${name}`, scope: 'catalog:write orders:write orders:read' });
        const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
        const sku = `TLS-${name}`;

        const product = await fetch(`${base}/v1/products`, {
          method: 'POST',
          dispatcher: client,
          headers,
          body: JSON.stringify({ sku, name: 'Mug', priceCents: 1299, currency: 'EUR', stock: 5 }),
        });
        assert.equal(product.status, 201, await product.text());
        assert.equal(product.headers.get('strict-transport-security'), 'max-age=31536000');

        const placed = await fetch(`${base}/v1/orders`, {
          method: 'POST',
          dispatcher: client,
          headers: { ...headers, 'idempotency-key': `tls-${name}-1` },
          body: JSON.stringify({ items: [{ sku, quantity: 1 }], payment: { token: 'tok_visa' } }),
        });
        assert.equal(placed.status, 202, await placed.clone().text());
        const { id } = (await placed.json()) as { id: string };
        await eventually('the order to be confirmed, read over HTTPS', async () => {
          const response = await fetch(`${base}/v1/orders/${id}`, { dispatcher: client, headers });
          assert.equal(response.status, 200);
          return ((await response.json()) as { status: string }).status === 'confirmed' ? true : undefined;
        });

        // Plain HTTP: only a redirect to the same path over HTTPS, method kept.
        const plain = await fetch(`http://localhost:${lb.httpPort}/v1/orders/${id}?x=1`, {
          redirect: 'manual',
          headers,
        });
        assert.equal(plain.status, 308);
        assert.equal(plain.headers.get('location'), `https://localhost:${lb.httpsPort!}/v1/orders/${id}?x=1`);

        // A client that trusts only the system's CAs refuses the certificate.
        await assert.rejects(fetch(`${base}/readyz`), (error: Error) =>
          /certificate/i.test(String((error.cause as Error | undefined)?.message ?? error.message)),
        );

        // ALPN offers HTTP/2; TLS 1.2 and 1.3 are accepted, older versions refused by the server.
        assert.equal(await handshake(lb.httpsPort!, { ALPNProtocols: ['h2', 'http/1.1'] }), 'h2');
        for (const version of ['TLSv1.2', 'TLSv1.3'] as const)
          await handshake(lb.httpsPort!, { minVersion: version, maxVersion: version });
        await assert.rejects(
          handshake(lb.httpsPort!, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }),
          (error: NodeJS.ErrnoException) =>
            /ALERT_PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL|NO_PROTOCOLS_AVAILABLE/.test(String(error.code)),
        );
      } finally {
        await lb.stop();
      }
    });

    it(`${name}: tells the api processes that the request came over HTTPS`, async () => {
      // A stand-in upstream that records what the load balancer forwards.
      const seen: IncomingHttpHeaders[] = [];
      const upstream = createServer((request, response) => {
        if (request.url === '/v1/echo') seen.push(request.headers);
        response.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ready"}');
      });
      await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
      const lb = await start([`127.0.0.1:${(upstream.address() as { port: number }).port}`], dir, certificates);
      try {
        await ready(lb);
        const response = await fetch(`https://localhost:${lb.httpsPort!}/v1/echo`, { dispatcher: client });
        assert.equal(response.status, 200);
        await response.text();
        assert.equal(seen.length, 1);
        assert.equal(seen[0]!['x-forwarded-proto'], 'https');
        assert.equal(seen[0]!['x-forwarded-for'], '127.0.0.1');
        assert.ok(seen[0]!['x-request-id'], 'a request id is added');
      } finally {
        await lb.stop();
        await new Promise((resolve) => upstream.close(resolve));
      }
    });
  }

  /** A TLS handshake to localhost that verifies the certificate; resolves to the ALPN protocol. */
  function handshake(
    port: number,
    options: {
      ALPNProtocols?: string[];
      minVersion?: 'TLSv1' | 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3';
      maxVersion?: 'TLSv1.1' | 'TLSv1.2' | 'TLSv1.3';
      ciphers?: string;
    },
  ): Promise<string | false> {
    return new Promise((resolve, reject) => {
      const socket = connect(
        { host: '127.0.0.1', port, servername: 'localhost', ca: certificates.ca, ...options },
        () => {
          const protocol = socket.alpnProtocol ?? false;
          socket.end();
          resolve(protocol);
        },
      );
      socket.once('error', reject);
    });
  }
});
