// CPU per call of three pieces of the order path, measured in this process
// with process.cpuUsage(), and the same pieces as older commits wrote them,
// in the same run:
//   - the gateway client (HttpGateway.charge) charging against the simulated
//     gateway over HTTP, which runs in a child process so that its CPU is not
//     counted with the client's; `callers` concurrent callers, and the TCP
//     connections each round opened, counted at the server;
//   - order ids (newOrderId);
//   - the idempotency hash of a request (hashRequest) on 1–3-line orders.
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
import { say } from './progress.ts';
import { round } from './stats.ts';
import type { ChargeRequest, ChargeResult } from '../src/payments/gateway.ts';
import type { PlaceOrder } from '../src/orders/accept.ts';

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
}

/** One piece's measurement for one implementation. */
export interface HotpathFigure {
  /** 'this checkout' or the revision as given, with its short commit. */
  implementation: string;
  piece: 'gateway charge' | 'order id' | 'request hash';
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
    return { figures, otherDependencies };
  } finally {
    await child.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Imports one implementation's three modules from a source tree. */
async function load(label: string, root: string): Promise<Implementation> {
  const from = (file: string) => import(pathToFileURL(path.join(root, file)).href);
  const [gateway, ids, accept] = await Promise.all([
    from('src/payments/http-gateway.ts'),
    from('src/orders/ids.ts'),
    from('src/orders/accept.ts'),
  ]);
  return { label, HttpGateway: gateway.HttpGateway, newOrderId: ids.newOrderId, hashRequest: accept.hashRequest };
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
