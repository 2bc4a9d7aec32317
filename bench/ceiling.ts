// The ceiling: the SQL of one accepted order with nothing else around it (no
// HTTP, no JSON, no auth, no batching), on a fresh database migrated with the
// real migrations. What the API reaches divided by this is how much of the
// hardware's limit for this transaction the service gets; group commit in the
// API can take it past 1.
//
// One list of statements drives both engines: pgbench in distributed mode
// (its variables become SQL expressions) and N async loops on one PGlite in
// embedded mode (real parameters; PGlite runs one transaction at a time, so
// the loops queue). The statements are src/'s own, imported from the
// modules' store.ts files, run for a batch of one order: the ceiling is the
// SQL the API runs, without the batching, HTTP and code around it.
import { fork, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PRICES_SQL } from '../src/catalog/store.ts';
import { HOLD_STOCK_SQL, LOCK_STOCK_SQL } from '../src/inventory/store.ts';
import { INSERT_JOBS_SQL, INSERT_OUTBOX_SQL } from '../src/messaging/store.ts';
import {
  CLAIM_KEYS_SQL,
  INSERT_ORDER_EVENTS_SQL,
  INSERT_ORDER_LINES_SQL,
  INSERT_ORDERS_SQL,
} from '../src/orders/store.ts';
import { INSERT_PAYMENTS_SQL } from '../src/payments/store.ts';
import type { Database } from '../src/storage/database.ts';
import { migrate } from '../src/storage/migrate.ts';
import { openPGlite } from '../src/storage/pglite.ts';
import { openPostgres } from '../src/storage/postgres.ts';
import {
  newHistogram,
  recordMs,
  round,
  summarize,
  summarizeValues,
  type LatencySummary,
  type SecondSample,
} from './stats.ts';
import type { CeilingChildMessage } from './ceiling-child.ts';
import { findPostgresProgram } from '../test/support/private-postgres.ts';
import { freshDatabase, postgresBaseUrl, type Mode } from './targets.ts';

export const CEILING_SKUS = 1000;

export interface CeilingOptions {
  mode: Mode;
  connections: number;
  durationS: number;
  /** Broker mode writes the payment message to messaging.outbox instead of messaging.jobs. */
  broker: boolean;
  onProgress?: (elapsedS: number, perSecond: number) => void;
}

export interface CeilingResult {
  mode: Mode;
  engine: string;
  /** The database server's version (PGlite reports the PostgreSQL it embeds). */
  serverVersion: string;
  /** Clients actually used (pgbench may get fewer when the server is short of connection slots). */
  clients: number;
  durationS: number;
  transactions: number;
  failed: number;
  perSecond: number;
  latency: LatencySummary;
  series: SecondSample[];
  notes: string[];
}

export function skuName(n: number): string {
  return `SKU-${String(n).padStart(4, '0')}`;
}

export async function seedCeilingCatalog(db: Database): Promise<void> {
  await db.query(
    `INSERT INTO catalog.products (sku, name, price_cents, currency)
     SELECT 'SKU-' || lpad(n::text, 4, '0'), 'Bench product ' || n, 1000, 'EUR' FROM generate_series(1, $1::int) n`,
    [CEILING_SKUS],
  );
  await db.query(
    `INSERT INTO inventory.stock (sku, on_hand) SELECT 'SKU-' || lpad(n::text, 4, '0'), 1000000000 FROM generate_series(1, $1::int) n`,
    [CEILING_SKUS],
  );
}

export async function versionOf(db: Database): Promise<string> {
  const [row] = await db.query<{ v: string }>(`SELECT current_setting('server_version') AS v`);
  return row?.v ?? 'unknown';
}

export async function runCeiling(options: CeilingOptions): Promise<CeilingResult> {
  return options.mode === 'embedded' ? runEmbedded(options) : runPgbench(options);
}

/** runCeiling, with the embedded engine in a child process (see ceiling-child.ts). */
export function runCeilingIsolated(options: CeilingOptions): Promise<CeilingResult> {
  if (options.mode !== 'embedded') return runCeiling(options);
  const { onProgress, ...rest } = options;
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(new URL('./ceiling-child.ts', import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let settled = false;
    child.on('message', (message: CeilingChildMessage) => {
      if (message.kind === 'progress') return onProgress?.(message.t, message.perSecond);
      settled = true;
      if (message.kind === 'done') resolve(message.result);
      else reject(new Error(`ceiling: ${message.message}`));
      child.disconnect();
    });
    child.on('error', (error) => {
      if (!settled) reject(error);
      settled = true;
    });
    child.on('exit', (code) => {
      if (!settled) reject(new Error(`the ceiling process exited early (code ${code})`));
      settled = true;
    });
    child.send(rest);
  });
}

// --- the statements -------------------------------------------------------------

