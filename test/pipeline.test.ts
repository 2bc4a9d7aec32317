// The order pipeline end to end, with money counted at the gateway: replayed
// and racing requests never charge twice, concurrent orders never oversell,
// every failure path (decline, flaky card, a gateway that stays down, an
// answer lost after the charge went through, a cancel while the charge is in
// flight, a lost job) ends in a terminal status with the right net charge and
// the stock where it belongs. Runs in every mode this run covers.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { chargeKey } from '../src/payments/payments.ts';
import { SimulatedGateway } from '../src/payments/simulated-gateway.ts';
import {
  FailingChargesGateway,
  GatedGateway,
  HeldAnswerGateway,
  LostReplyGateway,
  NoVoidGateway,
  OutageGateway,
} from './support/gateways.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  isBrokerMode,
  modes,
  newKey,
  placeOrder,
  quiesce,
  startTestApp,
  type Client,
  type Mode,
  type TestApp,
} from './support/harness.ts';

const SHOPPER_SCOPES = 'orders:write orders:read';

/** Where a queued job waits before a worker takes it: the jobs table, or the outbox in broker mode. */
const queueTable = (mode: Mode) => (isBrokerMode(mode) ? 'messaging.outbox' : 'messaging.jobs');

/** Reads an order as an admin. */
async function readOrder(admin: Client, id: string) {
  const response = await admin.request('GET', `/v1/orders/${id}`);
  assert.equal(response.status, 200, JSON.stringify(response.body));
  return response.body;
}

async function available(admin: Client, sku: string): Promise<number> {
  const response = await admin.request('GET', `/v1/products/${sku}`);
  assert.equal(response.status, 200);
  return response.body.available as number;
}

/** Asserts the gateway's ledger for one order: how many charges and what they net to. */
function assertLedger(gateway: SimulatedGateway, order: { id: string; status: string; totalCents: number }) {
  const expected = order.status === 'confirmed' ? order.totalCents : 0;
  const net = gateway.netCharged(order.id);
  assert.equal(
    net.netCents,
    expected,
    `order ${order.id} (${order.status}) nets ${net.netCents} cents at the gateway, expected ${expected}`,
  );
  if (order.status === 'confirmed')
    assert.equal(net.charges, 1, `confirmed order ${order.id} has ${net.charges} charges`);
}

async function paymentStatus(t: TestApp, id: string): Promise<string | undefined> {
  return (await t.app.db.query<{ status: string }>('SELECT status FROM payments.payments WHERE order_id = $1', [id]))[0]
    ?.status;
}

interface HistoryEvent {
  type: string;
  detail: Record<string, unknown>;
}

/** The order's history, oldest first, as the admin API returns it. */
async function history(admin: Client, id: string): Promise<HistoryEvent[]> {
  const response = await admin.request('GET', `/v1/admin/orders/${id}`);
  assert.equal(response.status, 200, JSON.stringify(response.body));
  return response.body.events as HistoryEvent[];
}

/**
 * The gateway's ledger and the order's history tell the same story: every
 * charge the gateway made for the order is in the history as `charged`, once,
 * with its id, and before its refund; a history with a refund has a charge;
 * a cancelled or rejected order nets zero, and its payment ends settled.
 */
async function assertMoneyStory(
  t: TestApp,
  admin: Client,
  gateway: SimulatedGateway,
  id: string,
): Promise<HistoryEvent[]> {
  const events = await history(admin, id);
  const order = await readOrder(admin, id);
  const types = events.map((e) => e.type);
  const ledger = [...gateway.charges.values()].filter((c) => c.reference === id);
  const charged = events.filter((e) => e.type === 'charged');
  assert.deepEqual(
    charged.map((e) => e.detail.chargeId),
    ledger.map((c) => c.id),
    `order ${id}: the history's charges are the gateway's (${types.join(', ')})`,
  );
  const refunded = events.filter((e) => e.type === 'refunded');
  const refunds = [...gateway.refunds.values()].filter((r) => ledger.some((c) => c.id === r.chargeId));
  assert.deepEqual(
    refunded.map((e) => e.detail.refundId),
    refunds.map((r) => r.id),
    `order ${id}: the history's refunds are the gateway's (${types.join(', ')})`,
  );
  if (refunded.length > 0)
    assert.ok(
      types.indexOf('charged') < types.indexOf('refunded'),
      `order ${id}: charged before refunded (${types.join(', ')})`,
    );
  assertLedger(gateway, order);
  if (order.status !== 'confirmed') {
    assert.ok(
      ['voided', 'refunded', 'declined', 'failed'].includes((await paymentStatus(t, id)) ?? 'none'),
      `order ${id}: payment ${await paymentStatus(t, id)} is settled`,
    );
  }
  return events;
}

