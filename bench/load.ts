// The parent's side of the load generator. The generator runs in a child
// process (load-generator.ts), not in a worker thread: it then gets its own
// event loop, its own heap and its own RSS, so the embedded server's memory
// figure is the server's alone and the client competes for CPU the way an
// outside client would.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LatencySummary } from './stats.ts';

export type Workload =
  /** N clients place 1–3-line orders of random SKUs back to back. */
  | { kind: 'throughput'; skus: string[] }
  /** Every buyer orders one unit of one SKU again and again until it is sold out. */
  | { kind: 'flashsale'; sku: string }
  /** N clients GET paths (picked at random) back to back; every 2xx answer counts as accepted. */
  | { kind: 'reads'; paths: string[] };

export interface LoadSpec {
  url: string;
  /** HTTP connections to keep open. */
  connections: number;
  /** Logical clients running at once; each has its own token. Throughput uses one per connection. */
  tokens: string[];
  durationMs: number;
  workload: Workload;
  /** Makes Idempotency-Keys unique across runs against the same database. */
  keyPrefix: string;
}

export interface LoadTick {
  /** Seconds since load started, at the end of this window. */
  t: number;
  accepted: number;
  rejected: number;
  failed: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
}

export interface LoadResult {
  /** CPU seconds the load generator used, start-up included (it exits before anyone can read its /proc). */
  cpuSeconds: number;
  startedAtEpochMs: number;
  elapsedMs: number;
  /** Answers 202 with status pending: stock held, payment queued. */
  accepted: number;
  /** Answers 202 with status rejected (out of stock). */
  rejected: number;
  /** Requests that never got a 2xx after their retries (network errors, 5xx, 429). */
  failed: number;
  /** Attempts that were retried with the same Idempotency-Key. */
  retries: number;
  /** Non-2xx answers and network errors, by status or error code. */
  errors: Record<string, number>;
  /** Latency of every 2xx answer, queueing in the client's pool included. */
  latency: LatencySummary;
  ticks: LoadTick[];
  /** Every order id answered with 202, to prove each can be read back. */
  acceptedIds: string[];
  /** Flash sale: ms after start when the last reservation was answered, and when the first out-of-stock answer came. */
  lastReservedAtMs: number | undefined;
  firstOutOfStockAtMs: number | undefined;
}

export type ParentMessage = { kind: 'start'; spec: LoadSpec } | { kind: 'stop' };
export type ChildMessage =
  { kind: 'tick'; tick: LoadTick } | { kind: 'done'; result: LoadResult } | { kind: 'error'; message: string };

const GENERATOR = fileURLToPath(new URL('./load-generator.ts', import.meta.url));

export function runLoad(spec: LoadSpec, onTick: (tick: LoadTick) => void): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = fork(GENERATOR, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    let settled = false;
    child.on('message', (message: ChildMessage) => {
      if (message.kind === 'tick') onTick(message.tick);
      else if (message.kind === 'done') {
        settled = true;
        resolve(message.result);
        child.disconnect();
      } else {
        settled = true;
        reject(new Error(`load generator: ${message.message}`));
        child.kill();
      }
    });
    child.on('error', (error) => {
      if (!settled) reject(error);
      settled = true;
    });
    child.on('exit', (code, signal) => {
      if (!settled) reject(new Error(`load generator exited early (code ${code}, signal ${signal})`));
      settled = true;
    });
    child.send({ kind: 'start', spec } satisfies ParentMessage);
  });
}
