// Broker mode against real servers, for each broker: the relay publishes the
// outbox in order and exactly once while two relays compete; the inbox turns a
// redelivery into an ack; failing handlers are retried, then dead-lettered;
// and a broker outage costs no accepted order.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Type } from 'typebox';
import { BrokerQueue } from '../src/messaging/broker-queue.ts';
import type { NatsBroker } from '../src/messaging/nats-broker.ts';
import type { Broker, Delivery } from '../src/messaging/broker.ts';
import { Relay } from '../src/messaging/relay.ts';
import { createMetrics, type Metrics } from '../src/observability/metrics.ts';
import type { Database } from '../src/storage/database.ts';
import { migrate } from '../src/storage/migrate.ts';
import { openPostgres } from '../src/storage/postgres.ts';
import {
  ALL_SCOPES,
  BROKER_URL_VARIABLE,
  client,
  createProduct,
  deleteBrokerTopology,
  eventually,
  freshBrokerPrefix,
  freshPostgresDatabase,
  placeOrder,
  quiesce,
  requiredServiceUrl,
  startTestApp,
  testBroker,
  type BrokerMode,
} from './support/harness.ts';

const silent = pino({ level: 'silent' });
const QUEUE = 'test.work';
/** What this file's test messages carry. */
const TestPayload = Type.Object({ n: Type.Optional(Type.Integer()), kind: Type.Optional(Type.String()) });
const CLOSED_PORT_URL = { nats: 'nats://127.0.0.1:1', rabbitmq: 'amqp://guest:guest@127.0.0.1:1' } as const;

async function counterTotal(metrics: Metrics, name: keyof Metrics): Promise<number> {
  const metric = metrics[name] as { get(): Promise<{ values: { value: number }[] }> };
  return (await metric.get()).values.reduce((sum, v) => sum + v.value, 0);
}

