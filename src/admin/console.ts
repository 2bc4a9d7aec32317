// The operators' console at /console: static files from web/console, and the
// browser libraries it imports served straight from their npm packages
// (the console's import map names them), so `npm ci && npm start` serves it
// with no build step. The console talks to the admin API with the bearer
// token the operator signs in with.
//
// In the embedded shape with the development issuer, POST /console/dev-token
// mints an operator token, but only for a loopback request to a loopback
// address (devTokenRefusal): whoever can reach the embedded database's
// machine can already read it. The TCP peer alone is not enough: a page from
// any site, in a browser on this machine, is a loopback peer once its name
// resolves to 127.0.0.1 (DNS rebinding), and its requests then count as
// same-origin to the browser. What such a page cannot choose is the Host
// header (its own name) and the Origin (its own origin), so both must name
// this server by a loopback name; and the custom header makes any
// cross-origin request need a CORS preflight, which this server never grants.
import { isIP } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { AppError } from '../errors.ts';
import { Problem } from '../http/schemas.ts';
import type { Routes } from '../http/server.ts';
import type { DevIssuer } from '../identity/dev-issuer.ts';

const CONSOLE_DIR = fileURLToPath(new URL('../../web/console/', import.meta.url));

/**
 * Every file the console loads from node_modules, by the name it is served
 * under (/console/vendor/<name>): the module a package resolves to, or
 * another file in that module's folder.
 */
const VENDOR_FILES: Record<string, { module: string; file?: string }> = {
  'preact.mjs': { module: 'preact' },
  'preact-hooks.mjs': { module: 'preact/hooks' },
  'htm.mjs': { module: 'htm' },
  'htm-preact.mjs': { module: 'htm/preact' },
  'uPlot.esm.js': { module: 'uplot', file: 'uPlot.esm.js' },
  'uPlot.min.css': { module: 'uplot', file: 'uPlot.min.css' },
  'eventsource-parser-stream.js': { module: 'eventsource-parser/stream' },
  // The stream imports ./parse.js, which imports ./errors.js, beside it.
  'parse.js': { module: 'eventsource-parser', file: 'parse.js' },
  'errors.js': { module: 'eventsource-parser', file: 'errors.js' },
};

/** The scopes of a console session minted by the development issuer: everything an operator does. */
export const OPERATOR_SCOPES = 'orders:admin orders:read catalog:write operations:write';

/** True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z). */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined || isIP(address) === 0) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') ? isIP(v4) === 4 : address === '::1';
}

/** The header the console sends with POST /console/dev-token; a cross-origin page cannot send it without a CORS preflight. */
export const DEV_TOKEN_HEADER = 'x-orderflow-console';

/** Host or Origin authority: localhost, 127.0.0.0/8 or [::1], with an optional port. */
const LOOPBACK_AUTHORITY = /^(localhost|\[::1\]|127\.\d{1,3}\.\d{1,3}\.\d{1,3})(?::(\d{1,5}))?$/i;

/** The port an authority names, by its scheme's default when it names none; undefined when it is not a loopback authority. */
function loopbackPort(authority: string, scheme: string): number | undefined {
  const match = LOOPBACK_AUTHORITY.exec(authority);
  if (!match || (match[1]!.startsWith('127.') && isIP(match[1]!) !== 4)) return undefined;
  return match[2] === undefined ? (scheme === 'https' ? 443 : 80) : Number(match[2]);
}

/** What devTokenRefusal reads of a request. */
export interface DevTokenRequest {
  /** The TCP peer's address, from the socket. */
  peer: string | undefined;
  /** The port this server accepted the connection on, from the socket. */
  localPort: number | undefined;
  /** "http" or "https", from the socket. */
  scheme: string;
  headers: { host?: string; origin?: string; [name: string]: string | string[] | undefined };
}

/**
 * Why a development token may not be minted for this request (a sentence for
 * the problem's detail), or undefined when it may. It may when: the TCP peer
 * is loopback; the Host header is localhost, 127.0.0.0/8 or [::1] with this
 * server's port; an Origin, if sent, is this very origin; and, unless
 * `button` (only asking whether to show the button), the request carries
 * DEV_TOKEN_HEADER.
 */
