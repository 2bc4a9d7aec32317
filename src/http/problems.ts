// Turns any error into an RFC 9457 problem+json answer. AppError carries its
// code from the catalogue (src/errors.ts); Fastify's own errors (validation,
// body parsing, size) are mapped onto the same catalogue, so a client sees one
// vocabulary whatever layer refused the request.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { errors as joseErrors } from 'jose';
import { AppError, ERRORS, type ErrorCode, type FieldError } from '../errors.ts';
import { DatabaseUnavailableError } from '../storage/database.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';
/** Seconds a client should wait before retrying after a 503. */
export const RETRY_AFTER_SECONDS = 2;

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  errors?: FieldError[];
}

export function problemType(code: ErrorCode): string {
  return `/problems/${code.replaceAll('_', '-')}`;
}

export function toProblem(code: ErrorCode, detail: string, errors?: FieldError[]): Problem {
  const { status, title } = ERRORS[code];
  return { type: problemType(code), title, status, detail, ...(errors ? { errors } : {}) };
}

interface AjvError {
  instancePath: string;
  keyword: string;
  message?: string;
  params: Record<string, unknown>;
}

function fieldErrors(error: FastifyError): FieldError[] {
  const context = error.validationContext;
  const prefix = context === 'body' || context === undefined ? '' : `/${context}`;
  return ((error.validation ?? []) as AjvError[]).map((e) => {
    const extra = e.params.additionalProperty ?? e.params.missingProperty;
    const path = `${prefix}${e.instancePath}${typeof extra === 'string' ? `/${extra}` : ''}` || '/';
    const message = e.keyword === 'additionalProperties' ? 'unknown field' : (e.message ?? e.keyword);
    return { path, message };
  });
}

/** Classifies an error thrown anywhere while serving a request. */
export function classify(error: unknown): { code: ErrorCode; detail: string; errors?: FieldError[] } {
  if (error instanceof AppError) return { code: error.code, detail: error.message, ...(error.errors ? { errors: error.errors } : {}) };
  if (error instanceof DatabaseUnavailableError || error instanceof joseErrors.JWKSTimeout) {
    return { code: 'unavailable', detail: error.message };
  }
  const fastifyError = error as FastifyError;
  if (fastifyError.validation) {
    const errors = fieldErrors(fastifyError);
    return { code: 'validation_failed', detail: errors.map((e) => `${e.path}: ${e.message}`).join('; '), errors };
  }
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'malformed_json', detail: fastifyError.message };
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { code: 'payload_too_large', detail: 'the request body exceeds 65536 bytes' };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'unsupported_media_type', detail: fastifyError.message };
  }
  if (error instanceof SyntaxError) return { code: 'malformed_json', detail: error.message };
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode === 429) return { code: 'rate_limited', detail: fastifyError.message };
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return { code: 'validation_failed', detail: fastifyError.message };
  }
  return { code: 'internal', detail: 'an unexpected error occurred; it has been logged' };
}

export function sendProblem(reply: FastifyReply, code: ErrorCode, detail: string, errors?: FieldError[]): FastifyReply {
  const problem = toProblem(code, detail, errors);
  if (problem.status === 503) reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  return reply.code(problem.status).type(PROBLEM_CONTENT_TYPE).send(problem);
}

export function errorHandler(error: unknown, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const { code, detail, errors } = classify(error);
  if (code === 'internal' || code === 'unavailable') request.log.error({ err: error }, `request failed: ${code}`);
  return sendProblem(reply, code, detail, errors);
}
