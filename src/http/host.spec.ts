import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { hostProblem } from './host.ts';

const lines = (...hosts: string[]) => ['Accept', '*/*', ...hosts.flatMap((h) => ['Host', h])];

describe('hostProblem', () => {
  it('takes one Host naming a host and an optional port', () => {
    for (const host of [
      'localhost',
      'localhost:8080',
      'api.example.com',
      '127.0.0.1:80',
      '[::1]',
      '[::1]:8080',
      'xn--bcher-kva.example',
      '',
    ])
      assert.equal(hostProblem(lines(host), '1.1'), undefined, host);
    assert.equal(hostProblem(['hOsT', 'example.com'], '1.1'), undefined, 'field names are case-insensitive');
  });

  it('refuses a missing Host in HTTP/1.1 only', () => {
    assert.match(hostProblem(lines(), '1.1')!, /must carry a Host/);
    assert.equal(hostProblem(lines(), '1.0'), undefined);
  });

  it('refuses more than one Host field line, the same or different, in any version', () => {
    for (const version of ['1.0', '1.1']) {
      assert.match(hostProblem(lines('a.example', 'b.example'), version)!, /one Host header, not several/);
      assert.match(hostProblem(lines('a.example', 'a.example'), version)!, /not several/);
      assert.match(hostProblem(['Host', 'a.example', 'HOST', 'b.example'], version)!, /not several/);
    }
  });

  it('refuses a Host that is not a host with an optional port', () => {
    for (const host of [
      'a b',
      'user@example.com',
      'example.com/path',
      'example.com:80:81',
      'example.com:http',
      '[::1',
      'a\tb',
      'ex"ample',
    ])
      assert.match(hostProblem(lines(host), '1.1')!, /not a host/, host);
  });
});