export function devTokenRefusal(request: DevTokenRequest, options: { button?: boolean } = {}): string | undefined {
  if (!isLoopback(request.peer)) {
    return 'a development token is minted only for a request from this machine (its TCP peer, not a forwarded header)';
  }
  const host = request.headers.host ?? '';
  const port = loopbackPort(host, request.scheme);
  if (port === undefined || port !== request.localPort) {
    // An HTTP/1.0 request may leave Host out (RFC 1945): say so rather than quote an empty one.
    const said =
      request.headers.host === undefined ? 'the request has no Host header' : `the Host header says "${host}"`;
    return `a development token is minted only for a request to this server by a loopback address (localhost, 127.0.0.1 or [::1], port ${request.localPort}); ${said}`;
  }
  const origin = request.headers.origin;
  if (origin !== undefined && origin.toLowerCase() !== `${request.scheme}://${host.toLowerCase()}`) {
    return `a development token is minted only for the console's own origin (${request.scheme}://${host}), not for a page from "${origin}"`;
  }
  if (!options.button && request.headers[DEV_TOKEN_HEADER] === undefined) {
    return `send the header "${DEV_TOKEN_HEADER}: dev-token", as the console does`;
  }
  return undefined;
}

export function consoleRoutes(deps: {
  /** The development issuer when this is the embedded shape with no outside identity provider; undefined otherwise (no token button). */
  devIssuer: DevIssuer | undefined;
}): Routes {
  return async (app) => {
    await app.register(fastifyStatic, {
      root: CONSOLE_DIR,
      prefix: '/console/',
      index: ['index.html'],
      schemaHide: true,
      cacheControl: false,
      etag: true,
    });
    app.get('/console', { schema: { hide: true } }, (_request, reply) => reply.redirect('/console/'));

    const vendor = Object.fromEntries(
      Object.entries(VENDOR_FILES).map(([name, { module, file }]) => {
        const resolved = fileURLToPath(import.meta.resolve(module));
        return [name, file === undefined ? resolved : path.join(path.dirname(resolved), file)];
      }),
    );
    app.get(
      '/console/vendor/:file',
      { schema: { hide: true, params: Type.Object({ file: Type.String({ maxLength: 64 }) }) } },
      (request, reply) => {
        const file = vendor[request.params.file];
        if (!file) throw new AppError('not_found', `no console file ${request.params.file}`);
        return reply.sendFile(path.basename(file), path.dirname(file));
      },
    );

    // What the sign-in page offers: the token button only where it would work for this request.
    const asked = (request: FastifyRequest): DevTokenRequest => ({
      peer: request.raw.socket.remoteAddress,
      localPort: request.raw.socket.localPort,
      scheme: request.protocol,
      headers: request.headers,
    });
    app.get('/console/session-options', { schema: { hide: true } }, async (request) => ({
      devToken: deps.devIssuer !== undefined && devTokenRefusal(asked(request), { button: true }) === undefined,
    }));

    app.post('/console/dev-token', {
      schema: {
        hide: true,
        response: {
          200: Type.Object({ token: Type.String(), scope: Type.String(), expiresInSeconds: Type.Integer() }),
          403: Problem,
          404: Problem,
        },
      },
      handler: async (request) => {
        if (!deps.devIssuer)
          throw new AppError(
            'not_found',
            'tokens come from the identity provider: there is no development issuer here',
          );
        const refusal = devTokenRefusal(asked(request));
        if (refusal !== undefined) throw new AppError('dev_token_refused', refusal);
        const expiresInSeconds = 8 * 3600;
        return {
          token: await deps.devIssuer.issue({ sub: 'operator', scope: OPERATOR_SCOPES, ttlSeconds: expiresInSeconds }),
          scope: OPERATOR_SCOPES,
          expiresInSeconds,
        };
      },
    });
  };
}
