// The OpenTelemetry SDK of a process that traces: OTLP export configured by
// the OTEL_* variables (endpoint, protocol, headers, sampler, batching), the
// instrumentations of the libraries we do not wrap ourselves, and nothing
// else (metrics stay with Prometheus, logs with pino). Loaded only when
// tracing is on (instrument.ts).
import type { IncomingMessage } from 'node:http';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { IORedisInstrumentation } from '@opentelemetry/instrumentation-ioredis';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { serviceName } from './tracing-config.ts';
import { enableTracing } from './tracing.ts';

/** Probes and scrapes: a span each would bury the orders' traces. */
const UNTRACED_PATHS = new Set(['/healthz', '/readyz', '/metrics']);

/** Starts the SDK; tracing helpers (tracing.ts) make spans from now on. */
export function startTracing(env: Record<string, string | undefined>): void {
  const sdk = new NodeSDK({
    serviceName: serviceName(env),
    // Exporter, sampler and batching come from the OTEL_* variables.
    metricReaders: [],
    logRecordProcessors: [],
    instrumentations: [
      // Incoming requests (the HTTP server span of every API call); outgoing
      // node:http calls only inside a trace. The gateway client (undici) makes
      // its own span (http-gateway.ts).
      new HttpInstrumentation({
        ignoreIncomingRequestHook: (request: IncomingMessage) =>
          UNTRACED_PATHS.has((request.url ?? '/').split('?')[0] ?? '/'),
        requireParentforOutgoingSpans: true,
      }),
      // The cache and the rate limits, inside a request's trace only.
      new IORedisInstrumentation({ requireParentSpan: true }),
    ],
  });
  sdk.start();
  enableTracing(() => sdk.shutdown());
}
