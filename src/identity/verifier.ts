// Bearer token verification: signature against a JWKS (RS256, PS256, ES256
// or EdDSA), issuer, audience and expiry. The token's `sub` is the customer
// id; `scope` (space-separated, or the `scp` array some providers use)
// carries the permissions. Two claims RFC 7519 leaves open are decided as a
// client would expect: `sub` must name someone (1-255 characters of text,
// the same rule as other text the API stores), and a token issued (`iat`)
// more than CLOCK_SKEW_SECONDS in the future is refused, as a clock that far
// off, or a forged date, says nothing good about the token.
import { createLocalJWKSet, createRemoteJWKSet, errors, jwtVerify, type JWK, type JWTVerifyGetKey } from 'jose';
import { LRUCache } from 'lru-cache';
import { AppError } from '../errors.ts';
import { TEXT_CHARACTER } from '../text.ts';

export const SCOPES = ['orders:write', 'orders:read', 'orders:admin', 'catalog:write', 'operations:write'] as const;
export type Scope = (typeof SCOPES)[number];

export interface Principal {
  customerId: string;
  scopes: ReadonlySet<string>;
}

export type VerifyToken = (token: string) => Promise<Principal>;

const ALGORITHMS = ['RS256', 'PS256', 'ES256', 'EdDSA'];

/** How far ahead of this server's clock a token's `iat` may be: the clocks of two well-run hosts agree far better than this. */
export const CLOCK_SKEW_SECONDS = 60;

/** A `sub` this API can use as a customer id: 1-255 characters of text (src/text.ts). */
const SUBJECT = new RegExp(`^${TEXT_CHARACTER}{1,255}$`, 'u');

/** The rule isSubject checks, as a sentence about a token. */
export const SUBJECT_RULE = 'its "sub" claim must be 1-255 characters of text, with no control characters';

/**
 * True when a token's `sub` claim can name a customer (SUBJECT_RULE). The
 * verifier refuses a token whose `sub` cannot, and the token command refuses
 * to sign one, by this one rule.
 */
export function isSubject(sub: unknown): sub is string {
  return typeof sub === 'string' && SUBJECT.test(sub);
}

export function remoteVerifier(options: { jwksUrl: string; issuer: string; audience: string }): VerifyToken {
  const remote = createRemoteJWKSet(new URL(options.jwksUrl), { timeoutDuration: 5_000, cooldownDuration: 30_000 });
  // A key set we cannot fetch says nothing about the token: the client should
  // retry (503), not be told its token is bad (401).
  const keys: JWTVerifyGetKey = async (header, token) => {
    try {
      return await remote(header, token);
    } catch (error) {
      if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys) throw error;
      throw new AppError(
        'unavailable',
        `the identity provider's key set cannot be fetched: ${(error as Error).message}`,
      );
    }
  };
  return verifierFor(keys, options);
}

export function localVerifier(publicJwk: JWK, options: { issuer: string; audience: string }): VerifyToken {
  return verifierFor(createLocalJWKSet({ keys: [publicJwk] }), options);
}

/** Verified tokens remembered per process; a client sends the same token with every request. */
const VERIFIED_TOKENS = 10_000;

function verifierFor(keys: JWTVerifyGetKey, options: { issuer: string; audience: string }): VerifyToken {
  // A signature check is the most expensive step of a request after the
  // database. A token's verdict cannot change before it expires (JWTs are not
  // revocable), so a verified token is remembered until its exp, never longer.
  const verified = new LRUCache<string, Principal>({ max: VERIFIED_TOKENS, ttlAutopurge: false });
  return async (token) => {
    const known = verified.get(token);
    if (known) return known;
    let payload;
    try {
      ({ payload } = await jwtVerify(token, keys, {
        issuer: options.issuer,
        audience: options.audience,
        algorithms: ALGORITHMS,
        requiredClaims: ['exp', 'sub'],
      }));
    } catch (error) {
      if (error instanceof errors.JOSEError) {
        throw new AppError('unauthorized', `bearer token rejected: ${error.message}`);
      }
      throw error;
    }
    if (!isSubject(payload.sub)) throw new AppError('unauthorized', `bearer token rejected: ${SUBJECT_RULE}`);
    if (payload.iat !== undefined && payload.iat > Date.now() / 1000 + CLOCK_SKEW_SECONDS) {
      throw new AppError(
        'unauthorized',
        `bearer token rejected: it was issued (iat) more than ${CLOCK_SKEW_SECONDS} s in the future`,
      );
    }
    const scopes =
      typeof payload.scope === 'string'
        ? payload.scope.split(' ')
        : Array.isArray(payload.scp)
          ? payload.scp.map(String)
          : [];
    const principal: Principal = { customerId: payload.sub, scopes: new Set(scopes.filter((s) => s.length > 0)) };
    const ttl = payload.exp! * 1000 - Date.now();
    if (ttl > 0) verified.set(token, principal, { ttl });
    return principal;
  };
}
