// Turns any error into an RFC 9457 problem+json answer. AppError carries its
// code from the catalogue (src/errors.ts); Fastify's own errors (validation,
// body parsing, size, a URL it cannot decode) and Node's HTTP parser's
// (framing, header size) are mapped onto the same catalogue, so a client sees
// one vocabulary whatever layer refused the request.
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { errors as joseErrors } from 'jose';
import { AppError, ERRORS, type ErrorCode, type FieldError } from '../errors.ts';
import { DatabaseUnavailableError } from '../storage/database.ts';
import { ACCEPTED_CONTENT_ENCODING } from './json-body.ts';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';
/** The longest path parameter the router matches (every id is far shorter); a longer one is 414. */
export const MAX_PATH_PARAMETER_LENGTH = 100;
/** The longest request target answered other than 414: RFC 9110 (section 4.1) asks servers to take at least 8000 octets. */
export const MAX_URL_LENGTH = 8_192;
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

function toProblem(code: ErrorCode, detail: string, errors?: FieldError[]): Problem {
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
  if (error instanceof AppError)
    return { code: error.code, detail: error.message, ...(error.errors ? { errors: error.errors } : {}) };
  if (error instanceof DatabaseUnavailableError || error instanceof joseErrors.JWKSTimeout) {
    return { code: 'unavailable', detail: error.message };
  }
  const fastifyError = error as FastifyError;
  if (fastifyError.validation) {
    const errors = fieldErrors(fastifyError);
    const detail = errors.map((e) => `${e.path}: ${e.message}`).join('; ');
    // A path whose parameter cannot be an id of anything (a SKU or order id
    // of the wrong form, U+0000, ...) names nothing: not found, like any
    // other id that names nothing, and it never reaches the database.
    if (fastifyError.validationContext === 'params')
      return { code: 'not_found', detail: `no such resource: ${detail}` };
    return { code: 'validation_failed', detail, errors };
  }
  switch (fastifyError.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'malformed_json', detail: fastifyError.message };
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { code: 'payload_too_large', detail: 'the request body exceeds 65536 bytes' };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { code: 'unsupported_media_type', detail: fastifyError.message };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'malformed_request', detail: fastifyError.message };
    case 'FST_ERR_BAD_URL':
      return { code: 'malformed_url', detail: 'the request path is not validly percent-encoded UTF-8' };
    // The console's file server refuses a path with dot segments ("/console/%2e%2e/x")
    // or one not in canonical form ("/console//x") as 403: such a path names no file it serves.
    case 'FST_STATIC_FORBIDDEN_PATH':
      return { code: 'not_found', detail: 'no such file: a path with dot or empty segments names none' };
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return { code: 'uri_too_long', detail: `a path segment is longer than ${MAX_PATH_PARAMETER_LENGTH} characters` };
  }
  if (error instanceof SyntaxError) return { code: 'malformed_json', detail: error.message };
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode === 429)
    return { code: 'rate_limited', detail: fastifyError.message };
  // The file server's own refusals (a leading dot segment is 403 there): no file at that path.
  if (fastifyError.statusCode === 403 || fastifyError.statusCode === 404) {
    return { code: 'not_found', detail: 'no such file: a path with dot or empty segments names none' };
  }
  if (typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return { code: 'validation_failed', detail: fastifyError.message };
  }
  return { code: 'internal', detail: 'an unexpected error occurred; it has been logged' };
}

export function sendProblem(reply: FastifyReply, code: ErrorCode, detail: string, errors?: FieldError[]): FastifyReply {
  const problem = toProblem(code, detail, errors);
  if (problem.status === 503) reply.header('retry-after', String(RETRY_AFTER_SECONDS));
  // RFC 9110 (section 15.5.16): a 415 for a content coding says which codings would do.
  if (code === 'unsupported_content_encoding') reply.header('accept-encoding', ACCEPTED_CONTENT_ENCODING);
  return reply.code(problem.status).type(PROBLEM_CONTENT_TYPE).send(problem);
}

export interface ErrorHandlerOptions {
  /** At most one log line per this many ms about requests refused as unavailable (503); default 10 s. */
  unavailableLogIntervalMs?: number;
  /** The clock of that limit, in ms (tests). */
  now?: () => number;
}

