// Every gateway call goes through one policy: a timeout per attempt, retries
// with jittered exponential backoff (same idempotency key, so a retry can
// never charge twice), and a circuit breaker shared by all calls that stops
// hammering a gateway that is down. Only transient failures (network errors,
// timeouts, 5xx, 429: TransientGatewayError) are retried and counted by the
// breaker. Declines are answers; request errors and anything else (a local
// fault, an unreadable answer) say nothing about the gateway's health and
// are passed through at once: one payment that can never succeed must not
// open the breaker that every other payment goes through.
import {
  BrokenCircuitError,
  CircuitState,
  ConsecutiveBreaker,
  ExponentialBackoff,
  TaskCancelledError,
  TimeoutStrategy,
  circuitBreaker,
  handleWhen,
  retry,
  timeout,
  wrap,
} from 'cockatiel';
import type { Attributes } from '@opentelemetry/api';
import { GATEWAY } from '../tunables.ts';
import type { Metrics } from '../observability/metrics.ts';
import { inSpan } from '../observability/tracing.ts';
import {
  TransientGatewayError,
  type ChargeRequest,
  type ChargeResult,
  type PaymentGateway,
  type RefundRequest,
  type VoidRequest,
  type VoidResult,
} from './gateway.ts';

export interface ResilienceOptions {
  attemptTimeoutMs?: number;
  maxAttempts?: number;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Consecutive failed calls that open the circuit. */
  breakAfter?: number;
  halfOpenAfterMs?: number;
}

const isTransient = (error: unknown) => error instanceof TransientGatewayError || error instanceof TaskCancelledError;

export class ResilientGateway implements PaymentGateway {
  readonly #inner: PaymentGateway;
  readonly #metrics: Metrics;
  readonly #policy;

  constructor(inner: PaymentGateway, metrics: Metrics, options: ResilienceOptions = {}) {
    this.#inner = inner;
    this.#metrics = metrics;
    // abortOnReturn off: an attempt returns only once it has read the whole
    // answer, so there is nothing left to cancel, and aborting the finished
    // attempt's signal built an AbortError (with its stack) on every call.
    const attemptTimeout = timeout(options.attemptTimeoutMs ?? GATEWAY.attemptTimeoutMs, {
      strategy: TimeoutStrategy.Aggressive,
      abortOnReturn: false,
    });
    const breaker = circuitBreaker(handleWhen(isTransient), {
      halfOpenAfter: options.halfOpenAfterMs ?? GATEWAY.halfOpenAfterMs,
      breaker: new ConsecutiveBreaker(options.breakAfter ?? GATEWAY.breakAfter),
    });
    breaker.onStateChange((state) => {
      metrics.gatewayCircuitOpen.set(state === CircuitState.Closed ? 0 : 1);
      if (state === CircuitState.Open) metrics.gatewayCircuitOpened.inc();
    });
    // Every operation and outcome starts at 0, so rate() sees the first call of each (see metrics.ts).
    for (const operation of ['charge', 'refund', 'void'])
      for (const outcome of ['ok', 'transient', 'error']) metrics.gatewayDuration.zero({ operation, outcome });
    const retries = retry(handleWhen(isTransient), {
      maxAttempts: options.maxAttempts ?? GATEWAY.maxAttempts,
      backoff: new ExponentialBackoff({
        initialDelay: options.initialBackoffMs ?? GATEWAY.backoff.initialMs,
        maxDelay: options.maxBackoffMs ?? GATEWAY.backoff.maxMs,
      }),
    });
    this.#policy = wrap(retries, breaker, attemptTimeout);
  }

  charge(request: ChargeRequest): Promise<ChargeResult> {
    return this.#call('charge', { 'orderflow.order_id': request.reference }, (signal) =>
      this.#inner.charge(request, signal),
    );
  }

  refund(request: RefundRequest): Promise<{ refundId: string }> {
    return this.#call('refund', { 'orderflow.charge_id': request.chargeId }, (signal) =>
      this.#inner.refund(request, signal),
    );
  }

  voidCharge(request: VoidRequest): Promise<VoidResult> {
    return this.#call('void', { 'orderflow.order_id': request.reference }, (signal) =>
      this.#inner.voidCharge(request, signal),
    );
  }

  /** One call, with its retries, in one span (each HTTP attempt is a child span: http-gateway.ts). */
  #call<T>(operation: string, attributes: Attributes, attempt: (signal: AbortSignal) => Promise<T>): Promise<T> {
    return inSpan(`payment gateway ${operation}`, { attributes }, () => this.#execute(operation, attempt));
  }

  async #execute<T>(operation: string, attempt: (signal: AbortSignal) => Promise<T>): Promise<T> {
    try {
      return await this.#policy.execute(async ({ signal }) => {
        const stop = this.#metrics.gatewayDuration.startTimer({ operation });
        try {
          const result = await attempt(signal);
          stop({ outcome: 'ok' });
          return result;
        } catch (error) {
          stop({ outcome: isTransient(error) ? 'transient' : 'error' });
          throw error;
        }
      });
    } catch (error) {
      if (error instanceof BrokenCircuitError) {
        throw new TransientGatewayError('payment gateway circuit is open: too many recent failures', { cause: error });
      }
      if (error instanceof TaskCancelledError) {
        throw new TransientGatewayError('payment gateway timed out', { cause: error });
      }
      throw error;
    }
  }
}
