// Where a payment is charged, retried and refunded. Each handler is safe to
// run any number of times for the same message (at-least-once delivery):
// gateway calls reuse one idempotency key per order and operation, and the
// result is recorded with the state machine's guards in one transaction that
// also marks the message done.
//
// The two transactions on the success path (mark charging, confirm) touch
// only the order's and payment's rows, so concurrent jobs share commits
// through group commit. Paths that release stock (decline, give up) keep
// their own transactions: stock rows are locked in sorted order by accepts,
// and mixing several orders' releases in one transaction could deadlock
// with them.
import type { Logger } from 'pino';
import type { Job, JobQueue } from '../messaging/queue.ts';
import type { Metrics } from '../observability/metrics.ts';
import { confirmOrder, rejectOrder } from '../orders/lifecycle.ts';
import { lockOrderStatus, statusesOf } from '../orders/store.ts';
import type { Database, Queryable } from '../storage/database.ts';
import { transactionGroup } from '../storage/group-commit.ts';
import { GatewayRequestError, TransientGatewayError, type ChargeResult, type PaymentGateway } from './gateway.ts';
import {
  CHARGE_QUEUE,
  REFUND_QUEUE,
  chargeKey,
  findPayment,
  startCharging,
  markDeclined,
  markRefunded,
  markSucceeded,
  refundUnlessKept,
  refundKey,
  type Payment,
} from './payments.ts';

export interface PayWorkerDeps {
  db: Database;
  queue: JobQueue;
  gateway: PaymentGateway;
  metrics: Metrics;
  log: Logger;
}

type OrderJob = Job<{ orderId: string }>;

interface WorkerContext extends PayWorkerDeps {
  /** Commits small transactions of concurrent jobs together. */
  grouped<T>(work: (tx: Queryable) => Promise<T>): Promise<T>;
}

export function registerPayWorker(deps: PayWorkerDeps, concurrency: number, maxBatch = 64): void {
  const group = transactionGroup(deps.db, { maxBatch, onBatch: (size) => deps.metrics.workerBatchSize.observe(size) });
  const context: WorkerContext = { ...deps, grouped: group.transaction };
  deps.queue.handle<{ orderId: string }>(CHARGE_QUEUE, (job) => chargeOrder(context, job), { concurrency });
  deps.queue.handle<{ orderId: string }>(REFUND_QUEUE, (job) => refundOrder(context, job), { concurrency: Math.max(1, Math.ceil(concurrency / 4)) });
}

function charge(gateway: PaymentGateway, payment: Payment): Promise<ChargeResult> {
  return gateway.charge({
    idempotencyKey: chargeKey(payment.orderId),
    amountCents: payment.amountCents,
    currency: payment.currency,
    token: payment.cardToken,
    reference: payment.orderId,
  });
}

async function chargeOrder(deps: WorkerContext, job: OrderJob): Promise<void> {
  const { db, queue, gateway, metrics, log } = deps;
  const { orderId } = job.payload;

  // Before calling out, record that a charge may now exist ("charging"), so a
  // cancel arriving while the call is in flight knows to refund.
  const payment = await deps.grouped(async (tx) => {
    const status = await lockOrderStatus(tx, orderId);
    const charging = status === 'pending' ? await startCharging(tx, orderId) : undefined;
    if (!charging) {
      await refundUnlessKept(tx, queue, orderId, status ?? 'missing');
      await job.markDone(tx);
    }
    return charging;
  });
  if (!payment) return;

  let result: ChargeResult;
  try {
    result = await charge(gateway, payment);
  } catch (error) {
    const permanent = error instanceof GatewayRequestError;
    const lastAttempt = job.attempt >= job.maxAttempts;
    if (!(error instanceof TransientGatewayError) && !permanent) throw error;
    if (!permanent && !lastAttempt) throw error; // the queue retries later with backoff
    // Giving up: the order must not stay pending forever. A charge may still
    // have gone through unseen, so settle it with a refund.
    log.error({ orderId, attempt: job.attempt, err: error }, 'payment failed for good; rejecting the order');
    const rejected = await db.transaction(async (tx) => {
      const outcome = await rejectOrder(tx, orderId, 'payment_failed');
      // A duplicate delivery of this message may have confirmed the order
      // meanwhile (same charge, same key): refundUnlessKept leaves that money.
      await refundUnlessKept(tx, queue, orderId, outcome.status);
      await job.markDone(tx);
      return outcome.changed;
    });
    if (rejected) metrics.orderTransitions.inc({ status: 'rejected', reason: 'payment_failed' });
    return;
  }

  if (result.status === 'declined') {
    const rejected = await db.transaction(async (tx) => {
      const outcome = await rejectOrder(tx, orderId, 'payment_declined');
      await markDeclined(tx, orderId);
      await job.markDone(tx);
      return outcome.changed;
    });
    if (rejected) metrics.orderTransitions.inc({ status: 'rejected', reason: 'payment_declined' });
    return;
  }
  const chargeId = result.chargeId;
  const confirmed = await deps.grouped(async (tx) => {
    const confirmed = await confirmOrder(tx, orderId);
    await markSucceeded(tx, orderId, chargeId);
    // Cancelled (or given up on) while the charge was in flight: give the
    // money back. Already confirmed means a duplicate delivery got there
    // first with this very charge (one idempotency key): it is kept.
    await refundUnlessKept(tx, queue, orderId, confirmed.status);
    await job.markDone(tx);
    return confirmed.changed;
  });
  if (confirmed) metrics.orderTransitions.inc({ status: 'confirmed', reason: '' });
}

async function refundOrder(deps: WorkerContext, job: OrderJob): Promise<void> {
  const { db, gateway } = deps;
  const { orderId } = job.payload;
  const payment = await findPayment(db, orderId);
  if (!payment || (payment.status !== 'charging' && payment.status !== 'succeeded')) return;
  // The last line of defence for "a confirmed order keeps exactly one
  // charge": whatever queued this refund, a confirmed order is not refunded
  // (cancelling it first makes it cancelled, and then it is).
  if ((await statusesOf(db, [orderId])).get(orderId) === 'confirmed') {
    deps.log.error({ orderId }, 'refund requested for a confirmed order; refusing it');
    return;
  }

  let chargeId = payment.chargeId;
  if (payment.status === 'charging' || chargeId === null) {
    // We never learned the charge's answer: replaying its key returns the
    // gateway's first answer (or makes the charge now, which we then refund:
    // either way the order nets zero).
    const replay = await charge(gateway, payment);
    if (replay.status === 'declined') {
      await db.transaction(async (tx) => {
        await markDeclined(tx, orderId);
        await job.markDone(tx);
      });
      return;
    }
    chargeId = replay.chargeId;
  }
  const { refundId } = await gateway.refund({ idempotencyKey: refundKey(orderId), chargeId, amountCents: payment.amountCents });
  await db.transaction(async (tx) => {
    await markRefunded(tx, orderId, chargeId, refundId);
    await job.markDone(tx);
  });
}
