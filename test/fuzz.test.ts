// Generated hostile requests over every route, in every mode: malformed JSON,
// wrong types, unknown fields, huge and deeply nested bodies, odd unicode,
// body bytes that are not UTF-8, content codings, charsets and members named
// twice (on every route that takes a body),
// bad cursors and limits, hostile path parameters, header abuse, method
// confusion and token attacks, then raw HTTP/1.1 over a socket (framing the
// parser refuses, oversized headers, a missing Host, CONNECT, Expect). No
// answer may be a 5xx, every error must be problem+json, and afterwards a
// snapshot of every table (and of a broker's dead letters) must be what it
// was before. The admin API and the console are covered like the rest: search
// filters, cursors, dead-letter ids and bodies, the figures stream (over a
// socket, since its 200 never ends), files and the development token.
//
// Every generated request is built to change nothing: a write carries at
// least one defect (a bad token or scope, a body that breaks the schema, a
// SKU that does not exist, an amount over the maximum), or names something
// it cannot change (a cancelled order, a product that does not exist, a dead
// letter that is not there), or
// replays an idempotency key with its own body. So any success of a write,
// or any change in the snapshot, is a bug.
//
// CI runs a fixed seed; FUZZ_RUNS and FUZZ_SEED widen a local run
// (test/support/fuzz.ts). A failure prints fast-check's seed and path.
import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import net from 'node:net';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { openDevIssuer } from '../src/identity/dev-issuer.ts';
import { TEXT_CHARACTER } from '../src/text.ts';
import { OPERATOR_SCOPES } from '../src/admin/console.ts';
import { fuzzParameters } from './support/fuzz.ts';
import { PoisonGateway } from './support/gateways.ts';
import {
  ALL_SCOPES,
  client,
  createProduct,
  eventually,
  modes,
  placeOrder,
  quiesce,
  snapshot,
  startTestApp,
  type Client,
  type TestApp,
} from './support/harness.ts';

/** Every dead letter the admin API lists, with the order it names. */
async function deadLetterIds(operator: Client): Promise<{ id: string; orderId: string | null }[]> {
  const response = await operator.request('GET', '/v1/admin/dead-letters?limit=100');
  assert.equal(response.status, 200, JSON.stringify(response.body));
  return response.body.items.map((l: { id: string; orderId: string | null }) => ({ id: l.id, orderId: l.orderId }));
}

interface Request {
  method: string;
  url: string;
  headers: Record<string, string>;
  payload?: string | Buffer;
  /** A POST that may succeed because it changes nothing: a replay of an idempotency key with its own body. */
  replay?: boolean;
  /** A POST that may succeed because what it names is not there: a re-drive or discard of dead letters that do not exist (each must be not_found). */
  namesNothing?: boolean;
  /** The peer address the request comes from (inject's default is loopback). */
  remoteAddress?: string;
  /** The statuses this request may get, where its family decides them (a bad token: 401, or a path no route matches). */
  expect?: readonly number[];
  /** The problem type this request must get, where its family decides it (a defect that another refusal could hide). */
  problem?: string;
}

interface Fixture {
  tokens: {
    admin: string;
    operator: string;
    redriver: string;
    reader: string;
    writer: string;
    catalog: string;
    none: string;
    hostile: string[];
  };
  confirmed: string;
  cancelled: string;
  replay: { key: string; body: string };
  /** The id of the one dead letter the fixture made (a charge the gateway refuses): no request may settle it. */
  letter: string;
}

const ORDER_ID_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
/** A card token the API takes as text (src/text.ts), so the order is refused for another reason. */
const CARD_TOKEN = new RegExp(`^${TEXT_CHARACTER}+$`, 'u');
const KNOWN_SKUS = ['FZ-1', 'FZ-USD', 'FZ-GOLD', 'FZ-FREE'];
const CONTENT_TYPE = { 'content-type': 'application/json' };

// --- building blocks ----------------------------------------------------------

/** Any unicode: every plane, control characters, lone surrogate halves, U+0000, BOMs, RTL marks. */
const oddChar = fc.oneof(
  fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }),
  fc.constantFrom(
    '\u0000',
    '\u0007',
    '\n',
    '\r',
    '\t',
    '\u007f',
    '\u0085',
    '\ud800',
    '\udfff',
    '\ufeff',
    '\u202e',
    '\u200b',
    '\uffff',
    '😀',
    '\u{10ffff}',
    '%',
    '/',
    '\\',
    '"',
    "'",
  ),
);
const oddString = fc.array(oddChar, { maxLength: 40 }).map((chars) => chars.join(''));
/** Text that breaks the text rule: a forbidden character somewhere. */
const forbiddenText = fc
  .tuple(
    fc.string({ maxLength: 20 }),
    fc.constantFrom('\u0000', '\u0001', '\n', '\u001f', '\u007f', '\u009f', '\ud800', '\udbff', '\udc00', '\udfff'),
    fc.string({ maxLength: 20 }),
  )
  .map(([a, bad, b]) => a + bad + b);

/** A JSON text that is not valid JSON. */
const malformedJson = fc.oneof(
  fc.constantFrom(
    '{',
    '}',
    '[',
    '{"items": [',
    '{"a":1,}',
    "{'a':1}",
    'nul',
    'tru',
    '{"a":01}',
    '{"a":.5}',
    '{"a":+1}',
    '\ufeff{}',
    '{}{}',
    '{"a" 1}',
    '{"\\x": 1}',
    '"\\ud800',
    '{"a":"\u0000"}',
    '[1,,2]',
  ),
  fc.string({ maxLength: 60 }).filter((text) => !isJson(text)),
  fc.json().map((text) => `${text.slice(0, Math.max(0, text.length - 1))}\u0000`),
);
function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** JSON nested past any sane depth, as text (JSON.stringify of such a value would itself overflow). */
const deepJson = fc
  .integer({ min: 100, max: 20_000 })
  .chain((depth) =>
    fc.constantFrom(`${'['.repeat(depth)}${']'.repeat(depth)}`, `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`),
  );

/** Values of the wrong type or out of range, for an integer field in [min, max]. */
function badInteger(min: number, max: number) {
  return fc.oneof(
    fc.integer({ min: max + 1 }),
    fc.integer({ max: min - 1 }),
    fc.double({ noNaN: true, noDefaultInfinity: true }).filter((n) => !Number.isInteger(n)),
    fc.constantFrom(Number.MAX_SAFE_INTEGER + 2, -(2 ** 60), 1e300, min - 0.5),
    fc.string({ maxLength: 10 }),
    fc.constantFrom(null, true, [], {}, [1], { value: 1 }, '1', ''),
  );
}
/** Values that are not a string matching pattern (max characters). */
function badString(pattern: RegExp, maxLength: number) {
  return fc.oneof(
    oddString.filter((s) => !pattern.test(s)),
    forbiddenText,
    fc.constant(''),
    fc.integer({ min: maxLength + 1, max: maxLength + 300 }).map((n) => 'x'.repeat(n)),
    fc.constantFrom(null, 42, true, [], {}, ['x']),
  );
}
const badSku = badString(/^[A-Za-z0-9._-]{1,64}$/, 64);
const badText = (maxLength: number) =>
  fc.oneof(
    { arbitrary: forbiddenText, weight: 4 },
    { arbitrary: fc.constant(''), weight: 1 },
    { arbitrary: fc.integer({ min: maxLength + 1, max: maxLength + 200 }).map((n) => 'é'.repeat(n)), weight: 1 },
    { arbitrary: fc.constantFrom(null, 7, false, [], {}), weight: 1 },
  );
const badCurrency = fc.oneof(
  fc.string({ maxLength: 5 }).filter((c) => !Intl.supportedValuesOf('currency').includes(c)),
  fc.constantFrom('XTS', 'XXX', 'eur', 'EURO', '€', 'E\u0000R', null, 978),
);
/** A key no schema of this API has. */
const unknownKey = fc.oneof(
  fc.string({ minLength: 1, maxLength: 12 }),
  fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'id', 'status', 'totalCents', 'customerId'),
);

