// Money is exact end to end, in every mode. fast-check draws orders (prices
// up to the field maximum of 1,000,000,000, quantities up to 1,000,000, 1 to
// 100 lines), both at random and built to land just under, on and just over
// the line and order maxima. For each one, either
//   - it is accepted, its totalCents is the exact sum of its lines, the
//     order reads back with that total from the database, and the gateway
//     is charged exactly that amount, once; or
//   - the limits say it must be refused, and it is: 422 amount-too-large
//     (or amount-too-small for a total of 0), with nothing written.
// The expected outcome is computed with BigInt, independently of the code
// under test. FUZZ_RUNS / FUZZ_SEED widen a local run (test/support/fuzz.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { fuzzParameters } from './support/fuzz.ts';
import {
  ALL_SCOPES,
  client,
  modes,
  newKey,
  quiesce,
  snapshot,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

// A line maximum below the order maximum, so that both limits are exercised.
const MAX_LINE = 60_000_000;
const MAX_ORDER = 99_999_999;
const MAX_PRICE = 1_000_000_000;
const MAX_QUANTITY = 1_000_000;
const STOCK = 1_000_000_000;

interface Line {
  priceCents: number;
  quantity: number;
}

// Prices are drawn from a few pools so that draws share products (each
// distinct price is a product to create): whole millions up to the field
// maximum, small prices, the bounds themselves, and now and then any price.
const price = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: MAX_PRICE / 1_000_000 }).map((millions) => millions * 1_000_000), weight: 3 },
  { arbitrary: fc.integer({ min: 0, max: 300 }), weight: 3 },
  {
    arbitrary: fc.constantFrom(0, 1, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_ORDER, MAX_ORDER + 1, MAX_PRICE),
    weight: 2,
  },
  { arbitrary: fc.integer({ min: 0, max: MAX_PRICE }), weight: 1 },
);
const quantity = fc.oneof(
  fc.integer({ min: 1, max: MAX_QUANTITY }),
  fc.integer({ min: 1, max: 10 }),
  fc.constantFrom(1, 2, 3, MAX_QUANTITY),
);
const lineCount = fc.oneof(fc.integer({ min: 1, max: 5 }), fc.integer({ min: 1, max: 100 }), fc.constant(100));
const randomOrder = lineCount.chain((n) =>
  fc.array(fc.record({ priceCents: price, quantity }), { minLength: n, maxLength: n }),
);

/** n lines of quantity 1 whose prices add up to exactly target (which each line must be able to carry). */
function splitInto(target: number, n: number): Line[] {
  const each = Math.floor(target / n);
  return Array.from({ length: n }, (_, i) => ({
    priceCents: i === n - 1 ? target - each * (n - 1) : each,
    quantity: 1,
  }));
}
/** Orders that land just under, on and just over a maximum, over 1 to 100 lines. */
const boundaryOrder = fc.oneof(
  fc
    .record({
      target: fc.constantFrom(MAX_ORDER - 1, MAX_ORDER, MAX_ORDER + 1),
      lines: fc.integer({ min: 2, max: 100 }),
    })
    .map(({ target, lines }) => splitInto(target, lines)),
  fc.constantFrom(MAX_LINE - 1, MAX_LINE, MAX_LINE + 1).map((target) => splitInto(target, 1)),
  // One line at the line maximum as price × quantity, plus one more that takes the total across the order maximum or not.
  fc
    .record({ extra: fc.constantFrom(MAX_ORDER - MAX_LINE - 1, MAX_ORDER - MAX_LINE, MAX_ORDER - MAX_LINE + 1) })
    .map(({ extra }) => [
      { priceCents: MAX_LINE / 1_000, quantity: 1_000 },
      { priceCents: extra, quantity: 1 },
    ]),
);
const order = fc.oneof(randomOrder, boundaryOrder);

/** What the limits make of an order, computed apart from the code under test. */
function expected(lines: readonly Line[]): {
  refusal: 'amount-too-large' | 'amount-too-small' | undefined;
  totalCents: bigint;
} {
  const totals = lines.map((l) => BigInt(l.priceCents) * BigInt(l.quantity));
  const totalCents = totals.reduce((sum, t) => sum + t, 0n);
  if (totals.some((t) => t > BigInt(MAX_LINE)) || totalCents > BigInt(MAX_ORDER))
    return { refusal: 'amount-too-large', totalCents };
  if (totalCents === 0n) return { refusal: 'amount-too-small', totalCents };
  return { refusal: undefined, totalCents };
}

/** Products by price, created as the draws need them; each tracks the stock accepted orders have taken. */
class Catalog {
  readonly #admin: Client;
  readonly #byPrice = new Map<number, { sku: string; left: number }>();
  #next = 0;
  constructor(admin: Client) {
    this.#admin = admin;
  }

