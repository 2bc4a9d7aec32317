// The message broker port (NATS JetStream or RabbitMQ). The relay publishes
// outbox rows through it; BrokerQueue consumes through it. Delivery is at
// least once: a message can arrive again after a crash, a lost ack or a
// re-publish, and the consumer side (the inbox) absorbs the repeats.
import { withDeadline } from '../deadline.ts';
import type { TraceCarrier } from '../observability/tracing.ts';
import type { BrokerDeadLetters } from './dead-letters.ts';
import type { JsonObject } from './queue.ts';

export interface OutgoingMessage {
  /** Stable across re-publishes (the outbox id): the broker's dedupe key and the inbox key. */
  id: string;
  queue: string;
  payload: JsonObject;
  maxAttempts: number;
  /** The trace its consumer continues: sent as the traceparent and tracestate headers. */
  trace?: TraceCarrier;
}

export interface Delivery {
  id: string;
  queue: string;
  /**
   * The message body as the broker holds it (UTF-8 text). It is not parsed
   * here: anything may have been published to the queue, and the consumer
   * side (BrokerQueue) checks it before use and dead-letters what is not
   * one of its messages.
   */
  body: string;
  /** 1 on the first delivery; counts broker redeliveries and scheduled retries. */
  attempt: number;
  /** The traceparent and tracestate headers as received (unchecked: anything may have published the message). */
  trace: { traceparent?: unknown; tracestate?: unknown };
  maxAttempts: number;
  /** Done: the broker forgets the message. */
  ack(): Promise<void>;
  /** Deliver again after delayMs, as attempt + 1. */
  retry(delayMs: number): Promise<void>;
  /** Give up: park the message where an operator can inspect it, and forget it here. */
  deadLetter(reason: string): Promise<void>;
}

export type DeliveryHandler = (delivery: Delivery) => Promise<void>;

export interface Subscription {
  /** Stops taking messages, hands back the ones not started, and waits for those in flight. */
  stop(): Promise<void>;
}

export interface Broker extends BrokerDeadLetters {
  readonly kind: 'nats' | 'rabbitmq';
  /** Publishes the batch and resolves once the broker has confirmed every message (rejects otherwise). */
  publish(messages: readonly OutgoingMessage[]): Promise<void>;
  /**
   * Delivers the queue's messages to handler, at most `concurrency` at a time.
   * Connection loss is survived: the subscription reconnects with backoff.
   */
  consume(queue: string, handler: DeliveryHandler, options: { concurrency: number }): Subscription;
  /** Messages waiting in the broker for the queue (ready, delayed or unacknowledged, as far as the broker tells cheaply). */
  pending(queue: string): Promise<number>;
  /** Messages parked in the queue's dead letters. */
  deadLettered(queue: string): Promise<number>;
  close(): Promise<void>;
}

/** Names derived from one prefix, so several deployments (or tests) share a broker without seeing each other's messages. */
export const DEFAULT_BROKER_PREFIX = 'orderflow';

/** Settings every broker adapter takes. */
export interface BrokerOptions {
  /** Names the broker's topology; distinct prefixes never see each other's messages. */
  prefix?: string;
  /** How long a publish may wait for the broker's confirmation. */
  publishTimeoutMs?: number;
  /** Attempts a message gets when it carries no count of its own (published by something else than the relay). */
  defaultMaxAttempts?: number;
}

/** The most attempts a message may ask for in its headers; a larger (or unreadable) count is not trusted. */
const MAX_ATTEMPTS_LIMIT = 1_000;

/**
 * Reads an attempt count from a message header, which anything that can
 * publish to the broker may have set: a safe integer from 1 to
 * MAX_ATTEMPTS_LIMIT, or the fallback.
 */
export function attemptCount(header: unknown, fallback: number): number {
  const value =
    typeof header === 'number' ? header : typeof header === 'string' && /^\d{1,4}$/.test(header) ? Number(header) : NaN;
  return Number.isSafeInteger(value) && value >= 1 && value <= MAX_ATTEMPTS_LIMIT ? value : fallback;
}

/**
 * The message headers that carry a trace: traceparent and tracestate, as in
 * HTTP (W3C Trace Context; its AMQP and NATS mappings use the same names).
 * Neither client library sets them, so both adapters write them here.
 */
export function traceHeaders(trace: TraceCarrier | undefined): Record<string, string> {
  if (!trace) return {};
  return { traceparent: trace.traceparent, ...(trace.tracestate ? { tracestate: trace.tracestate } : {}) };
}

/** Gives up on a broker call that hangs (a broker that accepts connections but never answers). */
export function withTimeout<T>(what: string, ms: number, promise: Promise<T>): Promise<T> {
  return withDeadline(promise, ms, () => new Error(`${what} timed out after ${ms} ms`));
}
