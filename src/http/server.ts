// The HTTP server: Fastify with strict JSON schemas (unknown fields and wrong
// types are errors, never silently dropped or coerced), a 64 KiB body limit,
// bearer auth on every /v1 route, RED metrics, and problem+json for every
// error, including those raised before a route runs: a URL that does not
// decode, a path segment too long, an unsupported method (405 with Allow),
// and what Node's parser refuses (framing, header size, a missing Host).
// Modules add their routes through the plugins passed in.
import FindMyWay, { type HTTPMethod } from 'find-my-way';
import Fastify, { LogController, type FastifyInstance, type FastifyPluginAsync } from 'fastify';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Logger } from 'pino';
import { AppError } from '../errors.ts';
import { bodyReceived, Drain } from './drain.ts';
import type { Principal, Scope, VerifyToken } from '../identity/verifier.ts';
import type { Metrics } from '../observability/metrics.ts';
import { activeSpan, tracingEnabled } from '../observability/tracing.ts';
import { parseJsonBody } from './json-body.ts';
import { fieldLinesProblem } from './field-lines.ts';
import { openApi } from './openapi.ts';
import {
  clientErrorHandler,
  connectHandler,
  createErrorHandler,
  expectationHandler,
  type ErrorHandlerOptions,
  MAX_PATH_PARAMETER_LENGTH,
  MAX_URL_LENGTH,
  sendProblem,
} from './problems.ts';
import { NoQuery, SCHEMA_FORMAT_OVERRIDES, SCHEMA_FORMATS } from './schemas.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route needs a bearer token carrying at least one of these scopes; [] means any valid token. */
    scopes?: readonly Scope[];
  }
  interface FastifyRequest {
    principal: Principal | null;
  }
}

export type Server = FastifyInstance<HttpServer, IncomingMessage, ServerResponse, Logger, TypeBoxTypeProvider>;
export type Routes = FastifyPluginAsync<Record<never, never>, HttpServer, TypeBoxTypeProvider, Logger>;

const BODY_LIMIT_BYTES = 64 * 1024;

export interface ServerOptions {
  log: Logger;
  metrics: Metrics;
  verifyToken: VerifyToken;
  /** How refusals for unavailability are logged (problems.ts). */
  errors?: ErrorHandlerOptions;
}

