// The Grafana dashboards in deploy/grafana, written with Grafana's typed
// builder (@grafana/grafana-foundation-sdk, generated from the same schema
// Grafana validates dashboards with) instead of by hand: a panel is a few
// typed lines, every panel gets the same selector, units and legend, and a
// misspelt option is a type error, not a silently ignored field in 2,000
// lines of JSON. The JSON files are generated and committed, so Grafana
// provisioning needs nothing but them; with --check this only compares, and
// the monitoring tests fail when the JSON is stale.
//
//   node scripts/dashboards.ts           regenerate deploy/grafana/*.json
//   node scripts/dashboards.ts --check   exit 1 when a file is stale
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import {
  BigValueColorMode,
  BigValueGraphMode,
  LegendDisplayMode,
  LegendPlacement,
  ReduceDataOptionsBuilder,
  SortOrder,
  TooltipDisplayMode,
  VizLegendOptionsBuilder,
  VizTooltipOptionsBuilder,
} from '@grafana/grafana-foundation-sdk/common';
import {
  DashboardBuilder,
  DashboardCursorSync,
  DashboardLinkBuilder,
  DashboardLinkType,
  DatasourceVariableBuilder,
  QueryVariableBuilder,
  RowBuilder,
  ThresholdsConfigBuilder,
  ThresholdsMode,
  VariableRefresh,
  VariableType,
  type Dashboard,
  type DataSourceRef,
} from '@grafana/grafana-foundation-sdk/dashboard';
import { DataqueryBuilder } from '@grafana/grafana-foundation-sdk/prometheus';
import { PanelBuilder as StatBuilder } from '@grafana/grafana-foundation-sdk/stat';
import { PanelBuilder as TimeseriesBuilder } from '@grafana/grafana-foundation-sdk/timeseries';

export const GRAFANA_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'deploy', 'grafana');
export const REGENERATE_COMMAND = 'node scripts/dashboards.ts';

/** Every panel's data source: the one picked in the dashboard's `datasource` variable. */
const DATASOURCE: DataSourceRef = { type: 'prometheus', uid: '${datasource}' };
/** The Orderflow processes the role and instance variables select. */
const SEL = 'job="orderflow",role=~"$role",instance=~"$instance"';
const RATE = '[$__rate_interval]';

interface Query {
  expr: string;
  legend: string;
}

const q = (expr: string, legend: string): Query => ({ expr, legend });

function targets<T extends { withTarget(t: DataqueryBuilder): T }>(panel: T, queries: Query[]): T {
  queries.forEach((query, index) =>
    panel.withTarget(
      new DataqueryBuilder()
        .refId(String.fromCharCode(65 + index))
        .datasource(DATASOURCE)
        .expr(query.expr)
        .legendFormat(query.legend)
        .range(),
    ),
  );
  return panel;
}

function timeseries(
  id: number,
  title: string,
  description: string,
  unit: string,
  queries: Query[],
  options: { min?: number; max?: number; width?: number } = {},
) {
  const panel = new TimeseriesBuilder()
    .id(id)
    .title(title)
    .description(description)
    .datasource(DATASOURCE)
    .unit(unit)
    .span(options.width ?? 8)
    .height(8)
    .fillOpacity(10)
    .lineWidth(1)
    .legend(
      new VizLegendOptionsBuilder()
        .showLegend(true)
        .displayMode(LegendDisplayMode.List)
        .placement(LegendPlacement.Bottom)
        .calcs([]),
    )
    .tooltip(new VizTooltipOptionsBuilder().mode(TooltipDisplayMode.Multi).sort(SortOrder.Descending));
  if (options.min !== undefined) panel.min(options.min);
  if (options.max !== undefined) panel.max(options.max);
  return targets(panel, queries);
}

/** A single figure, red above `redAbove`. */
function stat(id: number, title: string, description: string, unit: string, query: Query, redAbove: number) {
  const panel = new StatBuilder()
    .id(id)
    .title(title)
    .description(description)
    .datasource(DATASOURCE)
    .unit(unit)
    .span(4)
    .height(4)
    .graphMode(BigValueGraphMode.Area)
    .colorMode(BigValueColorMode.Value)
    .reduceOptions(new ReduceDataOptionsBuilder().calcs(['lastNotNull']).values(false))
    .thresholds(
      new ThresholdsConfigBuilder().mode(ThresholdsMode.Absolute).steps([
        { value: null, color: 'green' },
        { value: redAbove, color: 'red' },
      ]),
    );
  return targets(panel, [query]);
}

