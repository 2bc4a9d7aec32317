// Draws the checkout dashboard (deploy/grafana/checkout.json) as Grafana
// lays it out, from real data: the monitored cluster of the monitoring test
// (scripts/monitoring.ts) takes checkout traffic for a minute, then loses
// its payment gateway for half a minute while orders keep coming. Every
// panel's queries run against that Prometheus; the page (uPlot charts at the
// panels' grid positions) is screenshot in headless Chromium. No Grafana
// server is needed, and the picture in docs/operations.md is this output.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres BROKER_URL=nats://127.0.0.1:4222 \
//   REDIS_URL=redis://127.0.0.1:6379 node scripts/render-dashboard.ts [--out docs/img/checkout-dashboard.png]
//
// Needs prometheus, haproxy and chromium (Debian packages) on PATH.
import { accessSync, constants } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import postgres from 'postgres';
import type { Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';
import { checkoutDashboard, dashboardQueries, instantiate } from './dashboards.ts';
import { driveCheckout, startMonitoredCluster, type Prometheus } from './monitoring.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface PanelData {
  title: string;
  type: string;
  unit: string;
  gridPos: { x: number; y: number; w: number; h: number };
  series: { name: string; points: [number, number | null][] }[];
}

/** Every panel of the dashboard with the series its queries return over [start, end]. */
export async function panelData(
  dashboard: Dashboard,
  prometheus: Prometheus,
  start: number,
  end: number,
  step: number,
): Promise<PanelData[]> {
  const queries = dashboardQueries(dashboard);
  const panels: PanelData[] = [];
  for (const panel of dashboard.panels ?? []) {
    const gridPos = panel.gridPos ?? { x: 0, y: 0, w: 24, h: 8 };
    const unit = (panel as { fieldConfig?: { defaults?: { unit?: string } } }).fieldConfig?.defaults?.unit ?? '';
    const data: PanelData = { title: panel.title ?? '', type: panel.type, unit, gridPos, series: [] };
    for (const query of queries.filter((q) => q.panel === panel.title)) {
      // $__rate_interval as Grafana makes it for a 5 s scrape: 20 s windows.
      for (const result of await prometheus.queryRange(instantiate(query.expr, 5), start, end, step)) {
        const name =
          query.legend.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, label: string) => result.metric[label] ?? '').trim() ||
          query.refId;
        data.series.push({
          name,
          points: result.values.map(([t, v]) => [t, Number.isFinite(Number(v)) ? Number(v) : null]),
        });
      }
    }
    panels.push(data);
  }
  return panels;
}

