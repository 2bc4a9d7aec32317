// Traces (OpenTelemetry). The code that makes spans uses only the API
// package; the SDK that records and exports them is started by instrument.ts
// (loaded with `node --import`) only when the standard OTEL_* variables ask
// for it. While it is off, every helper here returns at once, before any span
// or carrier is made, so tracing off costs one boolean test per call site
// (docs/performance.md).
//
// One order is one trace across processes. Its context (W3C Trace Context,
// https://www.w3.org/TR/trace-context/) travels as a carrier of plain
// strings: in the outbox and job rows (trace_context), in broker message
// headers, in the gateway's request headers.
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
} from '@opentelemetry/api';

export { SpanKind };
export type { Span };

const tracer = trace.getTracer('orderflow');
let enabled = false;
let stop: (() => Promise<void>) | undefined;

/** Called once the SDK runs (instrument.ts, or a test that starts one): spans are made from now on; shutdown flushes them. */
export function enableTracing(shutdown: () => Promise<void>): void {
  enabled = true;
  stop = shutdown;
}

export function tracingEnabled(): boolean {
  return enabled;
}

/** Exports the spans still buffered and stops the SDK; a no-op when tracing is off. Never rejects: losing spans must not fail a shutdown. */
export async function shutdownTracing(): Promise<void> {
  const shutdown = stop;
  stop = undefined;
  enabled = false;
  await shutdown?.().catch((error: unknown) =>
    process.stderr.write(`orderflow: flushing traces failed: ${(error as Error).message}\n`),
  );
}

/** A trace context as W3C Trace Context header values. */
export interface TraceCarrier {
  traceparent: string;
  tracestate?: string;
}

/** The context of the active span as a carrier to store or send; undefined when tracing is off or no span is active. */
export function activeCarrier(): TraceCarrier | undefined {
  if (!enabled) return undefined;
  return carrierOf(context.active());
}

function carrierOf(ctx: Context): TraceCarrier | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier.traceparent
    ? { traceparent: carrier.traceparent, ...(carrier.tracestate ? { tracestate: carrier.tracestate } : {}) }
    : undefined;
}

/**
 * The context a carrier names, to continue its trace. The carrier comes from
 * a row or a message header that anything may have written: a value that is
 * not a string is ignored, and the propagator ignores a malformed traceparent.
 */
export function contextOf(carrier: unknown): Context {
  if (typeof carrier !== 'object' || carrier === null) return ROOT_CONTEXT;
  const { traceparent, tracestate } = carrier as Record<string, unknown>;
  if (typeof traceparent !== 'string') return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, { traceparent, ...(typeof tracestate === 'string' ? { tracestate } : {}) });
}

/** A carrier read from a JSON column: the same checks as contextOf, kept as a carrier. */
export function carrierFrom(value: unknown): TraceCarrier | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { traceparent, tracestate } = value as Record<string, unknown>;
  if (typeof traceparent !== 'string') return undefined;
  return { traceparent, ...(typeof tracestate === 'string' ? { tracestate } : {}) };
}

export interface SpanOptions {
  kind?: SpanKind;
  attributes?: Attributes;
  links?: Link[];
  /** The parent: the active context when omitted. */
  parent?: Context;
  /** Start a new trace (links then say where the work came from). */
  root?: boolean;
}

/**
 * Runs fn in a new span (active while fn runs) and ends the span however fn
 * ends: an exception is recorded on it, marked as an error and rethrown.
 * With tracing off fn runs alone and gets undefined.
 */
export function inSpan<T>(name: string, options: SpanOptions, fn: (span: Span | undefined) => Promise<T>): Promise<T> {
  if (!enabled) return fn(undefined);
  const parent = options.root ? ROOT_CONTEXT : (options.parent ?? context.active());
  const span = tracer.startSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes, links: options.links },
    parent,
  );
  return context.with(trace.setSpan(parent, span), async () => {
    try {
      return await fn(span);
    } catch (error) {
      failSpan(span, error);
      throw error;
    } finally {
      span.end();
    }
  });
}

/** Marks a span failed with the error (its type and message; the stack stays in the logs). */
export function failSpan(span: Span, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
  span.setAttribute('error.type', error instanceof Error ? error.name : typeof error);
}

/** Marks the active span failed (a job that failed, handled without an exception leaving its span). */
export function failActiveSpan(error: unknown): void {
  const span = activeSpan();
  if (span) failSpan(span, error);
}

/** The span active now, when tracing is on. */
export function activeSpan(): Span | undefined {
  return enabled ? trace.getSpan(context.active()) : undefined;
}

/**
 * Starts a span outside inSpan, for work that ends elsewhere (a publish of a
 * batch whose messages each get a span); the caller must end it. Undefined
 * when tracing is off.
 */
export function startSpan(name: string, options: SpanOptions): Span | undefined {
  if (!enabled) return undefined;
  return tracer.startSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes, links: options.links },
    options.root ? ROOT_CONTEXT : (options.parent ?? context.active()),
  );
}

/** The carrier that makes a span the parent of work elsewhere (a message's consumer). */
export function carrierOfSpan(span: Span): TraceCarrier | undefined {
  return carrierOf(trace.setSpan(ROOT_CONTEXT, span));
}

/** Fills the request headers that continue the active trace in the service called (traceparent, tracestate). */
export function injectHeaders(headers: Record<string, string>): void {
  if (enabled) propagation.inject(context.active(), headers);
}

/** trace_id and span_id of the active span for a log line (pino mixin); nothing outside a span. */
export function traceLogFields(): Record<string, string> {
  const span = activeSpan();
  if (!span) return {};
  const { traceId, spanId, traceFlags } = span.spanContext();
  return { trace_id: traceId, span_id: spanId, trace_flags: `0${traceFlags.toString(16)}`.slice(-2) };
}

/**
 * fn, to run in the context active now whoever calls it: a driver's pool may
 * call a transaction's callback from another caller's context, when a
 * connection freed by that caller's query becomes this one's.
 */
export function bindActive<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
  return enabled ? context.bind(context.active(), fn) : fn;
}

/** Runs fn outside any trace: work done for many callers at once must not pass for one caller's. */
export function outsideTraces<T>(fn: () => T): T {
  return enabled ? context.with(ROOT_CONTEXT, fn) : fn();
}

/** Names the order on the active span (orderflow.order_id), so an order's spans can be found by its id. */
export function tagOrder(orderId: string): void {
  if (enabled) trace.getSpan(context.active())?.setAttribute('orderflow.order_id', orderId);
}
