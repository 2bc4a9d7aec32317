// Exponential backoff with jitter, the one formula every retry loop uses
// (job and message retries, relay passes, consumer resubscriptions,
// database startup, claim polling). The figures are in tunables.ts.

export interface Backoff {
  /** The step of the first attempt, in milliseconds. */
  baseMs: number;
  /** No step grows beyond this, in milliseconds. */
  maxMs: number;
}

/**
 * How long to wait after the attempt-th failure (1 for the first), in
 * milliseconds: a random time between half and all of the step, where the
 * step is baseMs doubled per attempt up to maxMs ("equal jitter": never less
 * than half the step, so a retry cannot come at once, yet processes that
 * failed together spread out).
 */
export function backoffMs(attempt: number, { baseMs, maxMs }: Backoff, random: () => number = Math.random): number {
  const step = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt, 1) - 1, 30));
  return step / 2 + random() * (step / 2);
}