export function buildServer(options: ServerOptions): Server {
  const errorHandler = createErrorHandler(options.errors);
  const app = Fastify({
    loggerInstance: options.log,
    // Per-request lines would dominate the log at load; errors are logged by
    // the error handler and every request is counted in the metrics.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT_BYTES,
    // Fastify's own closing answer is not problem+json; the hook below is.
    return503OnClosing: false,
    // Connections are closed by the drain below, not destroyed while a request may be on its way.
    forceCloseConnections: false,
    ajv: {
      customOptions: {
        removeAdditional: false,
        coerceTypes: false,
        allErrors: true,
        useDefaults: false,
        formats: SCHEMA_FORMATS,
      },
      // After the standard formats are added, which would replace these.
      onCreate: (ajv: { addFormat(name: string, validate: (value: string) => boolean): unknown }) => {
        for (const [name, validate] of Object.entries(SCHEMA_FORMAT_OVERRIDES)) ajv.addFormat(name, validate);
      },
    },
    requestIdHeader: 'x-request-id',
    routerOptions: { maxParamLength: MAX_PATH_PARAMETER_LENGTH },
    // Errors raised before a route is found go through the error catalogue too.
    frameworkErrors: (error, request, reply) => void errorHandler(error, request, reply),
    clientErrorHandler,
    // Node would answer a missing Host with a bare 400; the hook below answers it as a problem.
    http: { requireHostHeader: false },
  }).withTypeProvider<TypeBoxTypeProvider>();
  // A query parameter no route reads is an error, as an unknown body field
  // is: a route of the API that declares no query string takes none, so a
  // misspelt filter is never silently ignored. (Outside /v1, health checks,
  // metrics and static files keep HTTP's leniency.)
  app.addHook('onRoute', (route) => {
    if (!route.url.startsWith('/v1/')) return;
    route.schema ??= {};
    route.schema.querystring ??= NoQuery;
  });
  app.server.on('checkExpectation', expectationHandler);
  app.server.on('connect', connectHandler);

  // Graceful shutdown (drain.ts): from Fastify's close() on, every request is
  // refused below and the server stops listening; the connections stay open
  // until closeConnections(), so that no request on its way meets a reset.
  const drain = new Drain(app.server);
  drains.set(app, drain);
  // A request that sends "Expect: 100-continue" waits for 100 Continue
  // before its body. Node sends it at once unless 'checkContinue' is
  // listened to; during shutdown it is not sent: the 503 below is the
  // answer, and a 100 would invite a body only to refuse it (and a client
  // that then sent none would hold the drain open while its body was awaited).
  const withoutContinue = new WeakSet<IncomingMessage>();
  app.server.on('checkContinue', (request: IncomingMessage, response: ServerResponse) => {
    if (drain.closing) withoutContinue.add(request);
    else response.writeContinue();
    app.server.emit('request', request, response);
  });
  // First: the drain waits for every request it has seen to be answered.
  app.addHook('onRequest', (request, reply, done) => {
    drain.track(request.raw, reply.raw);
    done();
  });

  app.addHook('onRequest', async (request, reply) => {
    const fieldLines = fieldLinesProblem(request.raw.rawHeaders, request.raw.httpVersion);
    if (fieldLines !== undefined) {
      // What the request means, or where its body ends, is in doubt (or its
      // version or transfer coding is one this server does not speak): the
      // connection is not reused (RFC 9112, section 6.1 requires it for
      // HTTP/1.0 with Transfer-Encoding), so no bytes of it are read as a next request.
      reply.header('connection', 'close');
      throw new AppError('malformed_request', fieldLines);
    }
    if (request.url.length > MAX_URL_LENGTH)
      throw new AppError('uri_too_long', `the request target is longer than ${MAX_URL_LENGTH} characters`);
  });

  // An empty body is how clients say "no options" (cancel); a route whose
  // schema requires a body still rejects it.
  // JSON is the only body this API reads; anything else is a 415. What JSON
  // it takes (UTF-8, no content coding, no member named twice) is decided
  // once, in json-body.ts.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    try {
      done(null, parseJsonBody(body as Buffer, request.headers));
    } catch (error) {
      done(error as Error, undefined);
    }
  });

  // During graceful shutdown in-flight requests finish, while new ones are
  // told to go elsewhere before any work: the load balancer retries them on
  // another process. The body is read first: closing the connection while the
  // client still sends it could reset it and lose the answer.
  app.addHook('preClose', async () => drain.begin());
  app.addHook('onRequest', async (request, reply) => {
    if (!drain.closing) return;
    // No body comes before a 100 Continue, so none is awaited.
    if (!withoutContinue.has(request.raw)) await bodyReceived(request.raw, BODY_LIMIT_BYTES);
    reply.header('connection', 'close');
    return sendProblem(reply, 'unavailable', 'this process is shutting down; retry on another one');
  });
  // An answer in flight when the shutdown began closes its connection, so
  // that the client sends its next request elsewhere, unless a pipelined
  // request waits behind it: then that one's answer closes it.
  app.addHook('onSend', (request, reply, payload, done) => {
    if (drain.shouldClose(request.raw)) reply.header('connection', 'close');
    done(null, payload);
  });

  app.decorateRequest('principal', null);
  app.addHook('onRequest', async (request) => {
    const scopes = request.routeOptions.config.scopes;
    if (scopes === undefined) return;
    const header = request.headers.authorization;
    const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match?.[1]) throw new AppError('unauthorized', 'send "Authorization: Bearer <token>"');
    const principal = await options.verifyToken(match[1]);
    if (scopes.length > 0 && !scopes.some((scope) => principal.scopes.has(scope))) {
      throw new AppError('forbidden', `this operation needs one of the scopes: ${scopes.join(', ')}`);
    }
    request.principal = principal;
  });

  // While tracing, the HTTP server span (node:http's instrumentation) is
  // named after the route, as the conventions ask: "POST /v1/orders/:id/cancel".
  if (tracingEnabled()) {
    app.addHook('onRequest', async (request) => {
      const route = request.routeOptions.url;
      const span = activeSpan();
      if (route === undefined || !span) return;
      span.updateName(`${request.method} ${route}`);
      span.setAttribute('http.route', route);
    });
  }

  // Each route's latency series exists from the start, at 0: a histogram
  // born with its first request hides that request from rate(), and the
  // accept latency SLO (deploy/prometheus/rules/slo.yml) would miss what a
  // fresh process answered before its first scrape.
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat())
      if (method !== 'HEAD') options.metrics.httpDuration.zero({ method, route: route.url });
  });

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const labels = { method: request.method, route };
    options.metrics.httpRequests.inc({ ...labels, status: String(reply.statusCode) });
    options.metrics.httpDuration.observe(labels, reply.elapsedTime / 1000);
  });

  // First, so that the document sees every route the modules add after it.
  void app.register(openApi);

  // Every route's path and method, to tell "no such path" (404) from "not
  // with this method" (405). find-my-way is Fastify's own router, so a path
  // matches here exactly when it would match a route.
  const paths = FindMyWay({ maxParamLength: MAX_PATH_PARAMETER_LENGTH });
  const methods = new Set<HTTPMethod>();
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat().map((m) => m.toUpperCase() as HTTPMethod)) {
      methods.add(method);
      if (!paths.hasRoute(method, route.url)) paths.on(method, route.url, () => undefined);
    }
  });
  const allowedMethods = (path: string) => [...methods].filter((method) => paths.find(method, path) !== null);

  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '/';
    const allowed = allowedMethods(path);
    if (allowed.length === 0) return sendProblem(reply, 'not_found', `no route for ${request.method} ${path}`);
    // A route with this method matched and found nothing there (the console's
    // file server under /console/*): the path names nothing, the method is fine.
    if (allowed.includes(request.method as HTTPMethod)) return sendProblem(reply, 'not_found', `nothing at ${path}`);
    reply.header('allow', allowed.join(', '));
    return sendProblem(reply, 'method_not_allowed', `${path} takes ${allowed.join(', ')}, not ${request.method}`);
  });
  return app;
}

const drains = new WeakMap<Server, Drain>();

/**
 * The last step of a graceful shutdown, after server.close() (which stops
 * listening and waits for the requests in progress) and after everything
 * else has stopped: closes the connections left open, where any request that
 * came was refused with a 503, and resolves once none is left.
 */
export function closeConnections(server: Server): Promise<void> {
  return drains.get(server)!.closeConnections();
}

/** The authenticated principal of a route declared with `config.scopes`. */
export function principalOf(request: { principal: Principal | null }): Principal {
  if (!request.principal) throw new AppError('unauthorized', 'send "Authorization: Bearer <token>"');
  return request.principal;
}
