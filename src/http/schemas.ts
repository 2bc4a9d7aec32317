// JSON schemas shared by several modules' routes. Every string a request
// carries is checked before it can reach the database: ids against their
// form, and free text for characters that text cannot hold or that have no
// business in it.
import { Type, type TStringOptions } from 'typebox';
import { isCurrencyCode } from '../currencies.ts';
import { ERRORS, type ErrorCode } from '../errors.ts';
import { TEXT_CHARACTER } from '../text.ts';
import { problemType } from './problems.ts';

/** Formats the routes' schemas use beyond JSON Schema's own, given to the validator. */
export const SCHEMA_FORMATS = { 'iso-4217': isCurrencyCode };

export const SKU_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
export const Sku = Type.String({ pattern: SKU_PATTERN.source, description: '1–64 characters of [A-Za-z0-9._-]' });

/** Free text (a name, a card token, an idempotency key) of the characters src/text.ts allows; the validator matches patterns per code point. */
export function Text(options: TStringOptions = {}) {
  return Type.String({ ...options, pattern: `^${TEXT_CHARACTER}*$` });
}

export const Currency = Type.String({
  format: 'iso-4217',
  description: 'An ISO 4217 currency code in circulation, e.g. EUR',
});

// Path parameters: a value of the wrong form names nothing, and is answered 404 (see problems.ts).
export const SkuParams = Type.Object({ sku: Sku });

export const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    errors: Type.Optional(Type.Array(Type.Object({ path: Type.String(), message: Type.String() }))),
  },
  { description: 'RFC 9457 problem details' },
);

/** A problem response that can only be one of these types: the OpenAPI document names them for the route. */
export function problemOf(...codes: ErrorCode[]) {
  const types = codes.map((code) => `\`${problemType(code)}\`: ${ERRORS[code].title}`);
  return { ...Problem, description: `One of: ${types.join('; ')}` };
}

// Query strings arrive as text; with type coercion off, numbers are checked
// by pattern and converted by the route.
export const LimitQuery = Type.Object(
  {
    limit: Type.Optional(Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: '1–100, default 50' })),
    cursor: Type.Optional(
      Type.String({
        pattern: '^[A-Za-z0-9_-]{1,512}$',
        description: 'nextCursor of the previous page, as it was given',
      }),
    ),
  },
  { additionalProperties: false },
);
