// The load balancer configurations are checked by the tools that run them,
// so a typo fails CI instead of a deployment.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

const root = path.resolve(import.meta.dirname, '..');

function installed(binary: string): boolean {
  try {
    execFileSync(binary, ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function skipUnless(binary: string): string | undefined {
  if (installed(binary)) return undefined;
  if (process.env.REQUIRE_SERVICES === '1') throw new Error(`${binary} must be installed when REQUIRE_SERVICES=1`);
  return `${binary} is not installed`;
}

describe('load balancer configuration', () => {
  it('HAProxy accepts deploy/haproxy/haproxy.cfg', { skip: skipUnless('haproxy') }, () => {
    const result = spawnSync('haproxy', ['-c', '-f', path.join(root, 'deploy/haproxy/haproxy.cfg')], { encoding: 'utf8' });
    assert.equal(result.status, 0, result.stdout + result.stderr);
  });

  it('nginx accepts deploy/nginx/nginx.conf', { skip: skipUnless('nginx') }, async () => {
    const prefix = await mkdtemp(path.join(tmpdir(), 'orderflow-nginx-'));
    try {
      await mkdir(path.join(prefix, 'tmp'));
      const result = spawnSync('nginx', ['-t', '-p', prefix, '-c', path.join(root, 'deploy/nginx/nginx.conf')], { encoding: 'utf8' });
      assert.equal(result.status, 0, result.stdout + result.stderr);
    } finally {
      await rm(prefix, { recursive: true, force: true });
    }
  });
});
