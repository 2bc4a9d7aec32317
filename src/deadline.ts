// A bound on how long a caller waits for work it cannot cancel (a database
// round trip, a broker request). The work goes on after the deadline; only
// the caller stops waiting for it.

/**
 * Settles as `work` does, or rejects with `expired()`'s error once `ms`
 * milliseconds have passed (`ms` <= 0: no deadline). A rejection of `work`
 * after the deadline is handled here, never left unhandled.
 */
export async function withDeadline<T>(work: Promise<T>, ms: number, expired: () => Error): Promise<T> {
  if (ms <= 0) return work;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(expired()), ms);
  });
  try {
    return await Promise.race([work, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