/** An HTML page drawing the panels with uPlot, Grafana's 24-column grid, 30 px per grid row. */
export async function dashboardPage(title: string, panels: PanelData[], width: number): Promise<string> {
  const uplotDir = path.dirname(createRequire(import.meta.url).resolve('uplot/package.json'));
  const [script, style] = await Promise.all([
    readFile(path.join(uplotDir, 'dist/uPlot.iife.min.js'), 'utf8'),
    readFile(path.join(uplotDir, 'dist/uPlot.min.css'), 'utf8'),
  ]);
  return `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title>
<style>${style}
body { margin: 0; background: #111217; color: #ccccdc; font: 12px system-ui, sans-serif; width: ${width}px; }
h1 { font-size: 16px; font-weight: 500; margin: 0; padding: 10px 12px; }
#grid { position: relative; }
.panel { position: absolute; box-sizing: border-box; background: #181b1f; border: 1px solid #2c3235; border-radius: 2px; padding: 6px 8px; overflow: hidden; }
.panel h2 { font-size: 12px; font-weight: 500; margin: 0 0 4px; white-space: nowrap; }
.row { position: absolute; font-size: 14px; font-weight: 500; padding: 4px 4px; }
.stat { font-size: 34px; font-weight: 500; color: #73bf69; text-align: center; margin-top: 14px; }
.stat.red { color: #f2495c; }
.u-legend { font-size: 11px; line-height: 14px; color: #ccccdc; text-align: left; }
.u-legend .u-series { padding: 0 6px 0 0; }
.u-legend .u-marker { width: 10px; height: 3px; }
.u-legend th { font-weight: 400; }
.u-legend td { display: none; }
</style></head><body><h1>${title}</h1><div id="grid"></div>
<script>${script}</script>
<script>
(() => {
const panels = ${JSON.stringify(panels)};
const colors = ['#73bf69', '#f2cc0c', '#5794f2', '#ff9830', '#f2495c', '#b877d9', '#8ab8ff', '#fade2a', '#96d98d', '#ffb357'];
const cell = ${width} / 24, rowHeight = 30;
const grid = document.getElementById('grid');
let bottom = 0;
const fmt = (unit, v) => {
  if (v === null || v === undefined || Number.isNaN(v)) return '';
  if (unit === 'percentunit') return (v * 100).toFixed(Math.abs(v) < 0.1 ? 2 : 1) + '%';
  if (unit === 's') return v < 1 ? (v * 1000).toFixed(v < 0.01 ? 1 : 0) + ' ms' : v.toFixed(1) + ' s';
  if (unit === 'ops' || unit === 'reqps') return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + '/s';
  if (unit === 'bytes') return (v / 1048576).toFixed(0) + ' MiB';
  return Math.abs(v) >= 100 ? v.toFixed(0) : String(Math.round(v * 100) / 100);
};
for (const p of panels) {
  const x = p.gridPos.x * cell, y = p.gridPos.y * rowHeight, w = p.gridPos.w * cell, h = p.gridPos.h * rowHeight;
  bottom = Math.max(bottom, y + h);
  if (p.type === 'row') {
    const row = document.createElement('div');
    row.className = 'row'; row.style.left = x + 'px'; row.style.top = y + 'px'; row.textContent = p.title;
    grid.appendChild(row);
    continue;
  }
  const el = document.createElement('div');
  el.className = 'panel';
  Object.assign(el.style, { left: (x + 2) + 'px', top: (y + 2) + 'px', width: (w - 4) + 'px', height: (h - 4) + 'px' });
  el.innerHTML = '<h2></h2>';
  el.querySelector('h2').textContent = p.title;
  grid.appendChild(el);
  if (p.type === 'stat') {
    const values = p.series.flatMap((s) => s.points.map((pt) => pt[1]).filter((v) => v !== null));
    const last = values.length ? values[values.length - 1] : null;
    const div = document.createElement('div');
    div.className = 'stat' + (p.title.includes('SLO') ? (last > 0.01 ? ' red' : '') : p.title.includes('breaker') || p.title.includes('Overdue') ? (last > 0 ? ' red' : '') : '');
    div.textContent = last === null ? 'No data' : fmt(p.unit, last);
    el.appendChild(div);
    continue;
  }
  const times = [...new Set(p.series.flatMap((s) => s.points.map((pt) => pt[0])))].sort((a, b) => a - b);
  const data = [times, ...p.series.map((s) => { const m = new Map(s.points); return times.map((t) => m.has(t) ? m.get(t) : null); })];
  const legendRows = Math.ceil(p.series.length / Math.max(1, Math.floor(w / 190)));
  new uPlot({
    width: w - 20, height: h - 34 - 16 * legendRows,
    legend: { show: true, live: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : p.unit === 'percentunit' ? 0.01 : 1] } },
    axes: [
      { stroke: '#8e8e8e', grid: { stroke: '#2c3235' }, ticks: { stroke: '#2c3235' }, font: '10px system-ui', values: (u, vals) => vals.map((v) => new Date(v * 1000).toTimeString().slice(0, 8)) },
      { stroke: '#8e8e8e', grid: { stroke: '#2c3235' }, ticks: { stroke: '#2c3235' }, font: '10px system-ui', size: 60, values: (u, vals) => vals.map((v) => fmt(p.unit, v)) },
    ],
    series: [{}, ...p.series.map((s, i) => ({ label: s.name, stroke: colors[i % colors.length], width: 1.5, fill: colors[i % colors.length] + '18', points: { show: false } }))],
  }, data, el);
}
grid.style.height = bottom + 'px';
document.body.dataset.ready = 'yes';
})();
</script></body></html>`;
}

