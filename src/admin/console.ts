// The operators' console at /console: static files from web/console, and the
// browser libraries it imports served straight from their npm packages
// (the console's import map names them), so `npm ci && npm start` serves it
// with no build step. The console talks to the admin API with the bearer
// token the operator signs in with.
//
// In the embedded shape with the development issuer, POST /console/dev-token
// mints an operator token, but only for a request whose TCP peer is this
// machine (the socket's address, never a header such as X-Forwarded-For,
// which any client can write): whoever can reach the embedded database's
// machine can already read it.
import { isIP } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
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
    app.get('/console/session-options', { schema: { hide: true } }, async (request) => ({
      devToken: deps.devIssuer !== undefined && isLoopback(request.raw.socket.remoteAddress),
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
        if (!isLoopback(request.raw.socket.remoteAddress)) {
          throw new AppError(
            'forbidden',
            'a development token is minted only for a request from this machine (its TCP peer, not a forwarded header)',
          );
        }
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
