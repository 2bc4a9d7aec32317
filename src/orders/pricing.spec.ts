import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AppError } from '../errors.ts';
import { DEFAULT_MAX_TOTAL_CENTS, priceOrder } from './pricing.ts';

const prices = new Map([
  ['A-1', { sku: 'A-1', priceCents: 1299, currency: 'EUR' }],
  ['B-2', { sku: 'B-2', priceCents: 500, currency: 'EUR' }],
  ['U-1', { sku: 'U-1', priceCents: 100, currency: 'USD' }],
  ['BIG', { sku: 'BIG', priceCents: 1_000_000_000, currency: 'EUR' }],
  ['FREE', { sku: 'FREE', priceCents: 0, currency: 'EUR' }],
]);

function refusal(error: unknown): { code: string; errors: unknown } {
  assert.ok(error instanceof AppError, String(error));
  return { code: error.code, errors: error.errors };
}

describe('priceOrder', () => {
  it('sums quantity times catalog price over every line', () => {
    const priced = priceOrder(
      [
        { sku: 'A-1', quantity: 2 },
        { sku: 'B-2', quantity: 3 },
      ],
      prices,
    );
    assert.equal(priced.totalCents, 2 * 1299 + 3 * 500);
    assert.equal(priced.currency, 'EUR');
    assert.deepEqual(
      priced.lines.map((l) => l.priceCents),
      [1299, 500],
    );
  });

  it('names every unknown SKU with the path of its line', () => {
    assert.throws(
      () =>
        priceOrder(
          [
            { sku: 'A-1', quantity: 1 },
            { sku: 'NOPE', quantity: 1 },
            { sku: 'GONE', quantity: 1 },
          ],
          prices,
        ),
      (error: unknown) =>
        error instanceof AppError &&
        error.code === 'unknown_sku' &&
        JSON.stringify(error.errors) ===
          JSON.stringify([
            { path: '/items/1/sku', message: 'unknown SKU "NOPE"' },
            { path: '/items/2/sku', message: 'unknown SKU "GONE"' },
          ]),
    );
  });

  it('refuses an order mixing currencies', () => {
    assert.throws(
      () =>
        priceOrder(
          [
            { sku: 'A-1', quantity: 1 },
            { sku: 'U-1', quantity: 1 },
          ],
          prices,
        ),
      (error: unknown) => error instanceof AppError && error.code === 'mixed_currencies',
    );
  });

  it('refuses a line above the line maximum, naming the line, even when each field is in range', () => {
    // The case: 10 lines of 1e9 × 1e6 total 1e16, beyond 2^53.
    const lines = Array.from({ length: 10 }, () => ({ sku: 'BIG', quantity: 1_000_000 }));
    assert.throws(
      () => priceOrder(lines, prices),
      (error: unknown) => {
        const { code, errors } = refusal(error);
        assert.equal(code, 'amount_too_large');
        assert.deepEqual(
          (errors as { path: string }[]).map((e) => e.path),
          lines.map((_, i) => `/items/${i}`),
        );
        return true;
      },
    );
  });

  it('refuses a total above the order maximum at /items, and takes one exactly at it', () => {
    const limits = { maxLineTotalCents: 1_000, maxOrderTotalCents: 2_500 };
    const exact = priceOrder(
      [
        { sku: 'B-2', quantity: 2 },
        { sku: 'B-2', quantity: 2 },
        { sku: 'B-2', quantity: 1 },
      ],
      prices,
      limits,
    );
    assert.equal(exact.totalCents, 2_500);
    const over = [1, 2, 3].map(() => ({ sku: 'B-2', quantity: 2 }));
    assert.throws(
      () => priceOrder(over, prices, limits),
      (error: unknown) => {
        assert.deepEqual(refusal(error), {
          code: 'amount_too_large',
          errors: [
            { path: '/items', message: 'the order totals 3000 EUR minor units, above the order maximum of 2500' },
          ],
        });
        return true;
      },
    );
  });

  it('the default maximum is a gateway-sized 99,999,999, and the total is exact up to it', () => {
    assert.equal(DEFAULT_MAX_TOTAL_CENTS, 99_999_999);
    const odd = new Map([['ODD', { sku: 'ODD', priceCents: 3, currency: 'EUR' }]]);
    assert.equal(priceOrder([{ sku: 'ODD', quantity: 33_333_333 }], odd).totalCents, 99_999_999);
    assert.throws(
      () => priceOrder([{ sku: 'ODD', quantity: 33_333_334 }], odd),
      (error: unknown) => refusal(error).code === 'amount_too_large',
    );
  });

  it('refuses an order that totals 0: nothing could be charged', () => {
    assert.throws(
      () => priceOrder([{ sku: 'FREE', quantity: 3 }], prices),
      (error: unknown) => refusal(error).code === 'amount_too_small',
    );
    assert.equal(
      priceOrder(
        [
          { sku: 'FREE', quantity: 3 },
          { sku: 'B-2', quantity: 1 },
        ],
        prices,
      ).totalCents,
      500,
    );
  });
});