export type ErrorHandler = (error: unknown, request: FastifyRequest, reply: FastifyReply) => FastifyReply;

/**
 * Answers every error with its problem and logs what an operator must see.
 * An unexpected error (500) is logged each time, at error, with its stack: it
 * is a bug. A refusal for unavailability (503: the database unreachable or
 * late, the identity provider's keys out of reach) is expected while an
 * outage lasts, and during a PostgreSQL outage every request gets one: logged
 * each with a stack, they would bury everything else at the moment the log is
 * read most. So the first 503 after a quiet spell is logged at warn, without
 * a stack (the message names the cause), and then at most one line per
 * interval; `refused` counts the 503s since the previous line, this one included.
 */
export function createErrorHandler(options: ErrorHandlerOptions = {}): ErrorHandler {
  const intervalMs = options.unavailableLogIntervalMs ?? 10_000;
  const now = options.now ?? (() => performance.now());
  let lastLine = -Infinity;
  let unlogged = 0;
  return (error, request, reply) => {
    const { code, detail, errors } = classify(error);
    if (code === 'internal') request.log.error({ err: error }, 'request failed: internal');
    else if (code === 'unavailable') {
      unlogged++;
      const at = now();
      if (at - lastLine >= intervalMs) {
        const cause =
          error instanceof Error ? { type: error.name, message: error.message } : { message: String(error) };
        request.log.warn({ cause, refused: unlogged }, 'requests refused: unavailable (503)');
        lastLine = at;
        unlogged = 0;
      }
    }
    return sendProblem(reply, code, detail, errors);
  };
}

/**
 * A problem as a complete HTTP/1.1 response, for the answers written on the
 * socket before Fastify has a request (the connection is then closed).
 */
function rawProblem(code: ErrorCode, detail: string, headers: Record<string, string> = {}): string {
  const problem = toProblem(code, detail);
  const body = JSON.stringify(problem);
  const fields = {
    'content-type': PROBLEM_CONTENT_TYPE,
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
    ...headers,
  };
  return `HTTP/1.1 ${problem.status} ${STATUS_CODES[problem.status]}\r\n${Object.entries(fields)
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('')}\r\n${body}`;
}

/**
 * Node's HTTP parser refused the request before Fastify saw it: malformed
 * framing (400), a request line and headers over the size limit (431), or a
 * request too slow to arrive (408). Answered with a problem on the socket,
 * which is then closed, as Node's default handler does with a bare status.
 */
export function clientErrorHandler(error: NodeJS.ErrnoException & { reason?: string }, socket: Duplex): void {
  // A reset connection, or one already closed, has nobody left to answer.
  if (error.code === 'ECONNRESET' || !socket.writable) return;
  // A response already being written on this connection must not be cut
  // into: then the connection is only closed. (Node's default handler makes
  // the same check, on the same field.)
  if ((socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage?.headersSent) {
    socket.destroy();
    return;
  }
  const answer =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? rawProblem(
          'header_fields_too_large',
          'the request line and headers are larger than this server accepts (16 KiB)',
        )
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? rawProblem('request_timeout', 'the request was not received in time')
        : rawProblem(
            'malformed_request',
            `the request could not be parsed as HTTP/1.0 or HTTP/1.1 (${error.code ?? 'unknown'}${error.reason ? `: ${error.reason}` : ''})`,
          );
  socket.end(answer);
}

/** CONNECT asks this server to be a proxy, which it is not. */
export function connectHandler(_request: unknown, socket: Duplex): void {
  if (socket.writable) socket.end(rawProblem('method_not_allowed', 'CONNECT: this server is not a proxy'));
}

/** An Expect header other than 100-continue (RFC 9110 §10.1.1): 417. */
export function expectationHandler(_request: unknown, response: ServerResponse): void {
  const body = JSON.stringify(toProblem('expectation_failed', 'only "Expect: 100-continue" is understood'));
  response
    .writeHead(ERRORS.expectation_failed.status, {
      'content-type': PROBLEM_CONTENT_TYPE,
      'content-length': Buffer.byteLength(body),
    })
    .end(body);
}
