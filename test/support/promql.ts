// PromQL as the monitoring tests see it: the metric names an expression
// selects (parsed with Prometheus' own lezer grammar, the one its web UI
// uses), the names a /metrics scrape exposes, and the rules in
// deploy/prometheus/rules.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { parser } from '@prometheus-io/lezer-promql';
import { parse as parseYaml } from 'yaml';

export const PROMETHEUS_DIR = path.resolve(import.meta.dirname, '../../deploy/prometheus');

export interface Rule {
  file: string;
  group: string;
  record?: string;
  alert?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

/** Every rule of deploy/prometheus/rules/*.yml, in file and group order. */
export async function loadRules(): Promise<Rule[]> {
  const dir = path.join(PROMETHEUS_DIR, 'rules');
  const rules: Rule[] = [];
  for (const file of (await readdir(dir)).filter((f) => f.endsWith('.yml')).sort()) {
    const doc = parseYaml(await readFile(path.join(dir, file), 'utf8')) as {
      groups: { name: string; rules: Omit<Rule, 'file' | 'group'>[] }[];
    };
    for (const group of doc.groups) for (const rule of group.rules) rules.push({ ...rule, file, group: group.name });
  }
  return rules;
}

/** Thrown for an expression the PromQL grammar rejects. */
export class PromqlSyntaxError extends Error {}

/** The metric names an expression selects: bare names and {__name__="..."} matchers. Throws PromqlSyntaxError. */
export function selectedMetricNames(expr: string): Set<string> {
  const tree = parser.parse(expr);
  const names = new Set<string>();
  let error: number | undefined;
  tree.iterate({
    enter(node) {
      if (node.type.isError) error ??= node.from;
      if (node.name === 'Identifier' && node.node.parent?.name === 'VectorSelector')
        names.add(expr.slice(node.from, node.to));
      if (node.name === 'UnquotedLabelMatcher') {
        const text = expr.slice(node.from, node.to);
        const match = /^__name__\s*=\s*"([^"]+)"$/.exec(text);
        if (match) names.add(match[1]!);
      }
    },
  });
  if (error !== undefined)
    throw new PromqlSyntaxError(
      `PromQL syntax error at character ${error}: ${expr.slice(0, error)}⚠${expr.slice(error)}`,
    );
  return names;
}

/** The sample names a Prometheus text exposition declares (# TYPE lines), with a histogram's _bucket, _sum and _count. */
export function exposedMetricNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const match of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    const [, name, type] = match as unknown as [string, string, string];
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
    else if (type === 'summary') for (const suffix of ['', '_sum', '_count']) names.add(name + suffix);
    else names.add(name);
  }
  return names;
}

/** Series every Prometheus makes itself for each target. */
export const PROMETHEUS_SYNTHETIC = new Set(['up', 'scrape_duration_seconds', 'scrape_samples_scraped']);