/** One order's values: two distinct SKUs, lo < hi, so rows lock in sorted order as src/ does. */
interface OrderValues {
  orderId: string;
  customer: string;
  key: string;
  hash: string;
  lo: string;
  hi: string;
  qlo: number;
  qhi: number;
  total: number;
}

interface Statement {
  name: string;
  sql: string;
  /** The parameters as pgbench SQL expressions over its set variables. */
  pgbench: string[];
  values: (o: OrderValues) => unknown[];
}

const PG = {
  orderId: `('ord_' || lpad(:r::text, 26, '0'))`,
  customer: `('bench-' || :client_id::text)`,
  lo: `('SKU-' || lpad(:lo::text, 4, '0'))`,
  hi: `('SKU-' || lpad(:hi::text, 4, '0'))`,
};
const PG_SKUS = `ARRAY[${PG.lo}, ${PG.hi}]`;
const PG_QUANTITIES = 'ARRAY[:qlo, :qhi]';
const PG_PAYLOAD = `ARRAY[json_build_object('orderId', ${PG.orderId})::text]`;
const PG_JOB_KEY = `ARRAY['charge:' || ${PG.orderId}]`;
const payload = (o: OrderValues) => [JSON.stringify({ orderId: o.orderId })];
const jobKey = (o: OrderValues) => [`charge:${o.orderId}`];

/**
 * The statements src/ runs to accept an order, imported from the modules'
 * store.ts files (so they cannot drift), in the order acceptBatch runs
 * them, each given the arrays of a batch of one order.
 */
function acceptStatements(broker: boolean): Statement[] {
  return [
    { name: 'price lines', sql: PRICES_SQL, pgbench: [PG_SKUS], values: (o) => [[o.lo, o.hi]] },
    {
      name: 'claim idempotency key',
      sql: CLAIM_KEYS_SQL,
      pgbench: [`ARRAY[${PG.customer}]`, `ARRAY['key-' || :r::text]`, 'ARRAY[md5(:r::text)]', `ARRAY[${PG.orderId}]`],
      values: (o) => [[o.customer], [o.key], [o.hash], [o.orderId]],
    },
    { name: 'lock stock', sql: LOCK_STOCK_SQL, pgbench: [PG_SKUS], values: (o) => [[o.lo, o.hi]] },
    {
      name: 'order row',
      sql: INSERT_ORDERS_SQL,
      pgbench: [
        `ARRAY[${PG.orderId}]`,
        `ARRAY[${PG.customer}]`,
        `ARRAY['pending']`,
        'ARRAY[:tot]',
        `ARRAY['EUR']`,
        'ARRAY[NULL]',
      ],
      values: (o) => [[o.orderId], [o.customer], ['pending'], [o.total], ['EUR'], [null]],
    },
    {
      name: 'line rows',
      sql: INSERT_ORDER_LINES_SQL,
      pgbench: [`ARRAY[${PG.orderId}, ${PG.orderId}]`, 'ARRAY[1, 2]', PG_SKUS, PG_QUANTITIES, 'ARRAY[1000, 1000]'],
      values: (o) => [
        [o.orderId, o.orderId],
        [1, 2],
        [o.lo, o.hi],
        [o.qlo, o.qhi],
        [1000, 1000],
      ],
    },
    {
      name: 'history rows',
      sql: INSERT_ORDER_EVENTS_SQL,
      pgbench: [
        `ARRAY[${PG.orderId}, ${PG.orderId}]`,
        `ARRAY['accepted', 'stock_held']`,
        `ARRAY['{"totalCents": ' || :tot::text || '}', '{}']`,
      ],
      values: (o) => [
        [o.orderId, o.orderId],
        ['accepted', 'stock_held'],
        [JSON.stringify({ totalCents: o.total }), '{}'],
      ],
    },
    {
      name: 'hold stock',
      sql: HOLD_STOCK_SQL,
      pgbench: [PG_SKUS, PG_QUANTITIES],
      values: (o) => [
        [o.lo, o.hi],
        [o.qlo, o.qhi],
      ],
    },
    {
      name: 'payment row',
      sql: INSERT_PAYMENTS_SQL,
      pgbench: [`ARRAY[${PG.orderId}]`, 'ARRAY[:tot]', `ARRAY['EUR']`, `ARRAY['tok_visa']`],
      values: (o) => [[o.orderId], [o.total], ['EUR'], ['tok_visa']],
    },
    broker
      ? {
          name: 'outbox row',
          sql: INSERT_OUTBOX_SQL,
          pgbench: [`'payments.charge'`, PG_PAYLOAD, PG_JOB_KEY, '10', '0', 'ARRAY[NULL::text]'],
          values: (o) => ['payments.charge', payload(o), jobKey(o), 10, 0, [null]],
        }
      : {
          name: 'job row',
          sql: INSERT_JOBS_SQL,
          pgbench: [`'payments.charge'`, PG_PAYLOAD, PG_JOB_KEY, '0', '10', 'ARRAY[NULL::text]'],
          values: (o) => ['payments.charge', payload(o), jobKey(o), 0, 10, [null]],
        },
  ];
}

