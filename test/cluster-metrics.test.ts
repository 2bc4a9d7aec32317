// /metrics of the combined shape: ROLE=all with WEB_CONCURRENCY=2, two
// node:cluster copies sharing one port, so each scrape lands on one copy. It
// must still answer for the whole process: every copy's counters added up,
// the same total whichever copy was asked, and database-wide gauges not
// counted twice.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { describe, it } from 'node:test';
import { childPids, freePortRange, startCluster } from '../scripts/cluster.ts';
import { freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';

const databaseUrl = requiredServiceUrl('DATABASE_URL');

/** GET on a connection of its own, so node:cluster hands each request to the next copy. */
function get(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    request(url, { agent: false, headers: { connection: 'close' } }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    })
      .on('error', reject)
      .end();
  });
}

function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('metrics of node:cluster copies', { skip: databaseUrl === undefined && 'set DATABASE_URL' }, () => {
  it(
    'every scrape adds up both copies: exact counters whichever copy answers, shared gauges not doubled',
    { timeout: 180_000 },
    async () => {
      const database = await freshPostgresDatabase(databaseUrl!);
      const cluster = await startCluster({
        databaseUrl: database.url,
        shape: 'combined',
        copies: 2,
        basePort: await freePortRange(8),
        env: { DATABASE_POOL_SIZE: '3' },
        readyTimeoutMs: 120_000,
        onOutput: () => {},
      });
      try {
        const copies = await childPids(cluster.process('all').child.pid!);
        assert.equal(copies.length, 2, 'two serving copies');
        const health = `${cluster.url}/healthz`;
        // waitReady's /readyz calls went to one copy or both: count from here on.
        const before =
          sample(
            (await get(`${cluster.url}/metrics`)).body,
            'orderflow_http_requests_total{method="GET",route="/healthz",status="200"}',
          ) ?? 0;
        for (let i = 0; i < 30; i++) assert.equal((await get(health)).status, 200);

        for (let scrape = 0; scrape < 6; scrape++) {
          const { status, body } = await get(`${cluster.url}/metrics`);
          assert.equal(status, 200);
          assert.equal(sample(body, 'orderflow_cluster_copies_scraped'), 2, 'both copies answered');
          assert.equal(sample(body, 'orderflow_cluster_copies'), 2);
          assert.equal(
            sample(body, 'orderflow_http_requests_total{method="GET",route="/healthz",status="200"}'),
            before + 30,
            `scrape ${scrape}: all 30 requests, whichever copy served them`,
          );
          // Per copy, summed: both pools.
          assert.equal(sample(body, 'orderflow_db_pool_size'), 6);
          // The same fact in both copies: once, not twice.
          assert.equal(sample(body, 'orderflow_ready'), 1);
          assert.equal(sample(body, 'orderflow_database_circuit_open'), 0);
          assert.equal(sample(body, 'orderflow_backlog_up{source="database"}'), 1);
          assert.match(body, /^orderflow_info\{[^}]*database="postgres"[^}]*\} 1$/m);
        }
      } finally {
        await cluster.stop();
        await database.drop();
      }
    },
  );
});
