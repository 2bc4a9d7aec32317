// The cache of the distributed shape: Redis, shared by every process, with a
// small LRU in each process in front of it so that hot keys cost no round
// trip. An invalidation deletes the Redis key and is published on a channel
// every process listens to, which drops the key from its LRU. The LRU's short
// TTL bounds what a lost message can cost: the subscriber reconnecting, or
// Redis being down while a write happened.
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.ts';
import { InvalidationEpoch, type Cache } from './cache.ts';
import type { RedisConnections } from './redis.ts';

export interface RedisCacheOptions {
  /** Prepended to every key and to the channel, so deployments can share one Redis. */
  prefix: string;
  localTtlMs?: number;
  localMaxEntries?: number;
  redisTtlMs?: number;
}

export class RedisCache implements Cache {
  readonly #redis: RedisConnections;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #prefix: string;
  readonly #channel: string;
  readonly #redisTtlMs: number;
  readonly #local: LRUCache<string, { value: unknown }>;
  readonly #epoch = new InvalidationEpoch();

  constructor(redis: RedisConnections, deps: { metrics: Metrics; log: Logger }, options: RedisCacheOptions) {
    this.#redis = redis;
    this.#metrics = deps.metrics;
    this.#log = deps.log;
    this.#prefix = options.prefix;
    this.#channel = `${options.prefix}cache-invalidations`;
    this.#redisTtlMs = options.redisTtlMs ?? 600_000;
    this.#local = new LRUCache({ max: options.localMaxEntries ?? 10_000, ttl: options.localTtlMs ?? 5_000 });

    redis.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.#channel) return;
      let keys: unknown;
      try {
        keys = JSON.parse(message);
      } catch {
        keys = undefined;
      }
      if (!Array.isArray(keys)) {
        this.#log.warn({ channel }, 'ignoring a malformed cache invalidation');
        return;
      }
      this.#dropLocal(keys.filter((k): k is string => typeof k === 'string'));
    });
    // Invalidations published while this process was not subscribed are
    // lost, so whatever the LRU holds from before may be stale: drop it once
    // the subscription is back.
    redis.subscriber.on('ready', () => {
      redis.subscriber.subscribe(this.#channel).then(
        () => {
          this.#epoch.bump();
          this.#local.clear();
        },
        () => this.#metrics.cacheErrors.inc({ operation: 'subscribe' }),
      );
    });
  }

  async getOrLoad<T>(key: string, load: () => Promise<T | undefined>): Promise<T | undefined> {
    const local = this.#local.get(key);
    if (local) {
      this.#metrics.cacheLookups.inc({ result: 'local_hit' });
      return local.value as T;
    }
    const epoch = this.#epoch.current();
    const shared = await this.#get(key);
    if (shared !== undefined) {
      this.#metrics.cacheLookups.inc({ result: 'redis_hit' });
      if (this.#epoch.unchangedSince(epoch)) this.#local.set(key, { value: shared });
      return shared as T;
    }
    this.#metrics.cacheLookups.inc({ result: 'miss' });
    const value = await load();
    if (value !== undefined && this.#epoch.unchangedSince(epoch)) {
      this.#local.set(key, { value });
      // Not awaited: the caller has its answer, and a failed store only
      // means the next read loads again.
      void this.#set(key, value);
    }
    return value;
  }

  async invalidate(keys: readonly string[]): Promise<void> {
    this.#dropLocal(keys);
    if (keys.length === 0) return;
    const redis = this.#redis.commands;
    if (redis.status !== 'ready') {
      this.#metrics.cacheErrors.inc({ operation: 'invalidate' });
      return;
    }
    try {
      const results = await redis
        .pipeline()
        .del(...keys.map((k) => this.#prefix + k))
        .publish(this.#channel, JSON.stringify(keys))
        .exec();
      if (results?.some(([error]) => error !== null)) this.#metrics.cacheErrors.inc({ operation: 'invalidate' });
    } catch {
      this.#metrics.cacheErrors.inc({ operation: 'invalidate' });
    }
  }

  async close(): Promise<void> {
    this.#local.clear();
  }

  #dropLocal(keys: readonly string[]): void {
    this.#epoch.bump();
    for (const key of keys) this.#local.delete(key);
  }

  async #get(key: string): Promise<unknown> {
    const redis = this.#redis.commands;
    if (redis.status !== 'ready') {
      this.#metrics.cacheErrors.inc({ operation: 'get' });
      return undefined;
    }
    try {
      const text = await redis.get(this.#prefix + key);
      return text === null ? undefined : (JSON.parse(text) as unknown);
    } catch {
      this.#metrics.cacheErrors.inc({ operation: 'get' });
      return undefined;
    }
  }

  async #set(key: string, value: unknown): Promise<void> {
    const redis = this.#redis.commands;
    if (redis.status !== 'ready') {
      this.#metrics.cacheErrors.inc({ operation: 'set' });
      return;
    }
    try {
      await redis.set(this.#prefix + key, JSON.stringify(value), 'PX', this.#redisTtlMs);
    } catch {
      this.#metrics.cacheErrors.inc({ operation: 'set' });
    }
  }
}