function base(uid: string, title: string, description: string): DashboardBuilder {
  return new DashboardBuilder(title)
    .uid(uid)
    .description(description)
    .tags(['orderflow'])
    .editable()
    .tooltip(DashboardCursorSync.Crosshair)
    .time({ from: 'now-1h', to: 'now' })
    .refresh('30s')
    .timezone('browser')
    .link(
      new DashboardLinkBuilder('Orderflow')
        .type(DashboardLinkType.Dashboards)
        .tags(['orderflow'])
        .asDropdown(false)
        .includeVars(true)
        .keepTime(true),
    )
    .withVariable(new DatasourceVariableBuilder('datasource').label('Data source').type('prometheus'))
    .withVariable(
      new QueryVariableBuilder('role')
        .label('Role')
        .datasource(DATASOURCE)
        .query('label_values(up{job="orderflow"}, role)')
        .refresh(VariableRefresh.OnTimeRangeChanged)
        .multi(true)
        .includeAll(true)
        .allValue('.*'),
    )
    .withVariable(
      new QueryVariableBuilder('instance')
        .label('Instance')
        .datasource(DATASOURCE)
        .query('label_values(up{job="orderflow",role=~"$role"}, instance)')
        .refresh(VariableRefresh.OnTimeRangeChanged)
        .multi(true)
        .includeAll(true)
        .allValue('.*'),
    );
}

const quantiles = (metric: string, extra: string, by = '') =>
  [0.5, 0.9, 0.99].map((p) =>
    q(
      `histogram_quantile(${p}, sum by (le${by}) (rate(${metric}_bucket{${SEL}${extra}}${RATE})))`,
      `p${p * 100}${by ? ` {{${by.slice(2)}}}` : ''}`,
    ),
  );

