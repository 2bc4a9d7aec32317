// One payment that can never succeed must not slow the others. Poison
// payments (the gateway refuses the request, our own code fails on the way,
// the gateway's answer cannot be read) are failed on their first attempt:
// the order is rejected as payment_failed with its stock released, the job
// is dead-lettered with its reason, a refund that can never succeed is
// dead-lettered for an operator, the circuit breaker never opens, and the
// sweeper finds nothing to re-drive; once the cause is fixed, re-driving the
// dead refunds settles the money. Messages that are not ours at all
// (not JSON, the wrong shape) are dead-lettered at once too. Everything is
// proven by counting (gateway calls per order, job retries, breaker
// openings, dead letters), never by timing. In every mode.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { connect as connectNats, headers as natsHeaders } from '@nats-io/transport-node';
import { connect as connectAmqp } from 'amqplib';
import { pino } from 'pino';
import type { App } from '../src/app.ts';
import { NatsBroker } from '../src/messaging/nats-broker.ts';
import { RabbitMqBroker } from '../src/messaging/rabbitmq-broker.ts';
import { CHARGE_QUEUE, redriveRefunds, REFUND_QUEUE } from '../src/payments/payments.ts';
import { startSweeper } from '../src/payments/sweeper.ts';
import { deadLetters } from './support/dead-letters.ts';
import { PoisonGateway } from './support/gateways.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  modes,
  placeOrder,
  quiesce,
  startTestApp,
  type Client,
} from './support/harness.ts';

async function counter(
  app: App,
  name: 'jobsProcessed' | 'gatewayCircuitOpened',
  labels: Record<string, string> = {},
): Promise<number> {
  const values = (await app.metrics[name].get()).values as { labels: Record<string, string | number>; value: number }[];
  return values
    .filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
    .reduce((sum, v) => sum + v.value, 0);
}

async function paymentStatuses(
  app: App,
  orderIds: readonly string[],
): Promise<Map<string, { status: string; lastError: string | null }>> {
  const rows = await app.db.query<{ order_id: string; status: string; last_error: string | null }>(
    'SELECT order_id, status, last_error FROM payments.payments WHERE order_id = ANY($1::text[])',
    [orderIds],
  );
  return new Map(rows.map((r) => [r.order_id, { status: r.status, lastError: r.last_error }]));
}

async function placeAll(shopper: Client, sku: string, tokens: readonly string[]): Promise<string[]> {
  const responses = await Promise.all(tokens.map((token) => placeOrder(shopper, [{ sku, quantity: 1 }], token)));
  for (const r of responses) assert.equal(r.status, 202, JSON.stringify(r.body));
  return responses.map((r) => r.body.id as string);
}

/** Puts raw messages in the queue the app consumes, as anything able to write there could: job rows, or broker messages. */
async function injectRaw(app: App, queue: string, messages: readonly { body: string; id?: string }[]): Promise<void> {
  const { broker } = app;
  if (!broker) {
    for (const { body } of messages)
      await app.db.query('INSERT INTO messaging.jobs (queue, payload, max_attempts) VALUES ($1, $2::text::jsonb, 10)', [
        queue,
        body,
      ]);
    return;
  }
  await broker.pending(queue); // the stream, or the queue the exchange routes to, exists before the first publish
  const url = new URL(app.config.brokerUrl!);
  if (broker instanceof NatsBroker) {
    const nc = await connectNats({ servers: `${url.hostname}:${url.port || '4222'}` });
    try {
      const js = jetstream(nc);
      for (const { body, id } of messages) {
        const h = natsHeaders();
        if (id !== undefined) h.set('Nats-Msg-Id', id);
        await js.publish(broker.subject(queue), body, { headers: h });
      }
    } finally {
      await nc.close();
    }
    return;
  }
  if (broker instanceof RabbitMqBroker) {
    const connection = await connectAmqp(url.toString());
    try {
      const channel = await connection.createConfirmChannel();
      for (const { body, id } of messages)
        channel.publish(broker.exchange, queue, Buffer.from(body), {
          persistent: true,
          ...(id !== undefined ? { messageId: id } : {}),
        });
      await channel.waitForConfirms();
      await channel.close();
    } finally {
      await connection.close();
    }
  }
}

