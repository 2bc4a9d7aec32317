import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { allocate, mergeLines, type StockLine } from './stock.ts';

const stock = (entries: Record<string, number>) => new Map(Object.entries(entries));

describe('allocate', () => {
  it('gives each order all its lines or none, first come first served', () => {
    const { fits, toHold } = allocate(stock({ A: 5, B: 1 }), [
      [{ sku: 'A', quantity: 2 }],
      [
        { sku: 'A', quantity: 2 },
        { sku: 'B', quantity: 2 },
      ],
      [{ sku: 'B', quantity: 1 }],
      [{ sku: 'A', quantity: 3 }],
    ]);
    // The second order is short of B and takes nothing, so the fourth still gets 3 of A.
    assert.deepEqual(fits, [true, false, true, true]);
    assert.deepEqual(toHold, [
      { sku: 'A', quantity: 5 },
      { sku: 'B', quantity: 1 },
    ]);
  });

  it('sums an order that names one SKU on several lines before comparing', () => {
    const { fits } = allocate(stock({ A: 3 }), [
      [
        { sku: 'A', quantity: 2 },
        { sku: 'A', quantity: 2 },
      ],
    ]);
    assert.deepEqual(fits, [false]);
  });

  it('treats a SKU without a stock row as none available', () => {
    assert.deepEqual(allocate(stock({}), [[{ sku: 'GONE', quantity: 1 }]]), { fits: [false], toHold: [] });
  });

  it('never holds more than is available, and holds exactly what the fitting orders asked for', () => {
    const sku = fc.constantFrom('A', 'B', 'C');
    const order = fc.array(fc.record({ sku, quantity: fc.integer({ min: 1, max: 5 }) }), {
      minLength: 1,
      maxLength: 3,
    });
    fc.assert(
      fc.property(
        fc.record({ A: fc.nat(10), B: fc.nat(10), C: fc.nat(10) }),
        fc.array(order, { maxLength: 8 }),
        (levels, orders) => {
          const available = stock(levels);
          const { fits, toHold } = allocate(available, orders);
          const asked = mergeLines(orders.filter((_, i) => fits[i]).flat());
          assert.deepEqual(
            [...toHold].sort((a, b) => (a.sku < b.sku ? -1 : 1)),
            asked,
          );
          for (const hold of toHold) assert.ok(hold.quantity <= (available.get(hold.sku) ?? 0));
        },
      ),
    );
  });
});

describe('mergeLines', () => {
  it('sums quantities per SKU and sorts by SKU (the lock order)', () => {
    const lines: StockLine[] = [
      { sku: 'b', quantity: 1 },
      { sku: 'a', quantity: 2 },
      { sku: 'b', quantity: 3 },
    ];
    assert.deepEqual(mergeLines(lines), [
      { sku: 'a', quantity: 2 },
      { sku: 'b', quantity: 4 },
    ]);
  });
});
