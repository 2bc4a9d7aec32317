// Which characters a text field may hold, for every text the system stores
// that comes from outside (names, card tokens, idempotency keys, customer
// ids): no control characters (C0, DEL, C1) and no lone UTF-16 surrogate
// halves. U+0000 cannot be stored in PostgreSQL text, a lone surrogate
// cannot be encoded as UTF-8 at all, and neither, nor a line break, has a
// meaning in a one-line field. Matched per code point (a Unicode regular
// expression), so a surrogate pair, an emoji, is text like any other.

/** One allowed character, as a regular-expression class (Unicode mode). */
export const TEXT_CHARACTER = '[^\\u0000-\\u001F\\u007F-\\u009F\\uD800-\\uDFFF]';

const FORBIDDEN = new RegExp(`(?!${TEXT_CHARACTER}).`, 'gsu');

/**
 * Text from outside that is only recorded, never refused (an error message a
 * gateway sent, a reason for a dead letter): every character a text field
 * may not hold becomes U+FFFD, so recording it cannot fail.
 */
export function storableText(text: string): string {
  return text.replace(FORBIDDEN, '\ufffd');
}
