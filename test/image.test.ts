// The container image, built and run the way a deployment runs it: podman
// (daemonless, runc, deploy/podman/containers.conf) builds the Dockerfile on
// a base image made here from Debian packages (scripts/base-image.sh, unless
// NODE_IMAGE names one), then runs it read-only
//   - embedded: one container, /readyz and an order through the published port;
//   - distributed: migrate, api, worker and relay containers on the machine's
//     PostgreSQL, NATS and Redis (host network), a worker stopped while its
//     charges are in flight, and every accepted order confirmed and charged
//     exactly once anyway.
// Runs where podman is installed; with REQUIRE_SERVICES=1 a missing podman fails.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { startGatewayServer } from '../src/payments/gateway-server.ts';
import { deleteBrokerTopology } from '../src/messaging/topology.ts';
import { PAYMENT_QUEUES } from '../src/payments/payments.ts';
import { GatedGateway } from './support/gateways.ts';
import { eventually, freshBrokerPrefix, freshPostgresDatabase, requiredServiceUrl } from './support/harness.ts';
import { freePort, skipUnlessInstalled } from './support/programs.ts';

const root = path.resolve(import.meta.dirname, '..');
const run = promisify(execFile);
/** The engine settings CI uses: runc, cgroupfs, file events, ulimits a sandbox allows. */
const podmanEnv = { ...process.env, CONTAINERS_CONF: path.join(root, 'deploy', 'podman', 'containers.conf') };
/** The image size target (docs/deploy.md says what fills it). */
const MAX_IMAGE_BYTES = 250e6;
/** Orderflow drains for at most 25 s (src/main.ts); podman stop waits longer before SIGKILL. */
const STOP_TIMEOUT_S = 35;

const skip = skipUnlessInstalled('the image test', {
  podman: ['--version'],
  runc: ['--version'],
  mmdebstrap: ['--version'],
});

async function podman(...args: string[]): Promise<string> {
  try {
    const { stdout } = await run('podman', args, { env: podmanEnv, maxBuffer: 64 * 1024 * 1024 });
    return stdout.trim();
  } catch (error) {
    const e = error as { stderr?: string; stdout?: string; message: string };
    throw new Error(`podman ${args.join(' ')} failed: ${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`, {
      cause: error,
    });
  }
}

/**
 * Runs the image's HEALTHCHECK as the engine would, allowing the retries the
 * Dockerfile gives it (`--retries=3`): an answer other than healthy fails at
 * once, while a run that overran its 3 s timeout (a Node process starting on
 * a loaded machine) is tried again, as an engine tries it again before it
 * calls the container unhealthy.
 */
async function healthcheck(name: string, retries = 3): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await podman('healthcheck', 'run', name);
      return;
    } catch (error) {
      if (attempt >= retries || !/exceeded timeout/.test((error as Error).message)) throw error;
    }
  }
}

/** Where a TLS-inspecting proxy's CA would be: npm in the build trusts it through the npm_ca secret. */
function caBundle(): string | undefined {
  const candidates = [process.env.NODE_EXTRA_CA_CERTS, '/etc/ssl/certs/ca-certificates.crt'];
  return candidates.find((file) => file !== undefined && file !== '' && existsSync(file));
}

const lockfile = JSON.parse(readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as {
  packages: Record<string, { version: string; dev?: boolean }>;
};
const pinnedNode = lockfile.packages['node_modules/node']!.version;
/** Packages the lockfile installs for development only (a devDependency that production code also needs is not one). */
const devOnly = Object.entries(lockfile.packages)
  .filter(([where, entry]) => entry.dev === true && /^node_modules\/(@[^/]+\/)?[^/]+$/.test(where))
  .map(([where]) => where.slice('node_modules/'.length));
const packageJson = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };

