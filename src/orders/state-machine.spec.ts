import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  awaitsPayment,
  holdsStock,
  isTerminal,
  owesRefund,
  refusesRefund,
  ORDER_STATUSES,
  REJECT_REASONS,
  retryPayment,
  transition,
  transitionsOf,
  type OrderEvent,
  type OrderStatus,
} from './state-machine.ts';

describe('order state machine', () => {
  const allowed: [OrderStatus, OrderEvent, OrderStatus][] = [
    ['pending', 'confirm', 'confirmed'],
    ['pending', 'reject', 'rejected'],
    ['pending', 'cancel', 'cancelled'],
    ['confirmed', 'cancel', 'cancelled'],
  ];

  it('allows exactly the transitions of the contract', () => {
    for (const from of ORDER_STATUSES) {
      for (const event of ['confirm', 'reject', 'cancel'] as const) {
        const expected = allowed.find(([f, e]) => f === from && e === event)?.[2];
        const result = transition(from, event);
        if (expected) assert.deepEqual(result, { ok: true, to: expected }, `${from} --${event}-->`);
        else assert.deepEqual(result, { ok: false, reason: `cannot ${event} an order that is ${from}` });
      }
    }
  });

  it('treats every status but pending as terminal for the pipeline', () => {
    assert.deepEqual(
      ORDER_STATUSES.filter((s) => isTerminal(s)),
      ['confirmed', 'rejected', 'cancelled'],
    );
  });

  it('holds stock only while pending or confirmed', () => {
    assert.deepEqual(
      ORDER_STATUSES.filter((s) => holdsStock(s)),
      ['pending', 'confirmed'],
    );
  });
});

describe('the money rules', () => {
  it('charges only a pending order', () => {
    assert.deepEqual(ORDER_STATUSES.filter(awaitsPayment), ['pending']);
    assert.equal(awaitsPayment(undefined), false);
  });

  it('gives money back for an order that holds no stock, or does not exist', () => {
    assert.deepEqual(ORDER_STATUSES.filter(owesRefund), ['rejected', 'cancelled']);
    assert.equal(owesRefund(undefined), true);
  });

  it('never refunds a confirmed order', () => {
    assert.deepEqual(ORDER_STATUSES.filter(refusesRefund), ['confirmed']);
    assert.equal(refusesRefund(undefined), false);
  });
});

describe('transitionsOf', () => {
  it('lists the statuses an event starts from and where it leads', () => {
    assert.deepEqual(transitionsOf('confirm'), { from: ['pending'], to: 'confirmed' });
    assert.deepEqual(transitionsOf('cancel'), { from: ['pending', 'confirmed'], to: 'cancelled' });
    assert.deepEqual(transitionsOf('reject'), { from: ['pending'], to: 'rejected' });
  });
});

describe('retryPayment', () => {
  it('re-opens only an order rejected with payment_failed', () => {
    for (const status of ORDER_STATUSES) {
      for (const reason of [null, ...REJECT_REASONS]) {
        const result = retryPayment(status, reason);
        assert.equal(result.ok, status === 'rejected' && reason === 'payment_failed', `${status} ${reason}`);
        if (result.ok) assert.equal(result.to, 'pending');
      }
    }
  });
});
