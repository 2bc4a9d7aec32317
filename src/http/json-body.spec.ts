import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { AppError } from '../errors.ts';
import { charsetOf, duplicateMember, parseJsonBody } from './json-body.ts';

const RUNS = { numRuns: 500, seed: 20_261_130 };

function refusal(body: Buffer, headers: Parameters<typeof parseJsonBody>[1] = {}): string | undefined {
  try {
    parseJsonBody(body, headers);
    return undefined;
  } catch (error) {
    assert.ok(error instanceof AppError, String(error));
    return error.code;
  }
}

describe('duplicateMember', () => {
  it('finds nothing in any JSON an encoder writes (every name once by construction)', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => assert.equal(duplicateMember(JSON.stringify(value)), undefined)),
      RUNS,
    );
  });

  it('finds a name written twice in any object, at any depth, whatever the names and strings around it hold', () => {
    const name = fc.string({ unit: 'binary', maxLength: 8 });
    fc.assert(
      fc.property(
        fc.dictionary(name, fc.jsonValue(), { minKeys: 1 }),
        fc.nat(),
        fc.nat({ max: 3 }),
        (object, pick, depth) => {
          const names = Object.keys(object);
          const repeated = names[pick % names.length]!;
          let text = `${JSON.stringify(object).slice(0, -1)},${JSON.stringify(repeated)}:0}`;
          let at = '';
          for (let level = 0; level < depth; level++) {
            text = `{"a\\"/":[1,${text}]}`;
            at = `/a"~1/1${at}`;
          }
          JSON.parse(text);
          assert.deepEqual(duplicateMember(text), { name: repeated, at: at });
        },
      ),
      RUNS,
    );
  });

  it('compares names as JSON reads them: an escape spells the same name', () => {
    assert.deepEqual(duplicateMember('{"sku":1,"\\u0073ku":2}'), { name: 'sku', at: '' });
    assert.deepEqual(duplicateMember('{"a\\\\":1,"b":"a\\"","a\\\\":2}'), { name: 'a\\', at: '' });
    assert.equal(duplicateMember('{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}]}'), undefined);
  });
});

describe('parseJsonBody', () => {
  it('refuses bytes that are not UTF-8 anywhere in the body, never replacing them', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.uint8Array({ minLength: 1, maxLength: 6 }), fc.nat(), (value, bytes, at) => {
        const text = Buffer.from(JSON.stringify(value));
        const cut = at % (text.length + 1);
        const body = Buffer.concat([text.subarray(0, cut), Buffer.from(bytes), text.subarray(cut)]);
        if (isUtf8(body)) return;
        assert.throws(() => parseJsonBody(body, {}), { code: 'malformed_json', message: /not valid UTF-8/ });
      }),
      RUNS,
    );
  });

  it('takes UTF-8 with or without charset=utf-8; refuses other charsets and any content coding but identity', () => {
    const body = Buffer.from('{"name":"Zoë 😀"}');
    assert.deepEqual(
      parseJsonBody(body, { 'content-type': 'application/json; charset="UTF-8"', 'content-encoding': 'identity' }),
      { name: 'Zoë 😀' },
    );
    assert.equal(refusal(body, { 'content-type': 'application/json; charset=latin1' }), 'unsupported_media_type');
    assert.equal(refusal(body, { 'content-encoding': 'gzip' }), 'unsupported_content_encoding');
    assert.equal(refusal(body, { 'content-encoding': 'identity, br' }), 'unsupported_content_encoding');
    assert.equal(refusal(Buffer.from('\ufeff{}')), 'malformed_json', 'a BOM is not JSON (RFC 8259 section 8.1)');
    assert.equal(parseJsonBody(Buffer.from(' \r\n'), {}), undefined);
  });
});

describe('charsetOf', () => {
  it('reads the charset parameter in any case, quoted or not, among others', () => {
    assert.equal(charsetOf('application/json'), undefined);
    assert.equal(charsetOf('application/json; charset=UTF-8'), 'utf-8');
    assert.equal(charsetOf('application/json;foo=bar; Charset = "Latin1" '), 'latin1');
    assert.equal(charsetOf('application/json; charset='), '');
  });
});
