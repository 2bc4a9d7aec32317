// A cache in two tiers: a small LRU in each process, in front of a store all
// processes share (Redis or Memcached). Hot keys cost no round trip; the
// shared tier spares the database the reads of every process's first miss.
// The local tier's short TTL bounds how long a process can serve an entry
// another process has invalidated, when that news does not reach it (no
// pub/sub in Memcached; a lost message in Redis).
import { LRUCache } from 'lru-cache';
import type { Metrics } from '../observability/metrics.ts';
import { InvalidationEpoch, type Cache } from './cache.ts';

/** What the shared tier found under a key. */
export type SharedLookup =
  | { found: true; value: unknown }
  /** Not there. `fill` stores a value loaded now (undefined: the store is unreachable, do not try). */
  | { found: false; fill: ((value: unknown) => Promise<void>) | undefined };

/** The shared store behind the process LRU. Its failures are counted and swallowed by the store itself: it never throws. */
export interface SharedTier {
  /** The `result` label of orderflow_cache_lookups_total for a hit here. */
  readonly hitLabel: 'redis_hit' | 'memcached_hit';
  get(key: string): Promise<SharedLookup>;
  /** Makes the keys' stored values unreachable for every process. */
  invalidate(keys: readonly string[]): Promise<void>;
  close(): Promise<void>;
}

export interface LocalTierOptions {
  /** How long this process serves an entry without asking the shared tier (the cross-process staleness bound). */
  localTtlMs?: number;
  localMaxEntries?: number;
}

export class TieredCache implements Cache {
  readonly #shared: SharedTier;
  readonly #metrics: Metrics;
  readonly #local: LRUCache<string, { value: unknown }>;
  readonly #epoch = new InvalidationEpoch();

  constructor(shared: SharedTier, metrics: Metrics, options: LocalTierOptions = {}) {
    this.#shared = shared;
    this.#metrics = metrics;
    this.#local = new LRUCache({ max: options.localMaxEntries ?? 10_000, ttl: options.localTtlMs ?? 5_000 });
  }

  async getOrLoad<T>(key: string, load: () => Promise<T | undefined>): Promise<T | undefined> {
    const local = this.#local.get(key);
    if (local) {
      this.#metrics.cacheLookups.inc({ result: 'local_hit' });
      return local.value as T;
    }
    const epoch = this.#epoch.current();
    const shared = await this.#shared.get(key);
    if (shared.found) {
      this.#metrics.cacheLookups.inc({ result: this.#shared.hitLabel });
      if (this.#epoch.unchangedSince(epoch)) this.#local.set(key, { value: shared.value });
      return shared.value as T;
    }
    this.#metrics.cacheLookups.inc({ result: 'miss' });
    const value = await load();
    if (value !== undefined && this.#epoch.unchangedSince(epoch)) {
      this.#local.set(key, { value });
      // Not awaited: the caller has its answer, and a failed store only
      // means the next read loads again.
      void shared.fill?.(value);
    }
    return value;
  }

  async invalidate(keys: readonly string[]): Promise<void> {
    this.dropLocal(keys);
    if (keys.length > 0) await this.#shared.invalidate(keys);
  }

  async close(): Promise<void> {
    this.#local.clear();
    await this.#shared.close();
  }

  /** Drops keys from this process's LRU only (an invalidation announced by another process). */
  dropLocal(keys: readonly string[]): void {
    this.#epoch.bump();
    for (const key of keys) this.#local.delete(key);
  }

  /** Drops this process's whole LRU (invalidations may have been missed). */
  clearLocal(): void {
    this.#epoch.bump();
    this.#local.clear();
  }
}
