// Order ids: "ord_" + 10 characters of millisecond time + 16 random, in
// Crockford base32. Sortable by creation time, unguessable, URL-safe.
import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** What every order id looks like: "ord_" and 26 Crockford base32 characters. Anything else names no order. */
export const ORDER_ID_PATTERN = '^ord_[0-9A-HJKMNP-TV-Z]{26}$';

export function newOrderId(now = Date.now()): string {
  let time = '';
  for (let t = now, i = 0; i < 10; i++, t = Math.floor(t / 32)) time = ALPHABET[t % 32]! + time;
  let random = '';
  for (const byte of randomBytes(16)) random += ALPHABET[byte % 32];
  return `ord_${time}${random}`;
}

/**
 * The time (epoch ms) an order id was made, which is when its order was
 * accepted: the inverse of the first 10 characters newOrderId writes.
 * undefined for a string that is not an order id.
 */
export function acceptTimeOf(id: string): number | undefined {
  if (!id.startsWith('ord_') || id.length !== 30) return undefined;
  let time = 0;
  for (const char of id.slice(4, 14)) {
    const digit = ALPHABET.indexOf(char);
    if (digit < 0) return undefined;
    time = time * 32 + digit;
  }
  return time;
}
