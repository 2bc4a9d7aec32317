// Connections to Redis at REDIS_URL, set up so that Redis being down or slow
// costs a request at most one short timeout and never a hang: no offline
// queue (a command sent while disconnected fails at once), no re-sending of
// in-flight commands after a drop, and a timeout per command. The process
// keeps reconnecting in the background and reports the state as a metric.
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import type { Metrics } from '../observability/metrics.ts';

export interface RedisConnections {
  /** Commands: cache reads and writes, rate-limit counters, publishing invalidations. */
  readonly commands: Redis;
  /** A connection in subscriber mode can send nothing else, so it is separate. */
  readonly subscriber: Redis;
  close(): Promise<void>;
}

export interface RedisConnectOptions {
  commandTimeoutMs?: number;
}

export function connectRedis(
  url: string,
  deps: { log: Logger; metrics: Metrics },
  options: RedisConnectOptions = {},
): RedisConnections {
  const base: RedisOptions = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: options.commandTimeoutMs ?? 500,
    connectTimeout: 2_000,
    // Reconnect forever, backing off to one attempt every 2 s.
    retryStrategy: (attempt) => Math.min(50 * attempt, 2_000),
    // The cache subscribes itself on every 'ready', so it knows when a
    // subscription may have missed messages.
    autoResubscribe: false,
  };
  const commands = new Redis(url, { ...base, connectionName: 'orderflow' });
  const subscriber = new Redis(url, { ...base, connectionName: 'orderflow-invalidations' });

  commands.on('ready', () => deps.metrics.redisUp.set(1));
  commands.on('close', () => deps.metrics.redisUp.set(0));
  reportOutages(commands, deps.log, {
    down: 'Redis is unreachable; reads go to the database and rate limits are not enforced until it is back',
    back: 'Redis is reachable again; the cache and the shared rate limits are back',
  });
  reportOutages(subscriber, deps.log, {
    down: 'Redis subscription connection is down; cached products are not invalidated across processes until it is back (local copies expire on their own)',
    back: 'Redis subscription connection is back',
  });

  return {
    commands,
    subscriber,
    async close() {
      await Promise.all([quit(commands), quit(subscriber)]);
      deps.metrics.redisUp.set(0);
    },
  };
}

async function quit(client: Redis): Promise<void> {
  if (client.status === 'ready') {
    try {
      await client.quit();
      return;
    } catch {
      // fall through: drop the connection
    }
  }
  client.disconnect();
}

/**
 * Logs a connection's outage once (ioredis reports each failed reconnect)
 * and its return. The listener also keeps an 'error' event from ending the
 * process.
 */
function reportOutages(connection: Redis, log: Logger, messages: { down: string; back: string }): void {
  let reported = false;
  connection.on('ready', () => {
    if (reported) log.info(messages.back);
    reported = false;
  });
  connection.on('error', (error: Error) => {
    if (reported) return;
    reported = true;
    log.warn({ err: error }, messages.down);
  });
}
