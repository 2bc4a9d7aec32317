// The alerting rules of deploy/prometheus, checked by the tools that run
// them: promtool checks the configuration and rules and runs their unit
// tests (deploy/prometheus/tests), amtool checks the example Alertmanager
// configuration. Every alert must have a unit test that fires it and one
// that keeps it quiet, and the rules may only select metrics Orderflow
// exposes (read from a real scrape) or records itself.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { parse as parseYaml } from 'yaml';
import { createApp, type App } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import {
  exposedMetricNames,
  loadRules,
  PROMETHEUS_DIR,
  PROMETHEUS_SYNTHETIC,
  selectedMetricNames,
} from './support/promql.ts';
import { skipUnlessInstalled } from './support/programs.ts';

// promtool comes with Debian's prometheus package, amtool with prometheus-alertmanager.
const promtool = skipUnlessInstalled('checking the alerting rules', { promtool: ['--version'] });
const amtool = skipUnlessInstalled('checking the Alertmanager configuration', { amtool: ['--version'] });

function run(program: string, args: string[]): string {
  const result = spawnSync(program, args, { cwd: PROMETHEUS_DIR, encoding: 'utf8' });
  assert.equal(result.status, 0, `${program} ${args.join(' ')}:\n${result.stdout}${result.stderr}`);
  return result.stdout + result.stderr;
}

interface UnitTests {
  rule_files: string[];
  tests: {
    name: string;
    alert_rule_test?: { alertname: string; exp_alerts?: { exp_labels?: Record<string, string> }[] }[];
  }[];
}

async function unitTestFiles(): Promise<string[]> {
  return (await readdir(path.join(PROMETHEUS_DIR, 'tests')))
    .filter((f) => f.endsWith('.test.yml'))
    .sort()
    .map((f) => path.join('tests', f));
}

describe('Prometheus rules (deploy/prometheus)', () => {
  it('promtool accepts prometheus.yml and every rule file it loads', { skip: promtool }, async () => {
    const out = run('promtool', ['check', 'config', 'prometheus.yml']);
    const ruleFiles = (await readdir(path.join(PROMETHEUS_DIR, 'rules'))).filter((f) => f.endsWith('.yml'));
    for (const file of ruleFiles)
      assert.match(
        out,
        new RegExp(`Checking rules/${file.replace('.', '\\.')}\\s+SUCCESS`),
        `prometheus.yml loads rules/${file}`,
      );
  });

  it('promtool test rules: every unit test passes', { skip: promtool }, async () => {
    const files = await unitTestFiles();
    assert.ok(files.length > 0);
    const out = run('promtool', ['test', 'rules', ...files]);
    assert.doesNotMatch(out, /FAILED/);
  });

  it('every alert, at each severity, fires in a unit test, and every alert has a case where it stays quiet', async () => {
    const rules = await loadRules();
    const fired = new Set<string>();
    const quiet = new Set<string>();
    const tested = new Set<string>();
    for (const file of await unitTestFiles()) {
      const doc = parseYaml(await readFile(path.join(PROMETHEUS_DIR, file), 'utf8')) as UnitTests;
      for (const ruleFile of doc.rule_files) tested.add(path.basename(ruleFile));
      for (const test of doc.tests) {
        for (const check of test.alert_rule_test ?? []) {
          if ((check.exp_alerts ?? []).length === 0) quiet.add(check.alertname);
          for (const alert of check.exp_alerts ?? []) fired.add(`${check.alertname}/${alert.exp_labels?.severity}`);
        }
      }
    }
    const alerts = rules.filter((r) => r.alert !== undefined);
    assert.ok(alerts.length >= 14, `expected the full set of alerts, found ${alerts.length}`);
    for (const rule of alerts) {
      assert.ok(tested.has(rule.file), `${rule.file} has no unit test file`);
      assert.ok(
        ['page', 'ticket'].includes(rule.labels?.severity ?? ''),
        `${rule.alert}: severity must be page or ticket`,
      );
      assert.ok(
        fired.has(`${rule.alert}/${rule.labels!.severity}`),
        `${rule.alert} (severity ${rule.labels!.severity}) never fires in a unit test`,
      );
      assert.ok(quiet.has(rule.alert!), `${rule.alert} has no unit test where it stays quiet`);
      assert.match(
        rule.annotations?.runbook ?? '',
        new RegExp(`^docs/operations\\.md#${rule.alert!.toLowerCase()}$`),
        `${rule.alert}: runbook annotation`,
      );
    }
  });

  it('each runbook annotation names a section of docs/operations.md', async () => {
    const docs = await readFile(path.resolve(PROMETHEUS_DIR, '../../docs/operations.md'), 'utf8');
    const headings = new Set(
      [...docs.matchAll(/^#+ (.+)$/gm)].map((m) =>
        m[1]!
          .trim()
          .toLowerCase()
          .replace(/[^a-z0-9 -]/g, '')
          .replace(/ /g, '-'),
      ),
    );
    for (const rule of await loadRules()) {
      if (rule.alert === undefined) continue;
      const anchor = rule.annotations!.runbook!.split('#')[1]!;
      assert.ok(headings.has(anchor), `docs/operations.md has no section #${anchor} (for ${rule.alert})`);
    }
  });

  it('amtool accepts the example alertmanager.yml', { skip: amtool }, () => {
    run('amtool', ['check-config', 'alertmanager.yml']);
  });

  describe('the rules select only what Orderflow exposes or records', () => {
    let app: App;
    before(async () => {
      app = await createApp({
        config: loadConfig({ PORT: '0', LOG_LEVEL: 'silent' }),
        inMemory: true,
        log: pino({ level: 'silent' }),
      });
    });
    after(() => app.close());

    it('every metric name in every rule', async () => {
      const scrape = await app.server.inject({ method: 'GET', url: '/metrics' });
      assert.equal(scrape.statusCode, 200);
      const exposed = exposedMetricNames(scrape.body);
      const rules = await loadRules();
      const recorded = new Set(rules.flatMap((r) => (r.record ? [r.record] : [])));
      for (const rule of rules) {
        for (const name of selectedMetricNames(rule.expr)) {
          assert.ok(
            exposed.has(name) || recorded.has(name) || PROMETHEUS_SYNTHETIC.has(name),
            `${rule.alert ?? rule.record} (${rule.file}) selects ${name}, which Orderflow does not expose`,
          );
        }
      }
    });
  });
});
