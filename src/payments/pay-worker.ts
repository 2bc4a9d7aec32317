// Where a payment is charged, retried and refunded. Each handler is safe to
// run any number of times for the same message (at-least-once delivery):
// gateway calls reuse one idempotency key per order and operation, and the
// result is recorded with the state machine's guards in one transaction that
// also marks the message done.
//
// The two transactions on the success path (mark charging, record the
// charge) touch only the orders' and payments' rows, so concurrent jobs
// share them through group commit (src/storage/group-commit.ts): each step
// is a batch function of a few multi-row statements, like accepting orders,
// so a batch of 50 paid orders costs about what one did. Paths that release
// stock (decline, give up) keep their own transactions: stock rows are
// locked in sorted order by accepts, and mixing several orders' releases in
// one transaction could deadlock with them.
//
// A payment that can never succeed is isolated at once. Only a transient
// gateway failure is retried (by the queue, with backoff); any other error
// fails the job for good on its first attempt: the order is rejected as
// payment_failed with its stock released, the job is dead-lettered with the
// reason (PermanentJobError), and the payment leaves the statuses the
// sweeper re-drives. A refund that can never succeed is dead-lettered the
// same way and its payment marked refund_failed for an operator.
import type { Logger } from 'pino';
import { PermanentJobError, type Job, type JobQueue } from '../messaging/queue.ts';
import type { Metrics } from '../observability/metrics.ts';
import { tagOrder } from '../observability/tracing.ts';
import { acceptTimeOf } from '../orders/ids.ts';
import { recordOrderEvents, type NewOrderEvent } from '../orders/history.ts';
import { confirmOrders, lockOrderStatuses, refundIfOwed, rejectOrder, statusesOf } from '../orders/lifecycle.ts';
import type { PaymentPort } from '../orders/payment-port.ts';
import { awaitsPayment, refusesRefund } from '../orders/state-machine.ts';
import type { Database, Queryable } from '../storage/database.ts';
import { GroupCommit, type UnitOutcome } from '../storage/group-commit.ts';
import { GROUP_COMMIT, PAYMENTS } from '../tunables.ts';
import { storableText } from '../text.ts';
import { GatewayRequestError, TransientGatewayError, type ChargeResult, type PaymentGateway } from './gateway.ts';
import {
  CHARGE_QUEUE,
  chargeKey,
  chargeOutcomeUnknown,
  mayRefund,
  OrderJobPayload,
  paymentPort,
  REFUND_QUEUE,
  refundKey,
} from './payments.ts';
import {
  findPayment,
  markDeclined,
  markFailed,
  markRefunded,
  markRefundFailed,
  markSucceeded,
  markVoided,
  startCharging,
  type Payment,
} from './store.ts';

export interface PayWorkerDeps {
  db: Database;
  queue: JobQueue;
  gateway: PaymentGateway;
  metrics: Metrics;
  log: Logger;
}

type OrderJob = Job<{ orderId: string }>;

interface PaidJob {
  job: OrderJob;
  payment: Payment;
  chargeId: string;
}

interface WorkerContext extends PayWorkerDeps {
  /** This module's side of orders' payment port: how the orders the worker drives get their money back. */
  payments: PaymentPort;
  /** Before calling the gateway: the payments to charge (undefined: nothing to charge, and the job is done). */
  startCharges: GroupCommit<OrderJob, Payment | undefined>;
  /** After a successful charge: whether the order was confirmed by this job. */
  recordCharges: GroupCommit<PaidJob, boolean>;
}

