// Order ids: "ord_" + 10 characters of millisecond time + 16 random, in
// Crockford base32. Sortable by creation time, unguessable, URL-safe.
import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** What every order id looks like: "ord_" and 26 Crockford base32 characters. Anything else names no order. */
export const ORDER_ID_PATTERN = '^ord_[0-9A-HJKMNP-TV-Z]{26}$';

// Random bytes are drawn from the system's generator 4 KiB at a time (256
// ids), not 16 bytes per id: one call and one buffer instead of one per
// order. Each id still takes bytes no other id took.
const RANDOM_POOL = new Uint8Array(4096);
let poolOffset = RANDOM_POOL.length;

export function newOrderId(now = Date.now()): string {
  let time = '';
  for (let t = now, i = 0; i < 10; i++, t = Math.floor(t / 32)) time = ALPHABET[t % 32]! + time;
  if (poolOffset + 16 > RANDOM_POOL.length) {
    randomFillSync(RANDOM_POOL);
    poolOffset = 0;
  }
  let random = '';
  for (let i = poolOffset; i < poolOffset + 16; i++) random += ALPHABET[RANDOM_POOL[i]! % 32];
  poolOffset += 16;
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
