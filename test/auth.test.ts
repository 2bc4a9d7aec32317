// Tokens from an outside identity provider: the app is started with
// AUTH_JWKS_URL / AUTH_ISSUER / AUTH_AUDIENCE pointing at a local JWKS
// server, and must accept exactly the tokens that provider signs for this
// audience, with the scopes the route needs; the built-in development issuer
// is then switched off.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createHmac } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { client, createProduct, modes, placeOrder, startTestApp, type TestApp } from './support/harness.ts';

const ISSUER = 'https://idp.example.test/';
const AUDIENCE = 'orderflow-api';

interface Signer {
  key: CryptoKey;
  kid: string;
  alg: string;
}

async function newSigner(alg: 'RS256' | 'EdDSA', kid: string): Promise<{ signer: Signer; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(alg, alg === 'EdDSA' ? { crv: 'Ed25519' } : {});
  return {
    signer: { key: privateKey, kid, alg },
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' },
  };
}

function sign(
  signer: Signer,
  claims: { sub?: string; scope?: string; iss?: string; aud?: string; expiresIn?: string | number; iat?: number },
): Promise<string> {
  const jwt = new SignJWT(claims.scope === undefined ? {} : { scope: claims.scope })
    .setProtectedHeader({ alg: signer.alg, kid: signer.kid, typ: 'JWT' })
    .setIssuer(claims.iss ?? ISSUER)
    .setAudience(claims.aud ?? AUDIENCE)
    .setIssuedAt(claims.iat)
    .setExpirationTime(claims.expiresIn ?? '5m');
  if (claims.sub !== undefined) jwt.setSubject(claims.sub);
  return jwt.sign(signer.key);
}

const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

function assertProblem(
  response: { status: number; headers: Record<string, unknown>; body: any },
  status: number,
  what: string,
) {
  assert.equal(response.status, status, `${what}: ${JSON.stringify(response.body)}`);
  assert.match(String(response.headers['content-type']), /^application\/problem\+json/, what);
  assert.equal(response.body.status, status, what);
  for (const field of ['type', 'title', 'detail'])
    assert.equal(typeof response.body[field], 'string', `${what}: problem.${field}`);
}

/** A tiny identity provider: serves its JWKS at /.well-known/jwks.json and counts the fetches. */
async function startJwksServer(keys: JWK[]): Promise<{ server: Server; url: string; fetches: () => number }> {
  let fetches = 0;
  const server = createServer((request, response) => {
    if (request.url === '/.well-known/jwks.json') {
      fetches++;
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }));
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { server, url: `http://127.0.0.1:${port}/.well-known/jwks.json`, fetches: () => fetches };
}

