// Structured JSON logs (pino). Bearer tokens, card tokens and secrets never
// reach a log line. While tracing is on, a line written inside a span carries
// its trace_id and span_id, so a log line leads to its trace and back.
import { pino, type Logger } from 'pino';
import { traceLogFields, tracingEnabled } from './tracing.ts';

/** The paths whose values are replaced by "[redacted]" (pino's redact syntax). */
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  'token',
  '*.token',
  'cardToken',
  '*.cardToken',
  'payment.token',
  'password',
  '*.password',
];

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service: 'orderflow' },
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    // Only while tracing: off, a line costs no lookup of the active span.
    ...(tracingEnabled() ? { mixin: traceLogFields } : {}),
  };
  return destination ? pino(options, destination) : pino(options);
}
