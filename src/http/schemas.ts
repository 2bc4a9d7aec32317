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

const RFC_3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-](\d{2}):(\d{2}))$/i;

/**
 * True for an RFC 3339 date-time that is one instant this API can hold:
 * a real calendar date, no leap second (JavaScript's Date has none, and
 * PostgreSQL would roll it into the next minute), an offset within ±23:59,
 * and a year from 1 to 9999 once in UTC (PostgreSQL has no year 0). JSON
 * Schema's own "date-time" takes all of these, so a request could carry
 * one to the database and fail there; the validator uses this instead
 * (SCHEMA_FORMAT_OVERRIDES), and such a value is a 400 like any other.
 */
export function isInstant(text: string): boolean {
  const match = RFC_3339.exec(text);
  if (!match) return false;
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const daysInMonth = new Date(Date.UTC(2000, month, 0)).getUTCDate() - (month === 2 && !isLeapYear(year) ? 1 : 0);
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth || hour > 23 || minute > 59 || second > 59) return false;
  if (match[9] !== undefined && (Number(match[9]) > 23 || Number(match[10]) > 59)) return false;
  const instant = new Date(text.toUpperCase());
  const utcYear = instant.getUTCFullYear();
  return !Number.isNaN(instant.getTime()) && utcYear >= 1 && utcYear <= 9999;
}

function isLeapYear(year: number): boolean {
  return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
}

/** JSON Schema formats whose standard meaning admits values this API cannot hold, redefined; set after the validator's standard formats. */
export const SCHEMA_FORMAT_OVERRIDES = { 'date-time': isInstant };

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

/** The query string of a route that reads none: any parameter is an unknown field (400). */
export const NoQuery = Type.Object({}, { additionalProperties: false });

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