/** A field of a valid body, replaced by a defect. */
function mutate(valid: Record<string, unknown>, defects: Record<string, fc.Arbitrary<unknown>>): fc.Arbitrary<unknown> {
  const keys = Object.keys(valid);
  // An unknown field, written into the JSON text so that even "__proto__" is a field of its own.
  const withUnknown = fc
    .tuple(
      unknownKey.filter((k) => !keys.includes(k)),
      fc.jsonValue(),
    )
    .map(([key, value]) => {
      const text = JSON.stringify(valid);
      return JSON.parse(
        `${text.slice(0, -1)}${keys.length > 0 ? ',' : ''}${JSON.stringify(key)}:${JSON.stringify(value)}}`,
      ) as unknown;
    });
  if (keys.length === 0) return withUnknown;
  return fc.oneof(
    {
      arbitrary: fc
        .constantFrom(...Object.keys(defects))
        .chain((field) => defects[field]!.map((value) => ({ ...valid, [field]: value }))),
      weight: 4,
    },
    { arbitrary: withUnknown, weight: 1 },
    {
      arbitrary: fc
        .constantFrom(...keys)
        .map((missing) => Object.fromEntries(Object.entries(valid).filter(([k]) => k !== missing))),
      weight: 1,
    },
  );
}

/** A defective request body as text: malformed, wrong shape, wrong field, too deep, too big. */
function defectiveBody(valid: Record<string, unknown>, defects: Record<string, fc.Arbitrary<unknown>>) {
  return fc.oneof(
    { arbitrary: mutate(valid, defects).map((body) => JSON.stringify(body)), weight: 8 },
    { arbitrary: malformedJson, weight: 2 },
    { arbitrary: fc.constantFrom('null', '[]', '"text"', '0', 'true', '[{}]'), weight: 1 },
    { arbitrary: deepJson, weight: 1 },
    {
      arbitrary: fc
        .integer({ min: 65 * 1024, max: 200 * 1024 })
        .map((n) => JSON.stringify({ ...valid, padding: 'x'.repeat(n) })),
      weight: 1,
    },
  );
}

/** Percent-encoding of any string; a lone surrogate has no UTF-8 form, so it is sent as the bytes a careless encoder would write (CESU-8). */
const encode = (s: string) =>
  encodeURIComponent(s.replace(/[\ud800-\udfff]/gu, '\ue000')).replaceAll('%EE%80%80', '%ED%A0%80');

/** A percent-encoded path segment, usually hostile. */
const hostileSegment = fc.oneof(
  oddString.map((s) => encode(s) || '%00'),
  fc.constantFrom(
    '%00',
    '%ZZ',
    '%',
    '%%',
    '%C0%AF',
    '%ED%A0%80',
    '%E0%A4%A',
    '..',
    '.',
    '%2e%2e',
    '%2F',
    'a%00b',
    '%0d%0a',
    '%FF',
    '~',
    '-',
  ),
  fc.integer({ min: 60, max: 130 }).map((n) => 'A'.repeat(n)),
  fc.string({ minLength: 1, maxLength: 30 }).map(encode),
);
const wellFormedOrderId = fc
  .array(fc.constantFrom(...ORDER_ID_ALPHABET), { minLength: 26, maxLength: 26 })
  .map((chars) => `ord_${chars.join('')}`);

/** Query strings: limits, cursors and statuses out of range or of the wrong kind, unknown and repeated keys. */
const cursorOf = (value: unknown) => Buffer.from(JSON.stringify(value) ?? 'undefined').toString('base64url');
const hostileParameter = fc.oneof(
  fc.tuple(
    fc.constant('limit'),
    fc.oneof(
      fc.constantFrom('0', '101', '-1', '1.5', '1e2', '', '00', '%00', 'abc', '9'.repeat(30), '10&limit=20'),
      fc.integer().map(String),
    ),
  ),
  fc.tuple(
    fc.constant('cursor'),
    fc.oneof(
      fc.jsonValue().map(cursorOf),
      fc.constantFrom(
        cursorOf(1.5),
        cursorOf(0),
        cursorOf(-1),
        cursorOf(1e300),
        cursorOf(2 ** 53),
        cursorOf('\u0000'),
        cursorOf('a b'),
        cursorOf('x'.repeat(70)),
        cursorOf('5'),
        '%00',
        '!!',
        '====',
        'x'.repeat(600),
      ),
      fc.oneof(fc.double(), fc.integer(), oddString).map(cursorOf),
      oddString.map(encode),
    ),
  ),
  fc.tuple(
    fc.constant('status'),
    fc.oneof(fc.constantFrom('lost', 'PENDING', '', '%00', 'pending%00'), oddString.map(encode)),
  ),
  fc.tuple(unknownKey.map(encode), oddString.map(encode)),
);
/** Query strings: mostly one hostile parameter among valid ones, so that it is the one that has to be caught; sometimes several. */
const hostileQuery = fc
  .record({
    hostile: fc.oneof(
      { arbitrary: hostileParameter.map((p) => [p]), weight: 3 },
      { arbitrary: fc.array(hostileParameter, { minLength: 2, maxLength: 4 }), weight: 1 },
    ),
    valid: fc.subarray([['limit', '7']] as [string, string][]),
  })
  .map(({ hostile, valid }) => [...valid, ...hostile].map(([key, value]) => `${key}=${value}`).join('&'));

/** A date-time that is no instant, or none the database can hold: impossible dates, leap seconds, years 0 and past 9999, offsets out of range, local times. */
const badTimestamp = fc.oneof(
  {
    arbitrary: fc.constantFrom(
      'yesterday',
      '',
      '2026-13-01T00:00:00Z',
      '2026-02-30T00:00:00Z',
      '2026-11-30',
      '2026-11-30T10:00:00',
      '2026-11-30 10:00:00Z',
      '0000-01-01T00:00:00Z',
      '9999-12-31T23:59:60Z',
      '2026-06-30T23:59:60Z',
      '2026-11-30T24:00:00Z',
      '2026-11-30T10:00:00+24:00',
      '2026-11-30T10:00:00%2B99:99',
      '+275760-09-13T00:00:00Z',
      '-000001-01-01T00:00:00Z',
      '10000-01-01T00:00:00Z',
      '1e12',
      '0',
      '2026-11-30T10:00:00.%00Z',
      '2026-11-30T10:00:00Z%00',
      '0001-01-01T00:00:00%2B00:01',
      '9999-12-31T23:59:59-00:01',
      '2026-11-30T10:00:00%2B23:60',
    ),
    weight: 4,
  },
  // Any instant JavaScript holds, most of them outside the years 1–9999 (written with six digits and a sign).
  { arbitrary: fc.date({ noInvalidDate: true }).map((d) => encode(d.toISOString())), weight: 1 },
  { arbitrary: oddString.map(encode), weight: 1 },
);
const goodTimestamp = fc
  .date({ min: new Date('2000-01-01T00:00:00Z'), max: new Date('2100-01-01T00:00:00Z'), noInvalidDate: true })
  .map((d) => encode(d.toISOString()));
/** The search's own filters, broken (and a time range reversed or empty): each must be a 400 naming it, never a query. */
const hostileSearchParameter = fc.oneof(
  hostileParameter,
  fc.tuple(
    fc.constant('rejectReason'),
    fc.oneof(fc.constantFrom('bored', 'PAYMENT_FAILED', '', 'payment_failed%00'), oddString.map(encode)),
  ),
  fc.tuple(
    fc.constant('customerId'),
    fc.oneof(fc.constantFrom('', '%00', 'a%0Ab', `${'c'.repeat(256)}`), forbiddenText.map(encode)),
  ),
  fc.tuple(fc.constant('sku'), badSku.filter((v): v is string => typeof v === 'string').map(encode)),
  fc.tuple(fc.constantFrom('from', 'to'), badTimestamp),
  fc
    .tuple(goodTimestamp, goodTimestamp)
    .map(([a, b]): [string, string] => ['from', `${a < b ? b : a}&to=${a < b ? a : b}`]),
  fc.tuple(
    fc.constant('queue'),
    fc.oneof(fc.constantFrom('', 'PAYMENTS', 'a b', '.x', 'x'.repeat(65), '%00'), oddString.map(encode)),
  ),
);
const hostileSearchQuery = fc
  .record({
    hostile: fc.oneof(
      { arbitrary: hostileSearchParameter.map((p) => [p]), weight: 3 },
      { arbitrary: fc.array(hostileSearchParameter, { minLength: 2, maxLength: 4 }), weight: 1 },
    ),
    valid: fc.subarray([
      ['limit', '7'],
      ['status', 'confirmed'],
      ['sku', 'FZ-1'],
    ] as [string, string][]),
  })
  .map(({ hostile, valid }) => [...valid, ...hostile].map(([key, value]) => `${key}=${value}`).join('&'));

