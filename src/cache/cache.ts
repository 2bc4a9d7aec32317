// The cache port. Callers use it cache-aside: read through it, and invalidate
// after a committed write. A cache failure is never the caller's failure: a
// broken cache makes reads go to the database, it never fails or hangs them.

export interface Cache {
  /**
   * The cached value of the key, else load()'s, which is kept for next time.
   * `undefined` from load() (nothing there) is not cached, so a row created
   * later is seen at once. Errors of load() propagate; the cache's never do.
   */
  getOrLoad<T>(key: string, load: () => Promise<T | undefined>): Promise<T | undefined>;
  /**
   * Drops the keys everywhere they are cached: in this process before it
   * returns (read-your-writes), in the shared store, and in other processes.
   * Call it after the write committed, never before: a read between an early
   * invalidation and the commit would cache the old value again.
   */
  invalidate(keys: readonly string[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * Counts invalidations so that a load which raced with one does not store
 * what it read: a read that started before the write committed may have seen
 * the old row, and storing it after the invalidation would undo it.
 */
export class InvalidationEpoch {
  #epoch = 0;
  bump(): void {
    this.#epoch++;
  }
  current(): number {
    return this.#epoch;
  }
  unchangedSince(epoch: number): boolean {
    return this.#epoch === epoch;
  }
}
