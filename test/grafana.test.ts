// The Grafana dashboards of deploy/grafana, checked without a Grafana
// server: the JSON is what scripts/dashboards.ts builds, it validates
// against Grafana's dashboard schema (a JSON Schema generated from the
// Dashboard type @grafana/schema publishes), every panel query parses as
// PromQL and selects only metrics Orderflow exposes (read from a real
// scrape) or records. That each query returns data from a running cluster
// is checked by test/monitoring.test.ts.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Ajv } from 'ajv';
import { pino } from 'pino';
import { createGenerator } from 'ts-json-schema-generator';
import { dashboardQueries, dashboards, instantiate, staleDashboards } from '../scripts/dashboards.ts';
import { createApp, type App } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { exposedMetricNames, loadRules, PROMETHEUS_SYNTHETIC, selectedMetricNames } from './support/promql.ts';

/** Grafana's dashboard model (schema version 42 and on) as the JSON Schema of @grafana/schema's generated Dashboard type. */
function grafanaDashboardSchema(): object {
  const types = path.join(
    path.dirname(createRequire(import.meta.url).resolve('@grafana/schema/package.json')),
    'dist/types/raw/dashboard/x/types.gen.d.ts',
  );
  // Interfaces become objects with additionalProperties: false, so a misspelt field fails too.
  return createGenerator({ path: types, type: 'Dashboard', skipTypeCheck: true }).createSchema('Dashboard');
}

describe('Grafana dashboards (deploy/grafana)', () => {
  it('the committed JSON is what scripts/dashboards.ts builds', async () => {
    assert.deepEqual(await staleDashboards(), []);
  });

  it("every dashboard validates against Grafana's dashboard schema", async () => {
    const ajv = new Ajv({ allErrors: true, strict: false });
    const validate = ajv.compile(grafanaDashboardSchema());
    for (const { file } of dashboards()) {
      const json: unknown = JSON.parse(await readFile(file, 'utf8'));
      assert.ok(validate(json), `${path.basename(file)}: ${ajv.errorsText(validate.errors, { separator: '\n' })}`);
    }
  });

  it('the schema check refuses a misspelt field and a wrong type', () => {
    const validate = new Ajv({ strict: false }).compile(grafanaDashboardSchema());
    const good = dashboards()[0]!.dashboard;
    assert.ok(validate(JSON.parse(JSON.stringify(good))));
    assert.equal(validate({ ...good, refesh: '30s' }), false);
    assert.equal(
      validate({ ...good, panels: [{ ...good.panels![1], gridPos: { x: 0, y: 0, w: 'wide', h: 8 } }] }),
      false,
    );
  });

  it('every dashboard offers the role and instance variables, and every Orderflow query filters by them', () => {
    for (const { file, dashboard } of dashboards()) {
      const variables = (dashboard.templating?.list ?? []).map((v) => v.name);
      assert.deepEqual(variables, ['datasource', 'role', 'instance'], path.basename(file));
      for (const query of dashboardQueries(dashboard)) {
        // Recorded SLO ratios and the count of ready api processes are deployment-wide on purpose.
        if (/orderflow:|role=~"api\|all"/.test(query.expr)) continue;
        assert.match(
          query.expr,
          /role=~"\$role",instance=~"\$instance"/,
          `${path.basename(file)} "${query.panel}": ${query.expr}`,
        );
      }
    }
  });

  it('every panel has queries, and every query parses as PromQL', () => {
    for (const { file, dashboard } of dashboards()) {
      const panels = (dashboard.panels ?? []).filter((p) => p.type !== 'row');
      assert.ok(panels.length >= 8, `${path.basename(file)} has ${panels.length} panels`);
      const queries = dashboardQueries(dashboard);
      for (const panel of panels)
        assert.ok(
          queries.some((q) => q.panel === panel.title),
          `"${panel.title}" has no query`,
        );
      for (const query of queries)
        assert.doesNotThrow(
          () => selectedMetricNames(instantiate(query.expr)),
          `${path.basename(file)} "${query.panel}"`,
        );
    }
  });

  describe('queries select only what Orderflow exposes or records', () => {
    let app: App;
    before(async () => {
      app = await createApp({
        config: loadConfig({ PORT: '0', LOG_LEVEL: 'silent' }),
        inMemory: true,
        log: pino({ level: 'silent' }),
      });
    });
    after(() => app.close());

    it('every metric name in every panel', async () => {
      const scrape = await app.server.inject({ method: 'GET', url: '/metrics' });
      const exposed = exposedMetricNames(scrape.body);
      const recorded = new Set((await loadRules()).flatMap((r) => (r.record ? [r.record] : [])));
      for (const { file, dashboard } of dashboards()) {
        for (const query of dashboardQueries(dashboard)) {
          for (const name of selectedMetricNames(instantiate(query.expr))) {
            assert.ok(
              exposed.has(name) || recorded.has(name) || PROMETHEUS_SYNTHETIC.has(name),
              `${path.basename(file)} "${query.panel}" selects ${name}, which Orderflow does not expose`,
            );
          }
        }
      }
    });
  });
});