// --- request families --------------------------------------------------------

type Route = {
  method: string;
  path: (sku: string, id: string) => string;
  body?: Record<string, unknown>;
  namesNothing?: boolean;
};

/** A dead-letter id no mode has given out: its valid body settles nothing. */
const NO_LETTER = 'fz-no-such-letter';

const ROUTES: Route[] = [
  { method: 'GET', path: () => '/healthz' },
  { method: 'GET', path: () => '/readyz' },
  { method: 'GET', path: () => '/metrics' },
  { method: 'GET', path: () => '/v1/openapi.json' },
  { method: 'GET', path: () => '/v1/products' },
  {
    method: 'POST',
    path: () => '/v1/products',
    body: { sku: 'FZ-NEW', name: 'Kettle', priceCents: 100, currency: 'EUR', stock: 5 },
  },
  { method: 'GET', path: (sku) => `/v1/products/${sku}` },
  { method: 'POST', path: (sku) => `/v1/products/${sku}/stock`, body: { delta: 5 } },
  { method: 'GET', path: () => '/v1/orders' },
  {
    method: 'POST',
    path: () => '/v1/orders',
    body: { items: [{ sku: 'FZ-1', quantity: 1 }], payment: { token: 'tok_visa' } },
  },
  { method: 'GET', path: (_sku, id) => `/v1/orders/${id}` },
  { method: 'POST', path: (_sku, id) => `/v1/orders/${id}/cancel`, body: {} },
  { method: 'GET', path: () => '/v1/admin/orders' },
  { method: 'GET', path: (_sku, id) => `/v1/admin/orders/${id}` },
  { method: 'GET', path: () => '/v1/admin/products' },
  { method: 'GET', path: () => '/v1/admin/invariants' },
  { method: 'GET', path: () => '/v1/admin/dead-letters' },
  { method: 'POST', path: () => '/v1/admin/dead-letters/redrive', body: { ids: [NO_LETTER] }, namesNothing: true },
  { method: 'POST', path: () => '/v1/admin/dead-letters/discard', body: { ids: [NO_LETTER] }, namesNothing: true },
  { method: 'GET', path: () => '/v1/admin/figures' },
  { method: 'GET', path: () => '/console/' },
  { method: 'GET', path: () => '/console/session-options' },
  { method: 'GET', path: (sku) => `/console/vendor/${sku}` },
];
/**
 * The figures stream never ends once it is answered 200, so it is kept out of
 * the families that may use a good token and query, and sent over a socket
 * by its own family, where an answer 200 is a failure rather than a hang.
 */
const STREAM_PATH = '/v1/admin/figures/stream';
const UNKNOWN_PATHS = [
  '/',
  '/v1',
  '/v1/',
  '/v2/orders',
  '/v1/admin',
  '/v1/admin/',
  '/v1/admin/dead-letters/1',
  '/v1/admin/figures/stream/x',
  '/console/nope.js',
  '/console/../package.json',
  '/console/vendor/',
  '/v1/orders/x/refund',
  '/v1/products//stock',
  '/%2e%2e/etc/passwd',
  '/v1/products/FZ-1/../../orders',
  '//v1/orders',
  '/V1/ORDERS',
];
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'PROPFIND', 'SEARCH'];

