// The load generator, run as a child process by load.ts. It speaks plain HTTP
// through an undici Pool: autocannon would need a setupRequest hook per
// request anyway (a fresh Idempotency-Key and body every time, the same key
// again on a retry), and with our own loops the flash sale can model buyers
// who stop when they see "out of stock" — a fixed request rate cannot.
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import type { ChildMessage, LoadResult, LoadSpec, LoadTick, ParentMessage } from './load.ts';
import { newHistogram, recordMs, summarize } from './stats.ts';

const MAX_ATTEMPTS = 5;

interface Answer {
  status: number;
  body: any;
}

function send(message: ChildMessage): void {
  process.send?.(message);
}

async function run(spec: LoadSpec): Promise<LoadResult> {
  const origin = new URL(spec.url).origin;
  const pool = new Pool(origin, {
    connections: spec.connections,
    pipelining: 1,
    headersTimeout: 60_000,
    bodyTimeout: 60_000,
  });
  const total = newHistogram();
  let window = newHistogram();
  const counts = { accepted: 0, rejected: 0, failed: 0, retries: 0 };
  let windowCounts = { accepted: 0, rejected: 0, failed: 0 };
  const errors: Record<string, number> = {};
  const acceptedIds: string[] = [];
  const ticks: LoadTick[] = [];
  let lastReservedAtMs: number | undefined;
  let firstOutOfStockAtMs: number | undefined;
  let stopped = false;
  let keySeq = 0;

  const startedAtEpochMs = Date.now();
  const start = performance.now();
  const deadline = start + spec.durationMs;
  process.on('message', (message: ParentMessage) => {
    if (message.kind === 'stop') stopped = true;
  });

  const flush = () => {
    // Numbered, not measured: a late timer must not give two windows one second.
    const t = ticks.length + 1;
    const s = summarize(window);
    const tick: LoadTick = { t, ...windowCounts, p50Ms: s.p50Ms, p95Ms: s.p95Ms, p99Ms: s.p99Ms };
    ticks.push(tick);
    send({ kind: 'tick', tick });
    window = newHistogram();
    windowCounts = { accepted: 0, rejected: 0, failed: 0 };
  };
  const ticker = setInterval(flush, 1000);

  const place = async (token: string, items: { sku: string; quantity: number }[]): Promise<Answer | undefined> => {
    const key = `${spec.keyPrefix}-${process.pid}-${keySeq++}`;
    const body = JSON.stringify({ items, payment: { token: 'tok_visa' } });
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const began = performance.now();
      try {
        const response = await pool.request({
          origin,
          path: '/v1/orders',
          method: 'POST',
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'idempotency-key': key },
          body,
        });
        const text = await response.body.text();
        if (response.statusCode >= 200 && response.statusCode < 300) {
          const ms = performance.now() - began;
          recordMs(total, ms);
          recordMs(window, ms);
          return { status: response.statusCode, body: JSON.parse(text) };
        }
        errors[String(response.statusCode)] = (errors[String(response.statusCode)] ?? 0) + 1;
        // A 4xx other than 429 is the benchmark's own bug: retrying cannot help.
        if (response.statusCode < 500 && response.statusCode !== 429) return undefined;
      } catch (error) {
        const code = (error as { code?: string }).code ?? (error as Error).name;
        errors[code] = (errors[code] ?? 0) + 1;
      }
      if (attempt < MAX_ATTEMPTS) {
        counts.retries++;
        // The same key again: the answer may have been lost after the commit.
        await sleep(20 * attempt);
      }
    }
    return undefined;
  };

  const over = () => stopped || performance.now() >= deadline;

  /** One GET, counted like an accepted order when it answers 2xx (reads are not retried). */
  const get = async (token: string, requestPath: string): Promise<void> => {
    const began = performance.now();
    try {
      const response = await pool.request({
        origin,
        path: requestPath,
        method: 'GET',
        headers: { authorization: `Bearer ${token}` },
      });
      await response.body.text();
      if (response.statusCode >= 200 && response.statusCode < 300) {
        const ms = performance.now() - began;
        recordMs(total, ms);
        recordMs(window, ms);
        counts.accepted++;
        windowCounts.accepted++;
        return;
      }
      errors[String(response.statusCode)] = (errors[String(response.statusCode)] ?? 0) + 1;
    } catch (error) {
      const code = (error as { code?: string }).code ?? (error as Error).name;
      errors[code] = (errors[code] ?? 0) + 1;
    }
    counts.failed++;
    windowCounts.failed++;
  };

  const record = (answer: Answer | undefined): 'pending' | 'rejected' | 'failed' => {
    if (!answer) {
      counts.failed++;
      windowCounts.failed++;
      return 'failed';
    }
    if (answer.status === 202) acceptedIds.push(answer.body.id);
    if (answer.body.status === 'pending' || answer.body.status === 'confirmed') {
      counts.accepted++;
      windowCounts.accepted++;
      return 'pending';
    }
    counts.rejected++;
    windowCounts.rejected++;
    return 'rejected';
  };

  const workload = spec.workload;
  let loops: Promise<void>[];
  if (workload.kind === 'throughput') {
    const { skus } = workload;
    loops = Array.from({ length: spec.connections }, async (_, i) => {
      const token = spec.tokens[i % spec.tokens.length]!;
      while (!over()) {
        const lines = randomInt(1, 4);
        const chosen = new Set<string>();
        while (chosen.size < lines) chosen.add(skus[randomInt(skus.length)]!);
        record(
          await place(
            token,
            [...chosen].map((sku) => ({ sku, quantity: randomInt(1, 4) })),
          ),
        );
      }
    });
  } else if (workload.kind === 'reads') {
    const { paths } = workload;
    loops = Array.from({ length: spec.connections }, async (_, i) => {
      const token = spec.tokens[i % spec.tokens.length]!;
      while (!over()) await get(token, paths[randomInt(paths.length)]!);
    });
  } else {
    const { sku } = workload;
    let soldOut = false;
    loops = spec.tokens.map(async (token) => {
      while (!over() && !soldOut) {
        const outcome = record(await place(token, [{ sku, quantity: 1 }]));
        const at = performance.now() - start;
        if (outcome === 'pending') lastReservedAtMs = Math.max(lastReservedAtMs ?? 0, at);
        if (outcome === 'rejected') {
          firstOutOfStockAtMs ??= at;
          // Nothing is ever released in this scenario (every card succeeds),
          // so one out-of-stock answer means the sale is over for everyone.
          soldOut = true;
        }
      }
    });
  }
  await Promise.all(loops);
  const elapsedMs = performance.now() - start;
  clearInterval(ticker);
  flush();
  await pool.close();
  const cpu = process.cpuUsage();
  return {
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    startedAtEpochMs,
    elapsedMs,
    ...counts,
    errors,
    latency: summarize(total),
    ticks,
    acceptedIds,
    lastReservedAtMs,
    firstOutOfStockAtMs,
  };
}

process.once('message', (message: ParentMessage) => {
  if (message.kind !== 'start') return;
  run(message.spec).then(
    (result) => send({ kind: 'done', result }),
    (error: unknown) =>
      send({ kind: 'error', message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
  );
});
