// The queries of a Grafana dashboard, and how to run them outside Grafana.
import type { Dashboard } from '@grafana/grafana-foundation-sdk/dashboard';

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
    for (const target of (panel as { targets?: { expr?: string; refId?: string; legendFormat?: string }[] }).targets ?? []) {
      if (target.expr) queries.push({ panel: panel.title ?? '', refId: target.refId ?? '', expr: target.expr, legend: target.legendFormat ?? '' });
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
