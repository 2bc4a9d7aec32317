// Dead letters, where each mode keeps them: rows of messaging.dead_jobs
// without a broker, messages on the `<prefix>.dead.<queue>` subjects of the
// NATS stream, messages in the `<prefix>.<queue>.dead` RabbitMQ queues. One
// port lists them and settles them (re-drive or discard) the same way in
// every mode, so an operator's tools never ask which mode runs.
//
// Settling a letter runs the caller's change in one database transaction
// (queue the message again, write the order's history) and removes the
// letter: in that same transaction for the database queue, right after it
// commits for a broker. Two settles of one broker letter at once run one
// after the other (an advisory lock on its id), so the second can see in the
// database what the first did (the admin module reads the order's history)
// although the first has not yet removed the letter. A crash between the
// commit and the removal leaves the letter in place; a later settle finds it
// settled and only removes it. A repeat that got through anyway goes the
// same idempotent path as a first delivery (the inbox, the state machine,
// one idempotency key per payment), which absorbs it.
import { AppError } from '../errors.ts';
import type { Database, Queryable } from '../storage/database.ts';
import { deadJobs, lockDeadLetter, takeDeadJob } from './store.ts';

export interface DeadLetter {
  /** Opaque, unique within the mode: a job id, a stream sequence, or queue and message id. */
  id: string;
  queue: string;
  /** The message body as text, as it was dead-lettered. */
  body: string;
  /** Why it was given up on. */
  reason: string;
  /** Deliveries it had; null where the broker did not record it. */
  attempts: number | null;
  /** RFC 3339: when it was dead-lettered; null where the broker did not record it (letters parked before this was recorded). */
  diedAt: string | null;
  /** At most one live job per key (the database queue's dedupe key); null without one. */
  key: string | null;
}

export interface DeadLetterPage {
  items: DeadLetter[];
  /** Pass as `after` for the next page; undefined on the last. */
  next: string | undefined;
}

export type SettleOutcome<T> =
  { id: string; found: true; value: T } | { id: string; found: true; error: unknown } | { id: string; found: false };

export interface DeadLetterStore {
  /** Dead letters, oldest first, of one queue or of every queue it knows. */
  list(options: { queue?: string; limit: number; after?: string }): Promise<DeadLetterPage>;
  /**
   * For each id: runs change(tx, letter) in its own database transaction and
   * removes the letter once that commits; a letter whose change throws stays
   * where it is, and its outcome carries the error. Ids it does not hold are
   * `found: false`. In id order given.
   */
  settle<T>(
    ids: readonly string[],
    change: (tx: Queryable, letter: DeadLetter) => Promise<T>,
  ): Promise<SettleOutcome<T>[]>;
}

/** The error for a cursor (`after`) that names no position in this mode's dead letters: 400. */
export function invalidDeadLetterCursor(): AppError {
  return new AppError('validation_failed', 'cursor is not one this API returned', [
    { path: '/querystring/cursor', message: 'invalid cursor' },
  ]);
}

/** What a broker adapter provides for its dead letters (see NatsBroker, RabbitMqBroker). */
export interface BrokerDeadLetters {
  listDead(queues: readonly string[], options: { limit: number; after?: string }): Promise<DeadLetterPage>;
  /**
   * Finds the letters with these ids and hands each to settle; one whose
   * settle resolves is removed from the broker, one whose settle throws is
   * left in place. Ids it does not find are skipped.
   */
  settleDead(
    queues: readonly string[],
    ids: readonly string[],
    settle: (letter: DeadLetter) => Promise<void>,
  ): Promise<void>;
}

/** The database queue's dead letters (messaging.dead_jobs). */
export function databaseDeadLetters(db: Database): DeadLetterStore {
  return {
    list: (options) => deadJobs(db, options),
    async settle(ids, change) {
      const outcomes = [];
      for (const id of ids) {
        if (!/^\d{1,18}$/.test(id)) {
          outcomes.push({ id, found: false } as const);
          continue;
        }
        try {
          const settled = await db.transaction(async (tx) => {
            const letter = await takeDeadJob(tx, id);
            return letter ? { value: await change(tx, letter) } : undefined;
          });
          outcomes.push(
            settled ? ({ id, found: true, value: settled.value } as const) : ({ id, found: false } as const),
          );
        } catch (error) {
          outcomes.push({ id, found: true, error } as const);
        }
      }
      return outcomes;
    },
  };
}

/** A broker's dead letters, of the queues this deployment consumes. */
export function brokerDeadLetters(db: Database, broker: BrokerDeadLetters, queues: readonly string[]): DeadLetterStore {
  const known = (queue: string | undefined) => (queue === undefined ? queues : queues.filter((q) => q === queue));
  return {
    list: ({ queue, limit, after }) =>
      broker.listDead(known(queue), { limit, ...(after !== undefined ? { after } : {}) }),
    async settle<T>(
      ids: readonly string[],
      change: (tx: Queryable, letter: DeadLetter) => Promise<T>,
    ): Promise<SettleOutcome<T>[]> {
      const results = new Map<string, SettleOutcome<T>>();
      await broker.settleDead(queues, ids, async (letter) => {
        try {
          const value = await db.transaction(async (tx) => {
            await lockDeadLetter(tx, letter.id);
            return change(tx, letter);
          });
          results.set(letter.id, { id: letter.id, found: true, value });
        } catch (error) {
          results.set(letter.id, { id: letter.id, found: true, error });
          // Left in the broker.
          throw error;
        }
      });
      return ids.map((id) => results.get(id) ?? { id, found: false });
    },
  };
}
