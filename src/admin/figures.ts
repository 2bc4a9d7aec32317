// Live figures for the operators' console. Every process, whatever its role,
// measures itself over each interval (about a second) and replaces its row
// in admin.process_figures; the console's stream (GET
// /v1/admin/figures) reads every fresh row. Through the database because it
// is the one thing every process of every shape already shares: no broker
// in the embedded shape, no Redis required, no list of process addresses to
// scrape. One small upsert per process per second is the whole cost.
//
// The rates and means come from the Prometheus metrics this process already
// keeps (the difference between two readings); accept latency percentiles
// from the accept requests' own durations, kept for the interval (a uniform
// sample of at most MAX_SAMPLES when there are more), so they are exact
// rather than interpolated from histogram buckets.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { JobQueue } from '../messaging/queue.ts';
import type { Database, Queryable } from '../storage/database.ts';
import type { Metrics } from '../observability/metrics.ts';
import {
  deleteProcessFigures,
  deleteStaleFigures,
  freshProcessFigures,
  writeProcessFigures,
  type ProcessFiguresRow,
  type ProcessIdentity,
} from './store.ts';

export interface ProcessFigures {
  /** Seconds these figures cover. */
  intervalSeconds: number;
  /** Orders per second through this process: placed (accepted, including those rejected out_of_stock at once), and payment outcomes. */
  orders: {
    acceptedPerSecond: number;
    confirmedPerSecond: number;
    rejectedPerSecond: number;
    cancelledPerSecond: number;
  };
  /** Latency of POST /v1/orders over the interval, in ms; null when no order was placed through this process. */
  acceptLatencyMs: { p50: number; p95: number; p99: number; max: number; count: number } | null;
  /** Jobs waiting or running per queue (database queue rows; broker mode: outbox, broker and in flight), as this process reads them; null when it could not. */
  backlog: Record<string, number> | null;
  /** Broker mode: outbox rows not yet published per queue; null without a broker or when unread. */
  outbox: Record<string, number> | null;
  /** Processes that call the gateway (the pay worker): calls per second, their mean latency in ms (null without calls), and the circuit breaker. */
  gateway: { callsPerSecond: number; meanLatencyMs: number | null; circuit: 'closed' | 'open' } | null;
  /** Group commit: transactions per second and their mean size in orders or jobs (null without any). */
  batches: {
    accept: { perSecond: number; meanSize: number | null };
    worker: { perSecond: number; meanSize: number | null };
  };
}

/** Accept latencies kept per interval; above this a uniform sample (Algorithm R) stands for them. */
const MAX_SAMPLES = 5_000;
/** Rows of processes silent this long are removed (by any survivor). */
export const STALE_FIGURES_MS = 60_000;

interface Reading {
  at: number;
  accepted: number;
  confirmed: number;
  rejected: number;
  cancelled: number;
  gatewayCount: number;
  gatewaySum: number;
  acceptBatches: number;
  acceptBatched: number;
  workerBatches: number;
  workerBatched: number;
}

export interface FiguresReporterOptions {
  db: Database;
  metrics: Metrics;
  queue: JobQueue;
  log: Logger;
  role: string;
  /** Whether this process calls the payment gateway (reports the gateway and its breaker). */
  callsGateway: boolean;
  /** Broker mode: reports the outbox. */
  hasOutbox: boolean;
  intervalMs?: number;
}

export class FiguresReporter {
  readonly identity: ProcessIdentity;
  readonly #options: FiguresReporterOptions;
  readonly #intervalMs: number;
  #samples: number[] = [];
  #seen = 0;
  #last: Reading | undefined;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> = Promise.resolve();
  #ticks = 0;

  constructor(options: FiguresReporterOptions) {
    this.#options = options;
    this.#intervalMs = options.intervalMs ?? 1_000;
    this.identity = {
      processId: `${hostname()}-${process.pid}-${randomUUID().slice(0, 8)}`,
      role: options.role,
      host: hostname(),
      pid: process.pid,
      startedAt: new Date(),
    };
  }

