// Liveness, readiness and metrics: no auth (production restricts /metrics at
// the network level).
import cluster from 'node:cluster';
import { Type } from 'typebox';
import { copyMetrics } from '../observability/cluster-metrics.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { JobQueue } from '../messaging/queue.ts';
import { withDeadline } from '../deadline.ts';
import { DatabaseUnavailableError, type Database } from '../storage/database.ts';
import type { Routes } from './server.ts';
import { sendProblem } from './problems.ts';
import { Problem } from './schemas.ts';

/** A load balancer's health check waits about this long; a slower database is as good as none for it. */
const READINESS_BUDGET_MS = 1_000;

/**
 * Why this process cannot serve, or undefined when it can: the database
 * answers within READINESS_BUDGET_MS and its schema is at the version this
 * build needs. GET /readyz and the orderflow_ready gauge both ask this.
 */
export async function notReady(
  db: Database,
  latestMigration: number,
): Promise<{ reason: string; error?: unknown } | undefined> {
  try {
    const rows = await withDeadline(
      db.query<{ version: number }>('SELECT coalesce(max(version), 0)::int AS version FROM public.schema_migrations'),
      READINESS_BUDGET_MS,
      () => new DatabaseUnavailableError(`the database did not answer within ${READINESS_BUDGET_MS} ms`),
    );
    const version = rows[0]?.version ?? 0;
    return version < latestMigration
      ? { reason: `database schema is at version ${version}, this build needs ${latestMigration}` }
      : undefined;
  } catch (error) {
    return { reason: 'the database is not reachable', error };
  }
}

export function operationsRoutes(deps: {
  db: Database;
  metrics: Metrics;
  queue: JobQueue;
  latestMigration: number;
}): Routes {
  // Bounded: a dependency that is down leaves its figures out instead of holding the scrape up.
  const refresh = () => deps.queue.refreshMetrics();
  // A node:cluster copy answers for all the copies sharing its port (cluster-metrics.ts).
  const scrape = cluster.isWorker
    ? copyMetrics(deps.metrics.registry, refresh)
    : async () => {
        await refresh();
        return deps.metrics.registry.metrics();
      };
  return async (app) => {
    app.get('/healthz', {
      schema: {
        tags: ['operations'],
        summary: 'Liveness: 200 while the process is alive',
        response: { 200: Type.Object({ status: Type.Literal('ok') }) },
      },
      handler: async () => ({ status: 'ok' as const }),
    });

    app.get('/readyz', {
      schema: {
        tags: ['operations'],
        summary: 'Readiness: 200 only when the database is reachable and migrated',
        response: { 200: Type.Object({ status: Type.Literal('ready') }), 503: Problem },
      },
      handler: async (request, reply) => {
        const unready = await notReady(deps.db, deps.latestMigration);
        if (unready === undefined) return { status: 'ready' as const };
        if (unready.error !== undefined) request.log.warn({ err: unready.error }, 'readiness check failed');
        return sendProblem(reply, 'unavailable', unready.reason);
      },
    });

    app.get('/metrics', {
      schema: {
        tags: ['operations'],
        summary: 'Prometheus metrics (production restricts this route at the network level)',
        response: {
          200: {
            description: 'Prometheus text exposition format',
            content: { [deps.metrics.registry.contentType]: { schema: Type.String() } },
          },
        },
      },
      handler: async (_request, reply) => reply.type(deps.metrics.registry.contentType).send(await scrape()),
    });
  };
}
