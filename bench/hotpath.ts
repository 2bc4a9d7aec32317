// CPU per call of three pieces of the order path, measured in this process
// with process.cpuUsage(), and the same pieces as older commits wrote them,
// in the same run:
//   - the gateway client (HttpGateway.charge) charging against the simulated
//     gateway over HTTP, which runs in a child process so that its CPU is not
//     counted with the client's; `callers` concurrent callers, and the TCP
//     connections each round opened, counted at the server;
//   - order ids (newOrderId);
//   - the idempotency hash of a request (hashRequest) on 1–3-line orders;
//   - a message's delivery on the consumer side: the broker adapters' shared
//     consume loop (consumeLoop) handing deliveries to a BrokerQueue, which
//     decodes each, runs a handler that records it done (markDone) and
//     acknowledges it, with up to 64 in flight. No broker and no database:
//     the deliveries are made in this process and the statements go to a
//     Queryable that answers nothing, so the figure is this code's own work.
// An older commit's modules are taken from `git archive` into a temporary
// directory and imported next to this checkout's, on this checkout's
// node_modules. Rounds alternate between the implementations (the order
// reversed every other round) after one unmeasured warm-up round each, so the
// machine's drift touches them alike; the figure is the median of the rounds.
// CPU time of one process is what a busy machine disturbs least.
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { HotpathGatewayMessage, HotpathGatewayRequest } from './hotpath-gateway.ts';
import { pino, type Logger } from 'pino';
import { Type } from 'typebox';
import { say } from './progress.ts';
import { round } from './stats.ts';
import type { ChargeRequest, ChargeResult } from '../src/payments/gateway.ts';
import type { PlaceOrder } from '../src/orders/accept.ts';
import type { Delivery } from '../src/messaging/broker.ts';
import type { ConsumeSession } from '../src/messaging/consume-loop.ts';

export interface HotpathOptions {
  /** Git revisions whose implementations are measured beside this checkout's. */
  compare: string[];
  /** Measured rounds per implementation and piece (after one warm-up round). */
  rounds: number;
  /** Concurrent callers charging through one gateway client. */
  callers: number;
  /** Charges per round. */
  charges: number;
  /** Order ids per round. */
  ids: number;
  /** Request hashes per round. */
  hashes: number;
  /** Message deliveries per round. */
  deliveries: number;
}

/** One piece's measurement for one implementation. */
export interface HotpathFigure {
  /** 'this checkout' or the revision as given, with its short commit. */
  implementation: string;
  piece: 'gateway charge' | 'order id' | 'request hash' | 'message delivery';
  /** CPU µs (user + system) per call in each measured round, in run order. */
  cpuUsPerCallRounds: number[];
  /** Median of the rounds. */
  cpuUsPerCall: number;
  /** Gateway only: TCP connections the server accepted in each measured round (a new client each round). */
  connectionsRounds?: number[];
}

export interface HotpathResult {
  figures: HotpathFigure[];
  /** Revisions whose package-lock.json or patches differ from this checkout's: their code ran on other dependencies than it had. */
  otherDependencies: string[];
}

interface Implementation {
  label: string;
  HttpGateway: new (
    baseUrl: string,
    options?: { connections?: number },
  ) => {
    charge(request: ChargeRequest): Promise<ChargeResult>;
    close(): Promise<void>;
  };
  newOrderId: () => string;
  hashRequest: (request: PlaceOrder) => string;
  /** Hands `count` deliveries to this implementation's consumer; resolves once every one is acknowledged. */
  deliver: (count: number) => Promise<void>;
}

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