/** Each family of hostile requests, with the number of requests CI draws from it. */
function families(f: Fixture): Record<string, { requests: fc.Arbitrary<Request>; runs: number; overSocket?: boolean }> {
  const anyRoute = fc.constantFrom(...ROUTES);
  const anySku = fc.oneof(fc.constantFrom(...KNOWN_SKUS, 'NOPE-1'), hostileSegment);
  const anyId = fc.oneof(fc.constantFrom(f.confirmed, f.cancelled), wellFormedOrderId, hostileSegment);
  const validToken = fc.constantFrom(
    f.tokens.admin,
    f.tokens.operator,
    f.tokens.redriver,
    f.tokens.reader,
    f.tokens.writer,
    f.tokens.catalog,
    f.tokens.none,
  );
  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
  const bodyOf = (route: Route) => (route.body ? JSON.stringify(route.body) : undefined);

  // A token that proves nothing, on any route with any body: 401 before anything else runs.
  // Only /v1 routes need a token; their path is checked after the token, so any path parameter gets 401.
  const tokenAttacks = fc
    .record({
      route: fc.constantFrom<Route>(
        ...ROUTES.filter((r) => r.path('x', 'x').startsWith('/v1/') && r.path('x', 'x') !== '/v1/openapi.json'),
        { method: 'GET', path: () => STREAM_PATH },
      ),
      sku: anySku,
      id: anyId,
      authorization: fc.oneof(
        { arbitrary: fc.constantFrom(...f.tokens.hostile.map((token) => `Bearer ${token}`)), weight: 3 },
        { arbitrary: oddString.filter((s) => !/^\s*$/.test(s)).map((s) => `Bearer ${s}`), weight: 1 },
        {
          arbitrary: fc.constantFrom(
            '',
            'Bearer',
            'Bearer ',
            'Basic YWxpY2U6cHc=',
            'Bearer a.b',
            'Bearer a b c',
            `Bearer ${f.tokens.admin}x`,
            `bearer${f.tokens.admin}`,
            `Token ${f.tokens.admin}`,
          ),
          weight: 1,
        },
      ),
    })
    .map(({ route, sku, id, authorization }): Request => ({
      method: route.method,
      url: route.path(sku, id),
      headers: authorization === '' ? { ...CONTENT_TYPE } : { ...CONTENT_TYPE, authorization },
      payload: bodyOf(route),
      // A path that matches no route (it does not decode, a segment is too long, a dot segment moves it) fails before any token check;
      // one that a dot segment moves onto another route's path is 405 there.
      expect: [401, 400, 404, 405, 414],
    }));

  // A valid token without the scope a write needs: 403, however good the body.
  const scopeAttacks = fc
    .constantFrom<[string, Request]>(
      [
        f.tokens.reader,
        {
          method: 'POST',
          url: '/v1/orders',
          headers: { ...CONTENT_TYPE, 'idempotency-key': 'fz-scope' },
          payload: bodyOf(ROUTES[9]!),
        },
      ],
      [f.tokens.writer, { method: 'POST', url: '/v1/products', headers: CONTENT_TYPE, payload: bodyOf(ROUTES[5]!) }],
      [
        f.tokens.writer,
        { method: 'POST', url: '/v1/products/FZ-1/stock', headers: CONTENT_TYPE, payload: '{"delta": 1}' },
      ],
      [
        f.tokens.catalog,
        { method: 'POST', url: `/v1/orders/${f.confirmed}/cancel`, headers: CONTENT_TYPE, payload: '{}' },
      ],
      [f.tokens.none, { method: 'GET', url: '/v1/orders', headers: {} }],
      // The admin routes: orders:admin reads, operations:write settles dead letters; neither implies the other.
      [f.tokens.writer, { method: 'GET', url: '/v1/admin/orders', headers: {} }],
      [f.tokens.reader, { method: 'GET', url: `/v1/admin/orders/${f.confirmed}`, headers: {} }],
      [f.tokens.writer, { method: 'GET', url: '/v1/admin/products', headers: {} }],
      [f.tokens.catalog, { method: 'GET', url: '/v1/admin/invariants', headers: {} }],
      [f.tokens.catalog, { method: 'GET', url: '/v1/admin/dead-letters', headers: {} }],
      [f.tokens.redriver, { method: 'GET', url: '/v1/admin/figures', headers: {} }],
      [
        f.tokens.admin,
        {
          method: 'POST',
          url: '/v1/admin/dead-letters/redrive',
          headers: CONTENT_TYPE,
          payload: JSON.stringify({ ids: [f.letter] }),
        },
      ],
      [
        f.tokens.admin,
        {
          method: 'POST',
          url: '/v1/admin/dead-letters/discard',
          headers: CONTENT_TYPE,
          payload: JSON.stringify({ ids: [f.letter] }),
        },
      ],
      [
        f.tokens.writer,
        {
          method: 'POST',
          url: '/v1/admin/dead-letters/redrive',
          headers: CONTENT_TYPE,
          payload: JSON.stringify({ ids: [f.letter] }),
        },
      ],
    )
    .map(([token, request]) => ({ ...request, headers: { ...request.headers, ...bearer(token) }, expect: [403] }));

  // Bodies that break each write's schema, sent with every scope there is.
  const productDefects = {
    sku: badSku,
    name: badText(200),
    priceCents: badInteger(0, 1_000_000_000),
    currency: badCurrency,
    stock: badInteger(0, 1_000_000_000),
  };
  const orderDefects = {
    items: fc.oneof(
      fc.constantFrom([], 'FZ-1', null, {}),
      fc.integer({ min: 101, max: 150 }).map((n) => Array.from({ length: n }, () => ({ sku: 'FZ-1', quantity: 1 }))),
      fc.oneof(
        badSku.map((sku) => [{ sku, quantity: 1 }]),
        badInteger(1, 1_000_000).map((quantity) => [{ sku: 'FZ-1', quantity }]),
        fc.jsonValue().map((extra) => [{ sku: 'FZ-1', quantity: 1, extra }]),
      ),
    ),
    payment: fc.oneof(
      badText(255).map((token) => ({ token })),
      fc.constantFrom(null, {}, 'tok_visa', [], { token: 'tok_visa', cvc: '123' }),
    ),
  };
  const contentType = fc.constantFrom(
    'application/json',
    'application/json; charset=utf-8',
    'Application/JSON',
    'application/json;;',
    'text/plain',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=x',
    'application/json; charset=utf-16',
    '',
    'application/problem+json',
    '*/*',
  );
  /** A write with a defective body (and any content type), under every scope there is. */
  const bodyAttack = (
    build: (body: string) => Omit<Request, 'headers'> & { headers?: Record<string, string> },
    bodies: fc.Arbitrary<string>,
  ) =>
    fc
      .record({
        token: fc.constantFrom(f.tokens.admin, f.tokens.writer, f.tokens.catalog),
        body: bodies,
        contentType: fc.oneof(
          { arbitrary: fc.constant('application/json'), weight: 4 },
          { arbitrary: contentType, weight: 1 },
        ),
      })
      .map(({ token, body, contentType }): Request => {
        const request = build(body);
        return {
          ...request,
          headers: { ...bearer(token), ...(contentType ? { 'content-type': contentType } : {}), ...request.headers },
        };
      });
  // Cancel takes only an empty body or {}: anything else, on any order.
  // JSON whitespace is space, tab, CR and LF: the texts of "no body" and of an empty object.
  const isEmptyOrEmptyObject = (text: string) =>
    /^[ \t\r\n]*(\{[ \t\r\n]*\}[ \t\r\n]*)?$/.test(text) || text.trim() === '';
  const cancelBodies = fc
    .oneof(
      fc.jsonValue().map((value) => JSON.stringify(value)),
      fc.constantFrom('null', '[]', '""', '0', 'false', '{"reason":"changed my mind"}', '{"__proto__":{}}'),
      malformedJson,
      deepJson,
    )
    .filter((text) => !isEmptyOrEmptyObject(text));
  const productBodies = bodyAttack(
    (payload) => ({ method: 'POST', url: '/v1/products', payload }),
    defectiveBody(ROUTES[5]!.body!, productDefects),
  );
  const stockBodies = fc
    .tuple(
      fc.constantFrom(...KNOWN_SKUS),
      defectiveBody({ delta: 5 }, { delta: badInteger(-1_000_000_000, 1_000_000_000) }),
    )
    .chain(([sku, body]) =>
      bodyAttack((payload) => ({ method: 'POST', url: `/v1/products/${sku}/stock`, payload }), fc.constant(body)),
    );
  const orderBodies = fc
    .tuple(
      fc.oneof(fc.constant('fz-body'), forbiddenText, fc.constant(''), fc.constant('k'.repeat(256))),
      defectiveBody(ROUTES[9]!.body!, orderDefects),
    )
    .chain(([key, body]) =>
      bodyAttack(
        (payload) => ({ method: 'POST', url: '/v1/orders', payload, headers: { 'idempotency-key': key } }),
        fc.constant(body),
      ),
    );
  const cancels = fc
    .tuple(fc.constantFrom(f.confirmed, f.cancelled), cancelBodies)
    .chain(([id, body]) =>
      bodyAttack((payload) => ({ method: 'POST', url: `/v1/orders/${id}/cancel`, payload }), fc.constant(body)),
    );

  // Well-formed orders that must still be refused (422), or replays that change nothing (200).
  const orderAttacks = fc
    .record({
      items: fc.oneof(
        fc.constant([{ sku: 'NOPE-1', quantity: 1 }]),
        fc.constant([{ sku: 'FZ-GOLD', quantity: 1 }]),
        fc
          .integer({ min: 2, max: 100 })
          .map((n) => Array.from({ length: n }, () => ({ sku: 'FZ-GOLD', quantity: 1_000_000 }))),
        fc.constant([
          { sku: 'FZ-1', quantity: 1 },
          { sku: 'FZ-USD', quantity: 1 },
        ]),
        fc.constant([{ sku: 'FZ-FREE', quantity: 3 }]),
      ),
      token: oddString.filter((s) => s.length > 0 && CARD_TOKEN.test(s)),
    })
    .chain(({ items, token }) =>
      fc.constantFrom<Request>(
        {
          method: 'POST',
          url: '/v1/orders',
          headers: { ...CONTENT_TYPE, ...bearer(f.tokens.writer), 'idempotency-key': `fz-${token.length}` },
          payload: JSON.stringify({ items, payment: { token } }),
        },
        // The fixture's key with another body: 422; with its own body: the stored order, 200.
        {
          method: 'POST',
          url: '/v1/orders',
          headers: { ...CONTENT_TYPE, ...bearer(f.tokens.writer), 'idempotency-key': f.replay.key },
          payload: JSON.stringify({ items, payment: { token } }),
        },
        {
          method: 'POST',
          url: '/v1/orders',
          headers: { ...CONTENT_TYPE, ...bearer(f.tokens.writer), 'idempotency-key': f.replay.key },
          payload: f.replay.body,
          replay: true,
        },
      ),
    );

  // Path parameters of every form, on every route, with valid bodies: they name nothing that can change.
  const pathAttacks = fc
    .record({
      route: anyRoute,
      sku: fc.oneof(fc.constant('NOPE-1'), hostileSegment),
      id: fc.oneof(fc.constant(f.cancelled), wellFormedOrderId, hostileSegment),
      token: validToken,
    })
    .map(({ route, sku, id, token }): Request => ({
      method: route.method,
      url: route.path(sku, id),
      headers: { ...CONTENT_TYPE, ...bearer(token), 'idempotency-key': 'fz-path' },
      // A product body with a taken SKU (409) rather than a new one; an order naming no product (422).
      payload:
        route.body === undefined
          ? undefined
          : JSON.stringify(
              route.path('x', 'x') === '/v1/products'
                ? { ...route.body, sku: 'FZ-1' }
                : route.path('x', 'x') === '/v1/orders'
                  ? { ...route.body, items: [{ sku: 'NOPE-1', quantity: 1 }] }
                  : route.body,
            ),
      ...(route.namesNothing ? { namesNothing: true } : {}),
    }));

  // Reads with hostile query strings.
  const queryAttacks = fc
    .record({
      path: fc.constantFrom('/v1/products', '/v1/orders', '/healthz', `/v1/orders/${f.confirmed}`),
      query: hostileQuery,
      token: validToken,
    })
    .map(({ path, query, token }): Request => ({ method: 'GET', url: `${path}?${query}`, headers: bearer(token) }));

  // Methods a path does not take, and paths that do not exist.
  const methodConfusion = fc
    .record({
      method: fc.constantFrom(...METHODS),
      route: anyRoute,
      unknown: fc.constantFrom(...UNKNOWN_PATHS),
      useUnknown: fc.boolean(),
      token: validToken,
    })
    .map(({ method, route, unknown, useUnknown, token }): Request => {
      const url = useUnknown ? unknown : route.path('FZ-1', f.cancelled);
      // Only the exact method a write route takes may carry its valid body, and then only where it changes nothing.
      const safeBody =
        method === 'POST' && !useUnknown && route.method === 'POST'
          ? url === '/v1/products'
            ? { ...route.body, sku: 'FZ-1' }
            : url === '/v1/orders'
              ? { items: [{ sku: 'NOPE-1', quantity: 1 }], payment: { token: 'tok_visa' } }
              : url.endsWith('/stock')
                ? { delta: 'x' }
                : route.body
          : { probe: true };
      // On a known path, a method none of its routes takes is 405.
      const allowed = ROUTES.filter((r) => r.path('FZ-1', f.cancelled) === url).flatMap((r) =>
        r.method === 'GET' ? ['GET', 'HEAD'] : [r.method],
      );
      return {
        method,
        url,
        headers: { ...CONTENT_TYPE, ...bearer(token), 'idempotency-key': 'fz-method' },
        payload: method === 'GET' || method === 'HEAD' ? undefined : JSON.stringify(safeBody),
        ...(!useUnknown && !allowed.includes(method) ? { expect: [405] } : {}),
        ...(!useUnknown && route.namesNothing && method === 'POST' ? { namesNothing: true } : {}),
      };
    });

  // Header abuse on reads: odd values everywhere, repeated and oversized (within the inject path; sockets test the size limit).
  const headerAbuse = fc
    .record({
      path: fc.constantFrom('/v1/products', '/v1/orders', `/v1/products/FZ-1`, '/healthz'),
      extra: fc.dictionary(
        fc.oneof(
          fc.constantFrom(
            'x-request-id',
            'accept',
            'accept-version',
            'content-type',
            'idempotency-key',
            'x-forwarded-for',
            'content-encoding',
            'if-none-match',
            'range',
          ),
          fc.stringMatching(/^[a-z][a-z0-9-]{0,15}$/),
        ),
        fc.oneof(
          fc.string({ unit: 'binary-ascii', maxLength: 40 }),
          fc.integer({ min: 1, max: 8_000 }).map((n) => 'v'.repeat(n)),
        ),
        { maxKeys: 4 },
      ),
      token: validToken,
    })
    .map(({ path, extra, token }): Request => ({
      method: 'GET',
      url: path,
      headers: {
        ...Object.fromEntries(Object.entries(extra).filter(([, v]) => /^[\t\x20-\x7e]*$/.test(v))),
        ...bearer(token),
      },
    }));

  // The admin reads with hostile filters, cursors and limits: never a 5xx, never a query the database refuses.
  const adminQueries = fc
    .record({
      path: fc.constantFrom(
        '/v1/admin/orders',
        '/v1/admin/products',
        '/v1/admin/dead-letters',
        '/v1/admin/invariants',
        '/v1/admin/figures',
        `/v1/admin/orders/${f.confirmed}`,
      ),
      query: hostileSearchQuery,
      token: fc.constantFrom(f.tokens.admin, f.tokens.operator),
    })
    .map(({ path, query, token }): Request => ({ method: 'GET', url: `${path}?${query}`, headers: bearer(token) }));

  // Re-drive and discard bodies that break the schema, with the fixture's letter among the ids where one fits.
  const idDefects = {
    ids: fc.oneof(
      badString(/^[\x21-\x7e]{1,300}$/, 300).map((id) => [id]),
      badString(/^[\x21-\x7e]{1,300}$/, 300).map((id) => [f.letter, id]),
      fc.constantFrom([], [f.letter, f.letter], 'all', f.letter, null, {}, [1], [null], [[f.letter]], { 0: f.letter }),
      fc.integer({ min: 101, max: 130 }).map((n) => [f.letter, ...Array.from({ length: n }, (_, i) => `fz-${i}`)]),
    ),
  };
  const settleBodies = fc
    .tuple(fc.constantFrom('redrive', 'discard'), defectiveBody({ ids: [f.letter] }, idDefects))
    .chain(([verb, body]) =>
      bodyAttack((payload) => ({ method: 'POST', url: `/v1/admin/dead-letters/${verb}`, payload }), fc.constant(body)),
    )
    .map((request): Request => ({ ...request, headers: { ...request.headers, ...bearer(f.tokens.operator) } }));

  // Well-formed ids that name no dead letter in this mode (a job id, a stream sequence, a queue and message id, anything printable): 200, each not_found, nothing settled.
  const strayIds = fc.array(
    fc
      .oneof(
        fc.constantFrom(
          '0',
          '-1',
          '00',
          '1.5',
          '9'.repeat(18),
          '9'.repeat(19),
          '9'.repeat(300),
          '999999999999999',
          `${Number.MAX_SAFE_INTEGER}`,
          'payments.charge:x',
          'payments.charge:',
          ':',
          'nope:1',
          'x'.repeat(300),
        ),
        fc.bigInt({ min: 0n, max: 10n ** 20n }).map(String),
        fc.stringMatching(/^[\x21-\x7e]{1,40}$/),
      )
      .filter((id) => id !== f.letter),
    { minLength: 1, maxLength: 20 },
  );
  const strayLetters = fc
    .record({ verb: fc.constantFrom('redrive', 'discard'), ids: strayIds.map((ids) => [...new Set(ids)]) })
    .map(({ verb, ids }): Request => ({
      method: 'POST',
      url: `/v1/admin/dead-letters/${verb}`,
      headers: { ...CONTENT_TYPE, ...bearer(f.tokens.operator) },
      payload: JSON.stringify({ ids }),
      namesNothing: true,
    }));

  // The figures stream: any query, any token without orders:admin, any bad token. Sent over a socket (see streamAnswer).
  const streamAttacks = fc.oneof(
    fc
      .record({ query: hostileSearchQuery, token: fc.constantFrom(f.tokens.admin, f.tokens.operator) })
      .map(({ query, token }): Request => ({
        method: 'GET',
        url: `${STREAM_PATH}?${query}`,
        headers: bearer(token),
        expect: [400],
      })),
    fc
      .constantFrom(f.tokens.reader, f.tokens.writer, f.tokens.catalog, f.tokens.none, f.tokens.redriver)
      .map((token): Request => ({ method: 'GET', url: STREAM_PATH, headers: bearer(token), expect: [403] })),
    fc.constantFrom(...f.tokens.hostile, '').map((token): Request => ({
      method: 'GET',
      url: STREAM_PATH,
      headers: token === '' ? {} : bearer(token),
      expect: [401],
    })),
  );

  // The console's files and its development token: hostile file names, traversal, and a token asked for from another machine.
  const consoleAttacks = fc.oneof(
    fc
      .record({
        method: fc.constantFrom('GET', 'HEAD'),
        prefix: fc.constantFrom('/console/', '/console/vendor/'),
        name: fc.oneof(
          hostileSegment,
          fc.constantFrom(
            '..%2F..%2Fpackage.json',
            '..%5C..%5Cpackage.json',
            '%2e%2e/%2e%2e/package.json',
            'index.html%00.js',
            'vendor/../../src/main.ts',
            '.env',
            'vendor/%2E%2E%2Fpackage.json',
            'app.js/',
            'preact.mjs%00',
          ),
        ),
      })
      .map(({ method, prefix, name }): Request => ({ method, url: `${prefix}${name}`, headers: {} })),
    fc
      .record({
        remoteAddress: fc.constantFrom('192.0.2.10', '::ffff:192.0.2.10', '2001:db8::1', '10.0.0.1', '::ffff:7f00:1'),
        forwarded: fc.constantFrom<Record<string, string>>(
          {},
          { 'x-forwarded-for': '127.0.0.1' },
          { forwarded: 'for=127.0.0.1', 'x-real-ip': '::1' },
        ),
        body: fc.oneof(
          fc.constant(undefined),
          fc.jsonValue().map((v) => JSON.stringify(v)),
          malformedJson,
        ),
      })
      .map(({ remoteAddress, forwarded, body }): Request => ({
        method: 'POST',
        url: '/console/dev-token',
        headers: { ...CONTENT_TYPE, ...forwarded },
        payload: body,
        remoteAddress,
        expect: [400, 403, 404, 413],
      })),
  );

  // The bytes of a body, on every route that takes one, under a token that
  // may use it: a body the route would take but for one defect, which alone
  // must refuse it. Bytes that are not UTF-8 anywhere (400), a content coding
  // (415), a charset other than UTF-8 (415), a member named twice, in any
  // object of the body, spelt alike or with an escape (400).
  const takenBodies: { route: Route; url: string; body: Record<string, unknown>; headers: Record<string, string> }[] =
    ROUTES.filter((route) => route.body !== undefined).map((route) => {
      const url = route.path('FZ-1', f.confirmed);
      const token = url.startsWith('/v1/admin/') ? f.tokens.operator : f.tokens.admin;
      // A new product, a real dead letter: taken, each would change something.
      const body =
        url === '/v1/products'
          ? { ...route.body, sku: 'FZ-BYTES' }
          : url.startsWith('/v1/admin/dead-letters/')
            ? { ids: [f.letter] }
            : route.body!;
      return { route, url, body, headers: { ...bearer(token), 'idempotency-key': 'fz-bytes' } };
    });
  const notUtf8 = fc.oneof(
    fc.constantFrom(
      [0xff],
      [0xfe, 0xff],
      [0x80],
      [0xc0, 0xaf],
      [0xed, 0xa0, 0x80],
      [0xe2, 0x82],
      [0xf4, 0x90, 0x80, 0x80],
      [0xf8, 0x88, 0x80, 0x80, 0x80],
    ),
    fc
      .uint8Array({ minLength: 1, maxLength: 8 })
      .filter((bytes) => !isUtf8(bytes))
      .map((bytes) => [...bytes]),
  );
  /** The body as text with one member of one of its objects (an invented one in an empty object) named again. */
  const twice = (body: Record<string, unknown>) => {
    const objects: Record<string, unknown>[] = [];
    const walk = (value: unknown) => {
      if (Array.isArray(value)) value.forEach(walk);
      else if (value !== null && typeof value === 'object') {
        objects.push(value as Record<string, unknown>);
        Object.values(value).forEach(walk);
      }
    };
    walk(body);
    return fc
      .record({
        at: fc.nat({ max: objects.length - 1 }),
        name: unknownKey,
        other: fc.jsonValue(),
        same: fc.boolean(),
        escaped: fc.boolean(),
        pick: fc.nat(),
      })
      .map(({ at, name, other, same, escaped, pick }) => {
        const target = objects[at]!;
        const names = Object.keys(target);
        const repeated = names.length > 0 ? names[pick % names.length]! : name;
        // The same value again, or another: the body is refused for the name alone either way.
        const again = same && names.length > 0 ? target[repeated] : other;
        // The first character as \uXXXX: the same name to JSON, another spelling to a byte comparison.
        const spelt = escaped
          ? `"\\u${repeated.charCodeAt(0).toString(16).padStart(4, '0')}${JSON.stringify(repeated.slice(1)).slice(1)}`
          : JSON.stringify(repeated);
        const extra = names.length > 0 ? [] : [`${JSON.stringify(name)}:${JSON.stringify(again)}`];
        const text = (value: unknown): string => {
          if (Array.isArray(value)) return `[${value.map(text).join(',')}]`;
          if (value === null || typeof value !== 'object') return JSON.stringify(value);
          const members = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}:${text(v)}`);
          if (value === target) members.push(...extra, `${spelt}:${JSON.stringify(again)}`);
          return `{${members.join(',')}}`;
        };
        return text(body);
      });
  };
  const bodyBytes = fc.constantFrom(...takenBodies).chain(({ url, body, headers }) => {
    const text = JSON.stringify(body);
    const request = (payload: string | Buffer, extra: Record<string, string>, problem: string): Request => ({
      method: 'POST',
      url,
      headers: { ...CONTENT_TYPE, ...headers, ...extra },
      payload,
      expect: [
        problem === '/problems/unsupported-media-type' || problem === '/problems/unsupported-content-encoding'
          ? 415
          : 400,
      ],
      problem,
    });
    return fc.oneof(
      fc
        .tuple(notUtf8, fc.nat({ max: text.length }))
        .map(([bytes, at]) =>
          request(
            Buffer.concat([Buffer.from(text.slice(0, at)), Buffer.from(bytes), Buffer.from(text.slice(at))]),
            {},
            '/problems/malformed-json',
          ),
        ),
      fc
        .constantFrom(
          'gzip',
          'x-gzip',
          'deflate',
          'br',
          'zstd',
          'compress',
          'GZIP',
          'identity, gzip',
          'gzip, identity',
          '*',
          'aes128gcm',
        )
        .map((encoding) =>
          request(
            /gzip/i.test(encoding) ? gzipSync(text) : text,
            { 'content-encoding': encoding },
            '/problems/unsupported-content-encoding',
          ),
        ),
      fc
        .oneof(
          fc.constantFrom(
            'latin1',
            'ISO-8859-1',
            'utf-16',
            'UTF-16LE',
            'us-ascii',
            'windows-1252',
            'utf-7',
            '"utf-32"',
            'utf-8x',
            '',
          ),
          fc.stringMatching(/^[A-Za-z0-9_-]{1,12}$/).filter((name) => !['utf-8', 'utf8'].includes(name.toLowerCase())),
        )
        .map((charset) =>
          request(text, { 'content-type': `application/json; charset=${charset}` }, '/problems/unsupported-media-type'),
        ),
      twice(body).map((duplicated) => request(duplicated, {}, '/problems/duplicate-json-member')),
    );
  });

  return {
    'token attacks': { requests: tokenAttacks, runs: 300 },
    'valid tokens without the scope': { requests: scopeAttacks, runs: 20 },
    'product bodies that break the schema': { requests: productBodies, runs: 400 },
    'stock changes that break the schema': { requests: stockBodies, runs: 200 },
    'order bodies that break the schema': { requests: orderBodies, runs: 400 },
    'cancels with a body other than empty or {}': { requests: cancels, runs: 200 },
    'orders refused for their content, and replays': { requests: orderAttacks, runs: 200 },
    'hostile path parameters': { requests: pathAttacks, runs: 400 },
    'hostile query strings': { requests: queryAttacks, runs: 300 },
    'method confusion and unknown paths': { requests: methodConfusion, runs: 200 },
    'header abuse': { requests: headerAbuse, runs: 100 },
    'admin filters, cursors and limits': { requests: adminQueries, runs: 300 },
    'dead-letter bodies that break the schema': { requests: settleBodies, runs: 200 },
    'dead letters that are not there': { requests: strayLetters, runs: 100 },
    'console files and the development token': { requests: consoleAttacks, runs: 150 },
    'bodies not UTF-8, encoded, in another charset, or naming a member twice': { requests: bodyBytes, runs: 300 },
    'the figures stream with a bad query or token': { requests: streamAttacks, runs: 60, overSocket: true },
  };
}

// --- answers -----------------------------------------------------------------

interface Answer {
  status: number;
  headers: Record<string, unknown>;
  body: string;
}

/** Every answer: never a 5xx; an error is problem+json with its own status; a write never succeeds unless it is a replay, or names nothing and says so. */
function assertAnswer(
  request: Pick<Request, 'method' | 'url' | 'replay' | 'namesNothing' | 'expect' | 'problem'>,
  answer: Answer,
): void {
  const what = `${request.method} ${request.url.slice(0, 200)} → ${answer.status} ${answer.body.slice(0, 300)}`;
  assert.ok(answer.status < 500, `a 5xx: ${what}`);
  if (request.expect !== undefined)
    assert.ok(request.expect.includes(answer.status), `expected ${request.expect.join(' or ')}: ${what}`);
  if (answer.status >= 400) {
    assert.match(String(answer.headers['content-type']), /^application\/problem\+json/, `not problem+json: ${what}`);
    if (request.method !== 'HEAD') {
      const problem = JSON.parse(answer.body) as Record<string, unknown>;
      assert.equal(problem.status, answer.status, what);
      for (const field of ['type', 'title', 'detail'])
        assert.equal(typeof problem[field], 'string', `problem.${field}: ${what}`);
      assert.match(String(problem.type), /^\/problems\/[a-z-]+$/, what);
      if (request.problem !== undefined) assert.equal(problem.type, request.problem, what);
    }
  } else if (request.method === 'POST' && request.namesNothing === true) {
    const { results } = JSON.parse(answer.body) as { results: { outcome: string }[] };
    assert.ok(
      answer.status === 200 && results.length > 0 && results.every((r) => r.outcome === 'not_found'),
      `settled a dead letter: ${what}`,
    );
  } else if (request.method === 'POST') {
    assert.ok(request.replay === true && answer.status === 200, `a write succeeded: ${what}`);
  }
}

/**
 * Sends a request over a real socket: the way to ask for a stream, whose
 * answer 200 never ends (inject would wait for it forever). A 200 is read no
 * further: the connection is dropped and the answer returned with no body.
 */
async function overSocket(port: number, request: Request): Promise<Answer> {
  const controller = new AbortController();
  const response = await fetch(`http://127.0.0.1:${port}${request.url}`, {
    method: request.method,
    headers: request.headers,
    signal: controller.signal,
    ...(request.payload === undefined ? {} : { body: request.payload }),
  });
  const headers = Object.fromEntries(response.headers);
  if (response.status < 300) {
    controller.abort();
    return { status: response.status, headers, body: '' };
  }
  return { status: response.status, headers, body: await response.text() };
}

// --- raw HTTP/1.1 over a socket ------------------------------------------------

/** Sends bytes, half-closes, and reads everything the server answers until it closes the connection. */
function exchange(port: number, payload: string | Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) =>
      error.code === 'ECONNRESET' || error.code === 'EPIPE' ? resolve(Buffer.concat(chunks)) : reject(error),
    );
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.end(payload);
  });
}

