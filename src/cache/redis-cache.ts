// The cache of the distributed shape on Redis, shared by every process, with
// a small LRU in each process in front of it (TieredCache). An invalidation
// deletes the Redis key and is published on a channel every process listens
// to, which drops the key from its LRU. The LRU's short TTL bounds what a
// lost message can cost: the subscriber reconnecting, or Redis being down
// while a write happened.
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.ts';
import type { RedisConnections } from './redis.ts';
import { TieredCache, type LocalTierOptions, type SharedLookup, type SharedTier } from './tiered-cache.ts';

export interface RedisCacheOptions extends LocalTierOptions {
  /** Prepended to every key and to the channel, so deployments can share one Redis. */
  prefix: string;
  redisTtlMs?: number;
}

export class RedisCache extends TieredCache {
  constructor(redis: RedisConnections, deps: { metrics: Metrics; log: Logger }, options: RedisCacheOptions) {
    const tier = new RedisTier(redis, deps.metrics, options);
    super(tier, deps.metrics, options);

    redis.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== tier.channel) return;
      let keys: unknown;
      try {
        keys = JSON.parse(message);
      } catch {
        keys = undefined;
      }
      if (!Array.isArray(keys)) {
        deps.log.warn({ channel }, 'ignoring a malformed cache invalidation');
        return;
      }
      this.dropLocal(keys.filter((k): k is string => typeof k === 'string'));
    });
    // Invalidations published while this process was not subscribed are
    // lost, so whatever the LRU holds from before may be stale: drop it once
    // the subscription is back.
    redis.subscriber.on('ready', () => {
      redis.subscriber.subscribe(tier.channel).then(
        () => this.clearLocal(),
        () => deps.metrics.cacheErrors.inc({ operation: 'subscribe' }),
      );
    });
  }
}

class RedisTier implements SharedTier {
  readonly hitLabel = 'redis_hit';
  readonly channel: string;
  readonly #redis: RedisConnections;
  readonly #metrics: Metrics;
  readonly #prefix: string;
  readonly #redisTtlMs: number;

  constructor(redis: RedisConnections, metrics: Metrics, options: RedisCacheOptions) {
    this.#redis = redis;
    this.#metrics = metrics;
    this.#prefix = options.prefix;
    this.channel = `${options.prefix}cache-invalidations`;
    this.#redisTtlMs = options.redisTtlMs ?? 600_000;
  }

  async get(key: string): Promise<SharedLookup> {
    const redis = this.#redis.commands;
    if (redis.status !== 'ready') {
      this.#metrics.cacheErrors.inc({ operation: 'get' });
      return { found: false, fill: undefined };
    }
    try {
      const text = await redis.get(this.#prefix + key);
      if (text !== null) return { found: true, value: JSON.parse(text) as unknown };
    } catch {
      this.#metrics.cacheErrors.inc({ operation: 'get' });
    }
    return { found: false, fill: (value) => this.#set(key, value) };
  }

  async invalidate(keys: readonly string[]): Promise<void> {
    const redis = this.#redis.commands;
    if (redis.status !== 'ready') {
      this.#metrics.cacheErrors.inc({ operation: 'invalidate' });
      return;
    }
    try {
      const results = await redis
        .pipeline()
        .del(...keys.map((k) => this.#prefix + k))
        .publish(this.channel, JSON.stringify(keys))
        .exec();
      if (results?.some(([error]) => error !== null)) this.#metrics.cacheErrors.inc({ operation: 'invalidate' });
    } catch {
      this.#metrics.cacheErrors.inc({ operation: 'invalidate' });
    }
  }

  // The connections belong to the app: the rate limiter uses them too.
  async close(): Promise<void> {}

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