/** Is checkout healthy? Orders and their outcomes, the accept path, the pipeline behind it, the gateway. */
export function checkoutDashboard(): Dashboard {
  let id = 0;
  const next = () => ++id;
  return base(
    'orderflow-checkout',
    'Orderflow: checkout',
    'Is checkout healthy? Orders by outcome, accept and settle latency against their SLOs, group commit, the outbox and queue, the payment gateway and the HTTP error rates. Alerts: deploy/prometheus/rules; runbooks: docs/operations.md.',
  )
    .withRow(new RowBuilder('Orders').id(next()))
    .withPanel(
      stat(
        next(),
        'Accept SLO: slow answers (1 h)',
        'Share of POST /v1/orders answered in more than 250 ms over the last hour (objective: at most 1%).',
        'percentunit',
        q('orderflow:slo_accept_latency:error_ratio_rate1h', 'slow'),
        0.01,
      ),
    )
    .withPanel(
      stat(
        next(),
        'Settle SLO: late orders (1 h)',
        'Share of orders whose payment outcome came more than 10 s after their accept, over the last hour (objective: at most 1%).',
        'percentunit',
        q('orderflow:slo_settled_in_time:error_ratio_rate1h', 'late'),
        0.01,
      ),
    )
    .withPanel(
      stat(
        next(),
        'Pending orders',
        'Orders waiting for their payment outcome, database-wide.',
        'short',
        q(`max(orderflow_pending_orders{${SEL}})`, 'pending'),
        1000,
      ),
    )
    .withPanel(
      stat(
        next(),
        'Overdue orders',
        'Pending orders older than PENDING_DEADLINE_MS: the sweeper re-drives them (alert OrderflowPendingOrdersOverdue).',
        'short',
        q(`max(orderflow_pending_orders_overdue{${SEL}})`, 'overdue'),
        0.5,
      ),
    )
    .withPanel(
      stat(
        next(),
        'Ready api processes',
        'api (and all) processes whose /readyz answers 200, of those Prometheus scrapes.',
        'short',
        q('sum(orderflow_ready{job="orderflow",role=~"api|all"})', 'ready'),
        1000,
      ),
    )
    .withPanel(
      stat(
        next(),
        'Payment gateway breakers open',
        'Workers whose circuit breaker around the payment gateway is open or half-open.',
        'short',
        q(`sum(orderflow_payment_gateway_circuit_open{${SEL}})`, 'open'),
        0.5,
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Orders/s by outcome',
        'Orders entering each status: pending on accept, then confirmed, rejected (with its reason) or cancelled.',
        'ops',
        [q(`sum by (status, reason) (rate(orderflow_orders_total{${SEL}}${RATE}))`, '{{status}} {{reason}}')],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Accept latency (POST /v1/orders)',
        'Percentiles of the answer time of POST /v1/orders; the SLO counts the answers under 250 ms.',
        's',
        quantiles('orderflow_http_request_duration_seconds', ',method="POST",route="/v1/orders"'),
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Time to settle',
        'Percentiles of the time from accept to payment outcome (confirmed, declined, failed); the SLO counts the orders under 10 s.',
        's',
        quantiles('orderflow_order_settle_duration_seconds', ''),
        { min: 0 },
      ),
    )
    .withRow(new RowBuilder('Group commit').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Accept batch size',
        'Orders committed together by one accept transaction (group commit): mean and 99th percentile.',
        'short',
        [
          q(
            `sum(rate(orderflow_accept_batch_size_sum{${SEL}}${RATE})) / sum(rate(orderflow_accept_batch_size_count{${SEL}}${RATE}))`,
            'mean',
          ),
          q(`histogram_quantile(0.99, sum by (le) (rate(orderflow_accept_batch_size_bucket{${SEL}}${RATE})))`, 'p99'),
        ],
        { min: 0, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Pay-worker batch size',
        'Pay-worker transactions committed together (group commit): mean and 99th percentile.',
        'short',
        [
          q(
            `sum(rate(orderflow_worker_batch_size_sum{${SEL}}${RATE})) / sum(rate(orderflow_worker_batch_size_count{${SEL}}${RATE}))`,
            'mean',
          ),
          q(`histogram_quantile(0.99, sum by (le) (rate(orderflow_worker_batch_size_bucket{${SEL}}${RATE})))`, 'p99'),
        ],
        { min: 0, width: 12 },
      ),
    )
    .withRow(new RowBuilder('Backlog and lag').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Backlog',
        'Jobs waiting or running per queue, and outbox rows the relay has not yet published (broker mode; 0 without a broker).',
        'short',
        [
          q(`max by (queue) (orderflow_job_backlog{${SEL}})`, 'jobs {{queue}}'),
          q(`sum(max by (queue) (orderflow_outbox_backlog{${SEL}})) or vector(0)`, 'outbox'),
        ],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Oldest pending order',
        'Age of the oldest order still waiting for its payment outcome: the lag of the whole pipeline.',
        's',
        [q(`max(orderflow_pending_order_oldest_age_seconds{${SEL}})`, 'oldest pending')],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Jobs/s by outcome',
        'Jobs handled per queue: done, retry (failed, runs again later), dead (dead-lettered), duplicate (already applied); and broker redeliveries.',
        'ops',
        [
          q(`sum by (queue, outcome) (rate(orderflow_jobs_processed_total{${SEL}}${RATE}))`, '{{queue}} {{outcome}}'),
          q(`sum by (queue) (rate(orderflow_consumer_redeliveries_total{${SEL}}${RATE}))`, '{{queue}} redelivered'),
        ],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Relay',
        'Outbox messages published per second, and failed relay passes per second (broker or database unreachable).',
        'ops',
        [
          q(`sum by (queue) (rate(orderflow_relay_published_total{${SEL}}${RATE}))`, 'published {{queue}}'),
          q(`sum(rate(orderflow_relay_failed_passes_total{${SEL}}${RATE}))`, 'failed passes'),
        ],
        { min: 0, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Dead letters (last 15 min)',
        'Jobs that failed their last attempt (alert OrderflowJobsDeadLettered).',
        'short',
        [q(`sum by (queue) (increase(orderflow_jobs_processed_total{${SEL},outcome="dead"}[15m]))`, '{{queue}}')],
        { min: 0, width: 12 },
      ),
    )
    .withRow(new RowBuilder('Payment gateway').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Gateway latency',
        'Percentiles of each gateway attempt, retries included, per operation.',
        's',
        quantiles('orderflow_payment_gateway_duration_seconds', '', ', operation'),
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Gateway calls/s by outcome',
        'Each attempt: ok, transient (timeout, network error, 5xx: retried) or error (refused request).',
        'ops',
        [
          q(
            `sum by (operation, outcome) (rate(orderflow_payment_gateway_duration_seconds_count{${SEL}}${RATE}))`,
            '{{operation}} {{outcome}}',
          ),
        ],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Circuit breaker',
        '1 while the breaker of a worker is open or half-open (alert OrderflowPaymentGatewayCircuitOpen).',
        'short',
        [q(`max by (instance) (orderflow_payment_gateway_circuit_open{${SEL}})`, '{{instance}}')],
        { min: 0, max: 1 },
      ),
    )
    .withRow(new RowBuilder('HTTP').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Requests/s by route',
        'Requests per route pattern and method.',
        'reqps',
        [q(`sum by (method, route) (rate(orderflow_http_requests_total{${SEL}}${RATE}))`, '{{method}} {{route}}')],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Server errors by route (5xx share)',
        "Share of each route's answers that are 5xx (0 where there are none).",
        'percentunit',
        [
          q(
            `(sum by (method, route) (rate(orderflow_http_requests_total{${SEL},status=~"5.."}${RATE})) or sum by (method, route) (rate(orderflow_http_requests_total{${SEL}}${RATE})) * 0) / sum by (method, route) (rate(orderflow_http_requests_total{${SEL}}${RATE}))`,
            '{{method}} {{route}}',
          ),
        ],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Client errors/s by route',
        '4xx answers per route and status: validation failures, unknown orders, rate limits (429).',
        'reqps',
        [
          q(
            `sum by (route, status) (rate(orderflow_http_requests_total{${SEL},status=~"4.."}${RATE}))`,
            '{{route}} {{status}}',
          ),
        ],
        { min: 0 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Product cache',
        'Product reads by result (local LRU hit, Redis or Memcached hit, miss loaded from the database), and whether each api process reaches the Redis or Memcached it is configured with.',
        'ops',
        [
          q(`sum by (result) (rate(orderflow_cache_lookups_total{${SEL}}${RATE}))`, '{{result}}'),
          q(
            `label_replace(orderflow_redis_up{${SEL}} and on (job, instance) orderflow_info{redis="yes"}, "server", "Redis", "", "") or label_replace(orderflow_memcached_up{${SEL}} and on (job, instance) orderflow_info{cache="memcached"}, "server", "Memcached", "", "")`,
            '{{server}} up {{instance}}',
          ),
        ],
        { min: 0, width: 24 },
      ),
    )
    .build();
}

