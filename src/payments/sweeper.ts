// The sweeper: no accepted order stays pending forever, and no money stays
// with an order that will not be paid for. Orders pending past the deadline
// get their charge queued again; rejected or cancelled orders whose payment
// may still hold money (a refund that died while the gateway was down) get
// their refund queued again. While the original job is still queued the
// re-drive is a no-op.
import type { Logger } from 'pino';
import type { JobQueue } from '../messaging/queue.ts';
import { stalePendingOrders } from '../orders/lifecycle.ts';
import type { Database } from '../storage/database.ts';
import { queueCharges, redriveRefunds } from './payments.ts';
import { overdueRefunds } from './store.ts';
import { PAYMENTS } from '../tunables.ts';

export interface Sweeper {
  sweep(): Promise<number>;
  stop(): Promise<void>;
}

export function startSweeper(deps: { db: Database; queue: JobQueue; log: Logger }, deadlineMs: number): Sweeper {
  const sweep = async () => {
    const pending = await stalePendingOrders(deps.db, deadlineMs, PAYMENTS.sweepBatch);
    const toRefund = await overdueRefunds(deps.db, deadlineMs, PAYMENTS.sweepBatch);
    if (pending.length === 0 && toRefund.length === 0) return 0;
    // One statement per queue: a pass after an outage may re-drive hundreds of orders.
    await deps.db.transaction(async (tx) => {
      await queueCharges(
        tx,
        deps.queue,
        pending.map((orderId) => ({ orderId })),
      );
      await redriveRefunds(tx, deps.queue, toRefund);
    });
    deps.log.info({ charges: pending.length, refunds: toRefund.length }, 'sweeper re-drove work past its deadline');
    return pending.length + toRefund.length;
  };
  let running: Promise<unknown> = Promise.resolve();
  const timer = setInterval(
    () => {
      running = sweep().catch((error: unknown) =>
        deps.log.error({ err: error }, 'sweeper pass failed; the next pass retries'),
      );
    },
    Math.max(PAYMENTS.sweepMinIntervalMs, Math.floor(deadlineMs / 4)),
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
