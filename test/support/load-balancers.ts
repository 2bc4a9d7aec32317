// The project's load balancers, run for real from the configurations it
// ships: HAProxy (deploy/haproxy/haproxy.cfg) and nginx (deploy/nginx), plain
// HTTP or terminating TLS, in front of the upstreams a test names. Only the
// addresses differ from the shipped files.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { HAPROXY_CONFIG, haproxyServers } from '../../scripts/cluster.ts';
import { freePort } from './programs.ts';
import type { TestCertificates } from './tls.ts';

const root = path.resolve(import.meta.dirname, '..', '..');

export interface LoadBalancer {
  readonly name: 'haproxy' | 'nginx';
  /** Plain HTTP: the proxy itself, or with TLS on only a redirect to HTTPS. */
  readonly httpPort: number;
  /** Undefined when TLS is off. */
  readonly httpsPort: number | undefined;
  stop(): Promise<void>;
}

/** upstreams: host:port of each api process; dir: where the run's files go (the caller removes it); certificates: turns TLS on. */
export type StartLoadBalancer = (
  upstreams: string[],
  dir: string,
  certificates?: TestCertificates,
) => Promise<LoadBalancer>;

function supervise(
  name: LoadBalancer['name'],
  child: ChildProcess,
  httpPort: number,
  httpsPort: number | undefined,
  cleanup: () => Promise<void>,
): LoadBalancer {
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.on('exit', (code) => {
    if (code !== 0 && code !== null) process.stderr.write(`${name} exited with ${code}:\n${output}\n`);
  });
  return {
    name,
    httpPort,
    httpsPort,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      await cleanup();
    },
  };
}

/** HAProxy with deploy/haproxy/haproxy.cfg as it is and the upstreams as its server list. */
export const startHaproxy: StartLoadBalancer = async (upstreams, dir, certificates) => {
  const [httpPort, statsPort] = [await freePort(), await freePort()];
  const httpsPort = certificates ? await freePort() : undefined;
  const servers = path.join(dir, `haproxy-servers-${httpPort}.cfg`);
  await writeFile(servers, haproxyServers(upstreams));
  const tls = certificates
    ? {
        ORDERFLOW_TLS_CERT: certificates.pemFile,
        ORDERFLOW_LB_TLS_BIND: `127.0.0.1:${httpsPort}`,
        ORDERFLOW_LB_HTTPS_PORT: String(httpsPort),
      }
    : {};
  const child = spawn('haproxy', ['-db', '-f', HAPROXY_CONFIG, '-f', servers], {
    env: {
      ...process.env,
      ORDERFLOW_LB_BIND: `127.0.0.1:${httpPort}`,
      ORDERFLOW_LB_STATS: `127.0.0.1:${statsPort}`,
      ...tls,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return supervise('haproxy', child, httpPort, httpsPort, () => rm(servers, { force: true }));
};

/**
 * nginx with deploy/nginx as it is but for its listen ports: nginx.conf, or
 * nginx-tls.conf with the certificate where it expects it; the upstreams
 * replace api-upstream.conf (the file an operator edits).
 */
export const startNginx: StartLoadBalancer = async (upstreams, dir, certificates) => {
  const httpPort = await freePort();
  const httpsPort = certificates ? await freePort() : undefined;
  const conf = path.join(dir, `nginx-${httpPort}`);
  // Not a tls/ directory an operator keeps there: the test's certificate goes in its place.
  await cp(path.join(root, 'deploy/nginx'), conf, {
    recursive: true,
    filter: (source) => !source.includes(`${path.sep}tls`),
  });
  await mkdir(path.join(conf, 'tmp'));
  const main = certificates ? 'nginx-tls.conf' : 'nginx.conf';
  const text = await readFile(path.join(root, 'deploy/nginx', main), 'utf8');
  assert.ok(text.includes('127.0.0.1:8080'), `${main} listens where its comments say`);
  let edited = text.replaceAll('127.0.0.1:8080', `127.0.0.1:${httpPort}`);
  if (certificates) {
    assert.ok(
      text.includes('127.0.0.1:8443 ') && text.includes(':8443$request_uri'),
      `${main} listens where its comments say`,
    );
    edited = edited.replaceAll('8443', String(httpsPort));
    await mkdir(path.join(conf, 'tls'), { recursive: true });
    await cp(certificates.certFile, path.join(conf, 'tls/orderflow.crt'));
    await cp(certificates.keyFile, path.join(conf, 'tls/orderflow.key'));
  }
  await writeFile(path.join(conf, main), edited);
  await writeFile(
    path.join(conf, 'api-upstream.conf'),
    `upstream orderflow_api {\n  least_conn;\n${upstreams.map((u) => `  server ${u} max_fails=2 fail_timeout=5s;\n`).join('')}  keepalive 64;\n}\n`,
  );
  const child = spawn('nginx', ['-p', conf, '-c', path.join(conf, main), '-g', 'daemon off;'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return supervise('nginx', child, httpPort, httpsPort, () => rm(conf, { recursive: true, force: true }));
};
