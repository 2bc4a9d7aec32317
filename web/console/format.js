// Formatting shared by the pages: every number the console shows carries its unit.

/** An amount in minor units (integer cents) in its ISO 4217 currency, e.g. 1299 EUR → €12.99. */
export function money(cents, currency) {
  const format = new Intl.NumberFormat(undefined, { style: 'currency', currency });
  const digits = format.resolvedOptions().maximumFractionDigits ?? 2;
  return format.format(cents / 10 ** digits);
}

/** A count with its unit, singular or plural: count(3, 'unit') → "3 units". */
export function count(n, unit, plural = `${unit}s`) {
  return `${new Intl.NumberFormat().format(n)} ${n === 1 ? unit : plural}`;
}

/** A figure with one or two decimals and its unit, or an em dash when there is none. */
export function figure(value, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  return `${new Intl.NumberFormat(undefined, { maximumFractionDigits: value < 10 ? 2 : 1 }).format(value)} ${unit}`;
}

export function time(iso) {
  return iso ? new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' }) : '—';
}

export function seconds(s) {
  if (s === null || s === undefined) return '—';
  if (s < 120) return figure(s, 's');
  if (s < 7200) return figure(s / 60, 'min');
  return figure(s / 3600, 'h');
}
