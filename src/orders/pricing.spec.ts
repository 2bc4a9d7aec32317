import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AppError } from '../errors.ts';
import { priceOrder } from './pricing.ts';

const prices = new Map([
  ['A-1', { sku: 'A-1', priceCents: 1299, currency: 'EUR' }],
  ['B-2', { sku: 'B-2', priceCents: 500, currency: 'EUR' }],
  ['U-1', { sku: 'U-1', priceCents: 100, currency: 'USD' }],
]);

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
});