function gitRevision(): string {
  try {
    return execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

describe('container image', { skip }, () => {
  const image = `localhost/orderflow-test:${randomBytes(4).toString('hex')}`;
  const revision = gitRevision();
  const containers: string[] = [];
  const timings: string[] = [];

  before(async () => {
    let base = process.env.NODE_IMAGE;
    if (!base) {
      base = `localhost/orderflow-node:${pinnedNode}-bookworm-slim`;
      const exists = await podman('image', 'exists', base).then(
        () => true,
        () => false,
      );
      if (!exists) {
        const started = Date.now();
        await run(path.join(root, 'scripts', 'base-image.sh'), [], {
          env: { ...podmanEnv, BASE_IMAGE_TAG: base },
          maxBuffer: 64 * 1024 * 1024,
        });
        timings.push(`base image ${((Date.now() - started) / 1000).toFixed(1)} s`);
      }
    }
    const ca = caBundle();
    const started = Date.now();
    await podman(
      'build',
      '--format',
      'docker', // OCI image configs cannot hold a HEALTHCHECK
      // No layer cache: Buildah would reuse a LABEL layer built with other
      // build arguments, and CI starts from nothing anyway.
      '--layers=false',
      '--build-arg',
      `NODE_IMAGE=${base}`,
      '--build-arg',
      `VERSION=${packageJson.version}`,
      '--build-arg',
      `REVISION=${revision}`,
      '--build-arg',
      'SOURCE=https://example.invalid/orderflow',
      ...(ca ? ['--secret', `id=npm_ca,src=${ca}`] : []),
      '--tag',
      image,
      root,
    );
    timings.push(`image build ${((Date.now() - started) / 1000).toFixed(1)} s`);
  });

  after(async () => {
    // --volumes: the anonymous /data volume the image declares goes with its container.
    for (const name of containers) await podman('rm', '--force', '--volumes', '--time', '0', name).catch(() => {});
    await podman('rmi', '--force', image).catch(() => {});
    process.stdout.write(`# image: ${timings.join(', ')}\n`);
  });

  async function start(name: string, args: string[], command: string[] = []): Promise<void> {
    containers.push(name);
    // Read-only root filesystem; Orderflow writes only to DATA_DIR (a volume the image declares).
    await podman('run', '--detach', '--name', name, '--read-only', ...args, image, ...command);
  }

  /** Waits for /readyz 200 on the host port; the container must stay up meanwhile. */
  async function ready(name: string, port: number): Promise<void> {
    await eventually(
      `${name} to answer /readyz with 200`,
      async () => {
        const state = await podman('inspect', '--format', '{{.State.Status}}', name);
        if (state !== 'running') assert.fail(`${name} is ${state}:\n${await podman('logs', name).catch(() => '')}`);
        const response = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
        return response?.status === 200 ? true : undefined;
      },
      120_000,
    );
  }

  /** podman stop, then the exit code: 0 is a drained, clean exit; 137 would be a SIGKILL after the grace period. */
  async function stop(name: string): Promise<number> {
    await podman('stop', '--time', String(STOP_TIMEOUT_S), name);
    return Number(await podman('inspect', '--format', '{{.State.ExitCode}}', name));
  }

  async function token(container: string, sub: string, scope: string): Promise<string> {
    return podman('exec', container, 'node', 'src/main.ts', 'token', '--sub', sub, '--scope', scope);
  }

  it('is small, runs as a non-root user and holds production dependencies only', async () => {
    const [info] = JSON.parse(await podman('image', 'inspect', image)) as {
      Size: number;
      Config: { User: string; Labels: Record<string, string>; Entrypoint: string[]; Env: string[] };
      Healthcheck?: { Test: string[] };
    }[];
    assert.ok(
      info!.Size <= MAX_IMAGE_BYTES,
      `image is ${(info!.Size / 1e6).toFixed(1)} MB, target ${MAX_IMAGE_BYTES / 1e6} MB`,
    );
    timings.push(`size ${(info!.Size / 1e6).toFixed(1)} MB`);
    assert.equal(info!.Config.User, '1000:1000');
    assert.equal(info!.Config.Labels['org.opencontainers.image.version'], packageJson.version);
    assert.equal(info!.Config.Labels['org.opencontainers.image.revision'], revision);
    assert.equal(info!.Config.Labels['org.opencontainers.image.source'], 'https://example.invalid/orderflow');
    assert.ok(
      info!.Healthcheck?.Test.join(' ').includes('/readyz'),
      `HEALTHCHECK probes /readyz: ${JSON.stringify(info!.Healthcheck)}`,
    );

    // No devDependency (the pinned `node` binary package above all), no npm, no build secret.
    const listing = await podman(
      'run',
      '--rm',
      '--entrypoint',
      'node',
      image,
      '-e',
      `const fs = require('node:fs');
       console.log(JSON.stringify({
         version: process.version,
         modules: fs.readdirSync('/app/node_modules').flatMap((d) => d.startsWith('@') ? fs.readdirSync('/app/node_modules/' + d).map((s) => d + '/' + s) : [d]),
         npm: fs.existsSync('/usr/local/lib/node_modules/npm'),
         secrets: fs.existsSync('/run/secrets/npm_ca'),
         specs: fs.readdirSync('/app/src', { recursive: true }).filter((f) => String(f).endsWith('.spec.ts')),
       }))`,
    );
    const contents = JSON.parse(listing) as {
      version: string;
      modules: string[];
      npm: boolean;
      secrets: boolean;
      specs: string[];
    };
    assert.equal(contents.version, `v${pinnedNode}`, 'the base provides the pinned Node');
    assert.ok(devOnly.includes('node') && devOnly.includes('typescript'), 'the lockfile marks development packages');
    assert.deepEqual(
      devOnly.filter((name) => contents.modules.includes(name)),
      [],
      'development-only packages in the image',
    );
    assert.ok(
      contents.modules.includes('fastify') && contents.modules.includes('@electric-sql/pglite'),
      'production dependencies are there',
    );
    assert.equal(contents.npm, false, 'npm stays out of the runtime image');
    assert.equal(contents.secrets, false, 'the npm_ca build secret is not in the image');
    assert.deepEqual(contents.specs, [], 'unit specs stay out (.dockerignore)');
  });

  it(
    'embedded: starts read-only, serves /readyz and an order through the published port, stops cleanly',
    { timeout: 300_000 },
    async () => {
      const name = `orderflow-test-embedded-${randomBytes(4).toString('hex')}`;
      const started = Date.now();
      await start(name, ['--publish', '127.0.0.1::8080', '--tmpfs', '/tmp']);
      const port = Number((await podman('port', name, '8080/tcp')).split(':').pop());
      await ready(name, port);
      timings.push(`embedded ready ${((Date.now() - started) / 1000).toFixed(1)} s after podman run`);

      // The HEALTHCHECK command works inside the container (podman runs it on demand without systemd).
      await healthcheck(name);
      // The root filesystem is read-only; DATA_DIR is not.
      await assert.rejects(podman('exec', name, 'touch', '/app/x'), /Read-only file system/);
      await podman('exec', name, 'touch', '/data/x');

      const admin = await token(name, 'admin', 'catalog:write orders:read orders:write');
      const base = `http://127.0.0.1:${port}`;
      const headers = { authorization: `Bearer ${admin}`, 'content-type': 'application/json' };
      const product = await fetch(`${base}/v1/products`, {
        method: 'POST',
        headers,
        body: JSON.stringify({ sku: 'MUG-1', name: 'Mug', priceCents: 1299, currency: 'EUR', stock: 5 }),
      });
      assert.equal(product.status, 201, await product.text());
      const order = await fetch(`${base}/v1/orders`, {
        method: 'POST',
        headers: { ...headers, 'idempotency-key': 'image-embedded-1' },
        body: JSON.stringify({ items: [{ sku: 'MUG-1', quantity: 2 }], payment: { token: 'tok_visa' } }),
      });
      assert.equal(order.status, 202, await order.clone().text());
      const { id } = (await order.json()) as { id: string };
      await eventually('the order to be confirmed', async () => {
        const response = await fetch(`${base}/v1/orders/${id}`, { headers });
        const body = (await response.json()) as { status: string };
        return body.status === 'confirmed' ? true : undefined;
      });

      assert.equal(await stop(name), 0, `exit code after podman stop:\n${await podman('logs', name)}`);
    },
  );

  describe('distributed: api, worker and relay containers', () => {
    const databaseUrl = requiredServiceUrl('DATABASE_URL');
    const natsUrl = requiredServiceUrl('NATS_URL');
    const redisUrl = requiredServiceUrl('REDIS_URL');
    const needs =
      databaseUrl && natsUrl && redisUrl
        ? undefined
        : 'set DATABASE_URL, NATS_URL and REDIS_URL to run the distributed image test';

    it(
      'confirms every accepted order across a worker stopped mid-charge',
      { skip: needs, timeout: 300_000 },
      async () => {
        const database = await freshPostgresDatabase(databaseUrl!);
        const brokerPrefix = freshBrokerPrefix();
        const gateway = new GatedGateway({ latencyMs: 0 });
        const gatewayServer = await startGatewayServer({ gateway });
        // One DATA_DIR for the roles, as processes on one machine share it: the development issuer's key.
        const dataDir = await mkdtemp(path.join(tmpdir(), 'orderflow-image-'));
        await chmod(dataDir, 0o777);
        const suffix = randomBytes(4).toString('hex');
        const env = [
          `DATABASE_URL=${database.url}`,
          `BROKER_URL=${natsUrl}`,
          `BROKER_PREFIX=${brokerPrefix}`,
          `REDIS_URL=${redisUrl}`,
          `REDIS_KEY_PREFIX=${brokerPrefix}:`,
          `PAYMENT_GATEWAY_URL=${gatewayServer.url}`,
          'HOST=127.0.0.1',
          'LOG_LEVEL=info',
        ].flatMap((e) => ['--env', e]);
        const shared = ['--network', 'host', '--volume', `${dataDir}:/data`, ...env];
        try {
          const migrated = await podman('run', '--rm', '--read-only', ...shared, image, 'migrate');
          assert.match(migrated, /applied/);

          const ports = {
            api: await freePort(),
            worker: await freePort(),
            relay: await freePort(),
            worker2: await freePort(),
          };
          const names = {
            api: `orderflow-test-api-${suffix}`,
            worker: `orderflow-test-worker-${suffix}`,
            relay: `orderflow-test-relay-${suffix}`,
            worker2: `orderflow-test-worker2-${suffix}`,
          };
          const started = Date.now();
          await start(names.api, [...shared, '--env', 'ROLE=api', '--env', `PORT=${ports.api}`]);
          // Four charges at a time, so that most orders are still in the broker when it stops.
          await start(names.worker, [
            ...shared,
            '--env',
            'ROLE=worker',
            '--env',
            `PORT=${ports.worker}`,
            '--env',
            'WORKER_CONCURRENCY=4',
          ]);
          await start(names.relay, [...shared, '--env', 'ROLE=relay', '--env', `PORT=${ports.relay}`]);
          await ready(names.api, ports.api);
          timings.push(`api ready ${((Date.now() - started) / 1000).toFixed(1)} s after podman run`);
          await ready(names.worker, ports.worker);
          await ready(names.relay, ports.relay);

          const base = `http://127.0.0.1:${ports.api}`;
          const admin = await token(names.api, 'admin', 'catalog:write orders:read orders:write');
          const headers = { authorization: `Bearer ${admin}`, 'content-type': 'application/json' };
          const product = await fetch(`${base}/v1/products`, {
            method: 'POST',
            headers,
            body: JSON.stringify({ sku: 'MUG-1', name: 'Mug', priceCents: 1299, currency: 'EUR', stock: 1000 }),
          });
          assert.equal(product.status, 201, await product.text());

          const ORDERS = 20;
          const accepted = await Promise.all(
            Array.from({ length: ORDERS }, async (_, i) => {
              const response = await fetch(`${base}/v1/orders`, {
                method: 'POST',
                headers: { ...headers, 'idempotency-key': `image-${i}` },
                body: JSON.stringify({ items: [{ sku: 'MUG-1', quantity: 1 }], payment: { token: 'tok_visa' } }),
              });
              assert.equal(response.status, 202, await response.clone().text());
              return ((await response.json()) as { id: string }).id;
            }),
          );

          // A charge is at the gateway, held there: stop the worker now. It must
          // finish what it holds before it exits, so let the gateway answer
          // only once it is draining.
          await gateway.started;
          const stopping = stop(names.worker);
          await eventually(
            'the worker to start draining',
            async () => ((await podman('logs', names.worker)).includes('shutting down') ? true : undefined),
            30_000,
          );
          gateway.release();
          assert.equal(await stopping, 0, `worker exit code after podman stop:\n${await podman('logs', names.worker)}`);

          // What the stopped worker had not taken waits in the broker for the next one.
          await start(names.worker2, [...shared, '--env', 'ROLE=worker', '--env', `PORT=${ports.worker2}`]);
          await ready(names.worker2, ports.worker2);
          await eventually(
            'every accepted order to be confirmed',
            async () => {
              for (const id of accepted) {
                const response = await fetch(`${base}/v1/orders/${id}`, { headers });
                const body = (await response.json()) as { status: string };
                if (body.status !== 'confirmed') return undefined;
              }
              return true;
            },
            120_000,
          );
          for (const id of accepted) assert.equal(gateway.netCharged(id).charges, 1, `order ${id} charged once`);

          for (const name of [names.api, names.relay, names.worker2]) {
            assert.equal(await stop(name), 0, `${name} exit code after podman stop:\n${await podman('logs', name)}`);
          }
        } finally {
          await gatewayServer.close();
          await deleteBrokerTopology(natsUrl!, brokerPrefix, PAYMENT_QUEUES).catch(() => {});
          await database.drop();
          await rm(dataDir, { recursive: true, force: true });
        }
      },
    );
  });
});
