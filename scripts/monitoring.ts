// Prometheus and Alertmanager for a running Orderflow cluster, from the
// configuration in deploy/prometheus, each a private process on a free port
// with its data in a temporary directory; and such a cluster with its own
// `orderflow gateway` process, which can be stopped to make an outage. The
// monitoring test and scripts/render-dashboard.ts use it; to watch `npm run
// cluster` by hand, run Prometheus on deploy/prometheus/prometheus.yml as
// it is.
//
// Time runs faster here than in production: targets are scraped and rules
// evaluated every second instead of every 15 s, and each alert's `for`
// shrinks by the same factor, so an alert fires within seconds of its
// condition. The expressions themselves are unchanged; the `for` durations
// are covered by the promtool unit tests (deploy/prometheus/tests).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import { openDevIssuer, type DevIssuer } from '../src/identity/dev-issuer.ts';
import { freePort } from '../test/support/programs.ts';
import { freePortRange, startCluster, type Cluster } from './cluster.ts';
import { callApi } from '../test/support/http.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PROMETHEUS_DIR = path.join(ROOT, 'deploy', 'prometheus');
const MAIN = path.join(ROOT, 'src', 'main.ts');
/** Production scrapes every 15 s; here every second. */
const SPEEDUP = 15;

export interface ScrapeTarget {
  /** host:port serving /metrics. */
  address: string;
  /** The `role` label: api, worker, relay or all (job orderflow), lb (job haproxy). */
  role: string;
}

export interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface RangeSeries {
  metric: Record<string, string>;
  values: [number, string][];
}

export interface Prometheus {
  readonly url: string;
  /** GET /api/v1/<path>: the `data` of a success answer; throws with Prometheus' error otherwise. */
  api<T>(apiPath: string, params?: Record<string, string>): Promise<T>;
  query(expr: string): Promise<Sample[]>;
  queryRange(expr: string, startSeconds: number, endSeconds: number, stepSeconds: number): Promise<RangeSeries[]>;
  stop(): Promise<void>;
}

export interface Alertmanager {
  readonly url: string;
  stop(): Promise<void>;
}

/**
 * Starts Prometheus with deploy/prometheus/prometheus.yml and its rules,
 * scraping `targets` (Orderflow processes as job orderflow, HAProxy as job
 * haproxy), and sending alerts to `alertmanagerUrl` when given. Resolves
 * once its API answers.
 */