export function registerPayWorker(
  deps: PayWorkerDeps,
  concurrency: number,
  maxBatch: number = GROUP_COMMIT.maxBatch,
): void {
  const onBatch = (size: number) => deps.metrics.workerBatchSize.observe(size);
  const payments = paymentPort(deps.queue);
  const context: WorkerContext = {
    ...deps,
    payments,
    // Two deliveries for one order never share a batch: the second sees what the first committed.
    startCharges: new GroupCommit(deps.db, (tx, jobs) => startChargeBatch(tx, deps.queue, payments, jobs), {
      maxBatch,
      onBatch,
      keyOf: (job) => job.payload.orderId,
      spanName: 'payments.start_charge batch',
    }),
    recordCharges: new GroupCommit(deps.db, (tx, paid) => recordChargeBatch(tx, deps.queue, payments, paid), {
      maxBatch,
      onBatch,
      keyOf: (p) => p.job.payload.orderId,
      spanName: 'payments.record_charge batch',
    }),
  };
  deps.queue.handle(CHARGE_QUEUE, (job) => chargeOrder(context, job), { concurrency, payload: OrderJobPayload });
  deps.queue.handle(REFUND_QUEUE, (job) => refundOrder(context, job), {
    concurrency: Math.max(1, Math.ceil(concurrency * PAYMENTS.refundConcurrencyShare)),
    payload: OrderJobPayload,
  });
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

/**
 * Before calling out, record that a charge may now exist ("charging"), so a
 * cancel arriving while the call is in flight knows to refund. A job with
 * nothing to charge (cancelled before its turn, or settled by an earlier
 * delivery) settles any money the order owes back and is done.
 */
async function startChargeBatch(
  tx: Queryable,
  queue: JobQueue,
  port: PaymentPort,
  jobs: readonly OrderJob[],
): Promise<UnitOutcome<Payment | undefined>[]> {
  const orderIds = jobs.map((job) => job.payload.orderId);
  const statuses = await lockOrderStatuses(tx, orderIds);
  const payments = await startCharging(
    tx,
    orderIds.filter((id) => awaitsPayment(statuses.get(id))),
  );
  const settled = jobs.filter((job) => !payments.has(job.payload.orderId));
  for (const job of settled) await refundIfOwed(tx, port, job.payload.orderId, statuses.get(job.payload.orderId));
  await queue.markDoneMany(tx, settled);
  return orderIds.map((id) => ({ ok: true, value: payments.get(id) }));
}

/**
 * Confirms the paid orders and records their charges. An order cancelled (or
 * given up on) while its charge was in flight gets its money back; one
 * already confirmed was confirmed by a duplicate delivery with this very
 * charge (one idempotency key), and keeps it. A charge enters the order's
 * history once, before the confirmation, and only from the transaction that
 * recorded it first: a duplicate delivery, or a refund that learned of the
 * charge from the gateway and refunded it already, wrote it before.
 */
async function recordChargeBatch(
  tx: Queryable,
  queue: JobQueue,
  port: PaymentPort,
  paid: readonly PaidJob[],
): Promise<UnitOutcome<boolean>[]> {
  const orderIds = paid.map((p) => p.job.payload.orderId);
  // Pipelined, one round trip (see Queryable): the orders are locked before their payments are touched.
  const [locked, firsts] = await Promise.all([
    lockOrderStatuses(tx, orderIds),
    markSucceeded(
      tx,
      paid.map((p) => ({ orderId: p.job.payload.orderId, chargeId: p.chargeId })),
    ),
  ]);
  // Pipelined too: the charges' events are written before confirmOrders writes `confirmed`.
  const [, outcomes] = await Promise.all([
    recordOrderEvents(
      tx,
      paid
        .filter(({ job }) => firsts.has(job.payload.orderId))
        .flatMap(({ job, payment, chargeId }) => [
          {
            orderId: job.payload.orderId,
            type: 'charge_attempted',
            detail: { attempt: job.attempt, outcome: 'succeeded' },
          },
          {
            orderId: job.payload.orderId,
            type: 'charged',
            detail: { chargeId, amountCents: payment.amountCents, currency: payment.currency },
          },
        ]),
    ),
    confirmOrders(tx, orderIds, locked),
    queue.markDoneMany(
      tx,
      paid.map((p) => p.job),
    ),
  ]);
  for (const id of orderIds) await refundIfOwed(tx, port, id, outcomes.get(id)!.status);
  return orderIds.map((id) => ({ ok: true, value: outcomes.get(id)!.changed }));
}

async function chargeOrder(deps: WorkerContext, job: OrderJob): Promise<void> {
  const { db, payments, gateway, metrics, log } = deps;
  const { orderId } = job.payload;
  tagOrder(orderId);
  const payment = await deps.startCharges.submit(job);
  if (!payment) return;
  log.debug({ order_id: orderId, payment }, 'charging the order');

  let result: ChargeResult;
  try {
    result = await charge(gateway, payment);
  } catch (error) {
    const transient = error instanceof TransientGatewayError;
    const attempted = {
      orderId,
      type: 'charge_attempted',
      detail: { attempt: job.attempt, outcome: transient ? 'transient' : 'refused', error: errorText(error) },
    } as const;
    if (transient && job.attempt < job.maxAttempts) {
      // The attempt goes into the order's history; the queue retries later with backoff.
      await db
        .transaction((tx) => recordOrderEvents(tx, [attempted]))
        .catch((recordError: unknown) => {
          log.error({ orderId, err: recordError }, 'could not record a failed charge attempt in the order history');
        });
      throw error;
    }
    // Giving up, on the last attempt of a transient failure or at once on
    // any other: the order must not stay pending. A request the gateway
    // refused (or that was never sent) charged nothing; after anything else
    // a charge may have gone through unseen, so it is settled with a refund.
    const reason = `${transient ? 'payment gateway kept failing' : 'payment can never succeed'}: ${(error as Error).message ?? String(error)}`;
    log.error(
      { order_id: orderId, attempt: job.attempt, err: error },
      transient
        ? 'payment failed for good; rejecting the order'
        : 'payment can never succeed; rejecting the order at once',
    );
    const rejected = await db.transaction(async (tx) => {
      await recordOrderEvents(tx, [attempted]);
      const outcome = await rejectOrder(tx, orderId, 'payment_failed', storableText(reason));
      if (error instanceof GatewayRequestError) await markFailed(tx, orderId, reason);
      // A duplicate delivery of this message may have confirmed the order
      // meanwhile (same charge, same key): refundIfOwed leaves that money.
      await refundIfOwed(tx, payments, orderId, outcome.status);
      // A permanent failure is dead-lettered by the queue (below) instead.
      if (transient) await job.markDone(tx);
      return outcome.changed;
    });
    if (rejected) countOutcome(metrics, orderId, 'rejected', 'payment_failed');
    if (transient) return;
    throw new PermanentJobError(reason, { cause: error });
  }

  if (result.status === 'declined') {
    const rejected = await db.transaction(async (tx) => {
      await recordOrderEvents(tx, [
        { orderId, type: 'charge_attempted', detail: { attempt: job.attempt, outcome: 'declined' } },
      ]);
      const outcome = await rejectOrder(tx, orderId, 'payment_declined');
      await markDeclined(tx, orderId);
      await job.markDone(tx);
      return outcome.changed;
    });
    if (rejected) countOutcome(metrics, orderId, 'rejected', 'payment_declined');
    return;
  }
  const confirmed = await deps.recordCharges.submit({ job, payment, chargeId: result.chargeId });
  if (confirmed) countOutcome(metrics, orderId, 'confirmed', '');
}

/** Counts a payment outcome, and times it from the order's accept (its id carries the accept time) for the settle SLO. */
function countOutcome(
  metrics: Metrics,
  orderId: string,
  status: 'confirmed' | 'rejected',
  reason: '' | 'payment_declined' | 'payment_failed',
): void {
  metrics.orderTransitions.inc({ status, reason });
  const acceptedAt = acceptTimeOf(orderId);
  if (acceptedAt !== undefined) metrics.orderSettleDuration.observe(Math.max(0, Date.now() - acceptedAt) / 1000);
}

async function refundOrder(deps: WorkerContext, job: OrderJob): Promise<void> {
  const { db, gateway, log } = deps;
  const { orderId } = job.payload;
  tagOrder(orderId);
  const payment = await findPayment(db, orderId);
  if (!payment || !mayRefund(payment.status)) return;
  // The last line of defence for "a confirmed order keeps exactly one
  // charge": whatever queued this refund, a confirmed order is not refunded
  // (cancelling it first makes it cancelled, and then it is).
  if (refusesRefund((await statusesOf(db, [orderId])).get(orderId))) {
    log.error({ order_id: orderId }, 'refund requested for a confirmed order; refusing it');
    return;
  }

  // Only the gateway's answers decide here; a database error is left to the queue's retries.
  let settled: Awaited<ReturnType<typeof settleRefund>>;
  try {
    settled = await settleRefund(gateway, payment);
  } catch (error) {
    // Transient: the queue retries, and once the job dies the sweeper re-drives it.
    if (error instanceof TransientGatewayError) throw error;
    const reason = `refund can never succeed: ${(error as Error).message ?? String(error)}`;
    log.error(
      { order_id: orderId, attempt: job.attempt, err: error },
      'refund can never succeed; dead-lettering it for an operator',
    );
    await db.transaction(async (tx) => {
      await markRefundFailed(tx, orderId, reason);
      await recordOrderEvents(tx, [
        {
          orderId,
          type: 'refund_failed',
          detail: { amountCents: payment.amountCents, currency: payment.currency, error: storableText(reason) },
        },
      ]);
    });
    throw new PermanentJobError(reason, { cause: error });
  }
  await db.transaction(async (tx) => {
    if (settled.kind === 'refunded') {
      const recorded = await markRefunded(tx, orderId, settled.chargeId, settled.refundId);
      // The refund learned of the charge from the gateway (a lost answer, or a
      // charge still in flight when the order was cancelled): the history gets
      // the charge first, so every charge is in it, and before its refund.
      const events: NewOrderEvent[] = [];
      if (recorded && !recorded.chargeWasRecorded)
        events.push({
          orderId,
          type: 'charged',
          detail: {
            chargeId: settled.chargeId,
            amountCents: payment.amountCents,
            currency: payment.currency,
            learnedBy: settled.learnedBy,
          },
        });
      if (recorded)
        events.push({
          orderId,
          type: 'refunded',
          detail: {
            refundId: settled.refundId,
            chargeId: settled.chargeId,
            amountCents: payment.amountCents,
            currency: payment.currency,
          },
        });
      await recordOrderEvents(tx, events);
    } else if (settled.kind === 'voided') {
      if (await markVoided(tx, orderId))
        await recordOrderEvents(tx, [{ orderId, type: 'charge_voided', detail: { sent: true } }]);
    } else if (settled.kind === 'declined') await markDeclined(tx, orderId);
    else await markFailed(tx, orderId, settled.reason);
    await job.markDone(tx);
  });
}

/**
 * The gateway calls of a refund. A payment whose charge's answer we never
 * learned is settled by voiding its charge key: the gateway answers with the
 * charge if one was made (waiting for one still in flight), else spends the
 * key so that none can be made. Nothing is charged after a cancel this way;
 * a charge that exists is then refunded. Only a gateway without a void
 * (unsupported) leaves the replay of the charge key, which returns the first
 * answer or makes the charge now (then refunded: the order nets zero either
 * way). A declined answer, or a replay the gateway refuses, means nothing was
 * charged.
 */
async function settleRefund(gateway: PaymentGateway, payment: Payment) {
  let chargeId = payment.chargeId;
  let learnedBy: 'void' | 'replay' | undefined;
  if (chargeOutcomeUnknown(payment.status) || chargeId === null) {
    const voided = await gateway.voidCharge({ chargeKey: chargeKey(payment.orderId), reference: payment.orderId });
    let answer: ChargeResult;
    if (voided.status === 'voided') return { kind: 'voided' } as const;
    if (voided.status !== 'unsupported') answer = voided;
    else {
      try {
        answer = await charge(gateway, payment);
      } catch (error) {
        if (!(error instanceof GatewayRequestError)) throw error;
        return {
          kind: 'nothing_charged',
          reason: `the charge was refused, so there is nothing to refund: ${error.message}`,
        } as const;
      }
    }
    if (answer.status === 'declined') return { kind: 'declined' } as const;
    chargeId = answer.chargeId;
    learnedBy = voided.status === 'unsupported' ? 'replay' : 'void';
  }
  const { refundId } = await gateway.refund({
    idempotencyKey: refundKey(payment.orderId),
    chargeId,
    amountCents: payment.amountCents,
  });
  return { kind: 'refunded', chargeId, refundId, learnedBy } as const;
}

/** An error's message as text the database can store (it becomes part of an order's history). */
function errorText(error: unknown): string {
  return storableText(error instanceof Error ? error.message : String(error));
}