for (const mode of modes()) {
  describe(`payments that can never succeed (${mode})`, () => {
    it('poison payments among normal ones fail at once and alone: normal orders are charged once each, no retry, the breaker never opens', async () => {
      const gateway = new PoisonGateway();
      const t = await startTestApp(mode, { gateway });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        const bea = client(t.app, await t.token('bea', 'orders:write orders:read'));
        const mallory = client(t.app, await t.token('mallory', 'orders:write orders:read'));
        await createProduct(admin, { sku: 'NORMAL-1', stock: 1_000, priceCents: 500 });
        await createProduct(admin, { sku: 'POISON-1', stock: 100, priceCents: 700 });

        // The run without poison, for comparison.
        const baseline = await placeAll(
          bea,
          'NORMAL-1',
          Array.from({ length: 20 }, () => 'tok_visa'),
        );
        await quiesce(t.app);

        // Ten poison payments from one customer, racing twenty normal ones.
        const poisonTokens = [
          ...Array.from({ length: 4 }, () => 'tok_refused'),
          ...Array.from({ length: 3 }, () => 'tok_local_fault'),
          ...Array.from({ length: 3 }, () => 'tok_unreadable'),
        ];
        const [poison, normal] = await Promise.all([
          placeAll(mallory, 'POISON-1', poisonTokens),
          placeAll(
            bea,
            'NORMAL-1',
            Array.from({ length: 20 }, () => 'tok_visa'),
          ),
        ]);
        await quiesce(t.app);

        // The normal orders: confirmed, one gateway call each, with or without poison around them.
        for (const id of [...baseline, ...normal]) {
          assert.equal((await admin.request('GET', `/v1/orders/${id}`)).body.status, 'confirmed', id);
          assert.equal(gateway.calls.get(id), 1, `order ${id} was charged in one call`);
          assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 500 });
        }
        assert.equal(
          await counter(t.app, 'jobsProcessed', { queue: CHARGE_QUEUE, outcome: 'retry' }),
          0,
          'no charge job was retried',
        );
        assert.equal(
          await counter(t.app, 'jobsProcessed', { queue: REFUND_QUEUE, outcome: 'retry' }),
          0,
          'no refund job was retried',
        );
        assert.equal(await counter(t.app, 'gatewayCircuitOpened'), 0, 'the circuit breaker never opened');

        // The poison orders: rejected at once, stock back, each charge attempted once.
        for (const id of poison) {
          const order = (await admin.request('GET', `/v1/orders/${id}`)).body;
          assert.deepEqual([order.status, order.rejectReason], ['rejected', 'payment_failed'], id);
        }
        assert.equal((await admin.request('GET', '/v1/products/POISON-1')).body.available, 100);
        const payments = await paymentStatuses(t.app, poison);
        poison.forEach((id, i) => {
          const token = poisonTokens[i]!;
          const payment = payments.get(id)!;
          if (token === 'tok_refused') {
            // Refused: nothing was charged, nothing is owed; one call.
            assert.equal(gateway.calls.get(id), 1, `${token} ${id}`);
            assert.equal(payment.status, 'failed');
            assert.match(payment.lastError ?? '', /no such token/);
            assert.deepEqual(gateway.netCharged(id), { charges: 0, netCents: 0 });
          } else if (token === 'tok_local_fault') {
            // Nothing was sent: the refund's void finds no charge and spends the key; one call, nothing for an operator.
            assert.equal(gateway.calls.get(id), 1, `${token} ${id}: the charge alone, no replay`);
            assert.equal(payment.status, 'voided', `${token} ${id}`);
            assert.deepEqual(gateway.netCharged(id), { charges: 0, netCents: 0 });
          } else {
            // Money moved, and the void's answer cannot be read either: the refund waits for an operator.
            assert.equal(gateway.calls.get(id), 1, `${token} ${id}: the charge alone, no replay`);
            assert.equal(payment.status, 'refund_failed', `${token} ${id}`);
            assert.match(payment.lastError ?? '', /refund can never succeed/);
          }
        });
        assert.deepEqual(
          gateway.netCharged(poison[9]!),
          { charges: 1, netCents: 700 },
          'the unreadable charge went through: the operator settles it',
        );

        // Dead-lettered with their reasons, where an operator looks.
        const deadCharges = await deadLetters(t.app, CHARGE_QUEUE);
        assert.deepEqual(
          deadCharges.map((d) => (JSON.parse(d.body) as { orderId: string }).orderId).sort(),
          [...poison].sort(),
        );
        for (const letter of deadCharges) assert.match(letter.reason, /^payment can never succeed: /);
        const deadRefunds = await deadLetters(t.app, REFUND_QUEUE);
        assert.deepEqual(
          deadRefunds.map((d) => (JSON.parse(d.body) as { orderId: string }).orderId).sort(),
          poison.slice(7).sort(),
        );
        for (const letter of deadRefunds) assert.match(letter.reason, /^refund can never succeed: /);

        // Nothing for the sweeper to re-drive, even with no deadline at all.
        const sweeper = startSweeper({ db: t.app.db, queue: t.app.queue, log: pino({ level: 'silent' }) }, 0);
        try {
          assert.equal(await sweeper.sweep(), 0);
        } finally {
          await sweeper.stop();
        }

        // Once the cause is fixed, an operator's re-drive of the dead refunds settles the money.
        gateway.cured = true;
        await t.app.db.transaction((tx) => redriveRefunds(tx, t.app.queue, poison.slice(7)));
        await quiesce(t.app);
        const settled = await paymentStatuses(t.app, poison.slice(7));
        for (const id of poison.slice(7)) {
          assert.equal(settled.get(id)!.status, 'refunded', id);
          assert.equal(gateway.netCharged(id).netCents, 0, `${id} nets zero`);
        }
      } finally {
        await t.close();
      }
    });

    it('messages that are not ours are dead-lettered at once with the reason; the orders behind them are paid', async () => {
      const t = await startTestApp(mode);
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'AFTER-1', stock: 10, priceCents: 900 });
        const shapes = [
          '{"orderId": 42}',
          '"ord_01M8ATWWD9YJEQ51WDS1D0RG3W"',
          '[]',
          '{}',
          'null',
          '{"orderId": "ord_../../etc"}',
        ];
        // Only a broker takes bodies that are not JSON (a jsonb column refuses them, and U+0000).
        const broken = t.app.broker
          ? [
              { body: 'not json' },
              { body: '' },
              { body: '{"orderId": "\\u0000"}' },
              { body: '{"orderId": "ord_01M8ATWWD9YJEQ51WDS1D0RG3W"}', id: 'id with spaces' },
            ]
          : [];
        await injectRaw(t.app, CHARGE_QUEUE, [...shapes.map((body) => ({ body })), ...broken]);
        await injectRaw(t.app, REFUND_QUEUE, [{ body: '{"order": "ord_01M8ATWWD9YJEQ51WDS1D0RG3W"}' }]);
        const order = await placeOrder(admin, [{ sku: 'AFTER-1', quantity: 1 }]);
        await quiesce(t.app);

        assert.equal((await admin.request('GET', `/v1/orders/${order.body.id}`)).body.status, 'confirmed');
        const dead = await deadLetters(t.app, CHARGE_QUEUE);
        assert.equal(dead.length, shapes.length + broken.length, JSON.stringify(dead));
        for (const letter of dead) assert.match(letter.reason, /^malformed (payload|message): /, letter.body);
        if (t.app.broker) {
          assert.ok(dead.some((d) => /body is not JSON/.test(d.reason)));
          assert.ok(dead.some((d) => /id "id with spaces" cannot be recorded/.test(d.reason)));
        }
        assert.ok(
          dead.some((d) => /\/orderId must be string/.test(d.reason)),
          `the reason names the field: ${JSON.stringify(dead)}`,
        );
        const deadRefunds = await deadLetters(t.app, REFUND_QUEUE);
        assert.equal(deadRefunds.length, 1);
        assert.match(deadRefunds[0]!.reason, /malformed payload: .*orderId/);
        assert.equal(await counter(t.app, 'jobsProcessed', { outcome: 'retry' }), 0, 'none was retried');
        assert.equal(await counter(t.app, 'jobsProcessed', { outcome: 'dead' }), dead.length + 1);
      } finally {
        await t.close();
      }
    });
  });
}
