import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { pino } from 'pino';
import { createMetrics, readAtScrape } from './metrics.ts';

const silent = pino({ level: 'silent' });

function sample(text: string, name: string): string | undefined {
  return text
    .split('\n')
    .find((line) => line.startsWith(`${name} `))
    ?.slice(name.length + 1);
}

describe('readAtScrape', () => {
  it('reports readiness and the pending orders, reading them once per scrape', async () => {
    const metrics = createMetrics();
    let reads = 0;
    readAtScrape(
      metrics,
      {
        ready: async () => true,
        pendingOrders: async () => (reads++, { count: 7, overdue: 2, oldestAgeSeconds: 93.5 }),
      },
      silent,
    );
    const text = await metrics.registry.metrics();
    assert.equal(sample(text, 'orderflow_ready'), '1');
    assert.equal(sample(text, 'orderflow_pending_orders'), '7');
    assert.equal(sample(text, 'orderflow_pending_orders_overdue'), '2');
    assert.equal(sample(text, 'orderflow_pending_order_oldest_age_seconds'), '93.5');
    assert.equal(reads, 1, 'three gauges, one reading');
    await metrics.registry.metrics();
    assert.equal(reads, 2, 'the next scrape reads again');
  });

  it('answers within its bound when the database does not: not ready, pending orders left out', async () => {
    const metrics = createMetrics();
    const never = new Promise<never>(() => {});
    readAtScrape(metrics, { ready: () => never, pendingOrders: () => never }, silent, 50);
    const started = performance.now();
    const text = await metrics.registry.metrics();
    assert.ok(performance.now() - started < 5_000, 'the scrape did not wait for the database');
    assert.equal(sample(text, 'orderflow_ready'), '0');
    assert.equal(sample(text, 'orderflow_pending_orders'), undefined);
    assert.match(text, /# TYPE orderflow_pending_orders gauge/);
  });

  it('reads not ready when the check fails', async () => {
    const metrics = createMetrics();
    readAtScrape(
      metrics,
      { ready: () => Promise.reject(new Error('down')), pendingOrders: () => Promise.reject(new Error('down')) },
      silent,
    );
    const text = await metrics.registry.metrics();
    assert.equal(sample(text, 'orderflow_ready'), '0');
    assert.equal(sample(text, 'orderflow_pending_order_oldest_age_seconds'), undefined);
  });
});
