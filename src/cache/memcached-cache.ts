// The cache of the distributed shape on Memcached (CACHE_URL=memcached://…),
// shared by every process, with a small LRU in each process in front of it
// (TieredCache). Memcached has no pub/sub, so invalidation works through
// versioned keys instead of messages:
//
// - Each cache key has a version key holding a random token, and its entry
//   is stored together with the token it was loaded under. One multi-get
//   fetches both; an entry whose token is not the current one is a miss.
// - invalidate() writes a new token. Every entry stored before it is then
//   unreachable in every process, including one that a slow load stores
//   after the invalidation (it carries the old token): the cross-process
//   race that a plain delete would lose. A version key that Memcached evicts
//   comes back with a fresh token, which orphans the old entries too.
// - What Memcached cannot do is tell other processes to drop their LRU
//   copies: they serve them until the LRU's TTL (5 s by default) runs out.
//   That is the staleness bound across processes; within the process that
//   invalidated, there is none.
// - If Memcached is unreachable when an invalidation happens, the new token
//   is not written; entries under the old one stay valid until their own
//   lifetime (10 min by default) ends, unless Memcached restarted meanwhile
//   (and so is empty).
//
// Memcached being down or slow costs a request at most one command timeout
// (500 ms), and after a failure the cache leaves Memcached alone for a second,
// so an outage does not make every request wait: reads go to the database.
import { createHash, randomBytes } from 'node:crypto';
import { MemcacheClient, type MultiRetrievalResponse } from 'memcache-client';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.ts';
import { TieredCache, type LocalTierOptions, type SharedLookup, type SharedTier } from './tiered-cache.ts';

export interface MemcachedCacheOptions extends LocalTierOptions {
  /** Prepended to every key, so deployments can share one Memcached. */
  prefix: string;
  /** Lifetime of an entry in Memcached; also how long a lost invalidation can be served. */
  entryTtlMs?: number;
  commandTimeoutMs?: number;
  /** After a failed command, Memcached is left alone for this long. */
  retryAfterMs?: number;
}

export class MemcachedCache extends TieredCache {
  readonly #tier: MemcachedTier;

  /** `url` is memcached://host:port (CACHE_URL). Nothing is sent until the first lookup; Memcached may be down. */
  constructor(url: string, deps: { metrics: Metrics; log: Logger }, options: MemcachedCacheOptions) {
    const tier = new MemcachedTier(url, deps, options);
    super(tier, deps.metrics, options);
    this.#tier = tier;
  }

  /** Asks Memcached for its version, so `orderflow_memcached_up` is right from the start. */
  async probe(): Promise<boolean> {
    return this.#tier.probe();
  }
}

interface StoredEntry {
  /** The version token the value was loaded under. */
  v: string;
  value: unknown;
}

class MemcachedTier implements SharedTier {
  readonly hitLabel = 'memcached_hit';
  readonly #client: MemcacheClient;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #prefix: string;
  readonly #entryTtlS: number;
  readonly #retryAfterMs: number;
  /** While Date.now() is below this, Memcached is not asked (it just failed). */
  #downUntil = 0;
  #reportedDown = false;

  constructor(url: string, deps: { metrics: Metrics; log: Logger }, options: MemcachedCacheOptions) {
    const { hostname, port } = new URL(url);
    const timeout = options.commandTimeoutMs ?? 500;
    this.#client = new MemcacheClient({
      server: `${hostname}:${port || '11211'}`,
      cmdTimeout: timeout,
      connectTimeout: timeout,
      noDelay: true,
      // Failures are counted and logged once per outage below.
      logger: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
    });
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#prefix = options.prefix;
    this.#entryTtlS = Math.max(1, Math.round((options.entryTtlMs ?? 600_000) / 1000));
    this.#retryAfterMs = options.retryAfterMs ?? 1_000;
    this.#metrics.memcachedUp.set(0);
  }

  async probe(): Promise<boolean> {
    try {
      await this.#client.version();
      this.#succeeded();
      return true;
    } catch (error) {
      this.#failed(error);
      return false;
    }
  }

  async get(key: string): Promise<SharedLookup> {
    if (!this.#available('get')) return { found: false, fill: undefined };
    const versionKey = this.#key('v', key);
    const entryKey = this.#key('e', key);
    try {
      const found = await this.#client.get<MultiRetrievalResponse<string>>([versionKey, entryKey]);
      let version = found[versionKey]?.value;
      if (version === undefined) {
        // No version yet (or evicted): a fresh token, which no stored entry carries.
        version = newToken();
        try {
          await this.#client.add(versionKey, version, { lifetime: 0 });
        } catch (error) {
          if (!isNotStored(error)) throw error;
          // Another process added one first: use its token.
          version = (await this.#client.get<string>(versionKey))?.value;
          if (version === undefined) return { found: false, fill: undefined };
        }
      }
      this.#succeeded();
      const stored = found[entryKey]?.value;
      if (stored !== undefined) {
        const entry = JSON.parse(String(stored)) as StoredEntry;
        if (entry.v === version) return { found: true, value: entry.value };
      }
      const token = version;
      return { found: false, fill: (value) => this.#fill(entryKey, token, value) };
    } catch (error) {
      this.#failed(error, 'get');
      return { found: false, fill: undefined };
    }
  }

  async invalidate(keys: readonly string[]): Promise<void> {
    if (!this.#available('invalidate')) return;
    try {
      // One connection: the client pipelines these.
      await Promise.all(keys.map((key) => this.#client.set(this.#key('v', key), newToken(), { lifetime: 0 })));
      this.#succeeded();
    } catch (error) {
      this.#failed(error, 'invalidate');
    }
  }

  async close(): Promise<void> {
    this.#client.shutdown();
    this.#metrics.memcachedUp.set(0);
  }

  async #fill(entryKey: string, version: string, value: unknown): Promise<void> {
    if (!this.#available('set')) return;
    try {
      await this.#client.set(entryKey, JSON.stringify({ v: version, value } satisfies StoredEntry), {
        lifetime: this.#entryTtlS,
      });
      this.#succeeded();
    } catch (error) {
      this.#failed(error, 'set');
    }
  }

  /** Memcached keys are at most 250 bytes of printable ASCII; anything else is hashed. */
  #key(kind: 'v' | 'e', key: string): string {
    const plain = `${this.#prefix}${kind}:${key}`;
    return /^[\x21-\x7e]{1,240}$/.test(plain)
      ? plain
      : `${this.#prefix}${kind}#${createHash('sha256').update(key).digest('base64url')}`;
  }

  #available(operation: 'get' | 'set' | 'invalidate'): boolean {
    if (Date.now() >= this.#downUntil) return true;
    this.#metrics.cacheErrors.inc({ operation });
    return false;
  }

  #succeeded(): void {
    this.#metrics.memcachedUp.set(1);
    if (this.#reportedDown) this.#log.info('Memcached is reachable again; the shared cache is back');
    this.#reportedDown = false;
  }

  #failed(error: unknown, operation?: 'get' | 'set' | 'invalidate'): void {
    if (operation) this.#metrics.cacheErrors.inc({ operation });
    this.#metrics.memcachedUp.set(0);
    this.#downUntil = Date.now() + this.#retryAfterMs;
    if (this.#reportedDown) return;
    this.#reportedDown = true;
    this.#log.warn({ err: error }, 'Memcached is unreachable; reads go to the database until it is back');
  }
}

function newToken(): string {
  return randomBytes(9).toString('base64url');
}

function isNotStored(error: unknown): boolean {
  return error instanceof Error && error.message.includes('NOT_STORED');
}