for (const mode of modes()) {
  describe(`outside identity provider (${mode})`, () => {
    let idp: Awaited<ReturnType<typeof startJwksServer>>;
    let t: TestApp;
    let rsa: Signer;
    let ed: Signer;
    let dataDir: string;

    before(async () => {
      const rsaKey = await newSigner('RS256', 'rsa-1');
      const edKey = await newSigner('EdDSA', 'ed-1');
      rsa = rsaKey.signer;
      ed = edKey.signer;
      idp = await startJwksServer([rsaKey.publicJwk, edKey.publicJwk]);
      // A DATA_DIR holding a development key, as `orderflow token` would leave
      // behind: with an outside provider configured it must not be trusted.
      dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-auth-'));
      t = await startTestApp(mode, {
        dataDir,
        env: { AUTH_JWKS_URL: idp.url, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE },
      });
      const admin = client(t.app, await sign(rsa, { sub: 'admin', scope: 'catalog:write orders:admin' }));
      await createProduct(admin, { sku: 'AUTH-1', stock: 100, priceCents: 250 });
    });
    after(async () => {
      await t.close();
      await new Promise((resolve) => idp.server.close(resolve));
      await rm(dataDir, { recursive: true, force: true });
    });

    it('a valid RS256 token with the scope places and reads an order as its subject', async () => {
      const alice = client(t.app, await sign(rsa, { sub: 'alice', scope: 'orders:write orders:read' }));
      const placed = await placeOrder(alice, [{ sku: 'AUTH-1', quantity: 1 }]);
      assert.equal(placed.status, 202, JSON.stringify(placed.body));
      assert.equal(placed.body.customerId, 'alice');
      const read = await alice.request('GET', `/v1/orders/${placed.body.id}`);
      assert.equal(read.status, 200);
      assert.equal(read.body.customerId, 'alice');
      assert.ok(idp.fetches() >= 1, 'the JWKS was fetched from the provider');
    });

    it('a valid EdDSA token from the same JWKS works too', async () => {
      const bob = client(t.app, await sign(ed, { sub: 'bob', scope: 'orders:read' }));
      const listed = await bob.request('GET', '/v1/orders');
      assert.equal(listed.status, 200, JSON.stringify(listed.body));
      assert.deepEqual(listed.body.items, []);
    });

    it('a token issued within the clock-skew allowance (60 s) ahead of this clock is accepted', async () => {
      const ahead = client(
        t.app,
        await sign(rsa, { sub: 'alice', scope: 'orders:read', iat: Math.floor(Date.now() / 1000) + 30 }),
      );
      assert.equal((await ahead.request('GET', '/v1/orders')).status, 200);
    });

    it('wrong audience, wrong issuer, expired, bad signature, alg none, no sub, empty sub, iat in the future: 401 problem+json', async () => {
      const other = await newSigner('RS256', 'rsa-1'); // same kid, a key the provider never published
      const valid = await sign(rsa, { sub: 'alice', scope: 'orders:read' });
      const [header, payload] = valid.split('.');
      const cases: [string, string][] = [
        ['wrong audience', await sign(rsa, { sub: 'alice', scope: 'orders:read', aud: 'someone-else' })],
        ['wrong issuer', await sign(rsa, { sub: 'alice', scope: 'orders:read', iss: 'https://evil.example.test/' })],
        [
          'expired',
          await sign(rsa, { sub: 'alice', scope: 'orders:read', expiresIn: Math.floor(Date.now() / 1000) - 120 }),
        ],
        ['signed by another key', await sign(other.signer, { sub: 'alice', scope: 'orders:read' })],
        [
          'a tampered payload',
          `${header}.${b64({ ...JSON.parse(Buffer.from(payload!, 'base64url').toString()), sub: 'mallory' })}.${valid.split('.')[2]}`,
        ],
        ['alg none', `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`],
        ['alg none with a kid', `${b64({ alg: 'none', kid: 'rsa-1' })}.${payload}.`],
        ['HS256', hs256(payload!)],
        ['no sub', await sign(rsa, { scope: 'orders:read' })],
        ['an empty sub', await sign(rsa, { sub: '', scope: 'orders:read' })],
        ['a sub with U+0000', await sign(rsa, { sub: 'ali\u0000ce', scope: 'orders:read' })],
        ['a sub with a line break', await sign(rsa, { sub: 'alice\nadmin', scope: 'orders:read' })],
        ['a sub of 256 characters', await sign(rsa, { sub: 'a'.repeat(256), scope: 'orders:read' })],
        [
          'issued 5 minutes in the future',
          await sign(rsa, { sub: 'alice', scope: 'orders:read', iat: Math.floor(Date.now() / 1000) + 300 }),
        ],
        [
          'issued 61 s in the future',
          await sign(rsa, { sub: 'alice', scope: 'orders:read', iat: Math.floor(Date.now() / 1000) + 62 }),
        ],
        ['not a JWT', 'abc.def'],
      ];
      for (const [what, token] of cases) {
        assertProblem(await client(t.app, token).request('GET', '/v1/orders'), 401, what);
      }
      assertProblem(await client(t.app).request('GET', '/v1/orders'), 401, 'no token');
    });

    it('a valid token without the scope: 403 problem+json, nothing written', async () => {
      const reader = client(t.app, await sign(rsa, { sub: 'carol', scope: 'orders:read' }));
      assertProblem(await placeOrder(reader, [{ sku: 'AUTH-1', quantity: 1 }]), 403, 'orders:write missing');
      assertProblem(
        await reader.request('POST', '/v1/products', {
          body: { sku: 'NOPE-1', name: 'x', priceCents: 1, currency: 'EUR', stock: 1 },
        }),
        403,
        'catalog:write missing',
      );
      const noScope = client(t.app, await sign(rsa, { sub: 'carol' }));
      assertProblem(await noScope.request('GET', '/v1/orders'), 403, 'no scope claim');
      const orders = await t.app.db.query("SELECT id FROM orders.orders WHERE customer_id = 'carol'");
      assert.equal(orders.length, 0);
      assert.equal((await reader.request('GET', '/v1/products/NOPE-1')).status, 404);
    });

    it('the development issuer is off: its tokens are refused', async () => {
      assert.equal(t.app.devIssuer, undefined);
      const devIssuer = await openDevIssuer(dataDir);
      const devToken = await devIssuer.issue({ sub: 'alice', scope: 'orders:write orders:read' });
      assertProblem(await client(t.app, devToken).request('GET', '/v1/orders'), 401, 'a development token');
    });
  });
}

/** An HS256 token: a symmetric algorithm this API never accepts, whatever the secret. */
function hs256(payload: string): string {
  const header = b64({ alg: 'HS256', kid: 'rsa-1', typ: 'JWT' });
  return `${header}.${payload}.${createHmac('sha256', 'rsa-1').update(`${header}.${payload}`).digest('base64url')}`;
}

describe('outside identity provider down', () => {
  /** Starts an app whose JWKS URL is jwksUrl and asks it to authenticate a well-formed token. */
  async function authenticateAgainst(jwksUrl: string) {
    const t = await startTestApp('embedded', {
      env: { AUTH_JWKS_URL: jwksUrl, AUTH_ISSUER: ISSUER, AUTH_AUDIENCE: AUDIENCE },
    });
    try {
      const { signer } = await newSigner('RS256', 'rsa-1');
      return await client(t.app, await sign(signer, { sub: 'alice', scope: 'orders:read' })).request(
        'GET',
        '/v1/orders',
      );
    } finally {
      await t.close();
    }
  }

  it('JWKS host unreachable: 503 problem+json with Retry-After, not a 500', async () => {
    // A port that was just free: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const { port } = probe.address() as AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    const response = await authenticateAgainst(`http://127.0.0.1:${port}/jwks.json`);
    assertProblem(response, 503, 'identity provider unreachable');
    assert.ok(response.headers['retry-after'], 'a 503 says when to retry');
  });

  it('JWKS endpoint answering 503: 503 problem+json with Retry-After, not a 401 blaming the token', async () => {
    const down = createServer((_request, response) =>
      response.writeHead(503, { 'content-type': 'text/plain' }).end('maintenance'),
    );
    await new Promise<void>((resolve) => down.listen(0, '127.0.0.1', resolve));
    try {
      const { port } = down.address() as AddressInfo;
      const response = await authenticateAgainst(`http://127.0.0.1:${port}/jwks.json`);
      assertProblem(response, 503, 'identity provider answering 503');
      assert.ok(response.headers['retry-after'], 'a 503 says when to retry');
    } finally {
      await new Promise((resolve) => down.close(resolve));
    }
  });
});