for (const mode of ['nats', 'rabbitmq'] as const satisfies readonly BrokerMode[]) {
  describe(`messaging (${mode})`, () => {
    const databaseBase = requiredServiceUrl('DATABASE_URL');
    const brokerBase = requiredServiceUrl(BROKER_URL_VARIABLE[mode]);
    const skip =
      !databaseBase || !brokerBase
        ? `set DATABASE_URL and ${BROKER_URL_VARIABLE[mode]} to run the ${mode} tests`
        : false;

    let db: Database;
    let dropDatabase: () => Promise<void>;
    let prefix: string;
    const brokers: Broker[] = [];
    const broker = () => {
      const created = testBroker(mode, prefix);
      brokers.push(created);
      return created;
    };

    before(async () => {
      if (skip) return;
      const fresh = await freshPostgresDatabase(databaseBase!);
      dropDatabase = fresh.drop;
      db = openPostgres(fresh.url, 4);
      await migrate(db);
    });
    after(async () => {
      if (skip) return;
      await db.close();
      await dropDatabase();
    });

    /** Each test gets its own broker names; its adapters are closed and its topology deleted afterwards. */
    async function withPrefix(fn: () => Promise<void>): Promise<void> {
      prefix = freshBrokerPrefix();
      try {
        await fn();
      } finally {
        await Promise.allSettled(brokers.splice(0).map((b) => b.close()));
        await db.query('DELETE FROM messaging.outbox');
        await db.query('DELETE FROM messaging.inbox');
        await deleteBrokerTopology(mode, prefix, [QUEUE]);
      }
    }

    it('two concurrent relays publish the outbox in id order, each row exactly once', { skip }, () =>
      withPrefix(async () => {
        const producer = new BrokerQueue(db, broker(), silent, createMetrics());
        for (let batch = 0; batch < 20; batch++) {
          await db.transaction(async (tx) => {
            for (let i = 0; i < 10; i++) await producer.enqueue(tx, QUEUE, { n: batch * 10 + i });
          });
        }
        const ids = (await db.query<{ message_id: string }>('SELECT message_id FROM messaging.outbox ORDER BY id')).map(
          (r) => r.message_id,
        );
        assert.equal(ids.length, 200);

        const received: string[] = [];
        const consumer = broker().consume(
          QUEUE,
          async (d: Delivery) => {
            received.push(d.id);
            await d.ack();
          },
          { concurrency: 1 },
        );
        const metrics = [createMetrics(), createMetrics()];
        const relays = metrics.map((m) => new Relay(db, broker(), silent, m, { batchSize: 15, idlePollMs: 2 }));
        relays.forEach((r) => r.start());
        try {
          await eventually('every row to arrive', async () => (received.length >= ids.length ? true : undefined));
          await eventually('the outbox to drain', async () =>
            (await db.query('SELECT 1 FROM messaging.outbox')).length === 0 ? true : undefined,
          );
          // Time for a duplicate to show up, if one were published.
          await new Promise((resolve) => setTimeout(resolve, 300));
        } finally {
          await Promise.all(relays.map((r) => r.stop()));
          await consumer.stop();
        }
        assert.deepEqual(received, ids);
        const published =
          (await counterTotal(metrics[0]!, 'relayPublished')) + (await counterTotal(metrics[1]!, 'relayPublished'));
        assert.equal(published, ids.length, 'no row was published twice');
      }),
    );

    it(
      'a publish resolves once the broker holds each message, a re-published id once; a publish nothing stores is refused',
      { skip },
      () =>
        withPrefix(async () => {
          const publisher = broker();
          const message = (id: string, n: number) => ({ id, queue: QUEUE, payload: { n }, maxAttempts: 3 });
          // The consumer's durable queue exists before anything is published (RabbitMQ drops what no queue takes).
          const received: string[] = [];
          const consumer = publisher.consume(
            QUEUE,
            async (d: Delivery) => {
              received.push(d.id);
              await d.ack();
            },
            { concurrency: 4 },
          );
          try {
            await eventually('the queue to exist', async () =>
              (await publisher.pending(QUEUE).catch(() => undefined)) === undefined ? undefined : true,
            );
            await publisher.publish(Array.from({ length: 50 }, (_, i) => message(`m${i}`, i)));
            await eventually('50 deliveries', async () => (received.length >= 50 ? true : undefined));
            assert.deepEqual(
              received.slice(0, 50),
              Array.from({ length: 50 }, (_, i) => `m${i}`),
              'in publish order',
            );
            if (mode === 'nats') {
              // Inside the stream's duplicate window, a re-published id is stored once.
              await publisher.publish([message('m0', 0), message('m50', 50)]);
              await eventually('the new message', async () => (received.includes('m50') ? true : undefined));
              await new Promise((resolve) => setTimeout(resolve, 200));
              assert.equal(received.filter((id) => id === 'm0').length, 1);
            }
          } finally {
            await consumer.stop();
          }
          if (mode === 'nats') {
            // No stream captures the subject any more: the publish must fail, not report the message sent.
            await (publisher as NatsBroker).deleteTopology();
            await assert.rejects(publisher.publish([message('m51', 51)]), /JetStream did not take the message: 503/);
          }
        }),
    );

    it(
      'the stream is created with NATS_STREAM_REPLICAS copies (a single server refuses more than one)',
      { skip: skip || (mode !== 'nats' && 'NATS only') },
      () =>
        withPrefix(async () => {
          const t = await startTestApp(mode, {
            brokerPrefix: prefix,
            env: { NATS_STREAM_REPLICAS: '3' },
            startWorkers: false,
          });
          try {
            await assert.rejects(
              t.app.broker!.publish([{ id: 'r1', queue: QUEUE, payload: { n: 1 }, maxAttempts: 3 }]),
              /replicas/i,
            );
          } finally {
            await t.close();
          }
        }),
    );

    it('a database whose outbox ids start again (new or restored) still gets its messages delivered', { skip }, () =>
      withPrefix(async () => {
        const producer = new BrokerQueue(db, broker(), silent, createMetrics());
        const received: number[] = [];
        const consumer = broker().consume(
          QUEUE,
          async (d: Delivery) => {
            received.push((JSON.parse(d.body) as { n: number }).n);
            await d.ack();
          },
          { concurrency: 1 },
        );
        const relay = new Relay(db, broker(), silent, createMetrics(), { idlePollMs: 2 });
        relay.start();
        try {
          for (const round of [1, 2]) {
            // Both rounds number their outbox rows from 1, as a fresh database does.
            await db.query('TRUNCATE messaging.outbox RESTART IDENTITY');
            await db.transaction(async (tx) => {
              for (let i = 0; i < 5; i++) await producer.enqueue(tx, QUEUE, { n: round * 10 + i });
            });
            await eventually(`round ${round} to arrive`, async () => (received.length >= round * 5 ? true : undefined));
          }
        } finally {
          await relay.stop();
          await consumer.stop();
        }
        assert.deepEqual(received, [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]);
      }),
    );

    it('a message whose id is already in the inbox is acknowledged and its effect not applied again', { skip }, () =>
      withPrefix(async () => {
        const b = broker();
        const metrics = createMetrics();
        const queue = new BrokerQueue(db, b, silent, metrics, { retryBaseMs: 5, retryMaxMs: 20 });
        const handled: string[] = [];
        queue.handle(
          QUEUE,
          async (job) => {
            await db.transaction(async (tx) => job.markDone(tx));
            handled.push(job.id);
          },
          { concurrency: 2, payload: TestPayload },
        );
        await db.query(`INSERT INTO messaging.inbox (queue, message_id) VALUES ($1, 'm-1')`, [QUEUE]);
        queue.start();
        try {
          await b.publish([
            { id: 'm-1', queue: QUEUE, payload: { n: 1 }, maxAttempts: 3 },
            { id: 'm-2', queue: QUEUE, payload: { n: 2 }, maxAttempts: 3 },
          ]);
          await eventually('both messages to be settled', async () =>
            handled.length === 1 && (await b.pending(QUEUE)) === 0 ? true : undefined,
          );
          await new Promise((resolve) => setTimeout(resolve, 200));
        } finally {
          await queue.stop();
        }
        assert.deepEqual(handled, ['m-2']);
        const outcomes = (await metrics.jobsProcessed.get()).values
          .filter((v) => v.value > 0)
          .map((v) => `${v.labels.outcome}:${v.value}`)
          .sort();
        assert.deepEqual(outcomes, ['done:1', 'duplicate:1']);
        const inbox = await db.query<{ message_id: string }>(
          'SELECT message_id FROM messaging.inbox WHERE queue = $1 ORDER BY message_id',
          [QUEUE],
        );
        assert.deepEqual(
          inbox.map((r) => r.message_id),
          ['m-1', 'm-2'],
        );
      }),
    );

    it('a failing handler is retried with backoff, then dead-lettered after maxAttempts', { skip }, () =>
      withPrefix(async () => {
        const b = broker();
        const metrics = createMetrics();
        const queue = new BrokerQueue(db, b, silent, metrics, { retryBaseMs: 5, retryMaxMs: 20 });
        const calls = new Map<string, number[]>();
        queue.handle(
          QUEUE,
          async (job) => {
            const attempts = calls.get(job.id) ?? [];
            attempts.push(job.attempt);
            calls.set(job.id, attempts);
            // "doomed" always fails; "flaky" fails twice, then succeeds.
            if (job.payload.kind === 'doomed' || attempts.length <= 2) throw new Error(`${job.id} failed`);
            await db.transaction(async (tx) => job.markDone(tx));
          },
          { concurrency: 4, payload: TestPayload },
        );
        queue.start();
        try {
          await b.publish([
            { id: 'doomed', queue: QUEUE, payload: { kind: 'doomed' }, maxAttempts: 3 },
            { id: 'flaky', queue: QUEUE, payload: { kind: 'flaky' }, maxAttempts: 5 },
          ]);
          await eventually('the doomed message to be dead-lettered and the flaky one done', async () =>
            (await b.deadLettered(QUEUE)) === 1 && (await b.pending(QUEUE)) === 0 && calls.get('flaky')?.length === 3
              ? true
              : undefined,
          );
          await new Promise((resolve) => setTimeout(resolve, 300));
        } finally {
          await queue.stop();
        }
        assert.deepEqual(calls.get('doomed'), [1, 2, 3], 'three attempts, then no more');
        assert.deepEqual(calls.get('flaky'), [1, 2, 3]);
        assert.equal(await counterTotal(metrics, 'deadLettered'), 1);
        assert.equal(await counterTotal(metrics, 'consumerRedeliveries'), 4);
        const inbox = await db.query<{ message_id: string }>(
          'SELECT message_id FROM messaging.inbox WHERE queue = $1',
          [QUEUE],
        );
        assert.deepEqual(
          inbox.map((r) => r.message_id),
          ['flaky'],
        );
      }),
    );

    it(
      'broker outage: orders are accepted into the outbox, and drain when a relay reaches the broker',
      { skip },
      async () => {
        const fresh = await freshPostgresDatabase(databaseBase!);
        const sharedPrefix = freshBrokerPrefix();
        const down = await startTestApp(mode, { databaseUrl: fresh.url, brokerUrl: CLOSED_PORT_URL[mode] });
        let up: Awaited<ReturnType<typeof startTestApp>> | undefined;
        try {
          const admin = client(down.app, await down.token('admin', ALL_SCOPES));
          await createProduct(admin, { sku: 'OUT-1', stock: 50 });
          const orderIds: string[] = [];
          for (let i = 0; i < 6; i++) {
            const response = await placeOrder(admin, [{ sku: 'OUT-1', quantity: 1 }]);
            assert.equal(response.status, 202);
            orderIds.push(response.body.id);
          }
          await eventually('failed relay passes while the outbox holds every charge', async () => {
            const [row] = await down.app.db.query<{ n: number }>('SELECT count(*)::int AS n FROM messaging.outbox');
            return row!.n === 6 && (await counterTotal(down.app.metrics, 'relayFailures')) >= 2 ? true : undefined;
          });
          const pending = await down.app.db.query(`SELECT 1 FROM orders.orders WHERE status = 'pending'`);
          assert.equal(pending.length, 6, 'nothing was charged while the broker was unreachable');

          // A process that reaches the broker relays the backlog and works it off,
          // while the first one keeps accepting.
          up = await startTestApp(mode, { databaseUrl: fresh.url, brokerPrefix: sharedPrefix, gateway: down.gateway });
          const more = await placeOrder(admin, [{ sku: 'OUT-1', quantity: 1 }]);
          assert.equal(more.status, 202);
          orderIds.push(more.body.id);
          await quiesce(up.app);
          const statuses = await up.app.db.query<{ status: string }>(
            'SELECT status FROM orders.orders WHERE id = ANY($1::text::text[])',
            [`{${orderIds.join(',')}}`],
          );
          assert.deepEqual(
            statuses.map((r) => r.status),
            orderIds.map(() => 'confirmed'),
          );
          for (const id of orderIds) assert.equal(down.gateway.netCharged(id).charges, 1, `one charge for ${id}`);
        } finally {
          await up?.close();
          await down.close();
          await deleteBrokerTopology(mode, sharedPrefix);
          await fresh.drop();
        }
      },
    );
  });
}
