// Group commit must not change any answer: a batch that mixes good orders,
// bad input, replays, reused keys and a SKU that runs out gives each order
// exactly the answer it would get alone, first come first served; a batch of
// paid orders that mixes a cancelled one confirms the others and refunds it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AppError } from '../src/errors.ts';
import { acceptBatch, OrderAcceptor, type AcceptRequest } from '../src/orders/accept.ts';
import { paymentPort } from '../src/payments/payments.ts';
import { GatedGateway } from './support/gateways.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  modes,
  placeOrder,
  quiesce,
  snapshot,
  startTestApp,
} from './support/harness.ts';

const order = (
  customerId: string,
  idempotencyKey: string,
  items: { sku: string; quantity: number }[],
  token = 'tok_visa',
): AcceptRequest => ({
  customerId,
  idempotencyKey,
  order: { items, payment: { token } },
});

for (const mode of modes()) {
  describe(`group commit (${mode})`, () => {
    it('answers every order of a mixed batch as if it were alone', async () => {
      const t = await startTestApp(mode, { startWorkers: false });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'HOT', stock: 3 });
        await createProduct(admin, { sku: 'COLD', stock: 100 });
        const first = await t.app.db.transaction((tx) =>
          acceptBatch(tx, paymentPort(t.app.queue), [order('ann', 'k1', [{ sku: 'COLD', quantity: 1 }])]),
        );
        assert.ok(first[0]!.ok);

        const outcomes = await t.app.db.transaction((tx) =>
          acceptBatch(tx, paymentPort(t.app.queue), [
            order('bob', 'a', [{ sku: 'HOT', quantity: 2 }]), // takes 2 of 3
            order('bob', 'b', [{ sku: 'NOPE', quantity: 1 }]), // unknown SKU
            order('ann', 'k1', [{ sku: 'COLD', quantity: 1 }]), // replay of the first order
            order('ann', 'k1x', [{ sku: 'COLD', quantity: 1 }]),
            order('cat', 'c', [
              { sku: 'COLD', quantity: 5 },
              { sku: 'HOT', quantity: 2 },
            ]), // HOT has 1 left: rejected, and its COLD is not held
            order('dan', 'd', [{ sku: 'HOT', quantity: 1 }]), // the last HOT
            order('eve', 'e', [{ sku: 'HOT', quantity: 1 }]), // sold out
          ]),
        );
        const [a, b, replay, other, c, d, e] = outcomes;
        assert.ok(a?.ok && a.value.order.status === 'pending');
        assert.ok(b && !b.ok && b.error instanceof AppError && b.error.code === 'unknown_sku');
        assert.ok(
          replay?.ok && replay.value.replayed && first[0]?.ok && replay.value.order.id === first[0].value.order.id,
        );
        assert.ok(other?.ok && other.value.order.status === 'pending' && !other.value.replayed);
        assert.ok(c?.ok && c.value.order.status === 'rejected' && c.value.order.rejectReason === 'out_of_stock');
        assert.ok(d?.ok && d.value.order.status === 'pending');
        assert.ok(e?.ok && e.value.order.status === 'rejected' && e.value.order.rejectReason === 'out_of_stock');

        const hot = await admin.request('GET', '/v1/products/HOT');
        const cold = await admin.request('GET', '/v1/products/COLD');
        assert.equal(hot.body.available, 0);
        assert.equal(cold.body.available, 98, 'only the two accepted COLD orders hold stock');
      } finally {
        await t.close();
      }
    });

    it('a reused key with a different body is refused and writes nothing', async () => {
      const t = await startTestApp(mode, { startWorkers: false });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'S', stock: 10 });
        await t.app.db.transaction((tx) =>
          acceptBatch(tx, paymentPort(t.app.queue), [order('ann', 'k', [{ sku: 'S', quantity: 1 }])]),
        );
        const before = await snapshot(t.app.db);
        const [reused] = await t.app.db.transaction((tx) =>
          acceptBatch(tx, paymentPort(t.app.queue), [order('ann', 'k', [{ sku: 'S', quantity: 2 }])]),
        );
        assert.ok(
          reused && !reused.ok && reused.error instanceof AppError && reused.error.code === 'idempotency_key_reused',
        );
        assert.deepEqual(await snapshot(t.app.db), before);
      } finally {
        await t.close();
      }
    });

    it('commits concurrent accepts together, and a repeated key waits for the next batch', async () => {
      const t = await startTestApp(mode, { startWorkers: false });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        await createProduct(admin, { sku: 'S', stock: 1_000 });
        const acceptor = new OrderAcceptor(
          { db: t.app.db, payments: paymentPort(t.app.queue), metrics: t.app.metrics },
          { maxInFlight: 1, maxBatch: 64 },
        );
        const before = await batchCount(t.app.metrics, 'orderflow_accept_batch_size');
        // Submitted in one turn of the event loop: one batch of 40 (+1 for the repeated key).
        const results = await Promise.all([
          ...Array.from({ length: 40 }, (_, i) =>
            acceptor.accept(`c${i % 4}`, `k${i}`, {
              items: [{ sku: 'S', quantity: 1 }],
              payment: { token: 'tok_visa' },
            }),
          ),
          acceptor.accept('c0', 'k0', { items: [{ sku: 'S', quantity: 1 }], payment: { token: 'tok_visa' } }),
        ]);
        assert.equal(new Set(results.map((r) => r.order.id)).size, 40, 'the repeated key returns the same order');
        assert.equal(results[40]!.replayed, true);
        assert.equal(results[40]!.order.id, results[0].order.id);
        const after = await batchCount(t.app.metrics, 'orderflow_accept_batch_size');
        assert.equal(after.count - before.count, 2, 'two transactions: the batch, then the repeated key');
        assert.equal(after.sum - before.sum, 41);
        const product = await admin.request('GET', '/v1/products/S');
        assert.equal(product.body.available, 960);
      } finally {
        await t.close();
      }
    });

    it('a batch of paid orders confirms each one, and refunds only the one cancelled while its charge was in flight', async () => {
      const gateway = new GatedGateway();
      const t = await startTestApp(mode, { gateway, startWorkers: false });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        const shopper = client(t.app, await t.token('dora', 'orders:write orders:read'));
        await createProduct(admin, { sku: 'B', stock: 10, priceCents: 700 });
        const ids: string[] = [];
        for (let i = 0; i < 4; i++)
          ids.push((await placeOrder(shopper, [{ sku: 'B', quantity: 1 }])).body.id as string);
        const [paid1, paid2, cancelledInFlight, cancelledEarly] = ids as [string, string, string, string];
        // Cancelled before the workers run: its start-charging step settles it without a charge.
        assert.equal((await shopper.request('POST', `/v1/orders/${cancelledEarly}/cancel`)).status, 200);
        const before = await batchCount(t.app.metrics, 'orderflow_worker_batch_size');

        t.app.startWorkers();
        await eventually('the three pending charges to reach the gateway', async () =>
          gateway.arrived >= 3 ? true : undefined,
        );
        assert.equal((await shopper.request('POST', `/v1/orders/${cancelledInFlight}/cancel`)).status, 200);
        gateway.release(); // all three answers come back together: their results are recorded as one batch
        await quiesce(t.app);

        const after = await batchCount(t.app.metrics, 'orderflow_worker_batch_size');
        assert.ok(after.sum - before.sum > after.count - before.count, 'at least one worker batch held several jobs');
        const statusOf = async (id: string) => (await admin.request('GET', `/v1/orders/${id}`)).body.status as string;
        assert.deepEqual(await Promise.all(ids.map(statusOf)), ['confirmed', 'confirmed', 'cancelled', 'cancelled']);
        assert.deepEqual(gateway.netCharged(paid1), { charges: 1, netCents: 700 });
        assert.deepEqual(gateway.netCharged(paid2), { charges: 1, netCents: 700 });
        assert.deepEqual(gateway.netCharged(cancelledInFlight), { charges: 1, netCents: 0 });
        assert.deepEqual(gateway.netCharged(cancelledEarly), { charges: 0, netCents: 0 });
        assert.equal(gateway.refunds.size, 1, 'only the order cancelled in flight is refunded');
        assert.equal((await admin.request('GET', '/v1/products/B')).body.available, 8);
      } finally {
        await t.close();
      }
    });
  });
}

/** How many batches a group-commit histogram has seen, and how many units they held. */
async function batchCount(metrics: { registry: { getSingleMetric(name: string): unknown } }, name: string) {
  const metric = metrics.registry.getSingleMetric(name) as {
    get(): Promise<{ values: { metricName?: string; value: number }[] }>;
  };
  const { values } = await metric.get();
  return {
    count: values.find((v) => v.metricName === `${name}_count`)?.value ?? 0,
    sum: values.find((v) => v.metricName === `${name}_sum`)?.value ?? 0,
  };
}
