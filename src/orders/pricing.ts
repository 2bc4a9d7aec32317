// Prices an order from catalog prices. Pure, so every rule about what makes
// an order priceable is tested without a database.
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

export function priceOrder(lines: readonly RequestedLine[], prices: ReadonlyMap<string, Price>): PricedOrder {
  const unknown: FieldError[] = [];
  lines.forEach((line, index) => {
    if (!prices.has(line.sku)) unknown.push({ path: `/items/${index}/sku`, message: `unknown SKU "${line.sku}"` });
  });
  if (unknown.length > 0) throw new AppError('unknown_sku', unknown.map((e) => e.message).join('; '), unknown);

  const priced = lines.map((line) => ({ ...line, priceCents: prices.get(line.sku)!.priceCents }));
  const currencies = new Set(lines.map((line) => prices.get(line.sku)!.currency));
  if (currencies.size > 1) {
    throw new AppError('mixed_currencies', `the items are priced in ${[...currencies].sort().join(' and ')}; place one order per currency`);
  }
  return {
    lines: priced,
    totalCents: priced.reduce((sum, line) => sum + line.priceCents * line.quantity, 0),
    currency: [...currencies][0] ?? 'EUR',
  };
}
