// Dependencies going away under load, as an operator would see it: the
// combined shape (`serve` with ROLE=all and WEB_CONCURRENCY=2, two
// node:cluster copies sharing one port) on private servers (PostgreSQL,
// Redis, and NATS or RabbitMQ), a payment gateway over HTTP, and a few
// hundred clients placing orders without pause. A step stops one dependency
// (or cuts its connections), records what the clients and the operations
// routes see while it is gone, starts it again and times the recovery. The
// outage test asserts on these records; bench/outages.ts prints them.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import postgres from 'postgres';
import { Pool } from 'undici';
import { checkInvariants, drain, type Check } from '../../bench/checks.ts';
import { childPids, freePortRange, startCluster, type Cluster } from '../../scripts/cluster.ts';
import { openDevIssuer } from '../../src/identity/dev-issuer.ts';
import { startGatewayServer, type GatewayServer } from '../../src/payments/gateway-server.ts';
import { SimulatedGateway } from '../../src/payments/simulated-gateway.ts';
import type { Database } from '../../src/storage/database.ts';
import { openPostgres } from '../../src/storage/postgres.ts';
import { startPrivatePrimary, type PrivatePostgres } from './private-postgres.ts';
import { startNats, startRabbitMq, startRedis, type PrivateServer, type ProcessStopMode } from './servers.ts';

/** PostgreSQL's shutdown modes (pg_ctl stop -m): fast rolls back open transactions and closes every connection; immediate quits at once, with crash recovery at the next start. */
export type PostgresStopMode = 'fast' | 'immediate';

export type OutageMode = 'postgres' | 'nats' | 'rabbitmq';
export type Dependency = 'postgresql' | 'nats' | 'rabbitmq' | 'redis' | 'gateway';

export interface OutageStep {
  dependency: Dependency;
  /**
   * postgresql: fast | immediate (pg_ctl stop -m) or drop (every Orderflow
   * connection terminated, the server stays up); nats, rabbitmq, redis: kill
   * (SIGKILL) or terminate (SIGTERM); gateway: cut (the listener closed and
   * every connection dropped, requests in flight included).
   */
  how: PostgresStopMode | ProcessStopMode | 'drop' | 'cut';
  /** Right after the dependency is back, stop it again the same way, while Orderflow reconnects. */
  flap?: boolean;
}

/** Every dependency of the mode in turn, each the ways the outage test covers. */
export function outageSteps(mode: OutageMode): OutageStep[] {
  return [
    { dependency: 'postgresql', how: 'fast' },
    { dependency: 'postgresql', how: 'immediate', flap: true },
    { dependency: 'postgresql', how: 'drop' },
    ...(mode === 'postgres' ? [] : [{ dependency: mode, how: 'kill', flap: mode === 'nats' } as const]),
    { dependency: 'redis', how: 'kill' },
    { dependency: 'gateway', how: 'cut' },
  ];
}

export function stepName(step: OutageStep): string {
  return `${step.dependency} ${step.how}${step.flap ? ', again while reconnecting' : ''}`;
}

/** One HTTP answer a client got (status 0: no answer, the connection failed). */
export interface Answer {
  /** performance.now() when the request was sent. */
  at: number;
  ms: number;
  status: number;
  retryAfter: string | undefined;
  problemJson: boolean;
}

export interface Probe {
  route: '/healthz' | '/readyz' | '/metrics';
  status: number;
  ms: number;
  body: string;
}

export interface StepReport {
  step: OutageStep;
  /** How long the dependency was away, ms. */
  outageMs: number;
  /** Order requests sent while it was away. */
  during: Answer[];
  probes: Probe[];
  /** From the dependency's return to the first order request answered 2xx (sent after the return). */
  acceptingAfterMs: number;
  /** From the dependency's return until every order accepted before it was terminal. */
  caughtUpAfterMs: number;
  /** Serving processes (node:cluster copies) at the start and the end of the step: the same ones, if none exited. */
  pidsBefore: number[];
  pidsAfter: number[];
}

export interface OutageRigOptions {
  /** Concurrent clients, each placing one order at a time. */
  clients?: number;
  /**
   * New orders per second, all clients together (retries come on top). Below
   * what the shape can take, so that the time to catch up after an outage is
   * the outage's, not a standing backlog's.
   */
  ordersPerSecond?: number;
  /** How long each dependency stays away at least, ms (longer until REQUESTS_DURING_OUTAGE were answered). */
  outageMs?: number;
  onOutput?: (process: string, line: string) => void;
}

