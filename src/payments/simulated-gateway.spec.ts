// The simulated gateway lives as long as the serving process: what it
// remembers must stay bounded, and within its window it must still answer a
// replay as a real gateway does. The clock is moved by hand.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GatewayRequestError, type ChargeRequest } from './gateway.ts';
import { replayHorizonMs, retentionFor, SimulatedGateway } from './simulated-gateway.ts';

const charge = (key: string, token = 'tok_visa'): ChargeRequest => ({
  idempotencyKey: key,
  amountCents: 2500,
  currency: 'USD',
  token,
  reference: `ord_${key}`,
});

function clock(): { now: () => number; advance: (ms: number) => void } {
  let at = 1_000_000;
  return { now: () => at, advance: (ms) => (at += ms) };
}

async function succeeded(gateway: SimulatedGateway, key: string): Promise<string> {
  const result = await gateway.charge(charge(key));
  assert.equal(result.status, 'succeeded');
  return result.status === 'succeeded' ? result.chargeId : '';
}

describe('simulated gateway retention', () => {
  it('keeps at most maxEntries answers and charges, forgetting the oldest first', async () => {
    const gateway = new SimulatedGateway({ retain: { windowMs: 3_600_000, maxEntries: 100 } });
    const first = await succeeded(gateway, 'k0');
    const kept = await succeeded(gateway, 'k1');
    for (let i = 2; i < 5_000; i++) await gateway.charge(charge(`k${i}`));
    assert.deepEqual(gateway.remembered, {
      chargeKeys: 100,
      refundKeys: 0,
      forgottenChargeKeys: 4_900,
      forgottenRefundKeys: 0,
    });
    assert.equal(gateway.charges.size, 100);
    assert.equal(gateway.charges.has(first), false);
    assert.equal(gateway.charges.has(kept), false);
    // The newest are still answered from memory.
    const recent = [...gateway.charges.values()].at(-1)!;
    assert.deepEqual(await gateway.charge(charge(recent.reference.slice('ord_'.length))), {
      status: 'succeeded',
      chargeId: recent.id,
    });
  });

  it('answers a replay inside the window with the first answer, declines and voids included', async () => {
    const time = clock();
    const gateway = new SimulatedGateway({ retain: { windowMs: 60_000, maxEntries: 1_000 }, now: time.now });
    const id = await succeeded(gateway, 'paid');
    assert.deepEqual(await gateway.charge(charge('declined', 'tok_declined')), {
      status: 'declined',
      code: 'card_declined',
    });
    assert.deepEqual(await gateway.voidCharge({ chargeKey: 'voided', reference: 'ord_voided' }), { status: 'voided' });
    const { refundId } = await gateway.refund({ idempotencyKey: 'refund', chargeId: id, amountCents: 1000 });
    time.advance(59_999);
    gateway.trim();
    assert.deepEqual(await gateway.charge(charge('paid')), { status: 'succeeded', chargeId: id });
    assert.deepEqual(await gateway.charge(charge('declined')), { status: 'declined', code: 'card_declined' });
    assert.deepEqual(await gateway.charge(charge('voided')), { status: 'declined', code: 'charge_voided' });
    assert.deepEqual(await gateway.voidCharge({ chargeKey: 'paid', reference: 'ord_paid' }), {
      status: 'succeeded',
      chargeId: id,
    });
    assert.deepEqual(await gateway.refund({ idempotencyKey: 'refund', chargeId: id, amountCents: 1000 }), {
      refundId,
    });
    assert.equal(gateway.charges.size, 1);
    assert.equal(gateway.refunds.size, 1);
    assert.deepEqual([...gateway.voided], ['voided']);
    assert.deepEqual(gateway.netCharged('ord_paid'), { charges: 1, netCents: 1500 });
  });

  it('past the window: a replayed key is a new request, and a refund of a forgotten charge is a 404', async () => {
    const time = clock();
    const gateway = new SimulatedGateway({ retain: { windowMs: 60_000, maxEntries: 1_000 }, now: time.now });
    const id = await succeeded(gateway, 'paid');
    await gateway.voidCharge({ chargeKey: 'voided', reference: 'ord_voided' });
    time.advance(60_000);
    gateway.trim();
    assert.equal(gateway.charges.size, 0);
    assert.equal(gateway.voided.size, 0);
    await assert.rejects(
      gateway.refund({ idempotencyKey: 'refund', chargeId: id, amountCents: 1000 }),
      (error: unknown) =>
        error instanceof GatewayRequestError && error.status === 404 && error.message === `no such charge: ${id}`,
    );
    const again = await succeeded(gateway, 'paid');
    assert.notEqual(again, id, 'charged again, as a real gateway does after its window');
    assert.equal((await gateway.charge(charge('voided'))).status, 'succeeded');
  });

  it('shares one call in flight between replays and forgets a failure', async () => {
    const gateway = new SimulatedGateway({ latencyMs: 1, flakyFailureRate: 1 });
    const [a, b] = await Promise.all([gateway.charge(charge('same')), gateway.charge(charge('same'))]);
    assert.deepEqual(a, b);
    assert.equal(gateway.charges.size, 1);
    await assert.rejects(gateway.charge(charge('flaky', 'tok_flaky')));
    assert.equal(gateway.remembered.chargeKeys, 1, 'a transient failure is not an answer');
  });

  it("with retain: 'all' keeps every entry", async () => {
    const time = clock();
    const gateway = new SimulatedGateway({ retain: 'all', now: time.now });
    for (let i = 0; i < 2_000; i++) await gateway.charge(charge(`k${i}`));
    time.advance(365 * 86_400_000);
    gateway.trim();
    assert.equal(gateway.charges.size, 2_000);
    assert.equal(gateway.remembered.forgottenChargeKeys, 0);
  });

  it('holds a bounded heap after many more charges than its cap', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const heapAfter = async (gateway: SimulatedGateway, charges: number): Promise<number> => {
      gc();
      const before = process.memoryUsage().heapUsed;
      for (let i = 0; i < charges; i++) await gateway.charge(charge(`orderflow-charge-${i}`));
      gc();
      return process.memoryUsage().heapUsed - before;
    };
    const all = new SimulatedGateway({ retain: 'all' });
    const bounded = new SimulatedGateway({ retain: { windowMs: 3_600_000, maxEntries: 1_000 } });
    const allBytes = await heapAfter(all, 40_000);
    // Filled to its cap first, so that what follows measures growth, not the
    // first run's one-off costs (compiled code, the test runner's own heap).
    await heapAfter(bounded, 40_000);
    const boundedBytes = await heapAfter(bounded, 40_000);
    assert.equal(all.charges.size, 40_000);
    assert.equal(bounded.charges.size, 1_000);
    // 40,000 more charges kept cost megabytes; on a full bounded gateway, nothing that grows with them.
    assert.ok(allBytes > 4_000_000, `retain all: ${allBytes} B`);
    assert.ok(boundedBytes < allBytes / 4, `bounded: ${boundedBytes} B against ${allBytes} B kept in full`);
  });

  it('keeps answers for longer than Orderflow replays a key', () => {
    // 2 jobs' lives (10 attempts of 13 s, 243 s of backoff, a 60 s lease) + the 60 s deadline + a 15 s sweep.
    assert.equal(replayHorizonMs(60_000), 941_000);
    for (const deadlineMs of [1_000, 60_000, 600_000, 86_400_000]) {
      const retention = retentionFor(deadlineMs);
      assert.ok(retention !== 'all');
      assert.ok(retention.windowMs >= 2 * replayHorizonMs(deadlineMs), `deadline ${deadlineMs} ms`);
      assert.ok(retention.windowMs >= 3_600_000);
    }
  });
});
