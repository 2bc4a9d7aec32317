// The development token issuer used when no outside identity provider is
// configured. Its Ed25519 key lives in DATA_DIR so tokens survive restarts
// and `orderflow token` can mint them for the running server.
import { randomUUID } from 'node:crypto';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { exportJWK, generateKeyPair, importJWK, SignJWT, type JWK } from 'jose';

export const DEV_ISSUER = 'orderflow-dev';
export const DEV_AUDIENCE = 'orderflow';
const KEY_FILE = 'dev-issuer-key.json';
const ALGORITHM = 'EdDSA';

export interface DevIssuer {
  readonly publicJwk: JWK;
  /** The file the private key is kept in (DATA_DIR/dev-issuer-key.json); undefined for a key held in memory only. */
  readonly keyFile: string | undefined;
  /** True when this call made the key (no file held one yet): tokens signed before by another key are refused. */
  readonly createdKey: boolean;
  /** A signed token; issuedAt (epoch seconds, default now) lets tests sign one dated in the future. */
  issue(claims: { sub: string; scope: string; ttlSeconds?: number; issuedAt?: number }): Promise<string>;
}

export async function openDevIssuer(dataDir: string | undefined): Promise<DevIssuer> {
  const { jwk: privateJwk, created } =
    dataDir === undefined ? { jwk: await newKey(), created: true } : await loadOrCreateKey(dataDir);
  const privateKey = await importJWK(privateJwk, ALGORITHM);
  const { d: _private, ...publicJwk } = privateJwk;
  return {
    publicJwk,
    keyFile: dataDir === undefined ? undefined : path.join(dataDir, KEY_FILE),
    createdKey: created,
    issue: ({ sub, scope, ttlSeconds = 3600, issuedAt }) =>
      new SignJWT({ scope })
        .setProtectedHeader({ alg: ALGORITHM, kid: privateJwk.kid })
        .setSubject(sub)
        .setIssuer(DEV_ISSUER)
        .setAudience(DEV_AUDIENCE)
        .setIssuedAt(issuedAt)
        .setExpirationTime(`${ttlSeconds}s`)
        .sign(privateKey),
  };
}

async function newKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair(ALGORITHM, { crv: 'Ed25519', extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, alg: ALGORITHM, use: 'sig', kid: `dev-${Date.now().toString(36)}` };
}

async function loadOrCreateKey(dataDir: string): Promise<{ jwk: JWK; created: boolean }> {
  const file = path.join(dataDir, KEY_FILE);
  try {
    return { jwk: JSON.parse(await readFile(file, 'utf8')) as JWK, created: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  await mkdir(dataDir, { recursive: true });
  const jwk = await newKey();
  // Several processes may start on one fresh DATA_DIR at once (WEB_CONCURRENCY,
  // npm run cluster). The key is written whole to a file of this process and
  // then linked into place, which fails if another process got there first:
  // nobody ever reads a half-written key, and all use the first one.
  const own = `${file}.${randomUUID()}`;
  try {
    await writeFile(own, JSON.stringify(jwk), { mode: 0o600 });
    await link(own, file);
    return { jwk, created: true };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    return { jwk: JSON.parse(await readFile(file, 'utf8')) as JWK, created: false };
  } finally {
    // Also a file that a full disk cut short: nothing half-written stays.
    await rm(own, { force: true });
  }
}