  /** Records one accept request's duration, in ms. */
  observeAccept(ms: number): void {
    this.#seen++;
    if (this.#samples.length < MAX_SAMPLES) this.#samples.push(ms);
    else {
      const slot = Math.floor(Math.random() * this.#seen);
      if (slot < MAX_SAMPLES) this.#samples[slot] = ms;
    }
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      this.#running = this.report().then(
        () => undefined,
        (error: unknown) =>
          this.#options.log.warn(
            { err: error },
            "could not write this process's live figures; the next interval tries again",
          ),
      );
    }, this.#intervalMs);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#running;
    // Gone at once from the console rather than after STALE_FIGURES_MS.
    await deleteProcessFigures(this.#options.db, this.identity.processId).catch((error: unknown) =>
      this.#options.log.warn({ err: error }, "could not remove this process's live figures; they expire on their own"),
    );
  }

  /** Measures the interval since the last call and writes the row; returns what it wrote (the first call only sets the baseline and writes zeros). */
  async report(): Promise<ProcessFigures> {
    const figures = await this.measure();
    const { db } = this.#options;
    await writeProcessFigures(db, this.identity, figures);
    if (this.#ticks++ % 30 === 0) await deleteStaleFigures(db, STALE_FIGURES_MS);
    return figures;
  }

  async measure(): Promise<ProcessFigures> {
    const { metrics, queue } = this.#options;
    const now = await this.#read();
    const before = this.#last ?? now;
    this.#last = now;
    const seconds = Math.max((now.at - before.at) / 1000, 1e-3);
    const rate = (key: keyof Reading) => round((now[key] - before[key]) / seconds);
    const mean = (sum: keyof Reading, count: keyof Reading) =>
      now[count] > before[count] ? round((now[sum] - before[sum]) / (now[count] - before[count])) : null;

    const samples = this.#samples.sort((a, b) => a - b);
    this.#samples = [];
    this.#seen = 0;
    const percentile = (p: number) =>
      round(samples[Math.min(samples.length - 1, Math.ceil((p / 100) * samples.length) - 1)]!);

    await queue.refreshMetrics();
    const backlog = await gaugeByQueue(metrics.jobBacklog);
    const circuit = (await metrics.gatewayCircuitOpen.get()).values[0]?.value === 1 ? 'open' : 'closed';
    return {
      intervalSeconds: round(seconds),
      orders: {
        acceptedPerSecond: rate('accepted'),
        confirmedPerSecond: rate('confirmed'),
        rejectedPerSecond: rate('rejected'),
        cancelledPerSecond: rate('cancelled'),
      },
      acceptLatencyMs:
        samples.length === 0
          ? null
          : {
              p50: percentile(50),
              p95: percentile(95),
              p99: percentile(99),
              max: round(samples.at(-1)!),
              count: samples.length,
            },
      backlog: (await metrics.backlogUp.get()).values.some((v) => v.value === 0) ? null : backlog,
      outbox: this.#options.hasOutbox ? await gaugeByQueue(metrics.outboxBacklog) : null,
      gateway: this.#options.callsGateway
        ? {
            callsPerSecond: rate('gatewayCount'),
            meanLatencyMs:
              mean('gatewaySum', 'gatewayCount') === null ? null : round(mean('gatewaySum', 'gatewayCount')! * 1000),
            circuit,
          }
        : null,
      batches: {
        accept: { perSecond: rate('acceptBatches'), meanSize: mean('acceptBatched', 'acceptBatches') },
        worker: { perSecond: rate('workerBatches'), meanSize: mean('workerBatched', 'workerBatches') },
      },
    };
  }

  async #read(): Promise<Reading> {
    const { metrics } = this.#options;
    const transitions = (await metrics.orderTransitions.get()).values;
    const count = (match: (labels: { status?: string | number; reason?: string | number }) => boolean) =>
      transitions.filter((v) => match(v.labels)).reduce((sum, v) => sum + v.value, 0);
    const [gateway, accept, worker] = await Promise.all([
      histogram(metrics.gatewayDuration),
      histogram(metrics.acceptBatchSize),
      histogram(metrics.workerBatchSize),
    ]);
    return {
      at: performance.now(),
      accepted: count((l) => l.status === 'pending' || (l.status === 'rejected' && l.reason === 'out_of_stock')),
      confirmed: count((l) => l.status === 'confirmed'),
      rejected: count((l) => l.status === 'rejected'),
      cancelled: count((l) => l.status === 'cancelled'),
      gatewayCount: gateway.count,
      gatewaySum: gateway.sum,
      acceptBatches: accept.count,
      acceptBatched: accept.sum,
      workerBatches: worker.count,
      workerBatched: worker.sum,
    };
  }
}

/** The total count and sum of a histogram, over all its label sets. */
async function histogram(metric: {
  get(): Promise<{ values: { metricName?: string; value: number }[] }>;
}): Promise<{ count: number; sum: number }> {
  const { values } = await metric.get();
  let count = 0;
  let sum = 0;
  for (const v of values) {
    if (v.metricName?.endsWith('_count')) count += v.value;
    else if (v.metricName?.endsWith('_sum')) sum += v.value;
  }
  return { count, sum };
}