/** The responses in a byte stream (content-length or chunked bodies). */
function parseResponses(bytes: Buffer): Answer[] {
  const answers: Answer[] = [];
  let rest = bytes.toString('latin1');
  while (rest.length > 0) {
    const end = rest.indexOf('\r\n\r\n');
    assert.ok(end > 0, `an incomplete response: ${JSON.stringify(rest.slice(0, 200))}`);
    const [statusLine, ...lines] = rest.slice(0, end).split('\r\n');
    const match = /^HTTP\/1\.[01] (\d{3}) /.exec(statusLine ?? '');
    assert.ok(match, `not a status line: ${JSON.stringify(statusLine)}`);
    const headers: Record<string, string> = {};
    for (const line of lines)
      headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
    rest = rest.slice(end + 4);
    let body = '';
    if (headers['transfer-encoding'] === 'chunked') {
      for (;;) {
        const sizeEnd = rest.indexOf('\r\n');
        const size = parseInt(rest.slice(0, sizeEnd), 16);
        rest = rest.slice(sizeEnd + 2);
        if (size === 0) {
          rest = rest.slice(rest.indexOf('\r\n') + 2);
          break;
        }
        body += rest.slice(0, size);
        rest = rest.slice(size + 2);
      }
    } else {
      const length = Number(headers['content-length'] ?? 0);
      body = rest.slice(0, length);
      rest = rest.slice(length);
    }
    answers.push({ status: Number(match[1]), headers, body: Buffer.from(body, 'latin1').toString('utf8') });
  }
  return answers;
}

