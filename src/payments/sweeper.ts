// The sweeper: no accepted order stays pending forever. Orders pending past
// the deadline get their charge queued again; while the original job is
// still queued (retrying with backoff) the re-drive is a no-op.
import type { Logger } from 'pino';
import type { JobQueue } from '../messaging/queue.ts';
import { stalePendingOrders } from '../orders/store.ts';
import type { Database } from '../storage/database.ts';
import { redriveCharge } from './payments.ts';

export interface Sweeper {
  sweep(): Promise<number>;
  stop(): Promise<void>;
}

export function startSweeper(deps: { db: Database; queue: JobQueue; log: Logger }, deadlineMs: number): Sweeper {
  const sweep = async () => {
    const ids = await stalePendingOrders(deps.db, deadlineMs, 500);
    if (ids.length === 0) return 0;
    await deps.db.transaction(async (tx) => {
      for (const id of ids) await redriveCharge(tx, deps.queue, id);
    });
    deps.log.info({ orders: ids.length }, 'sweeper re-drove pending orders past their deadline');
    return ids.length;
  };
  let running: Promise<unknown> = Promise.resolve();
  const timer = setInterval(
    () => {
      running = sweep().catch((error: unknown) => deps.log.error({ err: error }, 'sweeper pass failed; the next pass retries'));
    },
    Math.max(1_000, Math.floor(deadlineMs / 4)),
  );
  timer.unref();
  return {
    sweep,
    stop: async () => {
      clearInterval(timer);
      await running;
    },
  };
}
