// Structured JSON logs (pino). Bearer tokens, card tokens and secrets never
// reach a log line.
import { pino, type Logger } from 'pino';

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'orderflow' },
    redact: {
      paths: ['req.headers.authorization', 'headers.authorization', 'authorization', 'token', '*.token', 'cardToken', '*.cardToken', 'payment.token', 'password', '*.password'],
      censor: '[redacted]',
    },
  });
}