/** Starts an app with a product and an admin client; closes it after the test. */
async function withApp<T>(
  mode: Mode,
  options: Parameters<typeof startTestApp>[1],
  body: (ctx: { t: TestApp; admin: Client; shopper: Client }) => Promise<T>,
): Promise<T> {
  const t = await startTestApp(mode, options);
  try {
    const admin = client(t.app, await t.token('admin', ALL_SCOPES));
    const shopper = client(t.app, await t.token('dora', SHOPPER_SCOPES));
    return await body({ t, admin, shopper });
  } finally {
    await t.close();
  }
}

for (const mode of modes()) {
  describe(`order pipeline (${mode})`, () => {
    let t: TestApp;
    let admin: Client;

    before(async () => {
      t = await startTestApp(mode);
      admin = client(t.app, await t.token('admin', ALL_SCOPES));
    });
    after(() => t.close());

    describe('idempotent replay', () => {
      it('the same key and body returns the same order and charges once', async () => {
        await createProduct(admin, { sku: 'IDEM-1', stock: 10, priceCents: 1250 });
        const alice = client(t.app, await t.token('alice', SHOPPER_SCOPES));
        const key = newKey();
        const first = await placeOrder(alice, [{ sku: 'IDEM-1', quantity: 2 }], 'tok_visa', key);
        assert.equal(first.status, 202);
        await quiesce(t.app);
        const replay = await placeOrder(alice, [{ sku: 'IDEM-1', quantity: 2 }], 'tok_visa', key);
        assert.ok([200, 202].includes(replay.status), `replay answered ${replay.status}`);
        assert.equal(replay.body.id, first.body.id);
        assert.equal(replay.headers.location, `/v1/orders/${first.body.id}`);
        await quiesce(t.app);
        const order = await readOrder(admin, first.body.id);
        assert.equal(order.status, 'confirmed');
        assert.deepEqual(t.gateway.netCharged(order.id), { charges: 1, netCents: 2500 });
        assert.equal(await available(admin, 'IDEM-1'), 8, 'the replay reserved stock again');
      });

      it('20 racing requests with one key make one order and one charge', async () => {
        await createProduct(admin, { sku: 'RACE-1', stock: 100, priceCents: 700 });
        const racer = client(t.app, await t.token('racer', SHOPPER_SCOPES));
        const key = newKey();
        const responses = await Promise.all(
          Array.from({ length: 20 }, () => placeOrder(racer, [{ sku: 'RACE-1', quantity: 3 }], 'tok_visa', key)),
        );
        for (const r of responses)
          assert.ok([200, 202].includes(r.status), `a racing request answered ${r.status}: ${JSON.stringify(r.body)}`);
        const ids = new Set(responses.map((r) => r.body.id as string));
        assert.equal(ids.size, 1, `racing requests got ${ids.size} different orders`);
        const [id] = ids;
        await quiesce(t.app);
        const listed = await racer.request('GET', '/v1/orders?limit=100');
        assert.deepEqual(
          listed.body.items.map((o: { id: string }) => o.id),
          [id],
          'the customer has exactly one order',
        );
        const order = await readOrder(admin, id!);
        assert.equal(order.status, 'confirmed');
        assert.deepEqual(t.gateway.netCharged(id!), { charges: 1, netCents: 2100 });
        assert.equal(await available(admin, 'RACE-1'), 97);
      });

      it('the same key with a different body is a 422 idempotency-key-reused problem and changes nothing', async () => {
        await createProduct(admin, { sku: 'IDEM-2', stock: 10 });
        const erin = client(t.app, await t.token('erin', SHOPPER_SCOPES));
        const key = newKey();
        const first = await placeOrder(erin, [{ sku: 'IDEM-2', quantity: 1 }], 'tok_visa', key);
        assert.equal(first.status, 202);
        for (const [items, token] of [
          [[{ sku: 'IDEM-2', quantity: 2 }], 'tok_visa'],
          [[{ sku: 'IDEM-2', quantity: 1 }], 'tok_declined'],
        ] as const) {
          const reused = await placeOrder(erin, [...items], token, key);
          assert.equal(reused.status, 422, JSON.stringify(reused.body));
          assert.match(String(reused.headers['content-type']), /^application\/problem\+json/);
          assert.equal(reused.body.type, '/problems/idempotency-key-reused');
        }
        await quiesce(t.app);
        assert.equal((await erin.request('GET', '/v1/orders')).body.items.length, 1);
        assert.equal(await available(admin, 'IDEM-2'), 9);
        assert.deepEqual(t.gateway.netCharged(first.body.id), { charges: 1, netCents: 1000 });
      });
    });

    it('300 concurrent orders for 50 units: exactly 50 confirmed, 250 out_of_stock, one charge per confirmed', async () => {
      await createProduct(admin, { sku: 'HOT-1', stock: 50, priceCents: 999 });
      const customers = await Promise.all(
        ['c1', 'c2', 'c3', 'c4', 'c5', 'c6'].map(async (sub) => client(t.app, await t.token(sub, SHOPPER_SCOPES))),
      );
      const chargesBefore = t.gateway.charges.size;
      const responses = await Promise.all(
        Array.from({ length: 300 }, (_, i) =>
          placeOrder(customers[i % customers.length]!, [{ sku: 'HOT-1', quantity: 1 }]),
        ),
      );
      for (const r of responses) assert.equal(r.status, 202, JSON.stringify(r.body));
      const atOnce = responses.filter((r) => r.body.status === 'rejected');
      assert.equal(atOnce.length, 250, 'orders rejected at acceptance');
      for (const r of atOnce) assert.equal(r.body.rejectReason, 'out_of_stock');
      await quiesce(t.app);
      const orders = await Promise.all(responses.map((r) => readOrder(admin, r.body.id)));
      const confirmed = orders.filter((o) => o.status === 'confirmed');
      const rejected = orders.filter((o) => o.status === 'rejected');
      assert.equal(confirmed.length, 50);
      assert.equal(rejected.length, 250);
      for (const o of rejected) assert.equal(o.rejectReason, 'out_of_stock');
      for (const o of orders) assertLedger(t.gateway, o);
      assert.equal(t.gateway.charges.size - chargesBefore, 50, 'charges made at the gateway');
      const product = (await admin.request('GET', '/v1/products/HOT-1')).body;
      assert.equal(product.stock, 50);
      assert.equal(product.available, 0);
    });

    it('a flaky card (tok_flaky) is retried and ends confirmed with one net charge', async () => {
      await createProduct(admin, { sku: 'FLAKY-1', stock: 100, priceCents: 300 });
      const frank = client(t.app, await t.token('frank', SHOPPER_SCOPES));
      const callsBefore = t.gateway.chargeCalls;
      // Each call fails with probability 1/2: over 20 orders at least one
      // retry happens except with probability 2^-20.
      const placed = await Promise.all(
        Array.from({ length: 20 }, () => placeOrder(frank, [{ sku: 'FLAKY-1', quantity: 1 }], 'tok_flaky')),
      );
      for (const r of placed) assert.equal(r.status, 202);
      await quiesce(t.app);
      for (const r of placed) {
        const order = await readOrder(admin, r.body.id);
        assert.equal(order.status, 'confirmed', `order ${order.id}: ${order.status} ${order.rejectReason}`);
        assert.deepEqual(t.gateway.netCharged(order.id), { charges: 1, netCents: 300 });
      }
      assert.ok(
        t.gateway.chargeCalls - callsBefore > 20,
        `only ${t.gateway.chargeCalls - callsBefore} charge calls for 20 flaky orders: nothing was retried`,
      );
      assert.equal(await available(admin, 'FLAKY-1'), 80);
    });

    it('a declined card ends rejected as payment_declined, with its stock released and nothing charged', async () => {
      await createProduct(admin, { sku: 'DECL-1', stock: 4, priceCents: 500 });
      const dan = client(t.app, await t.token('dan', SHOPPER_SCOPES));
      const placed = await placeOrder(dan, [{ sku: 'DECL-1', quantity: 3 }], 'tok_declined');
      assert.equal(placed.status, 202);
      assert.equal(placed.body.status, 'pending');
      await quiesce(t.app);
      const order = await readOrder(admin, placed.body.id);
      assert.equal(order.status, 'rejected');
      assert.equal(order.rejectReason, 'payment_declined');
      assert.deepEqual(t.gateway.netCharged(order.id), { charges: 0, netCents: 0 });
      assert.equal(await available(admin, 'DECL-1'), 4);
    });

    describe('cancel', () => {
      it('a cancel while the charge is on its way to the gateway voids its key: the charge arriving later is declined, nothing is charged', async () => {
        const gateway = new GatedGateway();
        await withApp(mode, { gateway }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'FLIGHT-1', stock: 5, priceCents: 4200 });
          const placed = await placeOrder(shopper, [{ sku: 'FLIGHT-1', quantity: 2 }]);
          assert.equal(placed.status, 202);
          await gateway.started; // the pay worker has sent the charge; the gateway has not booked it
          assert.equal(await paymentStatus(g, placed.body.id), 'charging');
          const cancelled = await shopper.request('POST', `/v1/orders/${placed.body.id}/cancel`);
          assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
          assert.equal(cancelled.body.status, 'cancelled');
          assert.equal(await available(a, 'FLIGHT-1'), 5);
          // The refund voids the key before the charge gets there.
          await eventually('the charge key to be voided', async () =>
            (await paymentStatus(g, placed.body.id)) === 'voided' ? true : undefined,
          );
          gateway.release();
          await quiesce(g.app);
          const order = await readOrder(a, placed.body.id);
          assert.equal(order.status, 'cancelled');
          assert.deepEqual(gateway.netCharged(order.id), { charges: 0, netCents: 0 });
          assert.equal(await paymentStatus(g, order.id), 'voided');
          const events = await assertMoneyStory(g, a, gateway, order.id);
          assert.deepEqual(
            events.filter((e) => e.type === 'charge_attempted').map((e) => [e.detail.outcome]),
            [['declined']],
            'the charge that arrived after the void was declined',
          );
          assert.equal(await available(a, 'FLIGHT-1'), 5);
        });
      });

      it("a cancel while a booked charge's answer is on its way refunds that charge, and the history has it before the refund", async () => {
        const gateway = new HeldAnswerGateway();
        await withApp(mode, { gateway }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'FLIGHT-2', stock: 5, priceCents: 4200 });
          const placed = await placeOrder(shopper, [{ sku: 'FLIGHT-2', quantity: 1 }]);
          const id = placed.body.id as string;
          await gateway.booked; // the gateway has made the charge; the pay worker waits for the answer
          assert.equal((await shopper.request('POST', `/v1/orders/${id}/cancel`)).status, 200);
          // The refund learns of the charge from the void and refunds it before the pay worker hears back.
          await eventually('the refund', async () => ((await paymentStatus(g, id)) === 'refunded' ? true : undefined));
          gateway.release();
          await quiesce(g.app);
          assert.equal((await readOrder(a, id)).status, 'cancelled');
          assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 0 });
          const types = (await assertMoneyStory(g, a, gateway, id)).map((e) => e.type);
          assert.deepEqual(types, [
            'accepted',
            'stock_held',
            'cancel_requested',
            'refund_requested',
            'charged',
            'refunded',
          ]);
          assert.equal(await paymentStatus(g, id), 'refunded');
        });
      });

      it('a cancel after a transient failure charges nothing afterwards, also once the gateway answers again', async () => {
        // The charge failed with a 503 (nothing charged), then the order was
        // cancelled: twenty orders, each cancelled between its failed
        // attempts. Charges are served again only once every key is voided,
        // which a replay of the charge would have charged.
        const gateway = new FailingChargesGateway();
        await withApp(mode, { gateway, maxAttempts: 500 }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'FLAKY-1', stock: 100, priceCents: 310 });
          const ids = await Promise.all(
            Array.from({ length: 20 }, async () => {
              const placed = await placeOrder(shopper, [{ sku: 'FLAKY-1', quantity: 1 }], 'tok_flaky');
              assert.equal(placed.status, 202);
              const id = placed.body.id as string;
              await eventually(`a failed charge attempt of ${id}`, async () =>
                (await history(a, id)).some((e) => e.type === 'charge_attempted' && e.detail.outcome === 'transient')
                  ? true
                  : undefined,
              );
              const cancelled = await shopper.request('POST', `/v1/orders/${id}/cancel`);
              assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
              return id;
            }),
          );
          await eventually('every charge key voided', async () =>
            (await Promise.all(ids.map((id) => paymentStatus(g, id)))).every((s) => s === 'voided') ? true : undefined,
          );
          gateway.chargesDown = false;
          await quiesce(g.app);
          assert.equal(gateway.charges.size, 0, 'nothing was charged after the cancels');
          assert.equal(gateway.refunds.size, 0);
          for (const id of ids) {
            assert.equal((await readOrder(a, id)).status, 'cancelled');
            const types = (await assertMoneyStory(g, a, gateway, id)).map((e) => e.type);
            const at = (type: string) => types.indexOf(type);
            assert.ok(
              at('cancel_requested') < at('refund_requested') && at('refund_requested') < at('charge_voided'),
              `order ${id}: ${types.join(', ')}`,
            );
            assert.ok(!types.includes('charged') && !types.includes('refunded'), `order ${id}: ${types.join(', ')}`);
            const detail = (await a.request('GET', `/v1/admin/orders/${id}`)).body;
            assert.deepEqual(
              detail.moneyMovements.map((e: HistoryEvent) => e.type),
              ['refund_requested', 'charge_voided'],
            );
            assert.equal(detail.payment.status, 'voided');
          }
          assert.equal(await available(a, 'FLAKY-1'), 100);
        });
      });

      it('cancels racing flaky charges (tok_flaky) many times: each order nets zero, and every charge made is in its history before its refund', async () => {
        const gateway = new SimulatedGateway({ retain: 'all', flakyFailureRate: 0.5 });
        await withApp(mode, { gateway }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'RACE-1', stock: 100, priceCents: 275 });
          // Cancels at every point of the charge: at once, after the first
          // attempt is recorded, or whenever the order is no longer fresh.
          const ids = await Promise.all(
            Array.from({ length: 40 }, async (_, i) => {
              const placed = await placeOrder(shopper, [{ sku: 'RACE-1', quantity: 1 }], 'tok_flaky');
              const id = placed.body.id as string;
              if (i % 2 === 1)
                await eventually(`a charge attempt of ${id}`, async () =>
                  (await history(a, id)).some((e) => e.type === 'charge_attempted') ? true : undefined,
                );
              const cancelled = await shopper.request('POST', `/v1/orders/${id}/cancel`);
              assert.equal(cancelled.status, 200, JSON.stringify(cancelled.body));
              return id;
            }),
          );
          await quiesce(g.app);
          await eventually('every payment settled', async () =>
            (await Promise.all(ids.map((id) => paymentStatus(g, id)))).every((s) => s !== 'charging' && s !== 'pending')
              ? true
              : undefined,
          );
          for (const id of ids) {
            assert.equal((await readOrder(a, id)).status, 'cancelled');
            await assertMoneyStory(g, a, gateway, id);
          }
          assert.equal(await available(a, 'RACE-1'), 100);
        });
      });

      it('on a gateway without a void, a cancel after a transient failure learns by replaying the charge: the charge it makes is in the history, then refunded', async () => {
        const gateway = new NoVoidGateway();
        await withApp(mode, { gateway, maxAttempts: 500 }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'NOVOID-1', stock: 2, priceCents: 990 });
          const placed = await placeOrder(shopper, [{ sku: 'NOVOID-1', quantity: 1 }], 'tok_flaky');
          const id = placed.body.id as string;
          await eventually('a failed charge attempt', async () =>
            (await history(a, id)).some((e) => e.type === 'charge_attempted') ? true : undefined,
          );
          assert.equal((await shopper.request('POST', `/v1/orders/${id}/cancel`)).status, 200);
          await eventually('the refund to ask for a void', async () => (gateway.voidCalls >= 1 ? true : undefined));
          gateway.down = false;
          await quiesce(g.app);
          await eventually('the refund', async () => ((await paymentStatus(g, id)) === 'refunded' ? true : undefined));
          assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 0 });
          await assertMoneyStory(g, a, gateway, id);
        });
      });

      it('a cancel before the workers run charges nothing, voids the payment and restores the stock', async () => {
        await withApp(mode, { startWorkers: false }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'EARLY-1', stock: 3, priceCents: 100 });
          const placed = await placeOrder(shopper, [{ sku: 'EARLY-1', quantity: 3 }]);
          assert.equal(await available(a, 'EARLY-1'), 0);
          assert.equal((await shopper.request('POST', `/v1/orders/${placed.body.id}/cancel`)).status, 200);
          assert.equal(
            await paymentStatus(g, placed.body.id),
            'voided',
            'a payment never sent ends voided, not pending',
          );
          g.app.startWorkers();
          await quiesce(g.app);
          assert.equal((await readOrder(a, placed.body.id)).status, 'cancelled');
          assert.deepEqual(g.gateway.netCharged(placed.body.id), { charges: 0, netCents: 0 });
          assert.equal(g.gateway.chargeCalls + g.gateway.voidCalls, 0, 'the gateway was never called');
          assert.equal(await paymentStatus(g, placed.body.id), 'voided');
          assert.deepEqual(
            (await history(a, placed.body.id)).map((e) => e.type),
            ['accepted', 'stock_held', 'cancel_requested', 'charge_voided'],
          );
          assert.equal(await available(a, 'EARLY-1'), 3);
        });
      });
    });

    describe('duplicate deliveries', () => {
      it('two deliveries of one charge racing through the gateway confirm once and refund nothing', async () => {
        const gateway = new GatedGateway();
        await withApp(mode, { gateway, startWorkers: false }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'DUP-1', stock: 5, priceCents: 1200 });
          const placed = await placeOrder(shopper, [{ sku: 'DUP-1', quantity: 1 }]);
          const id = placed.body.id as string;
          // A second copy of the charge message, as a broker redelivery or a
          // sweeper re-drive produces while the first is still in flight.
          await g.app.db.query(
            `INSERT INTO ${queueTable(mode)} (queue, payload, max_attempts) VALUES ('payments.charge', $1::text::jsonb, 5)`,
            [JSON.stringify({ orderId: id })],
          );
          g.app.startWorkers();
          await eventually('both deliveries to reach the gateway', async () =>
            gateway.arrived >= 2 ? true : undefined,
          );
          gateway.release();
          await quiesce(g.app);
          const order = await readOrder(a, id);
          assert.equal(order.status, 'confirmed');
          assertLedger(gateway, order);
          const payment = await g.app.db.query<{ status: string }>(
            'SELECT status FROM payments.payments WHERE order_id = $1',
            [id],
          );
          assert.equal(payment[0]!.status, 'succeeded');
        });
      });
    });

    describe('a gateway that keeps failing', () => {
      it('a charge failing transiently past maxAttempts ends rejected as payment_failed, nets zero, releases the stock', async () => {
        const gateway = new SimulatedGateway({ retain: 'all', flakyFailureRate: 1 });
        await withApp(mode, { gateway, maxAttempts: 3 }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'DOWN-1', stock: 2, priceCents: 800 });
          const placed = await placeOrder(shopper, [{ sku: 'DOWN-1', quantity: 2 }], 'tok_flaky');
          assert.equal(placed.status, 202);
          const order = await eventually('the order to leave pending', async () => {
            const o = await readOrder(a, placed.body.id);
            return o.status === 'pending' ? undefined : o;
          });
          assert.equal(order.status, 'rejected');
          assert.equal(order.rejectReason, 'payment_failed');
          await quiesce(g.app);
          assert.ok(gateway.chargeCalls >= 3, `the charge was tried ${gateway.chargeCalls} times`);
          assert.deepEqual(gateway.netCharged(order.id), { charges: 0, netCents: 0 });
          assert.equal(await available(a, 'DOWN-1'), 2);
        });
      });

      it('a charge that went through but whose answers were lost is refunded when the order is given up on', async () => {
        // Every answer is lost while the order is pending, so the pay worker
        // gives up (maxAttempts 1); the refund's replay then learns that the
        // charge exists.
        const gateway = new LostReplyGateway();
        await withApp(mode, { gateway, maxAttempts: 1 }, async ({ t: g, admin: a, shopper }) => {
          gateway.loseAnswer = async (request) => {
            const rows = await g.app.db.query<{ status: string }>('SELECT status FROM orders.orders WHERE id = $1', [
              request.reference,
            ]);
            return rows[0]?.status === 'pending';
          };
          await createProduct(a, { sku: 'LOST-1', stock: 1, priceCents: 1500 });
          const placed = await placeOrder(shopper, [{ sku: 'LOST-1', quantity: 1 }]);
          await quiesce(g.app);
          const order = await readOrder(a, placed.body.id);
          assert.equal(order.status, 'rejected');
          assert.equal(order.rejectReason, 'payment_failed');
          assert.deepEqual(gateway.netCharged(order.id), { charges: 1, netCents: 0 });
          assert.equal(await available(a, 'LOST-1'), 1);
          const dead = await g.app.db.query('SELECT queue, last_error FROM messaging.dead_jobs');
          assert.equal(dead.length, 0, `no job should have died: ${JSON.stringify(dead)}`);
        });
      });
    });

    describe('sweeper', () => {
      it('re-drives an order stuck pending whose job was lost', async () => {
        await withApp(mode, { startWorkers: false }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'STUCK-1', stock: 5, priceCents: 650 });
          const placed = await placeOrder(shopper, [{ sku: 'STUCK-1', quantity: 1 }]);
          assert.equal(placed.body.status, 'pending');
          // Workers (and the relay) are off, so the charge is still in this mode's queue table.
          const deleted = await g.app.db.query(
            `DELETE FROM ${queueTable(mode)} WHERE queue = 'payments.charge' RETURNING id`,
          );
          assert.equal(deleted.length, 1, 'the charge job existed');
          g.app.startWorkers();
          const sweeper = g.app.sweeper;
          assert.ok(sweeper, 'startWorkers() starts the sweeper');
          assert.equal(await sweeper.sweep(), 0, 'an order younger than the deadline is left alone');
          // Age the order past PENDING_DEADLINE_MS instead of waiting for it.
          await g.app.db.query("UPDATE orders.orders SET updated_at = now() - interval '1 day' WHERE id = $1", [
            placed.body.id,
          ]);
          assert.equal(await sweeper.sweep(), 1);
          await quiesce(g.app);
          const order = await readOrder(a, placed.body.id);
          assert.equal(order.status, 'confirmed');
          assert.deepEqual(g.gateway.netCharged(order.id), { charges: 1, netCents: 650 });
          assert.equal(await available(a, 'STUCK-1'), 4);
        });
      });

      it('re-drives a refund that died while the gateway was down, so the order nets zero', async () => {
        const gateway = new OutageGateway();
        await withApp(mode, { gateway, maxAttempts: 2 }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'OUT-1', stock: 1, priceCents: 900 });
          const placed = await placeOrder(shopper, [{ sku: 'OUT-1', quantity: 1 }]);
          const id = placed.body.id as string;
          // The charge gives up (payment_failed); its refund cannot learn
          // whether money moved while the gateway is down, and dies too.
          await quiesce(g.app);
          assert.equal((await readOrder(a, id)).rejectReason, 'payment_failed');
          const paymentStatus = async () =>
            (
              await g.app.db.query<{ status: string }>('SELECT status FROM payments.payments WHERE order_id = $1', [id])
            )[0]!.status;
          assert.equal(await paymentStatus(), 'charging', 'the refund never happened');
          if (!isBrokerMode(mode)) {
            // A broker keeps its dead letters itself.
            const dead = await g.app.db.query<{ queue: string }>('SELECT queue FROM messaging.dead_jobs');
            assert.deepEqual(
              dead.map((d) => d.queue),
              ['payments.refund'],
            );
          }

          gateway.down = false;
          // A confirmed order's payment holds money too, and must be left alone however old.
          await createProduct(a, { sku: 'OUT-2', stock: 1, priceCents: 400 });
          const kept = await placeOrder(shopper, [{ sku: 'OUT-2', quantity: 1 }]);
          await quiesce(g.app);
          assert.equal((await readOrder(a, kept.body.id)).status, 'confirmed');
          assert.equal(await g.app.sweeper!.sweep(), 0, 'a refund asked for within the deadline is left alone');
          await g.app.db.query(
            "UPDATE payments.payments SET updated_at = updated_at - interval '1 day', refund_requested_at = refund_requested_at - interval '1 day'",
          );
          assert.equal(
            await g.app.sweeper!.sweep(),
            1,
            'only the overdue refund is re-driven, not the confirmed order',
          );
          await quiesce(g.app);
          // Nothing was ever charged: the re-driven refund voids the key instead of charging it to learn that.
          assert.equal(await paymentStatus(), 'voided');
          assert.deepEqual(gateway.netCharged(id), { charges: 0, netCents: 0 });
          assert.deepEqual(gateway.netCharged(kept.body.id), { charges: 1, netCents: 400 });
          assert.equal(await g.app.sweeper!.sweep(), 0, 'a settled payment is not re-driven');
        });
      });

      it('re-drives an order whose worker died mid-charge, charging it once', async () => {
        const gateway = new SimulatedGateway({ retain: 'all' });
        await withApp(mode, { gateway, startWorkers: false }, async ({ t: g, admin: a, shopper }) => {
          await createProduct(a, { sku: 'STUCK-2', stock: 5, priceCents: 720 });
          const placed = await placeOrder(shopper, [{ sku: 'STUCK-2', quantity: 2 }]);
          const id = placed.body.id as string;
          // A worker sent the charge (the gateway took it), then crashed before
          // recording the answer; its job is gone.
          await g.app.db.query("UPDATE payments.payments SET status = 'charging' WHERE order_id = $1", [id]);
          await gateway.charge({
            idempotencyKey: chargeKey(id),
            amountCents: 1440,
            currency: 'EUR',
            token: 'tok_visa',
            reference: id,
          });
          await g.app.db.query(`DELETE FROM ${queueTable(mode)}`);
          await g.app.db.query("UPDATE orders.orders SET updated_at = now() - interval '1 day' WHERE id = $1", [id]);
          g.app.startWorkers();
          assert.equal(await g.app.sweeper!.sweep(), 1);
          await quiesce(g.app);
          assert.equal((await readOrder(a, id)).status, 'confirmed');
          assert.deepEqual(gateway.netCharged(id), { charges: 1, netCents: 1440 });
          assert.equal(await available(a, 'STUCK-2'), 3);
        });
      });
    });
  });
}
