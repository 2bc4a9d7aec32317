// A remembered token must never outlive its exp: the cache saves signature
// checks, it must not extend a token's life.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { AppError } from '../errors.ts';
import { DEV_AUDIENCE, DEV_ISSUER, openDevIssuer } from './dev-issuer.ts';
import { localVerifier } from './verifier.ts';

describe('token verifier', () => {
  it('accepts a token again from memory, and rejects it once it has expired', async () => {
    const issuer = await openDevIssuer(undefined);
    const verify = localVerifier(issuer.publicJwk, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE });
    const token = await issuer.issue({ sub: 'ann', scope: 'orders:read', ttlSeconds: 2 });
    const first = await verify(token);
    assert.equal(first.customerId, 'ann');
    assert.deepEqual(await verify(token), first);
    const { exp } = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { exp: number };
    await sleep(Math.max(0, exp * 1000 - Date.now()) + 50);
    await assert.rejects(verify(token), (error: unknown) => error instanceof AppError && error.code === 'unauthorized');
  });

  it('rejects a token signed by another key even after a valid one was remembered', async () => {
    const issuer = await openDevIssuer(undefined);
    const stranger = await openDevIssuer(undefined);
    const verify = localVerifier(issuer.publicJwk, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE });
    await verify(await issuer.issue({ sub: 'ann', scope: 'orders:read' }));
    await assert.rejects(verify(await stranger.issue({ sub: 'ann', scope: 'orders:read' })), AppError);
  });
});