  /** SKUs for the lines; a product whose stock the order could exhaust is replaced by a fresh one. */
  async skusFor(lines: readonly Line[]): Promise<string[]> {
    const wanted = new Map<number, number>();
    for (const line of lines) wanted.set(line.priceCents, (wanted.get(line.priceCents) ?? 0) + line.quantity);
    for (const [priceCents, units] of wanted) {
      const known = this.#byPrice.get(priceCents);
      if (known && known.left >= units) continue;
      const sku = `M-${this.#next++}`;
      const created = await this.#admin.request('POST', '/v1/products', {
        body: { sku, name: `Priced ${priceCents}`, priceCents, currency: 'EUR', stock: STOCK },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      this.#byPrice.set(priceCents, { sku, left: STOCK });
    }
    return lines.map((line) => this.#byPrice.get(line.priceCents)!.sku);
  }

  taken(lines: readonly Line[]): void {
    for (const line of lines) this.#byPrice.get(line.priceCents)!.left -= line.quantity;
  }
}

for (const mode of modes()) {
  describe(`exact money (${mode})`, () => {
    it('totalCents is the exact sum of the lines and the gateway is charged exactly that, or the order is refused and nothing written', async () => {
      const t: TestApp = await startTestApp(mode, {
        env: { MAX_LINE_TOTAL_CENTS: String(MAX_LINE), MAX_ORDER_TOTAL_CENTS: String(MAX_ORDER) },
      });
      try {
        const admin = client(t.app, await t.token('admin', ALL_SCOPES));
        const shopper = client(t.app, await t.token('penny', 'orders:write orders:read'));
        const catalog = new Catalog(admin);
        const accepted: { id: string; totalCents: bigint }[] = [];
        let refused = 0;

        await fc.assert(
          fc.asyncProperty(order, async (lines) => {
            const skus = await catalog.skusFor(lines);
            const want = expected(lines);
            const body = {
              items: lines.map((line, i) => ({ sku: skus[i]!, quantity: line.quantity })),
              payment: { token: 'tok_visa' },
            };
            if (want.refusal !== undefined) {
              await quiesce(t.app);
              const before = await snapshot(t.app.db);
              const response = await shopper.request('POST', '/v1/orders', {
                headers: { 'idempotency-key': newKey() },
                body,
              });
              assert.equal(
                response.status,
                422,
                `expected ${want.refusal} for a total of ${want.totalCents}: ${JSON.stringify(response.body).slice(0, 300)}`,
              );
              assert.equal(response.body.type, `/problems/${want.refusal}`);
              assert.match(String(response.headers['content-type']), /^application\/problem\+json/);
              assert.deepEqual(await snapshot(t.app.db), before, 'a refused order wrote something');
              refused++;
              return;
            }
            const response = await shopper.request('POST', '/v1/orders', {
              headers: { 'idempotency-key': newKey() },
              body,
            });
            assert.equal(
              response.status,
              202,
              `a total of ${want.totalCents} is within the limits: ${JSON.stringify(response.body).slice(0, 300)}`,
            );
            assert.equal(response.body.status, 'pending');
            assert.equal(BigInt(response.body.totalCents), want.totalCents);
            assert.equal(
              response.body.items.reduce(
                (sum: bigint, item: { priceCents: number; quantity: number }) =>
                  sum + BigInt(item.priceCents) * BigInt(item.quantity),
                0n,
              ),
              want.totalCents,
              "the answer's lines add up to its total",
            );
            catalog.taken(lines);
            accepted.push({ id: response.body.id as string, totalCents: want.totalCents });
          }),
          fuzzParameters(25),
        );

        await quiesce(t.app);
        assert.ok(
          accepted.length > 0 && refused > 0,
          `the draws both accept and refuse orders (${accepted.length} accepted, ${refused} refused)`,
        );
        for (const { id, totalCents } of accepted) {
          const read = await admin.request('GET', `/v1/orders/${id}`);
          assert.equal(read.body.status, 'confirmed', id);
          assert.equal(BigInt(read.body.totalCents), totalCents, `${id} reads back with its exact total`);
          assert.deepEqual(
            t.gateway.netCharged(id),
            { charges: 1, netCents: Number(totalCents) },
            `${id} is charged exactly its total, once`,
          );
        }
        const stored = await t.app.db.query<{ order_id: string; amount_cents: number }>(
          'SELECT order_id, amount_cents FROM payments.payments',
        );
        const totals = new Map(accepted.map((a) => [a.id, a.totalCents]));
        for (const row of stored)
          assert.equal(BigInt(row.amount_cents), totals.get(row.order_id), `the payment of ${row.order_id}`);
        assert.equal(stored.length, accepted.length);
      } finally {
        await t.close();
      }
    });
  });
}
