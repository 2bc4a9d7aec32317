// The three outputs of a run: a table on stdout, a JSON file with every
// figure and series, and an SVG chart next to it. The chart is written by
// hand: three line panels need no charting library, and the file stays small
// and readable in any browser or code review.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CeilingResult } from './ceiling.ts';
import type { Check } from './checks.ts';
import type { Machine } from './machine.ts';
import type { LatencySummary, SecondSample } from './stats.ts';

export const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url));

export interface MemorySample {
  t: number;
  processes: { name: string; rssMiB: number }[];
}

export interface BenchResult {
  scenario: string;
  mode: string;
  startedAt: string;
  options: Record<string, number | string>;
  machine: Machine;
  /** What ran: processes, database, broker, gateway. */
  shape: string;
  /** The headline figures, in table order; units are in the labels. */
  figures: { label: string; value: number | string | null }[];
  latency: LatencySummary | undefined;
  ceiling: CeilingResult | undefined;
  series: SecondSample[];
  memory: MemorySample[];
  errors: Record<string, number>;
  checks: Check[];
  notes: string[];
  /** The issue's targets this run judges, each met (true), missed (false) or not measured (null). */
  targets?: TargetRow[];
}

export interface TargetRow {
  target: string;
  result: string;
  met: boolean | null;
}