const SKUS = 200;
/** Scarce stock on some SKUs, so that out_of_stock answers are part of the load too. */
const stockOf = (i: number) => (i % 10 === 0 ? 20 : 1_000_000);
const RETRY_PAUSE_MS = 100;
/** Order requests sent while a dependency is away and answered before it returns, at least. */
const REQUESTS_DURING_OUTAGE = 20;
/** The longest a dependency stays away waiting for them, ms. */
const OUTAGE_DEADLINE_MS = 60_000;

/**
 * Clients placing orders back to back; each retries an order with the same
 * Idempotency-Key until it is answered 2xx, as the contract asks, and every
 * answer is recorded.
 */
export class OrderLoad {
  readonly answers: Answer[] = [];
  /** Order id → the token of the customer who placed it. */
  readonly accepted = new Map<string, string>();
  readonly #pool: Pool;
  readonly #tokens: string[];
  readonly #intervalMs: number;
  #loops: Promise<void>[] = [];
  #running = false;
  #next = 0;
  #nextSlot = 0;

  constructor(base: string, tokens: string[], ordersPerSecond: number) {
    this.#tokens = tokens;
    this.#intervalMs = 1000 / ordersPerSecond;
    this.#pool = new Pool(base, { connections: 256, headersTimeout: 60_000, bodyTimeout: 60_000 });
  }

  start(clients: number): void {
    this.#running = true;
    this.#loops = Array.from({ length: clients }, (_, i) => this.#client(i));
  }

  /** Stops placing new orders; resolves once each client's last order is answered. */
  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
  }

  async close(): Promise<void> {
    this.#running = false;
    await this.#pool.close();
  }

  answeredSince(at: number): Answer[] {
    return this.answers.filter((a) => a.at >= at);
  }

  async #client(index: number): Promise<void> {
    const token = this.#tokens[index % this.#tokens.length]!;
    while (this.#running) {
      // Each new order takes the next free slot of the rate.
      const now = performance.now();
      const slot = Math.max(now, this.#nextSlot);
      this.#nextSlot = slot + this.#intervalMs;
      if (slot > now) await sleep(slot - now);
      if (!this.#running) break;
      const n = this.#next++;
      const items = Array.from({ length: 1 + (n % 3) }, (_, j) => ({
        sku: `SKU-${(n * 7 + j * 13) % SKUS}`,
        quantity: 1 + ((n + j) % 2),
      }));
      const payment = { token: n % 17 === 0 ? 'tok_declined' : 'tok_visa' };
      const key = `load-${index}-${n}`;
      for (;;) {
        const answer = await this.#post(token, key, { items, payment });
        if (answer.status >= 200 && answer.status < 300) break;
        await sleep(RETRY_PAUSE_MS);
      }
    }
  }

  async #post(token: string, key: string, body: unknown): Promise<Answer & { id?: string }> {
    const at = performance.now();
    let answer: Answer & { id?: string };
    try {
      const response = await this.#pool.request({
        path: '/v1/orders',
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify(body),
      });
      const text = await response.body.text();
      const contentType = String(response.headers['content-type'] ?? '');
      const retryAfter = response.headers['retry-after'];
      answer = {
        at,
        ms: performance.now() - at,
        status: response.statusCode,
        retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined,
        problemJson: contentType.startsWith('application/problem+json'),
      };
      if (response.statusCode >= 200 && response.statusCode < 300) {
        const id = (JSON.parse(text) as { id: string }).id;
        this.accepted.set(id, token);
        answer.id = id;
      }
    } catch {
      answer = { at, ms: performance.now() - at, status: 0, retryAfter: undefined, problemJson: false };
    }
    this.answers.push(answer);
    return answer;
  }
}

/** The combined shape on private servers, with its gateway and the load. */
export class OutageRig {
  readonly mode: OutageMode;
  readonly cluster: Cluster;
  readonly postgresql: PrivatePostgres;
  readonly redis: PrivateServer<ProcessStopMode>;
  readonly broker: PrivateServer<ProcessStopMode> | undefined;
  readonly gateway: SimulatedGateway;
  readonly load: OrderLoad;
  /** Orderflow's database port on the private PostgreSQL, for the checks. */
  readonly db: Database;
  readonly #gatewayServer: { current: GatewayServer | undefined; port: number };
  readonly #admin: postgres.Sql;
  readonly #dataDir: string;
  readonly #outageMs: number;