function bind(sql: string, values: readonly string[]): string {
  return sql.replace(/\$(\d+)/g, (_, n: string) => {
    const value = values[Number(n) - 1];
    if (value === undefined) throw new Error(`no value for $${n} in ${sql}`);
    return value;
  });
}

/** The pgbench script: one accepted order of two distinct SKUs. */
export function pgbenchScript(broker: boolean): string {
  return [
    '-- Generated by bench/ceiling.ts: the SQL of one accepted order.',
    `\\set r random(1, 1000000000000000)`,
    `\\set a random(1, ${CEILING_SKUS})`,
    `\\set d random(1, ${CEILING_SKUS - 1})`,
    `\\set b (:a + :d - 1) % ${CEILING_SKUS} + 1`,
    `\\set lo least(:a, :b)`,
    `\\set hi greatest(:a, :b)`,
    `\\set qlo random(1, 3)`,
    `\\set qhi random(1, 3)`,
    `\\set tot 1000 * (:qlo + :qhi)`,
    'BEGIN;',
    ...acceptStatements(broker).map((s) => `${bind(s.sql, s.pgbench)};`),
    'COMMIT;',
    '',
  ].join('\n');
}

// --- embedded: the statements on PGlite -----------------------------------------

async function runEmbedded(options: CeilingOptions): Promise<CeilingResult> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-ceiling-'));
  const db = await openPGlite(dataDir);
  try {
    await migrate(db);
    await seedCeilingCatalog(db);
    const serverVersion = `PGlite (PostgreSQL ${await versionOf(db)})`;
    const statements = acceptStatements(false);
    const total = newHistogram();
    // Per-second buckets by completion time, not a timer: PGlite keeps the
    // event loop busy with microtasks, and a setInterval would starve.
    const buckets = new SecondBuckets((t, count) => options.onProgress?.(t, count));
    let failed = 0;
    const start = performance.now();
    const deadline = start + options.durationS * 1000;
    let seq = 0;
    const loops = Array.from({ length: options.connections }, async (_, client) => {
      while (performance.now() < deadline) {
        const a = randomInt(1, CEILING_SKUS + 1);
        const b = ((a + randomInt(1, CEILING_SKUS) - 1) % CEILING_SKUS) + 1;
        const qlo = randomInt(1, 4);
        const qhi = randomInt(1, 4);
        const n = seq++;
        const order: OrderValues = {
          orderId: `ord_${String(n).padStart(26, '0')}`,
          customer: `bench-${client}`,
          key: `key-${n}`,
          hash: `hash-${n}`,
          lo: skuName(Math.min(a, b)),
          hi: skuName(Math.max(a, b)),
          qlo,
          qhi,
          total: 1000 * (qlo + qhi),
        };
        const began = performance.now();
        try {
          await db.transaction(async (tx) => {
            for (const statement of statements) await tx.query(statement.sql, statement.values(order));
          });
          const now = performance.now();
          recordMs(total, now - began);
          buckets.add((now - start) / 1000, now - began);
        } catch {
          failed++;
        }
      }
    });
    await Promise.all(loops);
    const series = buckets.series().filter((x) => x.t <= options.durationS);
    const elapsedS = (performance.now() - start) / 1000;
    const latency = summarize(total);
    return {
      mode: 'embedded',
      engine: `PGlite in-process, ${options.connections} async loops, no HTTP`,
      serverVersion,
      clients: options.connections,
      durationS: round(elapsedS),
      transactions: latency.count,
      failed,
      perSecond: round(latency.count / elapsedS, 1),
      latency,
      series,
      notes: [
        'PGlite runs one transaction at a time: the loops queue behind each other, so latency grows with connections and throughput does not.',
      ],
    };
  } finally {
    await db.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

// --- distributed: pgbench ------------------------------------------------------------

/** pgbench from PATH, else next to pg_config, else the newest /usr/lib/postgresql/<version>/bin. */
export function findPgbench(): string {
  return findPostgresProgram('pgbench');
}

async function runPgbench(options: CeilingOptions): Promise<CeilingResult> {
  const pgbench = findPgbench();
  const fresh = await freshDatabase(postgresBaseUrl());
  const work = await mkdtemp(path.join(tmpdir(), 'orderflow-ceiling-'));
  const notes: string[] = [];
  try {
    const db = openPostgres(fresh.url, 1);
    let clients = options.connections;
    let serverVersion = 'unknown';
    try {
      await migrate(db);
      serverVersion = await versionOf(db);
      await seedCeilingCatalog(db);
      // Other sessions share the server; asking for more clients than it has
      // slots makes pgbench abort rather than measure.
      const [slots] = await db.query<{ free: number }>(
        `SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
                - (SELECT count(*)::int FROM pg_stat_activity) AS free`,
      );
      const usable = Math.max(1, (slots?.free ?? clients) - 10);
      if (usable < clients) {
        notes.push(`asked for ${clients} clients, the server had ${slots?.free} free connection slots: ran ${usable}`);
        clients = usable;
      }
    } finally {
      await db.close();
    }
    const script = path.join(work, 'accept-order.sql');
    await writeFile(script, pgbenchScript(options.broker));
    const logPrefix = path.join(work, 'txn');
    const args = [
      '-n',
      '-M',
      'prepared',
      '-f',
      script,
      '-c',
      String(clients),
      '-j',
      String(Math.min(2, clients)),
      '-T',
      String(options.durationS),
      '-P',
      '1',
    ];
    args.push('-l', `--log-prefix=${logPrefix}`, fresh.url);
    const { stdout, code } = await new Promise<{ stdout: string; code: number | null }>((resolve, reject) => {
      const child = spawn(pgbench, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
        err += chunk;
        // progress: 3.0 s, 1201.9 tps, lat 13.279 ms stddev 6.126, 0 failed
        for (const match of chunk.matchAll(/progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms/g)) {
          options.onProgress?.(Math.round(Number(match[1])), Number(match[2]));
        }
      });
      child.on('error', reject);
      child.on('exit', (exitCode) =>
        resolve({
          stdout:
            out +
            '\n' +
            err
              .split('\n')
              .filter((l) => !l.startsWith('progress:'))
              .join('\n'),
          code: exitCode,
        }),
      );
    });
    const tps = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout);
    if (code !== 0 || !tps) throw new Error(`pgbench failed (exit ${code}):\n${stdout.trim()}`);
    const processed = Number(/number of transactions actually processed: (\d+)/.exec(stdout)?.[1] ?? 0);
    const failed = Number(/number of failed transactions: (\d+)/.exec(stdout)?.[1] ?? 0);
    // Per-transaction log lines: client_id transaction_no latency_us script_no end_epoch_s end_us
    const done: { endMs: number; ms: number }[] = [];
    for (const file of (await readdir(work)).filter((f) => f.startsWith('txn.'))) {
      for (const line of (await readFile(path.join(work, file), 'utf8')).split('\n')) {
        const fields = line.split(' ').map(Number);
        if (fields.length >= 6 && fields.every(Number.isFinite))
          done.push({ endMs: fields[4]! * 1000 + fields[5]! / 1000, ms: fields[2]! / 1000 });
      }
    }
    const firstEnd = Math.min(...done.map((d) => d.endMs - d.ms));
    const buckets = new SecondBuckets();
    for (const d of done) buckets.add((d.endMs - firstEnd) / 1000, d.ms);
    const series = buckets.series().filter((x) => x.t <= options.durationS);
    return {
      mode: 'distributed',
      engine: `pgbench -M prepared, ${clients} clients, ${Math.min(2, clients)} threads, same PostgreSQL server`,
      serverVersion,
      clients,
      durationS: options.durationS,
      transactions: processed,
      failed,
      perSecond: round(Number(tps[1]), 1),
      latency: summarizeValues(done.map((d) => d.ms)),
      series,
      notes,
    };
  } finally {
    await rm(work, { recursive: true, force: true });
    await fresh.drop();
  }
}

/** Completions counted into one-second windows, each with its own latency histogram. */
class SecondBuckets {
  readonly #buckets: { count: number; histogram: ReturnType<typeof newHistogram> }[] = [];
  readonly #onSecond: ((t: number, count: number) => void) | undefined;

  constructor(onSecond?: (t: number, count: number) => void) {
    this.#onSecond = onSecond;
  }

  add(atS: number, ms: number): void {
    const index = Math.max(0, Math.floor(atS));
    while (this.#buckets.length <= index) {
      const finished = this.#buckets.length;
      if (finished > 0) this.#onSecond?.(finished, this.#buckets[finished - 1]!.count);
      this.#buckets.push({ count: 0, histogram: newHistogram() });
    }
    const bucket = this.#buckets[index]!;
    bucket.count++;
    recordMs(bucket.histogram, ms);
  }

  series(): SecondSample[] {
    return this.#buckets.map((b, i) => {
      const s = summarize(b.histogram);
      return { t: i + 1, accepted: b.count, p50Ms: s.p50Ms, p95Ms: s.p95Ms, p99Ms: s.p99Ms };
    });
  }
}