export function printTable(result: BenchResult): void {
  const rows: [string, string][] = [
    ['scenario', `${result.scenario} (${result.mode})`],
    ['shape', result.shape],
    ['machine', `${result.machine.cpu}, ${result.machine.cores} cores, ${result.machine.ramGiB} GiB RAM`],
    [
      'software',
      `Node ${result.machine.node}, PostgreSQL ${result.machine.postgres ?? 'n/a'}, ${result.machine.platform}`,
    ],
    [
      'options',
      Object.entries(result.options)
        .map(([k, v]) => `${k}=${v}`)
        .join(' '),
    ],
    ...result.figures.map(({ label, value }): [string, string] => [
      label,
      value === null ? '—' : typeof value === 'number' ? format(value) : value,
    ]),
  ];
  if (Object.keys(result.errors).length > 0)
    rows.push([
      'errors',
      Object.entries(result.errors)
        .map(([k, v]) => `${k}×${v}`)
        .join(' '),
    ]);
  for (const check of result.checks) rows.push([`${check.ok ? 'ok  ' : 'FAIL'} ${check.name}`, check.detail]);
  for (const t of result.targets ?? [])
    rows.push([`${t.met === null ? 'n/a   ' : t.met ? 'met   ' : 'MISSED'} ${t.target}`, t.result]);
  const width = Math.max(...rows.map(([k]) => k.length));
  const line = '─'.repeat(Math.min(100, width + 60));
  const out = [line, ...rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`), line];
  for (const note of result.notes) out.push(`note: ${note}`);
  process.stdout.write(`${out.join('\n')}\n`);
}

function format(value: number): string {
  return Number.isInteger(value)
    ? value.toLocaleString('en-US')
    : value.toLocaleString('en-US', { maximumFractionDigits: 2 });
}

export async function writeResult(result: BenchResult): Promise<{ json: string; svg: string }> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, '-');
  const base = path.join(RESULTS_DIR, `${result.scenario}-${result.mode}-${stamp}`);
  await writeFile(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(`${base}.svg`, chart(result));
  return { json: `${base}.json`, svg: `${base}.svg` };
}

// --- SVG ------------------------------------------------------------------

interface Line {
  name: string;
  color: string;
  points: [number, number][];
  dashed?: boolean;
}

const WIDTH = 760;
const PANEL_HEIGHT = 190;
const MARGIN = { left: 64, right: 150, top: 28, bottom: 30 };

export function chart(result: BenchResult): string {
  const panels: { title: string; unit: string; lines: Line[] }[] = [];
  const s = result.series;
  const throughput: Line[] = [
    {
      name: result.scenario === 'ceiling' ? 'transactions/s' : result.scenario === 'reads' ? 'reads/s' : 'accepted/s',
      color: '#2563eb',
      points: s.map((x) => [x.t, x.accepted]),
    },
  ];
  if (s.some((x) => x.confirmed !== undefined))
    throughput.push({ name: 'confirmed/s', color: '#16a34a', points: s.map((x) => [x.t, x.confirmed ?? 0]) });
  if (result.ceiling && result.scenario !== 'ceiling' && s.length > 0) {
    throughput.push({
      name: 'ceiling',
      color: '#9ca3af',
      dashed: true,
      points: [
        [0, result.ceiling.perSecond],
        [s.at(-1)!.t, result.ceiling.perSecond],
      ],
    });
  }
  panels.push({ title: 'Throughput per second', unit: '/s', lines: throughput });
  const latency: Line[] = [];
  for (const [key, name, color] of [
    ['p50Ms', 'p50', '#0891b2'],
    ['p95Ms', 'p95', '#d97706'],
    ['p99Ms', 'p99', '#dc2626'],
  ] as const) {
    const points = s.filter((x) => x[key] !== undefined && x.accepted > 0).map((x): [number, number] => [x.t, x[key]!]);
    if (points.length > 0) latency.push({ name, color, points });
  }
  if (latency.length > 0) panels.push({ title: 'Latency per second', unit: 'ms', lines: latency });
  if (result.memory.length > 0) {
    const names = [...new Set(result.memory.flatMap((m) => m.processes.map((p) => p.name)))];
    const palette = ['#7c3aed', '#db2777', '#0d9488', '#ea580c', '#4b5563', '#65a30d', '#2563eb'];
    panels.push({
      title: 'Server RSS',
      unit: 'MiB',
      lines: names.map((name, i) => ({
        name,
        color: palette[i % palette.length]!,
        points: result.memory.map((m): [number, number] => [
          m.t,
          m.processes.find((p) => p.name === name)?.rssMiB ?? 0,
        ]),
      })),
    });
  }
  const header = 46;
  const height = header + panels.length * PANEL_HEIGHT + 24;
  const xMax = Math.max(1, ...panels.flatMap((p) => p.lines.flatMap((l) => l.points.map(([x]) => x))));
  const body = panels.map((panel, i) => linePanel(panel, header + i * PANEL_HEIGHT, xMax)).join('\n');
  const l = result.latency;
  const subtitle = [
    `${result.machine.cpu}, ${result.machine.cores} cores`,
    l ? `p50 ${l.p50Ms} ms · p95 ${l.p95Ms} ms · p99 ${l.p99Ms} ms` : '',
    result.checks.every((c) => c.ok) ? 'invariants hold' : 'INVARIANTS BROKEN',
  ]
    .filter(Boolean)
    .join(' — ');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="system-ui, sans-serif" font-size="11">
<rect width="100%" height="100%" fill="#fff"/>
<text x="${MARGIN.left}" y="20" font-size="15" font-weight="600">${escape(`Orderflow ${result.scenario} (${result.mode}) — ${result.startedAt}`)}</text>
<text x="${MARGIN.left}" y="36" fill="#555">${escape(subtitle)}</text>
${body}
<text x="${MARGIN.left + (WIDTH - MARGIN.left - MARGIN.right) / 2}" y="${height - 6}" text-anchor="middle" fill="#555">seconds since load started</text>
</svg>
`;
}

function linePanel(panel: { title: string; unit: string; lines: Line[] }, top: number, xMax: number): string {
  const x0 = MARGIN.left;
  const x1 = WIDTH - MARGIN.right;
  const y0 = top + MARGIN.top;
  const y1 = top + PANEL_HEIGHT - MARGIN.bottom;
  const yMax = niceMax(Math.max(1, ...panel.lines.flatMap((l) => l.points.map(([, y]) => y))));
  const sx = (x: number) => x0 + (x / xMax) * (x1 - x0);
  const sy = (y: number) => y1 - (y / yMax) * (y1 - y0);
  const parts: string[] = [
    `<text x="${x0}" y="${top + 18}" font-weight="600">${escape(panel.title)} (${escape(panel.unit)})</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const v = (yMax / 4) * i;
    parts.push(`<line x1="${x0}" x2="${x1}" y1="${sy(v).toFixed(1)}" y2="${sy(v).toFixed(1)}" stroke="#e5e7eb"/>`);
    parts.push(
      `<text x="${x0 - 6}" y="${(sy(v) + 4).toFixed(1)}" text-anchor="end" fill="#555">${shortNumber(v)}</text>`,
    );
  }
  const step = niceMax(xMax / 6);
  for (let x = 0; x <= xMax + 1e-9; x += step) {
    parts.push(
      `<text x="${sx(x).toFixed(1)}" y="${y1 + 14}" text-anchor="middle" fill="#555">${shortNumber(x)}</text>`,
    );
  }
  parts.push(`<line x1="${x0}" x2="${x1}" y1="${y1}" y2="${y1}" stroke="#9ca3af"/>`);
  panel.lines.forEach((line, i) => {
    const d = line.points.map(([x, y], j) => `${j === 0 ? 'M' : 'L'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(
      `<path d="${d}" fill="none" stroke="${line.color}" stroke-width="1.8"${line.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
    );
    const ly = y0 + 4 + i * 16;
    parts.push(
      `<line x1="${x1 + 14}" x2="${x1 + 34}" y1="${ly}" y2="${ly}" stroke="${line.color}" stroke-width="2"${line.dashed ? ' stroke-dasharray="4 3"' : ''}/>`,
    );
    parts.push(`<text x="${x1 + 40}" y="${ly + 4}">${escape(line.name)}</text>`);
  });
  return parts.join('\n');
}

function niceMax(value: number): number {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * magnitude >= value) return m * magnitude;
  return 10 * magnitude;
}

function shortNumber(v: number): string {
  if (v >= 10_000) return `${Math.round(v / 1000)}k`;
  if (v >= 1000) return `${(v / 1000).toFixed(1).replace(/\.0$/, '')}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
