// What an operator does with a dead letter: re-drive it (queue the message
// again, through the same path as its first delivery) or discard it. Each
// letter is settled in its own transaction, which also writes the order's
// history, so one letter that cannot be re-driven holds up none of the others.
import type { Logger } from 'pino';
import { AppError } from '../errors.ts';
import type { DeadLetter, DeadLetterStore } from '../messaging/dead-letters.ts';
import type { JobQueue, JsonObject } from '../messaging/queue.ts';
import { findOrder, orderHistory, recordOrderEvents } from '../orders/history.ts';
import { ORDER_ID_PATTERN } from '../orders/ids.ts';
import { reopenForPayment } from '../orders/lifecycle.ts';
import { retryPayment } from '../orders/state-machine.ts';
import { CHARGE_QUEUE, reopenFailedPayment } from '../payments/payments.ts';
import type { Queryable } from '../storage/database.ts';
import { classify } from '../http/problems.ts';

export interface SettleResult {
  id: string;
  /** redriven / discarded: done; not_found: no such letter (already settled?); refused: left in place, `detail` says why. */
  outcome: 'redriven' | 'discarded' | 'not_found' | 'refused';
  /** The order the message was about, when it names one. */
  orderId: string | null;
  /** Re-drive of a charge whose order was rejected payment_failed: the order became pending again and holds its stock. */
  reopened?: boolean;
  detail?: string;
}

const ORDER_ID = new RegExp(ORDER_ID_PATTERN);

/** The order a message is about: the orderId of a JSON object body, when it is one. */
export function orderIdOf(letter: DeadLetter): string | null {
  const payload = parseBody(letter);
  const id = payload?.orderId;
  return typeof id === 'string' && ORDER_ID.test(id) ? id : null;
}

function parseBody(letter: DeadLetter): JsonObject | undefined {
  try {
    const value: unknown = JSON.parse(letter.body);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as JsonObject) : undefined;
  } catch {
    return undefined;
  }
}

export interface DeadLetterDeps {
  store: DeadLetterStore;
  queue: JobQueue;
  log: Logger;
}

/**
 * Re-drives each letter: queues its message again in a transaction that also
 * records `redriven` in the order's history. A charge whose order was
 * rejected payment_failed, with nothing charged, re-opens the order
 * (pending, its stock held again) so the charge can succeed once the cause
 * is fixed; see reopenForPayment. `by` is the operator (the token's sub).
 */
export async function redriveDeadLetters(
  deps: DeadLetterDeps,
  ids: readonly string[],
  by: string,
): Promise<SettleResult[]> {
  return settleEach(deps, ids, async (tx, letter, orderId) => {
    const payload = parseBody(letter);
    if (!payload)
      throw new AppError(
        'validation_failed',
        'the message is not a JSON object: a re-drive would fail the same way; discard it',
      );
    const reopened = letter.queue === CHARGE_QUEUE && orderId !== null && (await reopenIfPaymentFailed(tx, orderId));
    await deps.queue.enqueueMany(tx, letter.queue, [{ payload, ...(letter.key ? { key: letter.key } : {}) }]);
    if (orderId)
      await recordOrderEvents(tx, [
        {
          orderId,
          type: 'redriven',
          detail: { queue: letter.queue, letterId: letter.id, by, reopened, reason: letter.reason },
        },
      ]);
    return { outcome: 'redriven', orderId, reopened };
  });
}

/** Discards each letter, recording `dead_letter_discarded` in its order's history. */
export async function discardDeadLetters(
  deps: DeadLetterDeps,
  ids: readonly string[],
  by: string,
): Promise<SettleResult[]> {
  return settleEach(deps, ids, async (tx, letter, orderId) => {
    if (orderId)
      await recordOrderEvents(tx, [
        {
          orderId,
          type: 'dead_letter_discarded',
          detail: { queue: letter.queue, letterId: letter.id, by, reason: letter.reason },
        },
      ]);
    return { outcome: 'discarded', orderId };
  });
}

/**
 * Settles each letter with change (in the transaction the store opens for
 * it, given the order the letter names) and words each outcome: not_found
 * for a letter the store does not hold or that another settle already
 * re-drove or discarded, refused (with the reason) where change threw, and
 * what change returned otherwise.
 */
async function settleEach(
  deps: DeadLetterDeps,
  ids: readonly string[],
  change: (tx: Queryable, letter: DeadLetter, orderId: string | null) => Promise<Omit<SettleResult, 'id'>>,
): Promise<SettleResult[]> {
  const outcomes = await deps.store.settle(ids, async (tx, letter) => {
    const orderId = orderIdOf(letter);
    if (await alreadySettled(tx, orderId, letter)) return SETTLED_BEFORE;
    return change(tx, letter, orderId);
  });
  return outcomes.map((o): SettleResult => {
    if (!o.found) return { id: o.id, outcome: 'not_found', orderId: null };
    if ('error' in o) return { id: o.id, outcome: 'refused', orderId: null, detail: refusal(deps.log, o.id, o.error) };
    if (o.value === SETTLED_BEFORE) return { id: o.id, outcome: 'not_found', orderId: null };
    return { id: o.id, ...o.value };
  });
}

/** What a settle returns for a letter another settle already re-drove or discarded: it is only removed, and reported not_found. */
const SETTLED_BEFORE = Symbol('settled before');

/**
 * Whether the order's history already records this letter re-driven or
 * discarded: a settle that ran while another one held the letter (the
 * store runs them one after the other), or after a crash left a settled
 * letter in its broker.
 */
async function alreadySettled(tx: Queryable, orderId: string | null, letter: DeadLetter): Promise<boolean> {
  if (orderId === null) return false;
  const events = await orderHistory(tx, orderId);
  return events.some(
    (e) =>
      (e.type === 'redriven' || e.type === 'dead_letter_discarded') &&
      e.detail.letterId === letter.id &&
      e.detail.queue === letter.queue,
  );
}

async function reopenIfPaymentFailed(tx: Queryable, orderId: string): Promise<boolean> {
  const order = await findOrder(tx, orderId);
  if (!order || !retryPayment(order.status, order.rejectReason).ok) return false;
  await reopenForPayment(tx, orderId);
  await reopenFailedPayment(tx, orderId);
  return true;
}

/** Why a letter was left in place, in the words the API would use for the error. */
function refusal(log: Logger, letterId: string, error: unknown): string {
  const { code, detail } = classify(error);
  if (code !== 'internal') return detail;
  // An unexpected error is logged, and not described to the client.
  log.error({ err: error, letterId }, 'settling a dead letter failed; it is left in place');
  return 'an unexpected error occurred; it has been logged';
}
