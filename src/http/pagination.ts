// Opaque cursors: base64url JSON of the last item's sort key. Clients must
// not parse them; a cursor that does not decode, or decodes to a key this
// API could not have put there (a number out of range, a fraction, text the
// database cannot hold), is a 400: it never reaches a query.
import { AppError } from '../errors.ts';

export function encodeCursor(key: string | number): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

/** The key in a cursor, checked by isKey; undefined without a cursor; AppError validation_failed for any other cursor. */
export function decodeCursor<T extends string | number>(
  cursor: string | undefined,
  isKey: (key: unknown) => key is T,
): T | undefined {
  if (cursor === undefined) return undefined;
  try {
    const key: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (isKey(key)) return key;
  } catch {
    // fall through to the error below
  }
  throw new AppError('validation_failed', 'cursor is not one this API returned', [
    { path: '/querystring/cursor', message: 'invalid cursor' },
  ]);
}

export function parseLimit(raw: string | undefined): number {
  return raw === undefined ? 50 : Number(raw);
}