  private constructor(init: {
    mode: OutageMode;
    cluster: Cluster;
    postgresql: PrivatePostgres;
    redis: PrivateServer<ProcessStopMode>;
    broker: PrivateServer<ProcessStopMode> | undefined;
    gateway: SimulatedGateway;
    gatewayServer: GatewayServer;
    load: OrderLoad;
    dataDir: string;
    outageMs: number;
  }) {
    this.mode = init.mode;
    this.cluster = init.cluster;
    this.postgresql = init.postgresql;
    this.redis = init.redis;
    this.broker = init.broker;
    this.gateway = init.gateway;
    this.load = init.load;
    this.#gatewayServer = { current: init.gatewayServer, port: Number(new URL(init.gatewayServer.url).port) };
    this.#dataDir = init.dataDir;
    this.#outageMs = init.outageMs;
    this.db = openPostgres(init.postgresql.url(), 2);
    this.#admin = postgres(init.postgresql.url(), { max: 1, onnotice: () => {}, backoff: () => 0.1 });
  }

  /** Starts the servers, the cluster, the products and the load. */
  static async start(mode: OutageMode, options: OutageRigOptions = {}): Promise<OutageRig> {
    const started: { destroy(): Promise<void> }[] = [];
    const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-outage-'));
    try {
      const [postgresql, redis, broker] = await Promise.all([
        startPrivatePrimary(),
        startRedis(),
        mode === 'nats' ? startNats() : mode === 'rabbitmq' ? startRabbitMq() : undefined,
      ]);
      started.push(postgresql, redis, ...(broker ? [broker] : []));
      const gateway = new SimulatedGateway({ latencyMs: 20, retain: 'all' });
      const gatewayServer = await startGatewayServer({ gateway });
      started.push({ destroy: () => gatewayServer.close() });
      const cluster = await startCluster({
        databaseUrl: postgresql.url(),
        brokerUrl: broker?.url,
        redisUrl: redis.url,
        shape: 'combined',
        copies: 2,
        gateway: gatewayServer,
        basePort: await freePortRange(8),
        // The sweeper keeps its default deadline (60 s): nothing here is lost, and
        // re-driving every order a backlog holds would only add to the backlog.
        env: { DATA_DIR: dataDir, LOG_LEVEL: 'warn' },
        onOutput: options.onOutput ?? (() => {}),
      });
      started.push({ destroy: () => cluster.stop() });

      const issuer = await openDevIssuer(dataDir);
      const admin = await issuer.issue({ sub: 'admin', scope: 'catalog:write orders:read orders:admin' });
      const products = new Pool(cluster.url, { connections: 8 });
      try {
        for (let i = 0; i < SKUS; i++) {
          const response = await products.request({
            path: '/v1/products',
            method: 'POST',
            headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
            body: JSON.stringify({
              sku: `SKU-${i}`,
              name: `Item ${i}`,
              priceCents: 100 + i,
              currency: 'EUR',
              stock: stockOf(i),
            }),
          });
          const text = await response.body.text();
          if (response.statusCode !== 201) throw new Error(`creating SKU-${i}: ${response.statusCode} ${text}`);
        }
      } finally {
        await products.close();
      }
      const tokens = await Promise.all(
        Array.from({ length: 16 }, (_, i) => issuer.issue({ sub: `customer-${i}`, scope: 'orders:write orders:read' })),
      );
      const load = new OrderLoad(cluster.url, tokens, options.ordersPerSecond ?? 300);
      const rig = new OutageRig({
        mode,
        cluster,
        postgresql,
        redis,
        broker,
        gateway,
        gatewayServer,
        load,
        dataDir,
        outageMs: options.outageMs ?? 1_500,
      });
      load.start(options.clients ?? 200);
      return rig;
    } catch (error) {
      for (const s of started.reverse()) await s.destroy().catch(() => undefined);
      await rm(dataDir, { recursive: true, force: true });
      throw error;
    }
  }

  /** The serving copies the supervisor runs now. */
  async servingPids(): Promise<number[]> {
    return (await childPids(this.cluster.process('all').child.pid!)).sort((a, b) => a - b);
  }

