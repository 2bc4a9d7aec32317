// The distributed shape under fire, on PostgreSQL and NATS with an HTTP
// payment gateway outside Orderflow, in both of its cuts: HAProxy in front of
// three api processes, two workers and a relay (split), and two node:cluster
// copies that each run every role (combined). Thousands of orders from
// concurrent clients while processes are SIGKILLed; then every promise of the
// contract is checked at quiescence.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import postgres from 'postgres';
import { childPids, freePortRange, startCluster, type Cluster, type ClusterShape } from '../scripts/cluster.ts';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { skipUnlessInstalled } from './support/programs.ts';
import { callApi as call } from './support/http.ts';

const ORDERS = 3_000;
const CLIENTS = 32;
const SKUS = 200;
/** Scarce stock on some SKUs so out_of_stock happens under the kills too. */
const stockOf = (i: number) => (i % 10 === 0 ? 5 : 1_000);

const databaseUrl = requiredServiceUrl('DATABASE_URL');
const brokerUrl = requiredServiceUrl('NATS_URL');
const skipReason =
  databaseUrl === undefined || brokerUrl === undefined
    ? 'set DATABASE_URL and NATS_URL to run the cluster test'
    : skipUnlessInstalled('the cluster test', { haproxy: ['-v'] });

describe('cluster: 3 api + 2 workers + relay behind HAProxy', { skip: skipReason }, () => {
  it('keeps every promise while an api process and a worker are SIGKILLed', { timeout: 300_000 }, () =>
    keepsEveryPromise('split', async (cluster) => {
      await cluster.process('api1').kill();
      await cluster.process('worker1').kill();
      await sleep(500);
      await cluster.process('api1').restart();
      await cluster.process('worker1').restart();
      return 'api1 and worker1 SIGKILLed and restarted';
    }),
  );
});

describe('cluster: 2 node:cluster copies, every role in each', { skip: skipReason }, () => {
  it('keeps every promise while a copy is SIGKILLed and its supervisor replaces it', { timeout: 300_000 }, () =>
    keepsEveryPromise('combined', async (cluster) => {
      const supervisor = cluster.process('all').child.pid!;
      const before = await childPids(supervisor);
      assert.equal(before.length, 2, `two serving copies, found ${before.join(', ')}`);
      process.kill(before[0]!, 'SIGKILL');
      await eventually(
        'the supervisor to start a new copy',
        async () => {
          const now = await childPids(supervisor);
          return now.length === 2 && !now.includes(before[0]!) ? true : undefined;
        },
        30_000,
      );
      return 'one serving copy SIGKILLed and replaced';
    }),
  );
});

