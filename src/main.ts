#!/usr/bin/env node
// The command line: `orderflow serve | migrate | token`.
// First: on a Node.js older than the code needs, say which one it needs.
import './node-version.js';
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type Config } from './config.ts';
import { DataDirError, inDataDir } from './storage/data-dir.ts';
import { PROCESS } from './tunables.ts';
// Each command loads only what it runs (await import below): the process
// that supervises WEB_CONCURRENCY copies never loads the application and
// stays small.

const USAGE = `usage: orderflow <command>

  serve     run the roles named by ROLE (default: all) and listen on PORT
  migrate   apply database migrations and exit
  token     print a development bearer token:
              orderflow token --sub alice --scope "orders:write orders:read" [--ttl 3600]
  gateway   run the simulated payment gateway over HTTP for a distributed
            deployment on one machine (point PAYMENT_GATEWAY_URL at it):
              orderflow gateway [--port 9090] [--host 127.0.0.1]

Configuration comes from environment variables; see the README.`;

/**
 * WEB_CONCURRENCY > 1: this process forks that many copies of itself that
 * share the listening port (node:cluster hands connections out in turn), so
 * one role uses every core without a load balancer in front. A copy that
 * dies is started again; SIGTERM is passed on and waited for.
 */
function superviseCopies(config: Config): void {
  let stopping = false;
  let quickExits = 0;
  const fork = () => {
    const started = Date.now();
    cluster.fork().on('exit', (code, signal) => {
      if (stopping) return;
      // A copy that cannot even start (database gone, port taken) would be
      // restarted forever; after a few quick deaths in a row, give up loudly.
      quickExits = Date.now() - started < 5_000 ? quickExits + 1 : 0;
      if (quickExits >= 5) {
        process.stderr.write(
          'orderflow: serving processes keep exiting right after they start; giving up (see their errors above)\n',
        );
        process.exit(1);
      }
      process.stderr.write(`orderflow: a serving process exited (${signal ?? `code ${code}`}); starting another\n`);
      fork();
    });
  };
  for (let i = 0; i < config.webConcurrency; i++) fork();
  const stop = () => {
    if (stopping) return;
    stopping = true;
    const copies = Object.values(cluster.workers ?? {});
    for (const copy of copies) copy?.process.kill('SIGTERM');
    let remaining = copies.length;
    if (remaining === 0) process.exit(0);
    for (const copy of copies) copy?.on('exit', () => --remaining === 0 && process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

async function serve(config: Config): Promise<void> {
  if (config.webConcurrency > 1 && cluster.isPrimary) {
    // Scrapes reach one copy at random: the supervisor adds every copy's metrics up.
    const { aggregateCopiesMetrics } = await import('./observability/cluster-metrics.ts');
    aggregateCopiesMetrics();
    return superviseCopies(config);
  }
  const { createApp } = await import('./app.ts');
  const { shutdownTracing } = await import('./observability/tracing.ts');
  // createApp opens the embedded database (openPGlite), creating it first if
  // it is new, and refuses a DATA_DIR that another process has open or that
  // cannot be used (DataDirError).
  const app = await createApp({ config, onCreatingDatabase: announceCreation });
  const url = await app.start();
  const local = url.replace('://0.0.0.0', '://localhost').replace('://[::]', '://localhost');
  app.log.info({ url: local, role: config.role, database: app.db.kind }, 'orderflow listening');
  const firstCopy = cluster.isPrimary || cluster.worker?.id === 1;
  if (app.devIssuer && firstCopy && (config.role === 'all' || config.role === 'api')) {
    process.stdout.write(
      `\nOrderflow is listening on ${local} (role ${config.role}, ${config.databaseUrl ? 'PostgreSQL' : `embedded database in ${config.dataDir}`}).\n` +
        `Get a development token with:\n  npm run token -- --sub alice --scope "orders:write orders:read catalog:write"\n` +
        `then call, e.g.:\n  curl -H "Authorization: Bearer $TOKEN" ${local}/v1/products\n\n`,
    );
  }
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal }, 'shutting down: draining requests and jobs');
    const force = setTimeout(() => {
      app.log.error(
        'shutdown took too long; exiting (what this process still held is delivered again: after its lease, its ack wait, or at once)',
      );
      process.exit(1);
    }, PROCESS.shutdownGraceMs);
    force.unref();
    // The spans still buffered are exported last, with the shutdown's own.
    app.close().then(
      () => shutdownTracing().then(() => process.exit(0)),
      (error: unknown) => {
        app.log.error({ err: error }, 'shutdown failed');
        void shutdownTracing().then(() => process.exit(1));
      },
    );
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

/**
 * Creating the embedded database takes tens of seconds, the only slow part of
 * a start: said when it begins (the directory's lock held, no database there
 * yet), or `npm start` looks hung. A start on an existing database, or one
 * that is refused, says nothing of it.
 */
function announceCreation(dataDir: string): void {
  process.stdout.write(`Creating the embedded database in ${dataDir} (its first start; this takes about 20 s)…\n`);
}

async function runMigrate(config: Config): Promise<void> {
  const { openDatabase } = await import('./app.ts');
  const { migrate } = await import('./storage/migrate.ts');
  const db = await openDatabase(config, { onCreatingDatabase: announceCreation });
  try {
    const applied = await migrate(db);
    process.stdout.write(applied.length === 0 ? 'database is up to date\n' : `applied ${applied.join(', ')}\n`);
  } finally {
    await db.close();
  }
}

async function token(config: Config, args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { sub: { type: 'string' }, scope: { type: 'string' }, ttl: { type: 'string' } },
  });
  if (!values.sub) throw new UsageError('token needs --sub <customer id>');
  const scope = values.scope ?? 'orders:write orders:read';
  const { isSubject, SCOPES, SUBJECT_RULE } = await import('./identity/verifier.ts');
  // The server would refuse the token (401): refuse to print it.
  if (!isSubject(values.sub))
    throw new UsageError(`--sub ${JSON.stringify(values.sub)} cannot name a customer: ${SUBJECT_RULE}`);
  const unknown = scope.split(' ').filter((s) => s && !(SCOPES as readonly string[]).includes(s));
  if (unknown.length > 0) throw new UsageError(`unknown scope ${unknown.join(', ')}; known: ${SCOPES.join(', ')}`);
  const ttlSeconds = values.ttl === undefined ? 3600 : Number(values.ttl);
  if (!Number.isInteger(ttlSeconds) || ttlSeconds <= 0)
    throw new UsageError('--ttl must be a positive number of seconds');
  if (config.auth) throw new UsageError('tokens come from your identity provider when AUTH_JWKS_URL is set');
  const { openDevIssuer } = await import('./identity/dev-issuer.ts');
  const issuer = await inDataDir(config.dataDir, () => openDevIssuer(config.dataDir));
  // A token is accepted only by a server that uses the same key, that is the
  // same DATA_DIR: say which key signed it (stderr, so that stdout stays the token).
  const keyFile = issuer.keyFile!;
  process.stderr.write(
    issuer.createdKey
      ? `orderflow: no development key was in DATA_DIR=${config.dataDir}; created a new one in ${keyFile}. ` +
          'A server started with another DATA_DIR refuses this token (signature verification failed).\n'
      : `orderflow: signed with the development key in ${keyFile} (DATA_DIR=${config.dataDir})\n`,
  );
  process.stdout.write(`${await issuer.issue({ sub: values.sub, scope, ttlSeconds })}\n`);
}

