// The in-process cache of the embedded shape: one process owns the database,
// so invalidating its own LRU is invalidating everything. When several
// processes share PostgreSQL without Redis, each keeps its own LRU, and the
// TTL bounds how long another process's write can go unseen.
import { LRUCache } from 'lru-cache';
import type { Metrics } from '../observability/metrics.ts';
import { InvalidationEpoch, type Cache } from './cache.ts';

export interface MemoryCacheOptions {
  maxEntries?: number;
  ttlMs?: number;
}

export class MemoryCache implements Cache {
  readonly #lru: LRUCache<string, { value: unknown }>;
  readonly #epoch = new InvalidationEpoch();
  readonly #metrics: Metrics;

  constructor(metrics: Metrics, options: MemoryCacheOptions = {}) {
    this.#metrics = metrics;
    this.#lru = new LRUCache({ max: options.maxEntries ?? 10_000, ttl: options.ttlMs ?? 60_000 });
  }

  async getOrLoad<T>(key: string, load: () => Promise<T | undefined>): Promise<T | undefined> {
    const hit = this.#lru.get(key);
    if (hit) {
      this.#metrics.cacheLookups.inc({ result: 'local_hit' });
      return hit.value as T;
    }
    this.#metrics.cacheLookups.inc({ result: 'miss' });
    const epoch = this.#epoch.current();
    const value = await load();
    if (value !== undefined && this.#epoch.unchangedSince(epoch)) this.#lru.set(key, { value });
    return value;
  }

  async invalidate(keys: readonly string[]): Promise<void> {
    this.#epoch.bump();
    for (const key of keys) this.#lru.delete(key);
  }

  async close(): Promise<void> {
    this.#lru.clear();
  }
}
