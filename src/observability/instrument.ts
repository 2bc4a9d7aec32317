// Starts OpenTelemetry tracing before the application loads, when the
// standard OTEL_* variables ask for it. Load it first, with
//   node --import ./src/observability/instrument.ts src/main.ts serve
// (npm start, npm run cluster and the container image do): instrumentations
// patch modules as they are loaded, and a module loaded before them (node:http
// under Fastify, ioredis) is silently left out. When tracing is off this file
// loads nothing else.
import cluster from 'node:cluster';
import { tracingRequested } from './tracing-config.ts';

// The supervisor of WEB_CONCURRENCY copies serves nothing: only the copies trace.
const supervisor = cluster.isPrimary && Number(process.env.WEB_CONCURRENCY ?? '1') > 1;
if (tracingRequested(process.env) && !supervisor) {
  const { startTracing } = await import('./tracing-sdk.ts');
  startTracing(process.env);
}