  /** Takes the dependency away under load (see REQUESTS_DURING_OUTAGE), brings it back, and reports what was seen. */
  async run(step: OutageStep): Promise<StepReport> {
    const pidsBefore = await this.servingPids();
    // Enough load to mean something before the dependency goes.
    const warm = performance.now();
    while (this.load.answeredSince(warm).length < 100) await sleep(10);

    const stoppedAt = performance.now();
    await this.#takeAway(step);
    const probes: Probe[] = [];
    // Away for outageMs and until enough orders sent after it went have been
    // answered: on a busy machine every client can still be waiting on a
    // request sent before, and a clock alone would then test nothing.
    const deadline = stoppedAt + OUTAGE_DEADLINE_MS;
    while (
      (performance.now() - stoppedAt < this.#outageMs ||
        this.load.answeredSince(stoppedAt).length < REQUESTS_DURING_OUTAGE) &&
      performance.now() < deadline
    ) {
      for (const route of ['/healthz', '/readyz', '/metrics'] as const) probes.push(await this.probe(route));
      await sleep(100);
    }
    if (step.flap) {
      await this.#bringBack(step);
      await this.#takeAway(step);
      await sleep(200);
    }
    await this.#bringBack(step);
    const backAt = performance.now();
    const during = this.load.answers.filter((a) => a.at >= stoppedAt && a.at < backAt);
    // The orders accepted so far are the ones to catch up on.
    const seq = await this.#untilDatabaseAnswers(async () => {
      const [row] = await this.#admin<{ seq: number }[]>`SELECT coalesce(max(seq), 0)::int AS seq FROM orders.orders`;
      return row!.seq;
    });
    const acceptingAt = await until(
      'an order to be accepted after the dependency came back',
      async () => this.load.answeredSince(backAt).find((a) => a.status >= 200 && a.status < 300)?.at,
    );
    await until('every order accepted before it came back to be terminal', async () => {
      const [row] = await this.#admin<
        { n: number }[]
      >`SELECT count(*)::int AS n FROM orders.orders WHERE status = 'pending' AND seq <= ${seq}`;
      return row!.n === 0 ? true : undefined;
    });
    const caughtUpAt = performance.now();
    return {
      step,
      outageMs: backAt - stoppedAt,
      during,
      probes,
      acceptingAfterMs: Math.max(0, acceptingAt - backAt),
      caughtUpAfterMs: caughtUpAt - backAt,
      pidsBefore,
      pidsAfter: await this.servingPids(),
    };
  }

  /** One request to an operations route of the cluster (whichever copy takes it). */
  async probe(route: Probe['route']): Promise<Probe> {
    const at = performance.now();
    try {
      const response = await fetch(this.cluster.url + route, { signal: AbortSignal.timeout(30_000) });
      return { route, status: response.status, body: await response.text(), ms: performance.now() - at };
    } catch (error) {
      return { route, status: 0, body: String(error), ms: performance.now() - at };
    }
  }

  /** Stops the load, waits until no order is pending, and checks every promise of the contract. */
  async finish(): Promise<Check[]> {
    await this.load.stop();
    const drained = await drain(this.db, 120_000);
    if (drained === undefined) throw new Error('orders still pending 120 s after the load stopped');
    const ledger = { charges: [...this.gateway.charges.values()], refunds: [...this.gateway.refunds.values()] };
    return checkInvariants(this.db, ledger, [...this.load.accepted.keys()]);
  }

  async stop(): Promise<void> {
    await this.load.close();
    await this.cluster.stop().catch(() => undefined);
    await this.#gatewayServer.current?.close().catch(() => undefined);
    await this.#admin.end({ timeout: 1 }).catch(() => undefined);
    await this.db.close().catch(() => undefined);
    for (const server of [this.broker, this.redis, this.postgresql]) await server?.destroy();
    await rm(this.#dataDir, { recursive: true, force: true });
  }

  async #takeAway(step: OutageStep): Promise<void> {
    switch (step.dependency) {
      case 'postgresql':
        if (step.how === 'drop') {
          // Every connection but this one, mid-transaction or idle; the server stays up.
          await this
            .#admin`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`;
          return;
        }
        return this.postgresql.stop(step.how as PostgresStopMode);
      case 'redis':
        return this.redis.stop(step.how as ProcessStopMode);
      case 'gateway': {
        const server = this.#gatewayServer.current;
        this.#gatewayServer.current = undefined;
        return server?.close();
      }
      default:
        return this.broker!.stop(step.how as ProcessStopMode);
    }
  }

  async #bringBack(step: OutageStep): Promise<void> {
    switch (step.dependency) {
      case 'postgresql':
        return step.how === 'drop' ? undefined : this.postgresql.start();
      case 'redis':
        return this.redis.start();
      case 'gateway':
        this.#gatewayServer.current = await startGatewayServer({
          gateway: this.gateway,
          port: this.#gatewayServer.port,
        });
        return;
      default:
        return this.broker!.start();
    }
  }

  /** Runs read on the database, which may have just restarted (crash recovery included). */
  async #untilDatabaseAnswers<T>(read: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await read();
      } catch (error) {
        if (attempt > 300) throw error;
        await sleep(100);
      }
    }
  }
}

/** Polls check until it returns a value, or fails after timeoutMs (a recovery that never comes). */
async function until<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 120_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
