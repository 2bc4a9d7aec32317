// When tracing is on, and under which service name: read from the standard
// OpenTelemetry variables only
// (https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/).

type Env = Record<string, string | undefined>;

/**
 * Tracing is on when an OTLP endpoint is named (OTEL_EXPORTER_OTLP_ENDPOINT or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) or OTEL_TRACES_EXPORTER names an
 * exporter; OTEL_TRACES_EXPORTER=none and OTEL_SDK_DISABLED=true turn it off.
 */
export function tracingRequested(env: Env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '')
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter((name) => name !== '');
  if (exporters.length > 0) return !exporters.every((name) => name === 'none');
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

/**
 * The service.name of this process' spans: OTEL_SERVICE_NAME (or a
 * service.name in OTEL_RESOURCE_ATTRIBUTES, which the SDK reads itself:
 * undefined then), else orderflow-<role> for one role and orderflow for
 * ROLE=all, so a trace shows which process did what.
 */
export function serviceName(env: Env): string | undefined {
  if (env.OTEL_SERVICE_NAME?.trim()) return env.OTEL_SERVICE_NAME.trim();
  if (/(^|,)\s*service\.name\s*=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '')) return undefined;
  const role = env.ROLE?.trim() || 'all';
  return role === 'all' ? 'orderflow' : `orderflow-${role}`;
}