/** Is a process healthy? CPU, memory, event loop, garbage collection and database pool, per process. */
export function processDashboard(): Dashboard {
  let id = 0;
  const next = () => ++id;
  const perProcess = '{{role}} {{instance}}';
  return base(
    'orderflow-processes',
    'Orderflow: processes',
    'Is each Orderflow process healthy? CPU, memory, event loop delay, garbage collection and database pool use, per process, selected by role and instance.',
  )
    .withRow(new RowBuilder('Processes').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Up and ready',
        'up: Prometheus scraped the process; ready: its /readyz answers 200.',
        'short',
        [q(`up{${SEL}}`, 'up ' + perProcess), q(`orderflow_ready{${SEL}}`, 'ready ' + perProcess)],
        { min: 0, max: 1, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'CPU',
        'CPU time per second of each process (1 = one core).',
        'percentunit',
        [q(`rate(process_cpu_seconds_total{${SEL}}${RATE})`, perProcess)],
        { min: 0, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Resident memory',
        'RSS of each process (npm start caps the old generation at 160 MB).',
        'bytes',
        [q(`process_resident_memory_bytes{${SEL}}`, perProcess)],
        { min: 0, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'JavaScript heap',
        'V8 heap in use and its size, per process.',
        'bytes',
        [
          q(`nodejs_heap_size_used_bytes{${SEL}}`, 'used ' + perProcess),
          q(`nodejs_heap_size_total_bytes{${SEL}}`, 'total ' + perProcess),
        ],
        { min: 0, width: 12 },
      ),
    )
    .withRow(new RowBuilder('Event loop and garbage collection').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Event loop delay (p99 and p50)',
        'Delay of the event loop between scrapes: a busy or blocked loop delays every request and job (alert OrderflowEventLoopLagHigh above 200 ms).',
        's',
        [
          q(`nodejs_eventloop_lag_p99_seconds{${SEL}}`, 'p99 ' + perProcess),
          q(`nodejs_eventloop_lag_p50_seconds{${SEL}}`, 'p50 ' + perProcess),
        ],
        { min: 0, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Garbage collection',
        'Seconds per second spent in garbage collection, by kind (minor, major, incremental, weakcb).',
        'percentunit',
        [
          q(
            `sum by (role, instance, kind) (rate(nodejs_gc_duration_seconds_sum{${SEL}}${RATE}))`,
            '{{kind}} ' + perProcess,
          ),
        ],
        { min: 0, width: 12 },
      ),
    )
    .withRow(new RowBuilder('Database pool').id(next()))
    .withPanel(
      timeseries(
        next(),
        'Database pool use',
        'Connections wanted on average (time in statements and transactions per second) over the pool size: above 100% calls queue for a connection.',
        'percentunit',
        [q(`rate(orderflow_db_pool_busy_seconds_total{${SEL}}${RATE}) / orderflow_db_pool_size{${SEL}}`, perProcess)],
        { min: 0, width: 12 },
      ),
    )
    .withPanel(
      timeseries(
        next(),
        'Open file descriptors and handles',
        'File descriptors and libuv handles (sockets, timers) held by each process.',
        'short',
        [
          q(`process_open_fds{${SEL}}`, 'fds ' + perProcess),
          q(`nodejs_active_handles_total{${SEL}}`, 'handles ' + perProcess),
        ],
        { min: 0, width: 12 },
      ),
    )
    .build();
}

/**
 * The builder writes the interval variable's auto, auto_min and auto_count
 * on every variable; Grafana's schema (@grafana/schema) has them only for
 * interval variables and refuses them elsewhere, so they are dropped there.
 */
function conform(dashboard: Dashboard): Dashboard {
  for (const variable of dashboard.templating?.list ?? []) {
    if (variable.type === VariableType.Interval) continue;
    delete variable.auto;
    delete variable.auto_min;
    delete variable.auto_count;
  }
  return dashboard;
}

/** Each dashboard with the file it is provisioned from. */
export function dashboards(): { file: string; dashboard: Dashboard }[] {
  return [
    { file: path.join(GRAFANA_DIR, 'checkout.json'), dashboard: conform(checkoutDashboard()) },
    { file: path.join(GRAFANA_DIR, 'processes.json'), dashboard: conform(processDashboard()) },
  ];
}

export interface PanelQuery {
  panel: string;
  refId: string;
  expr: string;
  legend: string;
}

/** Every Prometheus query of every panel, rows included. */
export function dashboardQueries(dashboard: Dashboard): PanelQuery[] {
  const queries: PanelQuery[] = [];
  for (const panel of dashboard.panels ?? []) {
    if (panel.type === 'row') continue;
    for (const target of (panel as { targets?: { expr?: string; refId?: string; legendFormat?: string }[] }).targets ??
      []) {
      if (target.expr)
        queries.push({
          panel: panel.title ?? '',
          refId: target.refId ?? '',
          expr: target.expr,
          legend: target.legendFormat ?? '',
        });
    }
  }
  return queries;
}

/**
 * The query as Grafana sends it with "All" selected for the role and
 * instance variables (their allValue, .*) and $__rate_interval of a
 * dashboard whose scrape interval is `scrapeSeconds`: Grafana makes it at
 * least four scrape intervals.
 */
export function instantiate(expr: string, scrapeSeconds = 15): string {
  return expr
    .replaceAll('$__rate_interval', `${4 * scrapeSeconds}s`)
    .replaceAll('$role', '.*')
    .replaceAll('$instance', '.*');
}

export function render(dashboard: Dashboard): string {
  return `${JSON.stringify(dashboard, null, 2)}\n`;
}

/** Why the committed files differ from the builder's output, or an empty list. */
export async function staleDashboards(): Promise<string[]> {
  const problems: string[] = [];
  for (const { file, dashboard } of dashboards()) {
    const committed = await readFile(file, 'utf8').catch(() => undefined);
    if (committed !== render(dashboard))
      problems.push(
        `${path.relative(process.cwd(), file)} is ${committed === undefined ? 'missing' : 'out of date'}; run \`${REGENERATE_COMMAND}\` and commit it`,
      );
  }
  return problems;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { check: { type: 'boolean', default: false } } });
  if (values.check) {
    const problems = await staleDashboards();
    for (const problem of problems) console.error(`dashboards: ${problem}`);
    if (problems.length > 0) process.exitCode = 1;
    else console.log('dashboards: deploy/grafana is up to date');
  } else {
    for (const { file, dashboard } of dashboards()) {
      await writeFile(file, render(dashboard));
      console.log(`dashboards: wrote ${path.relative(process.cwd(), file)}`);
    }
  }
}