export async function measureHotpath(options: HotpathOptions): Promise<HotpathResult> {
  const scratch = await mkdtemp(path.join(tmpdir(), 'orderflow-hotpath-'));
  const child = await startGatewayChild();
  try {
    const implementations = [await load('this checkout', REPO_ROOT)];
    const otherDependencies: string[] = [];
    for (const revision of options.compare) {
      const commit = git('rev-parse', '--short', `${revision}^{commit}`);
      const root = path.join(scratch, commit);
      // Only the sources: dependencies come from this checkout (see otherDependencies).
      await mkdir(root);
      execFileSync(
        'sh',
        ['-c', 'git archive --format=tar "$1" src package.json | tar -x -C "$2"', 'sh', commit, root],
        {
          cwd: REPO_ROOT,
          stdio: ['ignore', 'ignore', 'inherit'],
        },
      );
      await symlink(path.join(REPO_ROOT, 'node_modules'), path.join(root, 'node_modules'), 'dir');
      if (!sameDependencies(commit)) otherDependencies.push(commit);
      implementations.push(await load(commit.startsWith(revision) ? commit : `${revision} (${commit})`, root));
    }
    const figures: HotpathFigure[] = [];
    const bodies = requestBodies(1000);
    figures.push(
      ...(await rounds(implementations, options.rounds, 'gateway charge', (impl) => chargeRound(impl, child, options))),
    );
    figures.push(
      ...(await rounds(implementations, options.rounds, 'order id', async (impl) => idRound(impl, options.ids))),
    );
    figures.push(
      ...(await rounds(implementations, options.rounds, 'request hash', async (impl) =>
        hashRound(impl, bodies, options.hashes),
      )),
    );
    figures.push(
      ...(await rounds(implementations, options.rounds, 'message delivery', (impl) =>
        deliveryRound(impl, options.deliveries),
      )),
    );
    return { figures, otherDependencies };
  } finally {
    await child.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Imports one implementation's modules from a source tree. */
async function load(label: string, root: string): Promise<Implementation> {
  const from = (file: string) => import(pathToFileURL(path.join(root, file)).href);
  const [gateway, ids, accept, brokerQueue, consumeLoop, metrics] = await Promise.all([
    from('src/payments/http-gateway.ts'),
    from('src/orders/ids.ts'),
    from('src/orders/accept.ts'),
    from('src/messaging/broker-queue.ts'),
    from('src/messaging/consume-loop.ts'),
    from('src/observability/metrics.ts'),
  ]);
  return {
    label,
    HttpGateway: gateway.HttpGateway,
    newOrderId: ids.newOrderId,
    hashRequest: accept.hashRequest,
    deliver: consumer(brokerQueue.BrokerQueue, consumeLoop.consumeLoop, metrics.createMetrics()),
  };
}

/**
 * A BrokerQueue of one implementation consuming the payment queue's messages
 * from a broker that exists only in this process: its consume() is the
 * implementation's own consumeLoop, fed by a source that hands out as many
 * deliveries as the loop has free slots. The handler yields once (a
 * handler awaits its database) and records the job done on a Queryable that
 * answers nothing, as the pay worker does in its transaction.
 */
function consumer(
  BrokerQueue: new (
    db: unknown,
    broker: unknown,
    log: Logger,
    metrics: unknown,
  ) => {
    handle(
      queue: string,
      handler: (job: { markDone(tx: unknown): Promise<void> }) => Promise<void>,
      options: unknown,
    ): void;
    start(): void;
  },
  consumeLoop: (...args: unknown[]) => unknown,
  metrics: unknown,
): (count: number) => Promise<void> {
  const log = pino({ level: 'silent' });
  const nothing = { query: async () => [], commit: (last: unknown[]) => Promise.all(last) };
  const db = {
    kind: 'postgres',
    concurrentTransactions: true,
    ...nothing,
    transaction: (fn: (tx: unknown) => unknown) => fn(nothing),
  };
  let waiting = 0;
  let acknowledged = 0;
  let wanted = 0;
  let finished = () => {};
  let seq = 0;
  const turn = () => new Promise((resolve) => setImmediate(resolve));
  const broker = {
    kind: 'nats',
    pending: async () => 0,
    consume: (queue: string, handler: unknown, options: unknown) =>
      consumeLoop({ name: 'NATS', log, live: new Set() }, queue, handler, options, async (session: ConsumeSession) => {
        let stopped = false;
        const done = (async () => {
          while (!stopped) {
            const free = session.free();
            if (waiting > 0 && free <= 0) await session.slotFreed();
            else {
              for (let i = Math.min(free, waiting); i > 0; i--, waiting--) session.deliver(delivery(queue, seq++));
              await turn();
            }
          }
        })();
        return { done, stop: async () => void (stopped = true) };
      }),
  };
  const delivery = (queue: string, n: number): Delivery => ({
    id: `hotpath-${n}`,
    queue,
    body: `{"orderId":"ord_${String(n).padStart(26, '0')}"}`,
    attempt: 1,
    maxAttempts: 10,
    trace: { traceparent: undefined, tracestate: undefined },
    ack: async () => {
      if (++acknowledged === wanted) finished();
    },
    retry: async () => {
      throw new Error('a delivery failed in the hotpath bench');
    },
    deadLetter: async (reason: string) => {
      throw new Error(`a delivery was dead-lettered in the hotpath bench: ${reason}`);
    },
  });
  const queue = new BrokerQueue(db, broker, log, metrics);
  queue.handle(
    'payments.charge',
    async (job) => {
      await turn();
      await job.markDone(nothing);
    },
    { concurrency: 64, payload: Type.Object({ orderId: Type.String() }) },
  );
  queue.start();
  return (count) =>
    new Promise<void>((resolve) => {
      acknowledged = 0;
      wanted = count;
      finished = resolve;
      waiting = count;
    });
}

interface Round {
  cpuUsPerCall: number;
  connections?: number;
}

/** One warm-up round per implementation, then `count` measured rounds each, alternating, the order reversed every other round. */
async function rounds(
  implementations: Implementation[],
  count: number,
  piece: HotpathFigure['piece'],
  run: (impl: Implementation) => Promise<Round>,
): Promise<HotpathFigure[]> {
  for (const impl of implementations) await run(impl);
  const measured = new Map<Implementation, Round[]>(implementations.map((impl) => [impl, []]));
  for (let r = 0; r < count; r++) {
    const order = r % 2 === 0 ? implementations : [...implementations].reverse();
    for (const impl of order) measured.get(impl)!.push(await run(impl));
    say(
      `${piece}, round ${r + 1}/${count}: ${implementations.map((impl) => `${impl.label} ${round(measured.get(impl)!.at(-1)!.cpuUsPerCall, 3)} µs`).join(', ')}`,
    );
  }
  return implementations.map((impl) => {
    const list = measured.get(impl)!;
    const connections = list.map((x) => x.connections).filter((x): x is number => x !== undefined);
    return {
      implementation: impl.label,
      piece,
      cpuUsPerCallRounds: list.map((x) => round(x.cpuUsPerCall, 3)),
      cpuUsPerCall: round(median(list.map((x) => x.cpuUsPerCall)), 3),
      ...(connections.length > 0 ? { connectionsRounds: connections } : {}),
    };
  });
}

let chargeSeq = 0;

/** `charges` charges from `callers` concurrent callers through a new client; CPU of this process only. */
async function chargeRound(impl: Implementation, child: GatewayChild, options: HotpathOptions): Promise<Round> {
  const client = new impl.HttpGateway(child.url, { connections: options.callers });
  const before = await child.connections();
  let next = 0;
  const started = process.cpuUsage();
  await Promise.all(
    Array.from({ length: options.callers }, async () => {
      while (next < options.charges) {
        next++;
        const seq = chargeSeq++;
        const result = await client.charge({
          // Every charge is new to the gateway: a replay would be cheaper for it, not for the client.
          idempotencyKey: `hotpath-${process.pid}-${seq}`,
          amountCents: 2599,
          currency: 'EUR',
          token: 'tok_visa',
          reference: `ord_${String(seq).padStart(26, '0')}`,
        });
        if (result.status !== 'succeeded')
          throw new Error(`${impl.label}: a charge answered ${JSON.stringify(result)}`);
      }
    }),
  );
  const used = process.cpuUsage(started);
  const connections = (await child.connections()) - before;
  await client.close();
  return { cpuUsPerCall: (used.user + used.system) / options.charges, connections };
}

async function deliveryRound(impl: Implementation, count: number): Promise<Round> {
  const started = process.cpuUsage();
  await impl.deliver(count);
  const used = process.cpuUsage(started);
  return { cpuUsPerCall: (used.user + used.system) / count };
}

function idRound(impl: Implementation, count: number): Round {
  let length = 0;
  const started = process.cpuUsage();
  for (let i = 0; i < count; i++) length += impl.newOrderId().length;
  const used = process.cpuUsage(started);
  // Uses every id, so none of the calls is dead code; and proves they are ids.
  if (length !== count * 30) throw new Error(`${impl.label}: order ids of an unexpected length`);
  return { cpuUsPerCall: (used.user + used.system) / count };
}

function hashRound(impl: Implementation, bodies: PlaceOrder[], count: number): Round {
  let length = 0;
  const started = process.cpuUsage();
  for (let i = 0; i < count; i++) length += impl.hashRequest(bodies[i % bodies.length]!).length;
  const used = process.cpuUsage(started);
  if (length !== count * 43) throw new Error(`${impl.label}: request hashes of an unexpected length`);
  return { cpuUsPerCall: (used.user + used.system) / count };
}

/**
 * Request bodies as the route lets them through and the throughput scenario's
 * load generator sends them: 1–3 lines of distinct SKUs, quantity 1–3, a
 * payment token. Seeded, so every implementation hashes the same bodies.
 */
function requestBodies(count: number): PlaceOrder[] {
  let seed = 42;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  return Array.from({ length: count }, () => {
    const lines = 1 + next(3);
    const skus = new Set<string>();
    while (skus.size < lines) skus.add(`BENCH-${String(next(1000)).padStart(4, '0')}`);
    return {
      items: [...skus].map((sku) => ({ sku, quantity: 1 + next(3) })),
      payment: { token: 'tok_visa' },
    };
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function git(...args: string[]): string {
  return execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8' }).trim();
}

/** The revision's package-lock.json and patches match this checkout's. */
function sameDependencies(commit: string): boolean {
  try {
    execFileSync('git', ['diff', '--quiet', commit, '--', 'package-lock.json', 'patches'], { cwd: REPO_ROOT });
    return true;
  } catch {
    return false;
  }
}

interface GatewayChild {
  url: string;
  /** TCP connections the gateway accepted since it started. */
  connections(): Promise<number>;
  stop(): Promise<void>;
}

/** Starts bench/hotpath-gateway.ts and waits until it listens. */
async function startGatewayChild(): Promise<GatewayChild> {
  const child: ChildProcess = fork(fileURLToPath(new URL('./hotpath-gateway.ts', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const nextMessage = () =>
    new Promise<HotpathGatewayMessage>((resolve, reject) => {
      const onExit = (code: number | null) =>
        reject(new Error(`the gateway process exited (${code}) before answering`));
      child.once('exit', onExit);
      child.once('message', (message: HotpathGatewayMessage) => {
        child.off('exit', onExit);
        resolve(message);
      });
    });
  const ask = (request: HotpathGatewayRequest) => child.send(request);
  const first = await nextMessage();
  if (first.kind !== 'listening') throw new Error(`the gateway process said ${JSON.stringify(first)} first`);
  return {
    url: first.url,
    async connections() {
      const answer = nextMessage();
      ask({ kind: 'connections' });
      const message = await answer;
      if (message.kind !== 'connections') throw new Error(`the gateway process answered ${JSON.stringify(message)}`);
      return message.accepted;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      ask({ kind: 'close' });
      const timer = setTimeout(() => child.kill(), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