export async function startPrometheus(options: {
  binary: string;
  targets: ScrapeTarget[];
  alertmanagerUrl?: string;
  onOutput?: (line: string) => void;
}): Promise<Prometheus> {
  const dir = await mkdtemp(path.join(tmpdir(), 'orderflow-prometheus-'));
  try {
    const config = parseYaml(await readFile(path.join(PROMETHEUS_DIR, 'prometheus.yml'), 'utf8')) as PrometheusConfig;
    config.global.scrape_interval = '1s';
    config.global.evaluation_interval = '1s';
    // The rule files, with every `for` shortened like the intervals.
    const ruleFiles: string[] = [];
    for (const file of (await readdir(path.join(PROMETHEUS_DIR, 'rules'))).filter((f) => f.endsWith('.yml'))) {
      const rules = parseYaml(await readFile(path.join(PROMETHEUS_DIR, 'rules', file), 'utf8')) as {
        groups: { rules: { for?: string }[] }[];
      };
      for (const group of rules.groups)
        for (const rule of group.rules)
          if (rule.for) rule.for = `${Math.max(1, Math.round(seconds(rule.for) / SPEEDUP))}s`;
      await writeFile(path.join(dir, file), toYaml(rules));
      ruleFiles.push(path.join(dir, file));
    }
    config.rule_files = ruleFiles;
    config.alerting = options.alertmanagerUrl
      ? { alertmanagers: [{ static_configs: [{ targets: [new URL(options.alertmanagerUrl).host] }] }] }
      : undefined;
    for (const job of config.scrape_configs) {
      const group = (t: ScrapeTarget) => (job.job_name === 'haproxy' ? t.role === 'lb' : t.role !== 'lb');
      const file = path.join(dir, `${job.job_name}-targets.yml`);
      await writeFile(
        file,
        toYaml(options.targets.filter(group).map((t) => ({ targets: [t.address], labels: { role: t.role } }))),
      );
      job.file_sd_configs = [{ files: [file], refresh_interval: '1s' }];
    }
    await writeFile(path.join(dir, 'prometheus.yml'), toYaml(config));

    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = spawn(
      options.binary,
      [
        `--config.file=${path.join(dir, 'prometheus.yml')}`,
        `--storage.tsdb.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    forwardOutput(child, options.onOutput);
    const api = async <T>(apiPath: string, params: Record<string, string> = {}): Promise<T> => {
      const response = await fetch(`${url}/api/v1/${apiPath}?${new URLSearchParams(params).toString()}`);
      const body = (await response.json()) as { status: string; data: T; error?: string; errorType?: string };
      if (body.status !== 'success') throw new Error(`Prometheus ${apiPath}: ${body.errorType}: ${body.error}`);
      return body.data;
    };
    await waitFor(child, 'Prometheus', async () => (await fetch(`${url}/-/ready`)).status === 200);
    return {
      url,
      api,
      query: async (expr) => (await api<{ result: Sample[] }>('query', { query: expr })).result,
      queryRange: async (expr, start, end, step) =>
        (
          await api<{ result: RangeSeries[] }>('query_range', {
            query: expr,
            start: String(start),
            end: String(end),
            step: String(step),
          })
        ).result,
      stop: async () => {
        await terminate(child);
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Starts Alertmanager with deploy/prometheus/alertmanager.yml, every
 * receiver's webhook pointed at webhookUrl (its path keeps the receiver's
 * name: /page, /ticket) and the grouping delays shortened like the rules'.
 */
export async function startAlertmanager(options: {
  binary: string;
  webhookUrl: string;
  onOutput?: (line: string) => void;
}): Promise<Alertmanager> {
  const dir = await mkdtemp(path.join(tmpdir(), 'orderflow-alertmanager-'));
  try {
    const config = parseYaml(
      await readFile(path.join(PROMETHEUS_DIR, 'alertmanager.yml'), 'utf8'),
    ) as AlertmanagerConfig;
    config.route.group_wait = '1s';
    config.route.group_interval = '1s';
    for (const receiver of config.receivers) {
      for (const webhook of receiver.webhook_configs ?? [])
        webhook.url = new URL(`/${receiver.name}`, options.webhookUrl).href;
    }
    await writeFile(path.join(dir, 'alertmanager.yml'), toYaml(config));
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = spawn(
      options.binary,
      [
        `--config.file=${path.join(dir, 'alertmanager.yml')}`,
        `--storage.path=${path.join(dir, 'data')}`,
        `--web.listen-address=127.0.0.1:${port}`,
        // One instance, no gossip port to collide with anything.
        '--cluster.listen-address=',
        '--log.level=warn',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    forwardOutput(child, options.onOutput);
    await waitFor(child, 'Alertmanager', async () => (await fetch(`${url}/-/ready`)).status === 200);
    return {
      url,
      stop: async () => {
        await terminate(child);
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

interface PrometheusConfig {
  global: Record<string, string>;
  rule_files: string[];
  alerting?: unknown;
  scrape_configs: { job_name: string; file_sd_configs: { files: string[]; refresh_interval?: string }[] }[];
}

interface AlertmanagerConfig {
  route: Record<string, unknown>;
  receivers: { name: string; webhook_configs?: { url: string }[] }[];
}

/** A Prometheus duration (1h30m, 2m, 45s) in seconds. */
function seconds(duration: string): number {
  const units: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3_600, d: 86_400, w: 604_800, y: 31_536_000 };
  let total = 0;
  for (const [, amount, unit] of duration.matchAll(/(\d+)(ms|[smhdwy])/g)) total += Number(amount) * units[unit!]!;
  return total;
}

function forwardOutput(child: ChildProcess, onOutput: ((line: string) => void) | undefined): void {
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) if (line.trim() !== '') onOutput?.(line);
    });
  }
}

async function waitFor(
  child: ChildProcess,
  name: string,
  ready: () => Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let spawnError: Error | undefined;
  child.once('error', (error) => (spawnError = error));
  for (;;) {
    if (spawnError) throw new Error(`${name} could not start: ${spawnError.message}`);
    if (child.exitCode !== null) throw new Error(`${name} exited with code ${child.exitCode} while starting`);
    if (await ready().catch(() => false)) return;
    if (Date.now() > deadline) {
      await terminate(child);
      throw new Error(`${name} was not ready after ${timeoutMs} ms`);
    }
    await sleep(100);
  }
}

async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** What Alertmanager posted to a webhook receiver (its webhook payload, version 4). */
export interface Notification {
  receiver: string;
  status: 'firing' | 'resolved';
  alerts: { status: string; labels: Record<string, string>; annotations: Record<string, string> }[];
}

export interface MonitoredCluster {
  cluster: Cluster;
  /** Signs tokens every process of the cluster accepts. */
  issuer: DevIssuer;
  /** The `orderflow gateway` process the workers charge through. */
  gatewayUrl: string;
  prometheus: Prometheus;
  /** Undefined when started without an Alertmanager binary. */
  alertmanager: Alertmanager | undefined;
  /** Every notification Alertmanager delivered, in order. */
  notifications: Notification[];
  /** SIGKILLs the payment gateway: the workers' calls are refused from now on. */
  stopGateway(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * A split cluster (two api processes behind HAProxy, a worker and, with a
 * broker, a relay) charging through its own `orderflow gateway` process,
 * scraped by Prometheus, which alerts through Alertmanager to a webhook
 * served here.
 */
export async function startMonitoredCluster(options: {
  databaseUrl: string;
  brokerUrl?: string;
  redisUrl?: string;
  dataDir: string;
  prometheusBinary: string;
  alertmanagerBinary?: string;
  onOutput?: (process: string, line: string) => void;
}): Promise<MonitoredCluster> {
  const output = options.onOutput ?? ((name: string, line: string) => process.stderr.write(`[${name}] ${line}\n`));
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const stop of stops.splice(0).reverse()) await stop();
  };
  try {
    const notifications: Notification[] = [];
    const webhook = createHttpServer((request, response) => {
      let body = '';
      request.setEncoding('utf8');
      request.on('data', (chunk: string) => (body += chunk));
      request.on('end', () => {
        try {
          notifications.push(JSON.parse(body) as Notification);
        } catch (error) {
          output('webhook', `not a JSON notification: ${(error as Error).message}`);
        }
        response.end();
      });
    });
    await new Promise<void>((resolve) => webhook.listen(0, '127.0.0.1', resolve));
    stops.push(() => new Promise((resolve) => webhook.close(() => resolve())));
    const webhookUrl = `http://127.0.0.1:${(webhook.address() as { port: number }).port}`;

    const gatewayPort = await freePort();
    const gateway = spawn(process.execPath, [MAIN, 'gateway', '--port', String(gatewayPort), '--host', '127.0.0.1'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    forwardOutput(gateway, (line) => output('gateway', line));
    const stopGateway = async () => {
      if (gateway.exitCode !== null || gateway.signalCode !== null) return;
      const exited = new Promise((resolve) => gateway.once('exit', resolve));
      gateway.kill('SIGKILL');
      await exited;
    };
    stops.push(stopGateway);
    const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
    await waitFor(gateway, 'orderflow gateway', async () => (await fetch(`${gatewayUrl}/v1/ledger`)).status === 200);

    const issuer = await openDevIssuer(options.dataDir);
    const cluster = await startCluster({
      databaseUrl: options.databaseUrl,
      brokerUrl: options.brokerUrl,
      redisUrl: options.redisUrl,
      apis: 2,
      workers: 1,
      basePort: await freePortRange(12),
      isolatedBroker: true,
      env: {
        DATA_DIR: options.dataDir,
        LOG_LEVEL: 'warn',
        PAYMENT_GATEWAY_URL: gatewayUrl,
        REDIS_KEY_PREFIX: `monitoring-${process.pid}-${Date.now()}:`,
        PENDING_DEADLINE_MS: '5000',
      },
      onOutput: (name, line) => {
        if (name !== 'haproxy' || /ALERT|WARNING/.test(line)) output(name, line);
      },
    });
    stops.push(() => cluster.stop());

    const alertmanager = options.alertmanagerBinary
      ? await startAlertmanager({
          binary: options.alertmanagerBinary,
          webhookUrl,
          onOutput: (line) => output('alertmanager', line),
        })
      : undefined;
    if (alertmanager) stops.push(() => alertmanager.stop());

    // HAProxy serves its metrics on the port after the last process (README, npm run cluster).
    const processes = cluster.processes.filter((p) => p.role !== 'lb');
    const statsPort = Math.max(...processes.map((p) => p.port)) + 1;
    const prometheus = await startPrometheus({
      binary: options.prometheusBinary,
      targets: [
        ...processes.map((p) => ({ address: `127.0.0.1:${p.port}`, role: p.role })),
        { address: `127.0.0.1:${statsPort}`, role: 'lb' },
      ],
      alertmanagerUrl: alertmanager?.url,
      onOutput: (line) => output('prometheus', line),
    });
    stops.push(() => prometheus.stop());

    return { cluster, issuer, gatewayUrl, prometheus, alertmanager, notifications, stopGateway, stop: stopAll };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

/**
 * Checkout traffic through the load balancer: a catalog, then `orders`
 * orders from concurrent customers (some declined, one in five reading its
 * product first), and among them requests that are refused (unknown order,
 * unknown SKU) so the error panels have something to show. Resolves with
 * the ids of the accepted orders.
 */
export async function driveCheckout(
  baseUrl: string,
  issuer: DevIssuer,
  options: { orders: number; clients?: number; skuPrefix?: string },
): Promise<string[]> {
  const prefix = options.skuPrefix ?? 'SKU';
  const admin = await issuer.issue({ sub: 'admin', scope: 'catalog:write' });
  const call = (token: string, method: string, url: string, body?: unknown, headers?: Record<string, string>) =>
    callApi(baseUrl, token, method, url, body, headers);
  for (let i = 0; i < 10; i++) {
    const created = await call(admin, 'POST', '/v1/products', {
      sku: `${prefix}-${i}`,
      name: `Item ${i}`,
      priceCents: 500 + i,
      currency: 'EUR',
      stock: 1_000_000,
    });
    if (created.status !== 201)
      throw new Error(`creating ${prefix}-${i}: ${created.status} ${JSON.stringify(created.body)}`);
  }
  const accepted: string[] = [];
  let next = 0;
  const customer = async (index: number) => {
    const token = await issuer.issue({ sub: `customer-${index}`, scope: 'orders:write orders:read' });
    while (next < options.orders) {
      const n = next++;
      const sku = `${prefix}-${n % 10}`;
      if (n % 5 === 0) await call(token, 'GET', `/v1/products/${sku}`);
      // Mistakes real clients make, spread over the run: an order that does not exist, a SKU that does not.
      if (n % 20 === 7) await call(token, 'GET', '/v1/orders/ord_00000000000000000000000000');
      if (n % 20 === 13)
        await call(
          token,
          'POST',
          '/v1/orders',
          { items: [{ sku: 'NO-SUCH-SKU', quantity: 1 }], payment: { token: 'tok_visa' } },
          { 'idempotency-key': `${prefix}-unknown-${n}` },
        );
      const placed = await call(
        token,
        'POST',
        '/v1/orders',
        { items: [{ sku, quantity: 1 }], payment: { token: n % 10 === 3 ? 'tok_declined' : 'tok_visa' } },
        { 'idempotency-key': `${prefix}-order-${n}` },
      );
      if (placed.status !== 202) throw new Error(`order ${n}: ${placed.status} ${JSON.stringify(placed.body)}`);
      accepted.push(placed.body.id as string);
    }
  };
  await Promise.all(Array.from({ length: options.clients ?? 8 }, (_, i) => customer(i)));
  return accepted;
}
