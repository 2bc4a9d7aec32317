// The OpenAPI 3.1 document, generated from the routes' own schemas so that
// it cannot drift from what the server validates. The routes declare what
// they validate and send; what every route shares (bearer auth from
// `config.scopes`, problem+json errors, 503 with Retry-After, the size and
// media-type refusals of a body) is added here once instead of in each route.
import swagger, { type SwaggerTransform, type SwaggerTransformObject } from '@fastify/swagger';
import fp from 'fastify-plugin';
import { Type } from 'typebox';
import packageJson from '../../package.json' with { type: 'json' };
import { ERRORS, type ErrorCode } from '../errors.ts';
import { CLOCK_SKEW_SECONDS, SCOPES } from '../identity/verifier.ts';
import { PROBLEM_CONTENT_TYPE, problemType, RETRY_AFTER_SECONDS } from './problems.ts';
import { Problem } from './schemas.ts';
import type { Routes } from './server.ts';

export const OPENAPI_ROUTE = '/v1/openapi.json';

const SECURITY_SCHEME = 'bearer';
// What @fastify/swagger takes as the description of a response whose schema is Problem.
const PROBLEM_SCHEMA_DESCRIPTION = (Problem as { description?: string }).description;

/** The document as text: what GET /v1/openapi.json answers and docs/openapi.json holds, byte for byte. */
export function renderOpenApi(document: unknown): string {
  return `${JSON.stringify(document, null, 2)}\n`;
}

// Responses a route gets without declaring them: any request can meet a
// shutting-down process or a database that is down, and any request with a
// body can be too large or not JSON.
const RESPONSE_DESCRIPTIONS: Record<string, string> = {
  200: 'OK',
  201: 'Created',
  202: 'Accepted',
  400: 'The request is not valid: malformed JSON, an unknown field, a wrong type or a value out of range',
  401: 'The bearer token is missing, malformed, expired, or has the wrong issuer or audience',
  403: 'The token lacks every scope this operation accepts',
  404: "Not found (another customer's order is not found either)",
  409: 'The request conflicts with the current state',
  413: 'The request body is larger than 64 KiB',
  415: 'The request body is not application/json',
  422: 'The request is well-formed but cannot be applied',
  429: 'Too many requests from this customer; retry after Retry-After seconds',
  500: 'An unexpected error; it is logged, and the detail reveals nothing',
  503: 'A dependency is unavailable or this process is shutting down; retry after Retry-After seconds',
};

const RETRY_AFTER_HEADER = {
  description: `Seconds to wait before retrying (${RETRY_AFTER_SECONDS} for 503)`,
  schema: { type: 'integer', minimum: 0 },
};

function security(scopes: readonly string[] | undefined): { [scheme: string]: string[] }[] {
  if (scopes === undefined) return [];
  if (scopes.length === 0) return [{ [SECURITY_SCHEME]: [] }];
  // Alternatives: any one of the scopes is enough.
  return scopes.map((scope) => ({ [SECURITY_SCHEME]: [scope] }));
}

const transform: SwaggerTransform = ({ schema, url, route }) => {
  const scopes = route.config?.scopes;
  const response: Record<string, unknown> = { ...(schema?.response as Record<string, unknown> | undefined) };
  if (scopes !== undefined) response[401] ??= Problem;
  if (scopes !== undefined && scopes.length > 0) response[403] ??= Problem;
  if (schema?.body !== undefined) {
    response[413] ??= Problem;
    response[415] ??= Problem;
  }
  response[500] ??= Problem;
  response[503] ??= Problem;
  return { schema: { ...schema, security: security(scopes), response }, url };
};

type Operation = {
  responses?: Record<
    string,
    { description?: string; content?: Record<string, unknown>; headers?: Record<string, unknown> }
  >;
};

const transformObject: SwaggerTransformObject = (documentObject) => {
  if (!('openapiObject' in documentObject)) throw new Error('the OpenAPI document is built in OpenAPI mode');
  const document = documentObject.openapiObject;
  for (const pathItem of Object.values(document.paths ?? {})) {
    for (const operation of Object.values(pathItem ?? {}) as Operation[]) {
      for (const [status, response] of Object.entries(operation.responses ?? {})) {
        if (response.description === 'Default Response' || response.description === PROBLEM_SCHEMA_DESCRIPTION) {
          response.description = RESPONSE_DESCRIPTIONS[status] ?? response.description;
        }
        if (Number(status) >= 400) {
          response.content = { [PROBLEM_CONTENT_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } };
        }
        if (status === '429' || status === '503') response.headers = { 'Retry-After': RETRY_AFTER_HEADER };
      }
    }
  }
  // A plain copy, without the metadata TypeBox keeps on its values, whose
  // `type` names every problem type of the catalogue: also those any request
  // can meet before a route runs (malformed URL or framing, 405, 414, 431).
  const problem = JSON.parse(JSON.stringify(Problem)) as typeof Problem & {
    properties: { type: { description?: string } };
  };
  problem.properties.type.description = `The problem type, one of: ${(Object.keys(ERRORS) as ErrorCode[])
    .map((code) => `\`${problemType(code)}\` (${ERRORS[code].status}: ${ERRORS[code].title})`)
    .join('; ')}`;
  document.components = { ...document.components, schemas: { ...document.components?.schemas, Problem: problem } };
  return document;
};

/**
 * Registers the document generator and GET /v1/openapi.json. It must be
 * registered before the routes it describes, and without encapsulation, so
 * that it sees the routes of every sibling plugin.
 */
const plugin: Routes = async (app) => {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Orderflow',
        version: packageJson.version,
        description:
          'Order-processing backend: catalog, orders with idempotent placement, payments through a queue. ' +
          'This document is generated from the routes; the normative contract is docs/api-contract.md. ' +
          'Every error is RFC 9457 application/problem+json.',
      },
      // Relative: the document describes whichever host serves it.
      servers: [{ url: '/' }],
      tags: [
        { name: 'operations', description: 'Liveness, readiness, metrics and this document; no auth' },
        { name: 'catalog', description: 'Products and stock' },
        { name: 'orders', description: 'Placing, reading and cancelling orders' },
        {
          name: 'admin',
          description:
            "Operators: every order's history, search, dead letters, live figures, invariants (orders:admin; operations:write to re-drive or discard)",
        },
      ],
      components: {
        securitySchemes: {
          [SECURITY_SCHEME]: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT',
            description:
              `A JWT whose \`sub\` is the customer id and whose \`scope\` (space-separated) holds any of ${SCOPES.map((s) => `\`${s}\``).join(', ')}. ` +
              'An operation lists the scopes it accepts as alternatives: one of them is enough; an empty list means any valid token. ' +
              `A token whose \`sub\` is empty (or not 1–255 characters of text), or whose \`iat\` is more than ${CLOCK_SKEW_SECONDS} s in the future, is refused (401).`,
          },
        },
      },
    },
    transform,
    transformObject,
  });

  app.get(OPENAPI_ROUTE, {
    schema: {
      tags: ['operations'],
      summary: 'This OpenAPI document',
      response: {
        200: Type.Object({}, { additionalProperties: true, description: 'The OpenAPI 3.1 document of this API' }),
      },
    },
    // The answer is byte for byte what `scripts/openapi.ts` writes.
    serializerCompiler: () => renderOpenApi,
    handler: async () => app.swagger(),
  });
};

export const openApi = fp(plugin, { name: 'orderflow-openapi' });
