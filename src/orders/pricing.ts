// Prices an order from catalog prices. Pure, so every rule about what makes
// an order priceable is tested without a database.
//
// Money is integer minor units, and the arithmetic is exact: line totals and
// the order total are computed as BigInt, compared with the limits there, and
// only a total inside them becomes a number again. A number holds integers
// exactly only up to 2^53; each field of a request is far below that, but
// their product and sum need not be.
import { AppError, type FieldError } from '../errors.ts';
import type { Price } from '../catalog/products.ts';

export interface RequestedLine {
  sku: string;
  quantity: number;
}

export interface PricedLine extends RequestedLine {
  priceCents: number;
}

export interface PricedOrder {
  lines: PricedLine[];
  totalCents: number;
  currency: string;
}

/** The largest amounts, in minor units, that one order line and one order may come to. */
export interface MoneyLimits {
  maxLineTotalCents: number;
  maxOrderTotalCents: number;
}

/**
 * 99,999,999 minor units ($999,999.99, €999,999.99): the largest single
 * charge most card gateways take in a two-decimal currency (Stripe's limit
 * for most currencies is eight digits). An order above it could never be
 * paid, so it is refused when placed rather than failing at the gateway.
 * It is also 90 million times inside 2^53, so no sum of bounded lines comes
 * near the integers a JavaScript number (or a JSON parser in any client)
 * cannot hold exactly.
 */
export const DEFAULT_MAX_TOTAL_CENTS = 99_999_999;
/** The most MAX_ORDER_TOTAL_CENTS may be set to: twelve digits, the largest per-charge limit gateways publish (for currencies such as IDR). */
export const MAX_CONFIGURABLE_TOTAL_CENTS = 999_999_999_999;

export const DEFAULT_MONEY_LIMITS: MoneyLimits = {
  maxLineTotalCents: DEFAULT_MAX_TOTAL_CENTS,
  maxOrderTotalCents: DEFAULT_MAX_TOTAL_CENTS,
};

/**
 * Prices the lines. Throws AppError: unknown_sku (paths of the lines),
 * mixed_currencies, amount_too_large (a line or the total above the limits;
 * paths of the lines, or /items for the total) or amount_too_small (a total
 * of 0, which no gateway can charge).
 */
export function priceOrder(
  lines: readonly RequestedLine[],
  prices: ReadonlyMap<string, Price>,
  limits: MoneyLimits = DEFAULT_MONEY_LIMITS,
): PricedOrder {
  const unknown: FieldError[] = [];
  lines.forEach((line, index) => {
    if (!prices.has(line.sku)) unknown.push({ path: `/items/${index}/sku`, message: `unknown SKU "${line.sku}"` });
  });
  if (unknown.length > 0) throw new AppError('unknown_sku', unknown.map((e) => e.message).join('; '), unknown);

  const priced = lines.map((line) => ({ ...line, priceCents: prices.get(line.sku)!.priceCents }));
  const currencies = new Set(lines.map((line) => prices.get(line.sku)!.currency));
  if (currencies.size > 1) {
    throw new AppError(
      'mixed_currencies',
      `the items are priced in ${[...currencies].sort().join(' and ')}; place one order per currency`,
    );
  }
  const currency = [...currencies][0] ?? 'EUR';

  const tooLarge: FieldError[] = [];
  let total = 0n;
  priced.forEach((line, index) => {
    const lineTotal = BigInt(line.priceCents) * BigInt(line.quantity);
    if (lineTotal > BigInt(limits.maxLineTotalCents)) {
      tooLarge.push({
        path: `/items/${index}`,
        message: `${line.quantity} × ${line.priceCents} = ${lineTotal} ${currency} minor units, above the line maximum of ${limits.maxLineTotalCents}`,
      });
    }
    total += lineTotal;
  });
  if (tooLarge.length === 0 && total > BigInt(limits.maxOrderTotalCents)) {
    tooLarge.push({
      path: '/items',
      message: `the order totals ${total} ${currency} minor units, above the order maximum of ${limits.maxOrderTotalCents}`,
    });
  }
  if (tooLarge.length > 0) throw new AppError('amount_too_large', tooLarge.map((e) => e.message).join('; '), tooLarge);
  if (total === 0n) {
    throw new AppError('amount_too_small', 'the order totals 0: a payment gateway cannot charge nothing', [
      { path: '/items', message: 'the order totals 0' },
    ]);
  }
  return { lines: priced, totalCents: Number(total), currency };
}
