// Prometheus and Alertmanager for a running Orderflow cluster, from the
// configuration in deploy/prometheus, each a private process on a free port
// with its data in a temporary directory. The monitoring test and
// scripts/render-dashboard.ts use it; to watch `npm run cluster` by hand,
// run Prometheus on deploy/prometheus/prometheus.yml as it is.
//
// Time runs faster here than in production: targets are scraped and rules
// evaluated every second instead of every 15 s, and each alert's `for`
// shrinks by the same factor, so an alert fires within seconds of its
// condition. The expressions themselves are unchanged; the `for` durations
// are covered by the promtool unit tests (deploy/prometheus/tests).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml, stringify as toYaml } from 'yaml';

const PROMETHEUS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'deploy', 'prometheus');
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

/** A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.listen(0, '127.0.0.1', resolve).once('error', reject));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
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
      const rules = parseYaml(await readFile(path.join(PROMETHEUS_DIR, 'rules', file), 'utf8')) as { groups: { rules: { for?: string }[] }[] };
      for (const group of rules.groups) for (const rule of group.rules) if (rule.for) rule.for = `${Math.max(1, Math.round(seconds(rule.for) / SPEEDUP))}s`;
      await writeFile(path.join(dir, file), toYaml(rules));
      ruleFiles.push(path.join(dir, file));
    }
    config.rule_files = ruleFiles;
    config.alerting = options.alertmanagerUrl ? { alertmanagers: [{ static_configs: [{ targets: [new URL(options.alertmanagerUrl).host] }] }] } : undefined;
    for (const job of config.scrape_configs) {
      const group = (t: ScrapeTarget) => (job.job_name === 'haproxy' ? t.role === 'lb' : t.role !== 'lb');
      const file = path.join(dir, `${job.job_name}-targets.yml`);
      await writeFile(file, toYaml(options.targets.filter(group).map((t) => ({ targets: [t.address], labels: { role: t.role } }))));
      job.file_sd_configs = [{ files: [file], refresh_interval: '1s' }];
    }
    await writeFile(path.join(dir, 'prometheus.yml'), toYaml(config));

    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const child = spawn(
      options.binary,
      [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
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
        (await api<{ result: RangeSeries[] }>('query_range', { query: expr, start: String(start), end: String(end), step: String(step) })).result,
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
export async function startAlertmanager(options: { binary: string; webhookUrl: string; onOutput?: (line: string) => void }): Promise<Alertmanager> {
  const dir = await mkdtemp(path.join(tmpdir(), 'orderflow-alertmanager-'));
  try {
    const config = parseYaml(await readFile(path.join(PROMETHEUS_DIR, 'alertmanager.yml'), 'utf8')) as AlertmanagerConfig;
    config.route.group_wait = '1s';
    config.route.group_interval = '1s';
    for (const receiver of config.receivers) {
      for (const webhook of receiver.webhook_configs ?? []) webhook.url = new URL(`/${receiver.name}`, options.webhookUrl).href;
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

async function waitFor(child: ChildProcess, name: string, ready: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
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