/** Places ORDERS orders through the cluster, runs chaos a third of the way in, and checks every promise at quiescence. */
async function keepsEveryPromise(shape: ClusterShape, chaos: (cluster: Cluster) => Promise<string>): Promise<void> {
  const database = await freshPostgresDatabase(databaseUrl!);
  const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-cluster-'));
  const logTail: string[] = [];
  let cluster: Cluster | undefined;
  try {
    // The processes share DATA_DIR, hence the development issuer's key.
    const issuer = await openDevIssuer(dataDir);
    cluster = await startCluster({
      databaseUrl: database.url,
      brokerUrl,
      basePort: await freePortRange(12),
      // Its own stream and consumers: nothing another run left on the broker reaches this cluster.
      isolatedBroker: true,
      shape,
      // Three: HAProxy's server list is generated, not fixed at two.
      apis: 3,
      env: { DATA_DIR: dataDir, LOG_LEVEL: 'warn', PENDING_DEADLINE_MS: '5000' },
      gatewayLatencyMs: 5,
      gatewayRetain: 'all',
      onOutput: (name, line) => {
        if (name === 'haproxy' && !line.includes('ALERT') && !line.includes('WARNING')) return;
        logTail.push(`[${name}] ${line}`);
        if (logTail.length > 200) logTail.shift();
      },
    });
    const admin = await issuer.issue({ sub: 'admin', scope: 'catalog:write orders:read orders:admin' });
    const base = cluster.url;

    for (let i = 0; i < SKUS; i++) {
      const response = await call(base, admin, 'POST', '/v1/products', {
        sku: `SKU-${i}`,
        name: `Item ${i}`,
        priceCents: 100 + i,
        currency: 'EUR',
        stock: stockOf(i),
      });
      assert.equal(response.status, 201, JSON.stringify(response.body));
    }

    const customers = await Promise.all(
      Array.from({ length: 8 }, (_, i) => issuer.issue({ sub: `customer-${i}`, scope: 'orders:write orders:read' })),
    );
    const accepted = new Map<string, string>(); // order id → customer token
    let next = 0;
    let placedAnswers = 0;
    const client = async (clientIndex: number) => {
      const token = customers[clientIndex % customers.length]!;
      while (next < ORDERS) {
        const n = next++;
        const lines = 1 + (n % 3);
        const items = Array.from({ length: lines }, (_, j) => ({
          sku: `SKU-${(n * 7 + j * 13) % SKUS}`,
          quantity: 1 + ((n + j) % 2),
        }));
        const paymentToken = n % 17 === 0 ? 'tok_declined' : n % 11 === 0 ? 'tok_flaky' : 'tok_visa';
        const key = `order-${n}`;
        // A real client retries a failed request with the same key until
        // it gets an answer; that is what makes the kills survivable.
        for (let attempt = 1; ; attempt++) {
          try {
            const response = await call(
              base,
              token,
              'POST',
              '/v1/orders',
              { items, payment: { token: paymentToken } },
              { 'idempotency-key': key },
            );
            if (response.status === 202 || response.status === 200) {
              accepted.set(response.body.id as string, token);
              placedAnswers++;
              break;
            }
            assert.ok(
              response.status === 503 || response.status === 502,
              `order ${n}: unexpected ${response.status} ${JSON.stringify(response.body)}`,
            );
            // Whether an api process or HAProxy answered, the refusal is a problem.
            assert.match(
              String(response.body?.type),
              /^\/problems\/(unavailable|bad-gateway)$/,
              `order ${n}: ${response.status} ${JSON.stringify(response.body)}`,
            );
          } catch (error) {
            if (error instanceof assert.AssertionError) throw error;
          }
          assert.ok(attempt < 50, `order ${n} got no answer after 50 attempts`);
          await sleep(100);
        }
      }
    };

    let chaosDone = '';
    const underFire = async () => {
      // Wait until the load is well under way, then kill.
      await eventually(
        'a third of the orders to be placed',
        async () => (placedAnswers > ORDERS / 3 ? true : undefined),
        120_000,
      );
      chaosDone = await chaos(cluster!);
    };

    await Promise.all([...Array.from({ length: CLIENTS }, (_, i) => client(i)), underFire()]);
    assert.equal(accepted.size, ORDERS, 'every order got an accepted answer (idempotent retries map to one order)');

    const sql = postgres(database.url, { max: 2, onnotice: () => {} });
    try {
      await eventually(
        'every order to be terminal',
        async () => {
          const [row] = await sql`SELECT count(*)::int AS pending FROM orders.orders WHERE status = 'pending'`;
          return row!.pending === 0 ? true : undefined;
        },
        120_000,
      );

      // 3. Every 202 answer can be read back, through the load balancer, and is terminal.
      const statuses = new Map<string, number>();
      const orderTotals = new Map<string, { status: string; totalCents: number }>();
      for (const [id, token] of accepted) {
        const response = await call(base, token, 'GET', `/v1/orders/${id}`);
        assert.equal(response.status, 200, `order ${id} cannot be read back`);
        const status = response.body.status as string;
        assert.ok(['confirmed', 'rejected', 'cancelled'].includes(status), `order ${id} is ${status}`);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        orderTotals.set(id, { status, totalCents: response.body.totalCents as number });
      }
      const orderRows = await sql`SELECT count(*)::int AS n FROM orders.orders`;
      assert.equal(orderRows[0]!.n, ORDERS, 'no order exists that no client was told about');

      // 1. No SKU oversold; available = stock - confirmed.
      for (let i = 0; i < SKUS; i++) {
        const sku = `SKU-${i}`;
        const [sold] = await sql`
          SELECT coalesce(sum(l.quantity), 0)::int AS confirmed
          FROM orders.order_lines l JOIN orders.orders o ON o.id = l.order_id
          WHERE l.sku = ${sku} AND o.status = 'confirmed'`;
        const product = await call(base, admin, 'GET', `/v1/products/${sku}`);
        assert.equal(product.status, 200);
        assert.ok(sold!.confirmed <= product.body.stock, `${sku} oversold: ${sold!.confirmed} > ${product.body.stock}`);
        assert.equal(
          product.body.available,
          product.body.stock - sold!.confirmed,
          `${sku}: available != stock - confirmed`,
        );
      }

      // 2. Exactly one net charge per confirmed order, zero for the rest, counted at the gateway.
      for (const [id, { status, totalCents }] of orderTotals) {
        const { charges, netCents } = cluster.gateway.gateway.netCharged(id);
        if (status === 'confirmed') {
          assert.equal(charges, 1, `confirmed order ${id} has ${charges} charges`);
          assert.equal(netCents, totalCents, `confirmed order ${id} nets ${netCents}, total ${totalCents}`);
        } else {
          assert.equal(netCents, 0, `${status} order ${id} nets ${netCents}`);
        }
      }
      assert.ok(
        (statuses.get('confirmed') ?? 0) > ORDERS / 2,
        `most orders confirm: ${JSON.stringify(Object.fromEntries(statuses))}`,
      );
      assert.ok((statuses.get('rejected') ?? 0) > 0, 'declined cards and scarce SKUs reject some orders');
      process.stdout.write(
        `# cluster (${shape}): ${ORDERS} orders, ${JSON.stringify(Object.fromEntries(statuses))}, ${chaosDone}\n`,
      );
    } finally {
      await sql.end();
    }
  } catch (error) {
    process.stderr.write(`cluster output (last lines):\n${logTail.join('\n')}\n`);
    throw error;
  } finally {
    await cluster?.stop();
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}
