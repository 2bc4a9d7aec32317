// JSON schemas shared by several modules' routes.
import { Type } from 'typebox';
import { ERRORS, type ErrorCode } from '../errors.ts';
import { problemType } from './problems.ts';

export const Sku = Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$', description: '1–64 characters of [A-Za-z0-9._-]' });

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
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
  },
  { additionalProperties: false },
);