/** Draws the dashboard's panels from Prometheus over [start, end] (epoch seconds) into a PNG at `out`, 1600 px wide. */
export async function renderDashboard(
  dashboard: Dashboard,
  prometheus: Prometheus,
  options: { start: number; end: number; out: string; title?: string },
): Promise<void> {
  const width = 1600;
  const step = Math.max(1, Math.round((options.end - options.start) / 300));
  const html = await dashboardPage(
    options.title ?? dashboard.title ?? '',
    await panelData(dashboard, prometheus, options.start, options.end, step),
    width,
  );
  const browser = await chromium.launch({ executablePath: findChromium(), args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width, height: 900 }, deviceScaleFactor: 1 });
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.setContent(html);
    await page.waitForSelector('body[data-ready="yes"]', { state: 'attached', timeout: 10_000 }).catch(() => {
      throw new Error(`the dashboard page did not finish drawing: ${errors.join('; ') || 'no error reported'}`);
    });
    await page.screenshot({ path: options.out, fullPage: true });
  } finally {
    await browser.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string', default: path.join(ROOT, 'docs', 'img', 'checkout-dashboard.png') },
      healthy: { type: 'string', default: '60' },
      outage: { type: 'string', default: '30' },
    },
  });
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) throw new Error('set DATABASE_URL (and BROKER_URL, REDIS_URL): see the top of this file');
  const name = `orderflow_render_${process.pid}`;
  const admin = postgres(databaseUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  const url = new URL(databaseUrl);
  url.pathname = `/${name}`;
  const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-render-'));
  const stack = await startMonitoredCluster({
    databaseUrl: url.href,
    brokerUrl: process.env.BROKER_URL,
    redisUrl: process.env.REDIS_URL,
    dataDir,
    prometheusBinary: 'prometheus',
  });
  try {
    const start = Date.now() / 1000;
    // Paced rounds, so the charts show a steady shop rather than one burst.
    const phase = async (seconds: number, label: string) => {
      const until = Date.now() + seconds * 1000;
      for (let round = 0; Date.now() < until; round++) {
        await driveCheckout(stack.cluster.url, stack.issuer, { orders: 60, clients: 3, skuPrefix: `${label}${round}` });
        await sleep(500);
      }
    };
    process.stderr.write('render: healthy traffic\n');
    await phase(Number(values.healthy), 'H');
    process.stderr.write('render: the payment gateway is stopped\n');
    await stack.stopGateway();
    await phase(Number(values.outage), 'O');
    await sleep(3_000);
    const end = Date.now() / 1000;
    const dashboard = checkoutDashboard();
    await renderDashboard(dashboard, stack.prometheus, {
      start,
      end,
      out: values.out,
      title: `${dashboard.title} (${Math.round(Number(values.healthy))} s of checkout traffic, then ${Math.round(Number(values.outage))} s without the payment gateway)`,
    });
    process.stderr.write(`render: wrote ${path.relative(process.cwd(), values.out)}\n`);
  } finally {
    await stack.stop();
    await rm(dataDir, { recursive: true, force: true });
    await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

/** Chromium (Debian's chromium, or Chrome) from PATH. */
function findChromium(): string {
  for (const candidate of (process.env.PATH ?? '')
    .split(':')
    .flatMap((dir) => ['chromium', 'chromium-browser', 'google-chrome'].map((b) => path.join(dir, b)))) {
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error('chromium is not installed (Debian package chromium)');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