/**
 * Raw requests the HTTP parser, not Fastify, has to deal with; `answers` is
 * how many responses each must get. Where a good request shares the
 * connection with a malformed one, the answer to the good one may or may not
 * make it before the connection is failed (as with Node's own handling),
 * depending on how the bytes arrive: 1 or 2.
 */
function rawCases(token: string): { name: string; payload: string; answers: number | [number, number] }[] {
  const get = (target: string, headers = 'Host: x\r\n') => `GET ${target} HTTP/1.1\r\n${headers}\r\n`;
  return [
    { name: 'garbage', payload: 'HELLO WORLD\r\n\r\n', answers: 1 },
    { name: 'HTTP/0.9', payload: 'GET /\r\n\r\n', answers: 1 },
    { name: 'HTTP/2 preface', payload: 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', answers: 1 },
    { name: 'an invalid method token', payload: 'G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n', answers: 1 },
    { name: 'a header without a colon', payload: 'GET /healthz HTTP/1.1\r\nHost: x\r\nNo-Colon\r\n\r\n', answers: 1 },
    {
      name: 'a space in a header name',
      payload: 'GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n',
      answers: 1,
    },
    { name: 'NUL in a header value', payload: 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n', answers: 1 },
    { name: 'a bare LF line end', payload: 'GET /healthz HTTP/1.1\nHost: x\n\n', answers: 1 },
    {
      name: 'an authorization header over 16 KiB',
      payload: get('/v1/products', `Host: x\r\nAuthorization: Bearer ${'a'.repeat(20_000)}\r\n`),
      answers: 1,
    },
    {
      name: 'an Idempotency-Key over 16 KiB',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nIdempotency-Key: ${'k'.repeat(20_000)}\r\nContent-Length: 2\r\n\r\n{}`,
      answers: 1,
    },
    {
      name: 'two thousand headers',
      payload: get('/healthz', `Host: x\r\n${Array.from({ length: 2_000 }, (_, i) => `X-H${i}: v`).join('\r\n')}\r\n`),
      answers: 1,
    },
    { name: 'a URL over 16 KiB', payload: get(`/v1/products?x=${'a'.repeat(20_000)}`), answers: 1 },
    {
      name: 'a URL over 8 KiB',
      payload: get(`/v1/products?x=${'a'.repeat(9_000)}`, `Host: x\r\nAuthorization: Bearer ${token}\r\n`),
      answers: 1,
    },
    {
      name: 'a path segment over 100 characters',
      payload: get(`/v1/orders/${'A'.repeat(200)}`, `Host: x\r\nAuthorization: Bearer ${token}\r\n`),
      answers: 1,
    },
    {
      name: 'bad percent-encoding',
      payload: get('/v1/orders/%ZZ', `Host: x\r\nAuthorization: Bearer ${token}\r\n`),
      answers: 1,
    },
    {
      name: 'an encoded lone surrogate',
      payload: get('/v1/products/%ED%A0%80', `Host: x\r\nAuthorization: Bearer ${token}\r\n`),
      answers: 1,
    },
    { name: 'no Host in HTTP/1.1', payload: 'GET /healthz HTTP/1.1\r\n\r\n', answers: 1 },
    // RFC 9112, section 3.2: one Host, naming a host; Node alone keeps the first of several.
    { name: 'two Host lines', payload: get('/healthz', 'Host: x\r\nHost: y\r\n'), answers: 1 },
    { name: 'two Host lines in HTTP/1.0', payload: 'GET /healthz HTTP/1.0\r\nHost: x\r\nhost: x\r\n\r\n', answers: 1 },
    {
      name: 'an order with two Host lines',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\nAuthorization: Bearer ${token}\r\nIdempotency-Key: fz-two-hosts\r\nContent-Type: application/json\r\nContent-Length: 70\r\n\r\n${JSON.stringify({ items: [{ sku: 'FZ-1', quantity: 1 }], payment: { token: 'tok_visa' } }).padEnd(70)}`,
      answers: 1,
    },
    // RFC 9110, section 5.3: fields that are not lists come once; Node would join two
    // Idempotency-Key lines into one key nobody sent, and keep the first Authorization.
    ...(
      [
        ['Idempotency-Key', 'Idempotency-Key: fz-a\r\nIdempotency-Key: fz-b\r\n'],
        ['Authorization', `Idempotency-Key: fz-auth\r\nAuthorization: Bearer ${token}\r\n`],
        ['Content-Type', 'Idempotency-Key: fz-type\r\nContent-Type: text/plain\r\n'],
      ] as const
    ).map(([field, extra]) => ({
      name: `an order with two ${field} lines`,
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\n${extra}Content-Length: 70\r\n\r\n${JSON.stringify({ items: [{ sku: 'FZ-1', quantity: 1 }], payment: { token: 'tok_visa' } }).padEnd(70)}`,
      answers: 1,
    })),
    ...['a b', 'user@x', 'x/y', 'x:80:81', '[zz]', '%zz'].map((host) => ({
      name: `Host: ${host}`,
      payload: get('/v1/products', `Host: ${host}\r\nAuthorization: Bearer ${token}\r\n`),
      answers: 1,
    })),
    {
      name: 'Content-Length and Transfer-Encoding together',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      answers: 1,
    },
    {
      name: 'two different Content-Lengths',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}`,
      answers: 1,
    },
    {
      name: 'a negative Content-Length',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n`,
      answers: 1,
    },
    {
      name: 'a bad chunk size',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n`,
      answers: 1,
    },
    { name: 'an unknown Expect', payload: get('/healthz', 'Host: x\r\nExpect: 200-ok\r\n'), answers: 1 },
    { name: 'CONNECT', payload: 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', answers: 1 },
    {
      name: 'a body longer than its Content-Length, then garbage',
      payload: `POST /v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}GARBAGE\r\n\r\n`,
      answers: [1, 2],
    },
    {
      name: 'a good request pipelined with a bad one',
      payload: `${get('/healthz')}BAD REQUEST\r\n\r\n`,
      answers: [1, 2],
    },
    {
      name: 'a chunked body over 64 KiB',
      payload: `POST /v1/products HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${(70 * 1024).toString(16)}\r\n${'x'.repeat(70 * 1024)}\r\n0\r\n\r\n`,
      answers: 1,
    },
  ];
}

// --- the suite -----------------------------------------------------------------

for (const mode of modes()) {
  describe(`fuzz: hostile requests (${mode})`, () => {
    let t: TestApp;
    let fixture: Fixture;
    let before_: Record<string, unknown[]>;
    /** A broker keeps its dead letters outside the database: they are compared too. */
    let lettersBefore: unknown[];
    let port: number;

    before(async () => {
      t = await startTestApp(mode, { gateway: new PoisonGateway() });
      const issuer = t.app.devIssuer!;
      const admin = client(t.app, await issuer.issue({ sub: 'fz-admin', scope: ALL_SCOPES }));
      await createProduct(admin, { sku: 'FZ-1', stock: 1_000, priceCents: 1_299 });
      await createProduct(admin, { sku: 'FZ-USD', stock: 1_000, priceCents: 999, currency: 'USD' });
      await createProduct(admin, { sku: 'FZ-GOLD', stock: 1_000, priceCents: 1_000_000_000 });
      await createProduct(admin, { sku: 'FZ-FREE', stock: 1_000, priceCents: 0 });
      const writerToken = await issuer.issue({ sub: 'fz-writer', scope: 'orders:write orders:read' });
      const writer = client(t.app, writerToken);
      const replayBody = { items: [{ sku: 'FZ-1', quantity: 2 }], payment: { token: 'tok_visa' } };
      const confirmed = await placeOrder(writer, replayBody.items, 'tok_visa', 'fz-replay');
      const cancelled = await placeOrder(writer, [{ sku: 'FZ-1', quantity: 1 }]);
      await quiesce(t.app);
      assert.equal((await writer.request('POST', `/v1/orders/${cancelled.body.id}/cancel`)).status, 200);
      // A charge the gateway refuses: one dead letter, which no generated request may settle.
      const poisoned = await placeOrder(writer, [{ sku: 'FZ-1', quantity: 1 }], 'tok_refused');
      await quiesce(t.app);
      const operatorToken = await issuer.issue({ sub: 'fz-operator', scope: OPERATOR_SCOPES });
      const letter = await eventually('the fixture dead letter', async () =>
        (await deadLetterIds(client(t.app, operatorToken))).find((l) => l.orderId === poisoned.body.id),
      );
      const now = Math.floor(Date.now() / 1000);
      const stranger = await openDevIssuer(undefined);
      const [header, payload, signature] = writerToken.split('.') as [string, string, string];
      const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
      fixture = {
        tokens: {
          admin: await issuer.issue({ sub: 'fz-admin', scope: ALL_SCOPES }),
          operator: operatorToken,
          redriver: await issuer.issue({ sub: 'fz-redriver', scope: 'operations:write' }),
          reader: await issuer.issue({ sub: 'fz-writer', scope: 'orders:read' }),
          writer: writerToken,
          catalog: await issuer.issue({ sub: 'fz-catalog', scope: 'catalog:write' }),
          none: await issuer.issue({ sub: 'fz-none', scope: '' }),
          hostile: [
            await stranger.issue({ sub: 'fz-admin', scope: ALL_SCOPES }),
            await issuer.issue({ sub: 'fz-admin', scope: ALL_SCOPES, ttlSeconds: -30 }),
            await issuer.issue({ sub: '', scope: ALL_SCOPES }),
            await issuer.issue({ sub: 'fz\u0000admin', scope: ALL_SCOPES }),
            await issuer.issue({ sub: 'fz-admin', scope: ALL_SCOPES, issuedAt: now + 3_600 }),
            `${b64({ alg: 'none', typ: 'JWT' })}.${payload}.`,
            `${header}.${b64({ sub: 'fz-admin', scope: ALL_SCOPES, iss: 'orderflow-dev', aud: 'orderflow', exp: now + 600 })}.${signature}`,
            `${header}.${payload}.${signature.slice(0, -4)}AAAA`,
            `${b64({ alg: 'HS256', typ: 'JWT' })}.${payload}.${signature}`,
            'x'.repeat(10_000),
          ],
        },
        confirmed: confirmed.body.id as string,
        cancelled: cancelled.body.id as string,
        replay: { key: 'fz-replay', body: JSON.stringify(replayBody) },
        letter: letter.id,
      };
      before_ = await snapshot(t.app.db);
      lettersBefore = await deadLetterIds(client(t.app, operatorToken));
      port = Number(new URL(await t.app.server.listen({ port: 0, host: '127.0.0.1' })).port);
    });
    after(() => t?.close());

    it('generated requests over every route: no 5xx, every error problem+json, no write', async (test) => {
      for (const [family, { requests, runs, overSocket: socket }] of Object.entries(families(fixture))) {
        await test.test(family, () =>
          fc.assert(
            fc.asyncProperty(requests, async (request) => {
              if (socket) return assertAnswer(request, await overSocket(port, request));
              const response = await t.app.server.inject({
                method: request.method as 'GET',
                url: request.url,
                headers: request.headers,
                ...(request.payload === undefined ? {} : { payload: request.payload }),
                ...(request.remoteAddress === undefined ? {} : { remoteAddress: request.remoteAddress }),
              });
              assertAnswer(request, { status: response.statusCode, headers: response.headers, body: response.body });
            }),
            fuzzParameters(runs),
          ),
        );
      }
    });

    it('raw HTTP/1.1 the parser refuses, and requests too large to parse: answered as problems over the socket', async () => {
      for (const { name, payload, answers } of rawCases(fixture.tokens.admin)) {
        const responses = parseResponses(await exchange(port, payload));
        const [least, most] = typeof answers === 'number' ? [answers, answers] : answers;
        assert.ok(
          responses.length >= least && responses.length <= most,
          `${name}: ${responses.length} answers (${responses.map((r) => r.status).join(', ')})`,
        );
        for (const answer of responses)
          assertAnswer({ method: name.startsWith('a good') ? 'GET' : 'raw', url: name }, answer);
        assert.ok(responses.at(-1)!.status >= 400, `${name} was refused`);
      }
      // Generated garbage where a request line and headers belong.
      await fc.assert(
        fc.asyncProperty(fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 300 }), async (garbage) => {
          const responses = parseResponses(await exchange(port, `${garbage}\r\n\r\n`));
          for (const answer of responses) assertAnswer({ method: 'raw', url: JSON.stringify(garbage) }, answer);
        }),
        fuzzParameters(100),
      );
    });

    it('every table is as it was before the hostile requests', async () => {
      await quiesce(t.app);
      assert.deepEqual(await snapshot(t.app.db), before_);
      assert.deepEqual(await deadLetterIds(client(t.app, fixture.tokens.operator)), lettersBefore);
    });
  });
}
