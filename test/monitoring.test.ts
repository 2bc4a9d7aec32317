// The monitoring of deploy/ against the real thing: the machine's Prometheus
// and Alertmanager, with the configuration and rules of deploy/prometheus,
// scraping a running cluster (two api processes behind HAProxy, a worker
// and a relay on PostgreSQL and NATS, Redis, and an `orderflow gateway`
// process). Every target is up with its role, every rule evaluates, every
// dashboard query returns data, and stopping the payment gateway fires the
// breaker alert all the way to an Alertmanager webhook. Scrapes and rule
// evaluations run every second (scripts/monitoring.ts); nothing waits a
// fixed time: each step polls Prometheus until its deadline.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { checkoutDashboard, dashboardQueries, dashboards, instantiate } from '../scripts/dashboards.ts';
import { driveCheckout, startMonitoredCluster, type MonitoredCluster } from '../scripts/monitoring.ts';
import { renderDashboard } from '../scripts/render-dashboard.ts';
import { eventually, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { installed, skipUnlessInstalled } from './support/programs.ts';
import { loadRules } from './support/promql.ts';

const databaseUrl = requiredServiceUrl('DATABASE_URL');
const natsUrl = requiredServiceUrl('NATS_URL');
const redisUrl = requiredServiceUrl('REDIS_URL');
// Debian names the Alertmanager binary prometheus-alertmanager.
const alertmanager = installed('alertmanager', ['--version']) ? 'alertmanager' : 'prometheus-alertmanager';
const chromium = skipUnlessInstalled('drawing the checkout dashboard', { chromium: ['--version'] });
const skip =
  databaseUrl === undefined || natsUrl === undefined || redisUrl === undefined
    ? 'set DATABASE_URL, NATS_URL and REDIS_URL to run the monitoring test'
    : skipUnlessInstalled('the monitoring test', {
        prometheus: ['--version'],
        [alertmanager]: ['--version'],
        haproxy: ['-v'],
      });

interface Target {
  health: string;
  labels: Record<string, string>;
  lastError: string;
}

interface RuleGroup {
  name: string;
  file: string;
  rules: { name: string; type: 'alerting' | 'recording'; health: string; lastError?: string }[];
}

interface Alert {
  labels: Record<string, string>;
  state: 'pending' | 'firing';
}

describe('monitoring: Prometheus and Alertmanager on a running cluster', { skip, timeout: 240_000 }, () => {
  let stack: MonitoredCluster;
  let database: { url: string; drop: () => Promise<void> };
  let dataDir: string;
  let started: number;
  const log: string[] = [];

  before(async () => {
    database = await freshPostgresDatabase(databaseUrl!);
    dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-monitoring-'));
    started = Date.now() / 1000;
    stack = await startMonitoredCluster({
      databaseUrl: database.url,
      brokerUrl: natsUrl,
      redisUrl,
      dataDir,
      prometheusBinary: 'prometheus',
      alertmanagerBinary: alertmanager,
      onOutput: (name, line) => {
        log.push(`[${name}] ${line}`);
        if (log.length > 200) log.shift();
      },
    });
  });

  after(async () => {
    await stack?.stop();
    await database?.drop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  /** Fails with the processes' last lines, which say why. */
  const withLog = async <T>(work: () => Promise<T>): Promise<T> => {
    try {
      return await work();
    } catch (error) {
      (error as Error).message += `\nlast output:\n${log.slice(-40).join('\n')}`;
      throw error;
    }
  };

  it('scrapes every process, each with its role', () =>
    withLog(async () => {
      const targets = await eventually(
        'every target to be scraped successfully',
        async () => {
          const { activeTargets } = await stack.prometheus.api<{ activeTargets: Target[] }>('targets', {
            state: 'active',
          });
          return activeTargets.length === 5 && activeTargets.every((t) => t.health === 'up')
            ? activeTargets
            : undefined;
        },
        30_000,
      );
      const roles = targets.map((t) => `${t.labels.job}/${t.labels.role}`).sort();
      assert.deepEqual(roles, ['haproxy/lb', 'orderflow/api', 'orderflow/api', 'orderflow/relay', 'orderflow/worker']);
      const up = await stack.prometheus.query('sum by (role) (up{job="orderflow"})');
      assert.deepEqual(Object.fromEntries(up.map((s) => [s.metric.role, s.value[1]])), {
        api: '2',
        relay: '1',
        worker: '1',
      });
    }));

  it('loads every rule of deploy/prometheus, and every rule evaluates without error', () =>
    withLog(async () => {
      const expected = await loadRules();
      const groups = await eventually(
        'every rule to have been evaluated',
        async () => {
          const { groups } = await stack.prometheus.api<{ groups: RuleGroup[] }>('rules');
          const rules = groups.flatMap((g) => g.rules);
          return rules.length === expected.length && rules.every((r) => r.health !== 'unknown') ? groups : undefined;
        },
        30_000,
      );
      assert.deepEqual(groups.map((g) => g.name).sort(), [...new Set(expected.map((r) => r.group))].sort());
      assert.deepEqual(
        groups.flatMap((g) => g.rules.map((r) => r.name)).sort(),
        expected.map((r) => r.alert ?? r.record).sort(),
      );
      for (const rule of groups.flatMap((g) => g.rules))
        assert.equal(rule.health, 'ok', `${rule.name}: ${rule.lastError}`);
    }));

  it('every dashboard query returns data from the cluster under load', () =>
    withLog(async () => {
      const trafficStarted = Date.now() / 1000;
      const accepted = await driveCheckout(stack.cluster.url, stack.issuer, { orders: 300 });
      assert.equal(accepted.length, 300);
      // Everything settled, as Prometheus sees it: no order pending, and every payment outcome timed.
      await eventually(
        'every order to settle, as scraped',
        async () => {
          const [pending] = await stack.prometheus.query('max(orderflow_pending_orders)');
          const [settled] = await stack.prometheus.query('sum(orderflow_order_settle_duration_seconds_count)');
          return pending?.value[1] === '0' && settled?.value[1] === '300' ? true : undefined;
        },
        60_000,
      );
      const now = Date.now() / 1000;
      const empty: string[] = [];
      for (const { file, dashboard } of dashboards()) {
        for (const query of dashboardQueries(dashboard)) {
          // Windows of 20 s: several scrapes, and short enough to see the load.
          const series = await stack.prometheus.queryRange(instantiate(query.expr, 5), trafficStarted - 5, now, 1);
          const finite = series.some((s) => s.values.some(([, v]) => Number.isFinite(Number(v))));
          if (!finite) empty.push(`${path.basename(file)} "${query.panel}" ${query.refId}: ${query.expr}`);
        }
      }
      assert.deepEqual(empty, [], 'queries that returned no data');
      // Nothing is broken, so no alert about a broken part may fire. The
      // latency alerts (the two SLOs, the event loop) are left out: how fast
      // a shared 2-core machine answers is not for a test to assert.
      const timing = new Set([
        'OrderflowAcceptLatencyBudgetBurn',
        'OrderflowSettleBudgetBurn',
        'OrderflowEventLoopLagHigh',
      ]);
      const { alerts } = await stack.prometheus.api<{ alerts: Alert[] }>('alerts');
      const firing = alerts
        .filter((a) => a.state === 'firing' && !timing.has(a.labels.alertname!))
        .map((a) => a.labels.alertname);
      assert.deepEqual(firing, [], 'a healthy cluster fires no alert about a broken part');
    }));

  it('stopping the payment gateway fires OrderflowPaymentGatewayCircuitOpen, and Alertmanager pages through the webhook', () =>
    withLog(async () => {
      await stack.stopGateway();
      // Charges now fail; the worker's breaker opens after a few of them.
      const placed = await driveCheckout(stack.cluster.url, stack.issuer, {
        orders: 20,
        clients: 2,
        skuPrefix: 'OUTAGE',
      });
      assert.equal(placed.length, 20);
      const worker = stack.cluster.process('worker1');
      const alert = await eventually(
        'the breaker alert to fire in Prometheus',
        async () => {
          const { alerts } = await stack.prometheus.api<{ alerts: Alert[] }>('alerts');
          return alerts.find(
            (a) => a.labels.alertname === 'OrderflowPaymentGatewayCircuitOpen' && a.state === 'firing',
          );
        },
        60_000,
      );
      assert.equal(alert.labels.instance, `127.0.0.1:${worker.port}`);
      assert.equal(alert.labels.severity, 'page');
      const notification = await eventually(
        'Alertmanager to deliver the page',
        async () =>
          stack.notifications.find(
            (n) =>
              n.status === 'firing' &&
              n.alerts.some((a) => a.labels.alertname === 'OrderflowPaymentGatewayCircuitOpen'),
          ),
        60_000,
      );
      assert.equal(notification.receiver, 'page');
      const delivered = notification.alerts.find((a) => a.labels.alertname === 'OrderflowPaymentGatewayCircuitOpen')!;
      assert.equal(delivered.labels.instance, `127.0.0.1:${worker.port}`);
      assert.match(delivered.annotations.summary!, /circuit breaker of 127\.0\.0\.1:\d+ is open/);
      assert.equal(delivered.annotations.runbook, 'docs/operations.md#orderflowpaymentgatewaycircuitopen');
    }));

  it(
    'draws the checkout dashboard from what Prometheus recorded (scripts/render-dashboard.ts)',
    { skip: chromium },
    () =>
      withLog(async () => {
        const out = path.join(dataDir, 'checkout.png');
        await renderDashboard(checkoutDashboard(), stack.prometheus, { start: started, end: Date.now() / 1000, out });
        const png = await readFile(out);
        assert.equal(png.subarray(1, 4).toString('latin1'), 'PNG');
        // IHDR: width and height, big-endian, at bytes 16 and 20.
        assert.equal(png.readUInt32BE(16), 1600);
        assert.ok(png.readUInt32BE(20) > 1500, 'every row of panels is drawn');
      }),
  );
});
