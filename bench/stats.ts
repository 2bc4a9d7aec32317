// Latency summaries shared by the load generator, the ceiling runs and the
// report. Histograms record microseconds: Node's built-in HDR histogram keeps
// integers, and microseconds keep sub-millisecond answers distinguishable.
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';

export interface LatencySummary {
  count: number;
  meanMs: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

export function newHistogram(): RecordableHistogram {
  return createHistogram({ lowest: 1, highest: 600_000_000, figures: 3 });
}

export function recordMs(histogram: RecordableHistogram, ms: number): void {
  histogram.record(Math.max(1, Math.round(ms * 1000)));
}

export function summarize(histogram: RecordableHistogram): LatencySummary {
  const count = histogram.count;
  const at = (p: number) => (count === 0 ? 0 : round(histogram.percentile(p) / 1000));
  return {
    count,
    meanMs: count === 0 ? 0 : round(histogram.mean / 1000),
    p50Ms: at(50),
    p95Ms: at(95),
    p99Ms: at(99),
    p999Ms: at(99.9),
    maxMs: count === 0 ? 0 : round(histogram.max / 1000),
  };
}

/** Percentiles of a plain list of millisecond values (pgbench's transaction log). */
export function summarizeValues(valuesMs: readonly number[]): LatencySummary {
  const histogram = newHistogram();
  for (const v of valuesMs) recordMs(histogram, v);
  return summarize(histogram);
}

export function round(value: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** One second of a run: what the chart and the JSON's series hold. */
export interface SecondSample {
  /** Seconds since load started (the end of this one-second window). */
  t: number;
  /** Orders the system accepted with 202 and status pending in this second (for ceiling: transactions). */
  accepted: number;
  /** Orders that reached confirmed in this second. */
  confirmed?: number;
  p50Ms?: number;
  p95Ms?: number;
  p99Ms?: number;
  /** Resident memory of the server process(es), summed, in MiB. */
  rssMiB?: number;
}
