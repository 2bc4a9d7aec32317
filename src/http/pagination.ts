// Opaque cursors: base64url JSON of the last item's sort key. Clients must
// not parse them; a cursor that does not decode is a 400.
import { AppError } from '../errors.ts';

export function encodeCursor(key: string | number): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

export function decodeCursor<T extends string | number>(cursor: string | undefined, type: 'string' | 'number'): T | undefined {
  if (cursor === undefined) return undefined;
  try {
    const key: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (typeof key === type) return key as T;
  } catch {
    // fall through to the error below
  }
  throw new AppError('validation_failed', 'cursor is not one this API returned', [{ path: '/cursor', message: 'invalid cursor' }]);
}

export function parseLimit(raw: string | undefined): number {
  return raw === undefined ? 50 : Number(raw);
}
