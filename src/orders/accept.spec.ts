import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AppError } from '../errors.ts';
import {
  hashRequest,
  price,
  reserve,
  sortClaims,
  type AcceptRequest,
  type PlaceOrder,
  type PricedRequest,
} from './accept.ts';
import { DEFAULT_MONEY_LIMITS } from './pricing.ts';

const prices = new Map([
  ['A', { sku: 'A', priceCents: 250, currency: 'EUR' }],
  ['B', { sku: 'B', priceCents: 1000, currency: 'EUR' }],
]);
const request = (key: string, items: { sku: string; quantity: number }[], customerId = 'ann'): AcceptRequest => ({
  customerId,
  idempotencyKey: key,
  order: { items, payment: { token: 'tok_visa' } },
});
let ids = 0;
const newId = () => `ord_${String(++ids).padStart(26, '0')}`;

describe('accept steps', () => {
  describe('price', () => {
    it('prices what it can and refuses the rest, each with its own request', () => {
      const good = request('k1', [{ sku: 'A', quantity: 2 }]);
      const unknown = request('k2', [{ sku: 'NOPE', quantity: 1 }]);
      const { priced, refused } = price([good, unknown], prices, DEFAULT_MONEY_LIMITS, newId);
      assert.equal(priced.length, 1);
      assert.equal(priced[0]!.request, good);
      assert.equal(priced[0]!.priced.totalCents, 500);
      assert.equal(priced[0]!.hash, hashRequest(good.order));
      assert.equal(refused.length, 1);
      assert.equal(refused[0]!.request, unknown);
      assert.ok(refused[0]!.error instanceof AppError && refused[0]!.error.code === 'unknown_sku');
    });

    it('gives every priced request its own order id', () => {
      const { priced } = price(
        [request('k1', [{ sku: 'A', quantity: 1 }]), request('k2', [{ sku: 'A', quantity: 1 }])],
        prices,
        DEFAULT_MONEY_LIMITS,
        newId,
      );
      assert.notEqual(priced[0]!.orderId, priced[1]!.orderId);
    });
  });

  describe('sortClaims', () => {
    const [a, b, c] = price(
      [
        request('k1', [{ sku: 'A', quantity: 1 }]),
        request('k2', [{ sku: 'A', quantity: 1 }]),
        request('k3', [{ sku: 'B', quantity: 1 }]),
      ],
      prices,
      DEFAULT_MONEY_LIMITS,
      newId,
    ).priced as [PricedRequest, PricedRequest, PricedRequest];

    it('keeps keys claimed now, replays a repeated body, and refuses a key reused for another body', () => {
      const { fresh, replays, refused } = sortClaims(
        [a, b, c],
        [null, { orderId: 'ord_earlier', requestHash: b.hash }, { orderId: 'ord_other', requestHash: 'another body' }],
      );
      assert.deepEqual(fresh, [a]);
      assert.deepEqual(replays, [{ request: b.request, orderId: 'ord_earlier' }]);
      assert.equal(refused.length, 1);
      assert.equal(refused[0]!.request, c.request);
      assert.ok(refused[0]!.error.code === 'idempotency_key_reused' && refused[0]!.error.message.includes('"k3"'));
    });

    it('fails loudly when an answer is missing rather than treat the request as new', () => {
      assert.throws(() => sortClaims([a, b], [null]), /claim answer is missing/);
    });
  });

  describe('reserve', () => {
    it('makes pending orders of the ones whose stock fits and rejects the rest as out of stock, in order', () => {
      const { priced } = price(
        [
          request('k1', [{ sku: 'A', quantity: 2 }]),
          request('k2', [{ sku: 'A', quantity: 2 }]),
          request('k3', [{ sku: 'A', quantity: 1 }]),
        ],
        prices,
        DEFAULT_MONEY_LIMITS,
        newId,
      );
      const { orders, toHold } = reserve(new Map([['A', 3]]), priced);
      assert.deepEqual(
        orders.map((o) => [o.request.idempotencyKey, o.order.status, o.order.rejectReason]),
        [
          ['k1', 'pending', null],
          ['k2', 'rejected', 'out_of_stock'],
          ['k3', 'pending', null],
        ],
      );
      assert.deepEqual(toHold, [{ sku: 'A', quantity: 3 }]);
      assert.deepEqual(
        orders.map((o) => o.order.id),
        priced.map((p) => p.orderId),
      );
      assert.equal(orders[0]!.order.customerId, 'ann');
      assert.equal(orders[0]!.order.totalCents, 500);
    });
  });

  describe('hashRequest', () => {
    it('hashes as it always has: the stored hashes of claimed keys stay valid', () => {
      // Values computed by the key-sorting canonical JSON the claims were stored with.
      const order = {
        payment: { token: 'tok_"é\u2028' },
        items: [
          { sku: 'A-1', quantity: 3 },
          { quantity: 1, sku: 'B' },
        ],
      };
      assert.equal(hashRequest(order), 'ruE6uDRuygHmZG5eGfRnBlTptSNMwNxGf2GOexerRNs');
      const odd = { items: [{ sku: 'A', quantity: 1, note: 'x' }], payment: { token: 't' } } as unknown as PlaceOrder;
      assert.equal(hashRequest(odd), '0Rw6VuKkpBE3maI_uGZZ4g68c2uydQZ6iw9K2Qc-0e8');
    });

    it('is the same in any key order, and differs for any other field or value', () => {
      const base = hashRequest({ items: [{ sku: 'A', quantity: 2 }], payment: { token: 't' } });
      assert.equal(hashRequest({ payment: { token: 't' }, items: [{ quantity: 2, sku: 'A' }] }), base);
      const others: unknown[] = [
        { items: [{ sku: 'A', quantity: 3 }], payment: { token: 't' } },
        { items: [{ sku: 'B', quantity: 2 }], payment: { token: 't' } },
        { items: [{ sku: 'A', quantity: 2 }], payment: { token: 'u' } },
        {
          items: [
            { sku: 'A', quantity: 2 },
            { sku: 'A', quantity: 2 },
          ],
          payment: { token: 't' },
        },
        { items: [{ sku: 'A', quantity: 2, extra: 1 }], payment: { token: 't' } },
        { items: [{ sku: 'A', quantity: '2' }], payment: { token: 't' } },
        { items: [{ sku: 'A', quantity: 2 }], payment: { token: 't', cvc: '1' } },
        { items: [{ sku: 'A', quantity: 2 }], payment: { token: 't' }, note: null },
      ];
      for (const other of others) assert.notEqual(hashRequest(other as PlaceOrder), base, JSON.stringify(other));
    });
  });
});
