// /metrics under node:cluster. The copies of one process (WEB_CONCURRENCY > 1)
// share its port and the kernel hands each connection to one of them, so a
// scrape that reached a random copy would see its counters only: the
// series would jump between copies and rate() would read the jumps as
// counter resets. Instead, the copy that is scraped asks the supervisor,
// which collects every copy's registry and adds them up with prom-client's
// AggregatorRegistry (counters and histograms sum; each gauge has its
// aggregator in metrics.ts). A copy that does not answer in time is left
// out of that scrape, and says so in orderflow_cluster_copies_scraped.
import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type Registry } from 'prom-client';

/** One copy's registry as getMetricsAsJSON gives it (what AggregatorRegistry.aggregate adds up). */
type CopyMetrics = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

const SCRAPE = 'orderflow:scrape';
const SCRAPED = 'orderflow:scraped';
const COLLECT = 'orderflow:collect';
const COLLECTED = 'orderflow:collected';

/** How long the supervisor waits for each copy's figures (their own reads are bounded by 0.5 s). */
const COLLECT_TIMEOUT_MS = 2_000;

interface Message {
  type: string;
  id: number;
  metrics?: CopyMetrics;
  text?: string;
  error?: string;
}

const isMessage = (value: unknown): value is Message =>
  typeof value === 'object' &&
  value !== null &&
  typeof (value as Message).type === 'string' &&
  typeof (value as Message).id === 'number';

/**
 * In the supervisor: answers the copies' scrapes with the sum of every
 * copy's metrics. Call once, before forking.
 */
export function aggregateCopiesMetrics(): void {
  let next = 0;
  const waiting = new Map<number, { copy: Worker; resolve(metrics: CopyMetrics | undefined): void }>();
  cluster.on('message', (copy, message: unknown) => {
    if (!isMessage(message)) return;
    if (message.type === COLLECTED) {
      const pending = waiting.get(message.id);
      if (pending?.copy === copy) pending.resolve(message.metrics);
      return;
    }
    if (message.type !== SCRAPE) return;
    const copies = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && w.isConnected());
    const collect = (target: Worker) =>
      new Promise<CopyMetrics | undefined>((resolve) => {
        const id = next++;
        const timer = setTimeout(() => finish(undefined), COLLECT_TIMEOUT_MS);
        const finish = (metrics: CopyMetrics | undefined) => {
          clearTimeout(timer);
          waiting.delete(id);
          resolve(metrics);
        };
        waiting.set(id, { copy: target, resolve: finish });
        target.send({ type: COLLECT, id });
      });
    void Promise.all(copies.map(collect))
      .then(async (answers) => {
        const collected = answers.filter((a): a is CopyMetrics => a !== undefined);
        const registry = AggregatorRegistry.aggregate(collected);
        return `${await registry.metrics()}${copiesScraped(collected.length, copies.length)}`;
      })
      .then(
        (text) => copy.isConnected() && copy.send({ type: SCRAPED, id: message.id, text }),
        (error: unknown) =>
          copy.isConnected() && copy.send({ type: SCRAPED, id: message.id, error: (error as Error).message }),
      );
  });
}

function copiesScraped(answered: number, copies: number): string {
  return [
    '# HELP orderflow_cluster_copies_scraped The serving copies (node:cluster, WEB_CONCURRENCY) whose figures this scrape adds up, out of orderflow_cluster_copies',
    '# TYPE orderflow_cluster_copies_scraped gauge',
    `orderflow_cluster_copies_scraped ${answered}`,
    '# HELP orderflow_cluster_copies The serving copies running when this scrape was taken',
    '# TYPE orderflow_cluster_copies gauge',
    `orderflow_cluster_copies ${copies}`,
    '',
  ].join('\n');
}

/**
 * In a copy: answers the supervisor's collections with this copy's registry
 * (after refresh, which sets the gauges read at scrape time), and returns
 * the function that serves a scrape: every copy's metrics, summed.
 */
export function copyMetrics(registry: Registry, refresh: () => Promise<void>): () => Promise<string> {
  let next = 0;
  const waiting = new Map<number, { resolve(text: string): void; reject(error: Error): void }>();
  process.on('message', (message: unknown) => {
    if (!isMessage(message)) return;
    if (message.type === COLLECT) {
      void refresh()
        .then(() => registry.getMetricsAsJSON())
        .then(
          (metrics) => process.send?.({ type: COLLECTED, id: message.id, metrics }),
          () => process.send?.({ type: COLLECTED, id: message.id }),
        );
    } else if (message.type === SCRAPED) {
      const pending = waiting.get(message.id);
      waiting.delete(message.id);
      if (message.text !== undefined) pending?.resolve(message.text);
      else
        pending?.reject(
          new Error(`the supervisor could not add up the copies' metrics: ${message.error ?? 'no answer'}`),
        );
    }
  });
  return () =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      process.send?.({ type: SCRAPE, id });
    });
}
