// The load balancer configurations are checked by the tools that run them,
// so a typo fails CI instead of a deployment: HAProxy with each way of
// listing the api servers (DNS discovery, a generated list) and with TLS on,
// nginx plain and terminating TLS. test/tls.test.ts runs them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HAPROXY_CONFIG, haproxyServers } from '../scripts/cluster.ts';
import { installed, skipUnlessInstalled } from './support/programs.ts';
import { makeTestCertificates, type TestCertificates } from './support/tls.ts';

const root = path.resolve(import.meta.dirname, '..');

const haproxy = { haproxy: ['-v'] };
const openssl = { openssl: ['version'] };
const nginx = { nginx: ['-v'] };

describe('load balancer configuration', () => {
  let dir: string;
  let certificates: TestCertificates | undefined;
  let servers: string;
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'orderflow-deploy-'));
    servers = path.join(dir, 'servers.cfg');
    await writeFile(servers, haproxyServers(['127.0.0.1:8081', '127.0.0.1:8082', '127.0.0.1:8083']));
    if (installed('openssl', ['version'])) certificates = await makeTestCertificates(dir);
  });
  after(() => rm(dir, { recursive: true, force: true }));

  const haproxyCheck = (files: string[], env: Record<string, string> = {}) => {
    const result = spawnSync('haproxy', ['-c', ...files.flatMap((f) => ['-f', f])], {
      encoding: 'utf8',
      env: { ...process.env, ...env },
    });
    assert.equal(result.status, 0, result.stdout + result.stderr);
  };

  it(
    'HAProxy accepts haproxy.cfg with servers found through DNS',
    { skip: skipUnlessInstalled('the HAProxy check', haproxy) },
    () => {
      haproxyCheck([HAPROXY_CONFIG, path.join(root, 'deploy/haproxy/servers-dns.cfg')], {
        ORDERFLOW_API_DNS: 'localhost:8081',
      });
    },
  );

  it(
    'HAProxy accepts haproxy.cfg with a generated list of any number of servers',
    { skip: skipUnlessInstalled('the HAProxy check', haproxy) },
    () => {
      haproxyCheck([HAPROXY_CONFIG, servers]);
    },
  );

  it(
    'HAProxy accepts haproxy.cfg with TLS on',
    { skip: skipUnlessInstalled('the HAProxy TLS check', { ...haproxy, ...openssl }) },
    () => {
      haproxyCheck([HAPROXY_CONFIG, servers], { ORDERFLOW_TLS_CERT: certificates!.pemFile });
    },
  );

  it('haproxyServers refuses an empty list', () => {
    assert.throws(() => haproxyServers([]), /at least one api process/);
  });

  for (const config of ['nginx.conf', 'nginx-tls.conf']) {
    it(
      `nginx accepts deploy/nginx/${config}`,
      { skip: skipUnlessInstalled('the nginx check', { ...nginx, ...openssl }) },
      async () => {
        // A copy of deploy/nginx, with the TLS files nginx-tls.conf expects next to it.
        const conf = path.join(dir, `conf-${config}`);
        await cp(path.join(root, 'deploy/nginx'), conf, {
          recursive: true,
          filter: (source) => !source.includes(`${path.sep}tls`),
        });
        await mkdir(path.join(conf, 'tls'));
        await cp(certificates!.certFile, path.join(conf, 'tls/orderflow.crt'));
        await cp(certificates!.keyFile, path.join(conf, 'tls/orderflow.key'));
        const prefix = path.join(dir, `prefix-${config}`);
        await mkdir(path.join(prefix, 'tmp'), { recursive: true });
        const result = spawnSync('nginx', ['-t', '-p', prefix, '-c', path.join(conf, config)], { encoding: 'utf8' });
        assert.equal(result.status, 0, result.stdout + result.stderr);
      },
    );
  }
});
