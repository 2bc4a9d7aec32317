import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fieldLinesProblem, isHostValue } from './field-lines.ts';

const lines = (...hosts: string[]) => ['Accept', '*/*', ...hosts.flatMap((h) => ['Host', h])];

describe('fieldLinesProblem', () => {
  it('takes one Host naming a host and an optional port', () => {
    for (const host of [
      'localhost',
      'localhost:8080',
      'api.example.com',
      'API.Example.COM.',
      '127.0.0.1:80',
      '[::1]',
      '[::1]:8080',
      '[2001:db8::7]:0',
      '[v1.fe80::a+en1]',
      'xn--bcher-kva.example',
      'caf%C3%A9.example',
      '',
    ])
      assert.equal(fieldLinesProblem(lines(host), '1.1'), undefined, host);
    assert.equal(fieldLinesProblem(['hOsT', 'example.com'], '1.1'), undefined, 'field names are case-insensitive');
  });

  it('refuses every version but HTTP/1.0 and HTTP/1.1, before any other rule', () => {
    for (const version of ['0.9', '2.0', '1.2', '3.0']) {
      for (const fields of [lines(), lines('a', 'b'), [...lines(), 'Transfer-Encoding', 'chunked']]) {
        const problem = fieldLinesProblem(fields, version);
        assert.match(problem ?? '', new RegExp(`HTTP/${version.replace('.', '\\.')} is not served here`));
      }
    }
  });

  it('refuses a missing Host in HTTP/1.1 only', () => {
    assert.match(fieldLinesProblem(lines(), '1.1')!, /must carry a Host/);
    assert.equal(fieldLinesProblem(lines(), '1.0'), undefined);
  });

  it('refuses Transfer-Encoding in HTTP/1.0 only, whatever its case, naming the version', () => {
    for (const name of ['Transfer-Encoding', 'transfer-encoding', 'TRANSFER-ENCODING'])
      assert.match(fieldLinesProblem([...lines('x'), name, 'chunked'], '1.0')!, /an HTTP\/1\.0 request cannot carry/);
    assert.equal(fieldLinesProblem([...lines('x'), 'Transfer-Encoding', 'chunked'], '1.1'), undefined);
  });

  it('refuses any Transfer-Encoding in HTTP/1.1 but chunked alone, across lines, after the other rules', () => {
    for (const value of ['chunked', 'Chunked', ' CHUNKED '])
      assert.equal(fieldLinesProblem([...lines('x'), 'Transfer-Encoding', value], '1.1'), undefined, value);
    for (const codings of [
      ['gzip, chunked'],
      ['gzip', 'chunked'],
      ['chunked, chunked'],
      ['identity, chunked'],
      ['chunked;x=1'],
    ]) {
      const problem = fieldLinesProblem([...lines('x'), ...codings.flatMap((c) => ['Transfer-Encoding', c])], '1.1');
      assert.match(problem ?? '', /the only transfer coding this server takes is chunked, alone/, codings.join(' | '));
    }
    assert.match(
      fieldLinesProblem([...lines('a', 'b'), 'Transfer-Encoding', 'gzip, chunked'], '1.1')!,
      /one Host header, not several/,
    );
    assert.match(
      fieldLinesProblem(['Transfer-Encoding', 'gzip, chunked'], '1.0')!,
      /an HTTP\/1\.0 request cannot carry/,
    );
  });

  it('refuses more than one Host field line, the same or different, in any version', () => {
    for (const version of ['1.0', '1.1']) {
      assert.match(fieldLinesProblem(lines('a.example', 'b.example'), version)!, /one Host header, not several/);
      assert.match(fieldLinesProblem(lines('a.example', 'a.example'), version)!, /not several/);
      assert.match(fieldLinesProblem(['Host', 'a.example', 'HOST', 'b.example'], version)!, /not several/);
    }
  });

  it('refuses a second line of every other field this API reads once, and takes list fields and unknown ones', () => {
    for (const name of ['Authorization', 'Idempotency-Key', 'Content-Type', 'Origin', 'X-Orderflow-Console']) {
      const problem = fieldLinesProblem([...lines('x'), name, 'a', name.toUpperCase(), 'b'], '1.1');
      assert.match(problem!, new RegExp(`the ${name.toLowerCase()} header must be sent once`), name);
    }
    assert.equal(
      fieldLinesProblem([...lines('x'), 'Accept', 'a', 'Accept', 'b', 'X-Other', '1', 'X-Other', '2'], '1.1'),
      undefined,
    );
  });

  it('refuses a Host that is not a host with an optional port', () => {
    for (const host of [
      'a b',
      'user@example.com',
      'example.com/path',
      'example.com:80:81',
      'example.com:http',
      '[::1',
      '[zz]',
      '[1.2.3.4]',
      '%zz',
      '%4',
      'a\tb',
      'ex"ample',
    ]) {
      assert.equal(isHostValue(host), false, host);
      assert.match(fieldLinesProblem(lines(host), '1.1')!, /not a host/, host);
    }
  });
});
