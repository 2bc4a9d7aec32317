// npm run bench:outages -- [--mode postgres|nats|rabbitmq] [--outage S] [--clients N] [--rate N]
//
// What a client sees while each dependency is away, and how long recovery
// takes, measured on the combined shape (ROLE=all, WEB_CONCURRENCY=2) under
// load, on private servers this script starts and stops (never the
// machine's own). The same steps as test/outages.test.ts, with longer
// outages; the figures are quoted in docs/architecture.md ("When something
// fails"). See bench/README.md.
import { parseArgs } from 'node:util';
import {
  OutageRig,
  outageSteps,
  stepName,
  type Answer,
  type OutageMode,
  type StepReport,
} from '../test/support/outages.ts';
import { summarizeValues } from './stats.ts';

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'nats' },
    outage: { type: 'string', default: '5' },
    clients: { type: 'string', default: '200' },
    rate: { type: 'string', default: '300' },
  },
});
if (!['postgres', 'nats', 'rabbitmq'].includes(values.mode)) {
  process.stderr.write('outages: --mode is postgres, nats or rabbitmq\n');
  process.exit(2);
}
const mode = values.mode as OutageMode;
const outageMs = Number(values.outage) * 1000;
const clients = Number(values.clients);
const ordersPerSecond = Number(values.rate);

function statuses(answers: readonly Answer[]): string {
  const counts = new Map<number, number>();
  for (const a of answers) counts.set(a.status, (counts.get(a.status) ?? 0) + 1);
  return [...counts]
    .sort(([a], [b]) => a - b)
    .map(([status, n]) => `${n}× ${status === 0 ? 'no answer' : status}`)
    .join(', ');
}

function row(report: StepReport): string[] {
  const refused = report.during.filter((a) => a.status === 503);
  const refusedMs = refused.map((a) => a.ms);
  const withRetryAfter = refused.filter((a) => a.retryAfter !== undefined && a.problemJson).length;
  const metricsMs = report.probes.filter((p) => p.route === '/metrics').map((p) => p.ms);
  const readyz = [...new Set(report.probes.filter((p) => p.route === '/readyz').map((p) => p.status))].join('/');
  return [
    stepName(report.step),
    (report.outageMs / 1000).toFixed(1),
    statuses(report.during),
    refused.length === 0
      ? '–'
      : `${summarizeValues(refusedMs).p50Ms.toFixed(0)} / ${summarizeValues(refusedMs).maxMs.toFixed(0)}`,
    refused.length === 0 ? '–' : `${withRetryAfter}/${refused.length}`,
    readyz,
    `${Math.max(...metricsMs).toFixed(0)}`,
    (report.acceptingAfterMs / 1000).toFixed(2),
    (report.caughtUpAfterMs / 1000).toFixed(2),
    report.pidsAfter.join(',') === report.pidsBefore.join(',')
      ? 'yes'
      : `NO: ${report.pidsBefore.join(',')} → ${report.pidsAfter.join(',')}`,
  ];
}

const header = [
  'dependency, how',
  'away (s)',
  'order answers while away',
  '503 latency p50 / max (ms)',
  '503s with Retry-After, problem+json',
  '/readyz',
  '/metrics max (ms)',
  'accepting again after (s)',
  'caught up after (s)',
  'same processes',
];

process.stderr.write(
  `outages: starting private servers and the combined shape (${mode}), ${clients} clients, ${ordersPerSecond} new orders/s\n`,
);
const rig = await OutageRig.start(mode, {
  clients,
  ordersPerSecond,
  outageMs,
  onOutput: (name, line) => process.stderr.write(`[${name}] ${line}\n`),
});
const rows: string[][] = [];
try {
  for (const step of outageSteps(mode)) {
    process.stderr.write(`outages: ${stepName(step)} for ${outageMs / 1000} s\n`);
    rows.push(row(await rig.run(step)));
  }
  const checks = await rig.finish();
  for (const check of checks)
    process.stderr.write(`outages: ${check.ok ? 'ok  ' : 'FAIL'} ${check.name}: ${check.detail}\n`);
  process.stdout.write(
    `\nmode ${mode}, ${clients} clients, ${ordersPerSecond} new orders/s, ${rig.load.accepted.size} orders accepted\n\n`,
  );
  process.stdout.write(`| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|\n`);
  for (const r of rows) process.stdout.write(`| ${r.join(' | ')} |\n`);
  if (checks.some((c) => !c.ok)) process.exitCode = 1;
} finally {
  await rig.stop();
}
