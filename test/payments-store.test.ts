// The payments store's "what was this row before my update" answers, under
// transactions that race on PostgreSQL. Under READ COMMITTED an UPDATE that
// waited for another transaction's lock updates the row as that one left
// it, while a subquery in the same statement still reads the statement's
// older snapshot; an answer built that way is stale exactly when two
// transactions race. Each test holds one transaction's row lock, lets the
// other block on it (seen in pg_locks, not guessed with a clock), commits
// the first and checks that the second answers from the row it changed.
//
// The race was seen end to end: a cancel's refund committing while the pay
// worker recorded the same charge wrote `charged` into the order's history
// twice (test/pipeline.test.ts, "cancels racing flaky charges").
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { markRefunded, markRefundRequested, markSucceeded } from '../src/payments/store.ts';
import type { Database, Queryable } from '../src/storage/database.ts';
import { migrate } from '../src/storage/migrate.ts';
import { openPostgres } from '../src/storage/postgres.ts';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';

const databaseUrl = requiredServiceUrl('DATABASE_URL');

describe(
  'payments store: answers about the row before an update, under racing transactions (postgres)',
  { skip: databaseUrl ? false : 'DATABASE_URL is not set' },
  () => {
    let db: Database;
    let drop: () => Promise<void>;
    let databaseName: string;
    before(async () => {
      const fresh = await freshPostgresDatabase(databaseUrl!);
      databaseName = new URL(fresh.url).pathname.slice(1);
      db = openPostgres(fresh.url, 4);
      await migrate(db);
      drop = async () => (await db.close(), await fresh.drop());
    });
    after(() => drop());

    let sequence = 0;
    async function payment(status: 'charging' | 'succeeded'): Promise<string> {
      const orderId = `ord_race_${++sequence}`;
      await db.query(
        `INSERT INTO payments.payments (order_id, amount_cents, currency, card_token, status) VALUES ($1, 275, 'EUR', 'tok_visa', $2)`,
        [orderId, status],
      );
      return orderId;
    }

    /**
     * Runs first in a transaction that holds its row locks until second is
     * seen waiting for one of them, then commits it; returns second's result,
     * from its own transaction.
     */
    async function race<T>(
      first: (tx: Queryable) => Promise<unknown>,
      second: (tx: Queryable) => Promise<T>,
    ): Promise<T> {
      let commitFirst!: () => void;
      const mayCommit = new Promise<void>((resolve) => (commitFirst = resolve));
      let firstDone!: () => void;
      const firstHoldsLocks = new Promise<void>((resolve) => (firstDone = resolve));
      const holding = db.transaction(async (tx) => {
        await first(tx);
        firstDone();
        await mayCommit;
      });
      await firstHoldsLocks;
      const waiting = db.transaction((tx) => second(tx));
      await eventually('the second transaction to wait for the first one’s row lock', async () => {
        const [row] = await db.query<{ waiting: number }>(
          `SELECT count(*)::int AS waiting FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'`,
          [databaseName],
        );
        return row!.waiting > 0 ? true : undefined;
      });
      commitFirst();
      await holding;
      return waiting;
    }

    it('a refund committing after the pay worker recorded the charge knows the charge was recorded', async () => {
      const orderId = await payment('charging');
      const refunded = await race(
        (tx) => markSucceeded(tx, [{ orderId, chargeId: 'ch_race' }]),
        (tx) => markRefunded(tx, orderId, 'ch_race', 're_race'),
      );
      assert.deepEqual(refunded, { chargeWasRecorded: true });
      const [row] = await db.query<{ status: string; charge_id: string; refund_id: string }>(
        'SELECT status, charge_id, refund_id FROM payments.payments WHERE order_id = $1',
        [orderId],
      );
      assert.deepEqual({ ...row }, { status: 'refunded', charge_id: 'ch_race', refund_id: 're_race' });
    });

    it('a refund that learned of the charge itself, racing nothing, says the charge was not recorded', async () => {
      const orderId = await payment('charging');
      assert.deepEqual(await db.transaction((tx) => markRefunded(tx, orderId, 'ch_own', 're_own')), {
        chargeWasRecorded: false,
      });
      assert.equal(await db.transaction((tx) => markRefunded(tx, orderId, 'ch_own', 're_own')), undefined);
    });

    it('a second refund of a payment another transaction just refunded records nothing', async () => {
      const orderId = await payment('succeeded');
      const second = await race(
        (tx) => markRefunded(tx, orderId, 'ch_a', 're_a'),
        (tx) => markRefunded(tx, orderId, 'ch_a', 're_a'),
      );
      assert.equal(second, undefined);
    });

    it('of two refund requests racing on one payment, only the first is first', async () => {
      const orderId = await payment('charging');
      const answers: unknown[] = [];
      const second = await race(
        async (tx) => answers.push(await markRefundRequested(tx, orderId)),
        (tx) => markRefundRequested(tx, orderId),
      );
      assert.deepEqual(answers, [{ amountCents: 275, currency: 'EUR', first: true }]);
      assert.deepEqual(second, { amountCents: 275, currency: 'EUR', first: false });
    });
  },
);
