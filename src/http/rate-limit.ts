// Per-customer rate limits. A route opts in with `config.rateLimit` (see
// perCustomerLimit below); the key is the customer the bearer token names
// (or the client's address without one), so the bearer-auth hook must have
// run first. It does: the auth hook is an instance-level onRequest
// hook, and the limiter adds itself to the route's own onRequest hooks, which
// Fastify runs after the instance's. Counters live in Redis when there is one,
// so every process enforces one shared limit; otherwise each process counts
// on its own.
import rateLimit from '@fastify/rate-limit';
import type { FastifyRequest } from 'fastify';
import type { Redis } from 'ioredis';
import { AppError } from '../errors.ts';
import type { Server } from './server.ts';

export interface RateLimitOptions {
  /** Redis for shared counters; undefined keeps them in this process. */
  redis: Redis | undefined;
  keyPrefix: string;
}

export async function registerRateLimits(server: Server, options: RateLimitOptions): Promise<void> {
  await server.register(rateLimit, {
    global: false,
    ...(options.redis ? { redis: options.redis, nameSpace: `${options.keyPrefix}rate-limit:` } : {}),
    // Redis down must not stop orders: the limit is a guard against runaway
    // clients, not something the contract promises, so it fails open (and
    // orderflow_redis_up says so).
    skipOnError: true,
    keyGenerator: (request: FastifyRequest) => request.principal?.customerId ?? `ip:${request.ip}`,
    errorResponseBuilder: (_request, context) =>
      new AppError(
        'rate_limited',
        `too many requests from this customer: at most ${context.max} per minute; retry in ${context.after}`,
      ),
  });
}

/** Route config for a per-customer limit of `perMinute` requests, or none when 0. */
export function perCustomerLimit(perMinute: number): { rateLimit: { max: number; timeWindow: number } | false } {
  return { rateLimit: perMinute > 0 ? { max: perMinute, timeWindow: 60_000 } : false };
}
