// The date-time format requests are checked with: RFC 3339, and an instant
// that JavaScript's Date and PostgreSQL's timestamptz both hold.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { isInstant } from './schemas.ts';

it('takes RFC 3339 date-times of years 1 to 9999, any case, any fraction, any offset within a day', () => {
  for (const text of [
    '2026-11-30T10:00:00Z',
    '2026-11-30t10:00:00z',
    '2026-11-30T10:00:00.123456789Z',
    '2024-02-29T00:00:00+05:30',
    '0001-01-01T00:00:00Z',
    '9999-12-31T23:59:59Z',
    '2026-11-30T10:00:00-23:59',
  ]) {
    assert.ok(isInstant(text), text);
  }
});

it('refuses what is no instant, or none the database holds', () => {
  for (const text of [
    '2026-11-30',
    '2026-11-30T10:00:00',
    '2026-11-30 10:00:00Z',
    '2026-13-01T00:00:00Z',
    '2026-02-29T00:00:00Z',
    '2026-04-31T00:00:00Z',
    '2026-11-30T24:00:00Z',
    '2026-06-30T23:59:60Z',
    '2026-11-30T10:00:00+24:00',
    '2026-11-30T10:00:00+00:60',
    '0000-01-01T00:00:00Z',
    '0001-01-01T00:00:00+00:01',
    '9999-12-31T23:59:59-00:01',
    '+275760-09-13T00:00:00Z',
    '10000-01-01T00:00:00Z',
    '',
    'yesterday',
  ]) {
    assert.ok(!isInstant(text), text);
  }
});