async function gaugeByQueue(metric: {
  get(): Promise<{ values: { labels: Record<string, string | number>; value: number }[] }>;
}): Promise<Record<string, number>> {
  const { values } = await metric.get();
  return Object.fromEntries(values.map((v) => [String(v.labels.queue), v.value]));
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

// --- the deployment's figures: every process's row, and their totals ----------
//
// The totals across every process's row are what the console plots. Rates and call counts add up; backlogs are read from
// shared tables (and the broker) by several processes alike, so the largest
// reading stands for the queue; latency percentiles cannot be combined, so
// the total is the slowest process's (what the worst-served client saw).

/** A process that has not written its figures for this long is left out (it stopped, or cannot reach the database). */
export const FRESH_FIGURES_MS = 5_000;

export interface DeploymentFigures {
  /** RFC 3339: when these were read. */
  at: string;
  processes: (Omit<ProcessFiguresRow, 'startedAt'> & { startedAt: string })[];
  totals: {
    processes: number;
    orders: ProcessFigures['orders'];
    acceptLatencyMs: { p50: number; p95: number; p99: number } | null;
    backlog: Record<string, number>;
    outbox: Record<string, number>;
    gateway: { callsPerSecond: number; meanLatencyMs: number | null; circuit: 'closed' | 'open' | null };
    batches: {
      accept: { perSecond: number; meanSize: number | null };
      worker: { perSecond: number; meanSize: number | null };
    };
  };
}

export async function deploymentFigures(db: Queryable): Promise<DeploymentFigures> {
  const rows = await freshProcessFigures(db, FRESH_FIGURES_MS);
  const figures = rows.map((r) => r.figures);
  const sum = (pick: (f: ProcessFigures) => number) => round(figures.reduce((total, f) => total + pick(f), 0));
  const weightedMean = (parts: { weight: number; mean: number | null }[]) => {
    const weight = parts.reduce((total, p) => total + (p.mean === null ? 0 : p.weight), 0);
    return weight === 0
      ? null
      : round(parts.reduce((total, p) => total + (p.mean === null ? 0 : p.mean * p.weight), 0) / weight);
  };
  const latencies = figures.flatMap((f) => (f.acceptLatencyMs ? [f.acceptLatencyMs] : []));
  const gateways = figures.flatMap((f) => (f.gateway ? [f.gateway] : []));
  return {
    at: new Date().toISOString(),
    processes: rows.map((r) => ({ ...r, startedAt: r.startedAt.toISOString() })),
    totals: {
      processes: rows.length,
      orders: {
        acceptedPerSecond: sum((f) => f.orders.acceptedPerSecond),
        confirmedPerSecond: sum((f) => f.orders.confirmedPerSecond),
        rejectedPerSecond: sum((f) => f.orders.rejectedPerSecond),
        cancelledPerSecond: sum((f) => f.orders.cancelledPerSecond),
      },
      acceptLatencyMs:
        latencies.length === 0
          ? null
          : {
              p50: Math.max(...latencies.map((l) => l.p50)),
              p95: Math.max(...latencies.map((l) => l.p95)),
              p99: Math.max(...latencies.map((l) => l.p99)),
            },
      backlog: maxByQueue(figures.map((f) => f.backlog)),
      outbox: maxByQueue(figures.map((f) => f.outbox)),
      gateway: {
        callsPerSecond: round(gateways.reduce((total, g) => total + g.callsPerSecond, 0)),
        meanLatencyMs: weightedMean(gateways.map((g) => ({ weight: g.callsPerSecond, mean: g.meanLatencyMs }))),
        circuit: gateways.length === 0 ? null : gateways.some((g) => g.circuit === 'open') ? 'open' : 'closed',
      },
      batches: {
        accept: {
          perSecond: sum((f) => f.batches.accept.perSecond),
          meanSize: weightedMean(
            figures.map((f) => ({ weight: f.batches.accept.perSecond, mean: f.batches.accept.meanSize })),
          ),
        },
        worker: {
          perSecond: sum((f) => f.batches.worker.perSecond),
          meanSize: weightedMean(
            figures.map((f) => ({ weight: f.batches.worker.perSecond, mean: f.batches.worker.meanSize })),
          ),
        },
      },
    },
  };
}

function maxByQueue(readings: (Record<string, number> | null)[]): Record<string, number> {
  const result: Record<string, number> = {};
  for (const reading of readings)
    for (const [queue, count] of Object.entries(reading ?? {})) result[queue] = Math.max(result[queue] ?? 0, count);
  return result;
}