async function gateway(config: Config, args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { port: { type: 'string' }, host: { type: 'string' } } });
  const port = values.port === undefined ? 9090 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError('--port must be a port number');
  const { startGatewayServer } = await import('./payments/gateway-server.ts');
  const { retentionFor, SimulatedGateway } = await import('./payments/simulated-gateway.ts');
  const server = await startGatewayServer({
    port,
    host: values.host,
    // Its workers' PENDING_DEADLINE_MS sets how long they may replay a key: the same environment is expected.
    gateway: new SimulatedGateway({
      latencyMs: config.simulatedGatewayLatencyMs,
      retain: retentionFor(config.pendingDeadlineMs, config.simulatedGatewayMaxEntries),
    }),
  });
  process.stdout.write(`simulated payment gateway listening on ${server.url} (ledger: GET ${server.url}/v1/ledger)\n`);
  const stop = () => void server.close().then(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

class UsageError extends Error {}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  const config = loadConfig();
  switch (command) {
    case 'serve':
      return serve(config);
    case 'migrate':
      return runMigrate(config);
    case 'token':
      return token(config, rest);
    case 'gateway':
      return gateway(config, rest);
    default:
      throw new UsageError(command === undefined ? 'no command given' : `unknown command "${command}"`);
  }
}

main(process.argv.slice(2)).catch((error: unknown) => {
  if (error instanceof ConfigError) process.stderr.write(`orderflow: configuration error: ${error.message}\n`);
  else if (error instanceof DataDirError)
    process.stderr.write(`orderflow: configuration error: DATA_DIR: ${error.message}\n`);
  else if (error instanceof UsageError) process.stderr.write(`orderflow: ${error.message}\n\n${USAGE}\n`);
  else process.stderr.write(`orderflow: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(error instanceof UsageError ? 2 : 1);
});
