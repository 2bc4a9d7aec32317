// An OTLP/HTTP trace receiver in the test process: what a collector would
// get. The exporters send OTLP's JSON encoding (OTEL_EXPORTER_OTLP_PROTOCOL=
// http/json; https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding),
// where trace and span ids are hex strings and enums are numbers. The bench
// uses the same receiver in its counting form: it keeps no span, and also
// takes the exporters' default encoding (protobuf), so that what it measures
// is tracing as a deployment runs it.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  attributes: Record<string, unknown>;
  links: { traceId: string; spanId: string; attributes: Record<string, unknown> }[];
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  status: number;
  startNs: bigint;
  endNs: bigint;
}

export const SPAN_KIND = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 } as const;

export interface OtlpReceiver {
  /** OTEL_EXPORTER_OTLP_ENDPOINT for the processes under test. */
  readonly endpoint: string;
  /** Every span received, decoded; empty when counting only. */
  readonly spans: ReceivedSpan[];
  /** How many spans arrived, by service.name, in either encoding. */
  readonly counts: Map<string, number>;
  /** Environment that sends a process' every span here, promptly. */
  env(): Record<string, string>;
  close(): Promise<void>;
}

interface OtlpValue {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
  arrayValue?: { values?: OtlpValue[] };
}

type OtlpAttributes = { key: string; value: OtlpValue }[] | undefined;

function valueOf(value: OtlpValue): unknown {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(valueOf);
  return undefined;
}

function attributesOf(list: OtlpAttributes): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map(({ key, value }) => [key, valueOf(value)]));
}

interface OtlpExport {
  resourceSpans?: {
    resource?: { attributes?: OtlpAttributes };
    scopeSpans?: {
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        startTimeUnixNano: string;
        endTimeUnixNano: string;
        attributes?: OtlpAttributes;
        links?: { traceId: string; spanId: string; attributes?: OtlpAttributes }[];
        status?: { code?: number };
      }[];
    }[];
  }[];
}

/** Decodes one OTLP/JSON export request into spans. */
export function decodeExport(body: OtlpExport): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  for (const resourceSpans of body.resourceSpans ?? []) {
    const name = attributesOf(resourceSpans.resource?.attributes)['service.name'];
    const service = typeof name === 'string' ? name : '';
    for (const scope of resourceSpans.scopeSpans ?? []) {
      for (const span of scope.spans ?? []) {
        spans.push({
          service,
          traceId: span.traceId,
          spanId: span.spanId,
          parentSpanId: span.parentSpanId || undefined,
          name: span.name,
          kind: span.kind,
          attributes: attributesOf(span.attributes),
          links: (span.links ?? []).map((link) => ({
            traceId: link.traceId,
            spanId: link.spanId,
            attributes: attributesOf(link.attributes),
          })),
          status: span.status?.code ?? 0,
          startNs: BigInt(span.startTimeUnixNano),
          endNs: BigInt(span.endTimeUnixNano),
        });
      }
    }
  }
  return spans;
}

/**
 * Spans per service.name in one OTLP/protobuf ExportTraceServiceRequest, read
 * off the wire format without decoding the spans themselves
 * (opentelemetry/proto/collector/trace/v1/trace_service.proto: request field
 * 1 ResourceSpans; ResourceSpans 1 Resource, 2 ScopeSpans; Resource 1
 * KeyValue attributes; ScopeSpans 2 Span). Throws on a truncated message.
 */
export function countProtobufSpans(body: Uint8Array): Map<string, number> {
  const counts = new Map<string, number>();
  const text = new TextDecoder();
  forEachLengthDelimited(body, 0, body.length, (field, start, end) => {
    if (field !== 1) return;
    let service = '';
    let spans = 0;
    forEachLengthDelimited(body, start, end, (field, start, end) => {
      if (field === 1) {
        forEachLengthDelimited(body, start, end, (field, start, end) => {
          if (field !== 1) return;
          let key = '';
          let value = '';
          forEachLengthDelimited(body, start, end, (field, start, end) => {
            if (field === 1) key = text.decode(body.subarray(start, end));
            // AnyValue: field 1 is string_value.
            else if (field === 2)
              forEachLengthDelimited(
                body,
                start,
                end,
                (f, s, e) => f === 1 && (value = text.decode(body.subarray(s, e))),
              );
          });
          if (key === 'service.name') service = value;
        });
      } else if (field === 2) {
        forEachLengthDelimited(body, start, end, (field) => field === 2 && spans++);
      }
    });
    counts.set(service, (counts.get(service) ?? 0) + spans);
  });
  return counts;
}

/** Calls `visit` with each length-delimited field of the message in body[start, end); skips the others. */
function forEachLengthDelimited(
  body: Uint8Array,
  start: number,
  end: number,
  visit: (field: number, start: number, end: number) => unknown,
): void {
  let pos = start;
  const varint = (): number => {
    let value = 0;
    for (let shift = 1; ; shift *= 128) {
      if (pos >= end) throw new Error('truncated protobuf message');
      const byte = body[pos++]!;
      value += (byte & 0x7f) * shift;
      if (byte < 0x80) return value;
    }
  };
  while (pos < end) {
    const key = varint();
    const wireType = key % 8;
    if (wireType === 0) varint();
    else if (wireType === 1) pos += 8;
    else if (wireType === 5) pos += 4;
    else if (wireType === 2) {
      const length = varint();
      if (pos + length > end) throw new Error('truncated protobuf message');
      visit(Math.floor(key / 8), pos, pos + length);
      pos += length;
    } else throw new Error(`protobuf wire type ${wireType} is not used by OTLP`);
  }
  if (pos > end) throw new Error('truncated protobuf message');
}

export interface OtlpReceiverOptions {
  /**
   * Count the spans only (`counts`), keep none, and take the protobuf
   * encoding too: for a benchmark, where hundreds of thousands of spans
   * arrive in the exporters' default encoding.
   */
  countOnly?: boolean;
}

export async function startOtlpReceiver(options: OtlpReceiverOptions = {}): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const counts = new Map<string, number>();
  const add = (service: string, n: number) => counts.set(service, (counts.get(service) ?? 0) + n);
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      if (request.method !== 'POST' || request.url !== '/v1/traces') {
        response.writeHead(404).end();
        return;
      }
      const type = String(request.headers['content-type']);
      const json = type.startsWith('application/json');
      const protobuf = options.countOnly === true && type.startsWith('application/x-protobuf');
      // A compressed body would be miscounted: refuse it rather than count nothing.
      const encoding = request.headers['content-encoding'];
      if ((!json && !protobuf) || (encoding !== undefined && encoding !== 'identity')) {
        response.writeHead(415).end();
        return;
      }
      try {
        const body = Buffer.concat(chunks);
        if (protobuf) {
          for (const [service, n] of countProtobufSpans(body)) add(service, n);
          // An empty ExportTraceServiceResponse: everything accepted.
          response.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
          return;
        }
        const decoded = decodeExport(JSON.parse(body.toString('utf8')) as OtlpExport);
        for (const span of decoded) add(span.service, 1);
        if (!options.countOnly) spans.push(...decoded);
        response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch (error) {
        response
          .writeHead(400, { 'content-type': 'application/json' })
          .end(JSON.stringify({ error: (error as Error).message }));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    endpoint,
    spans,
    counts,
    env: () => ({
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_TRACES_SAMPLER: 'parentbased_always_on',
      // Export within a fifth of a second rather than five seconds.
      OTEL_BSP_SCHEDULE_DELAY: '200',
    }),
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
