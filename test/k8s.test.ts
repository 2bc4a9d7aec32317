// deploy/k8s, checked with no cluster: every overlay rendered by kustomize
// (kubectl kustomize), every object validated against the Kubernetes and
// KEDA schemas with unknown fields refused, and the references between
// objects followed (test/support/kubernetes.ts). The checks are shown to
// fail on broken copies of the real objects, so a pass means something.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  configVariables,
  crossReferenceProblems,
  parseManifests,
  schemaProblems,
  type KubeObject,
} from './support/kubernetes.ts';
import { skipUnlessInstalled } from './support/programs.ts';

const root = path.resolve(import.meta.dirname, '..');
const overlaysDir = path.join(root, 'deploy', 'k8s', 'overlays');
const overlays = readdirSync(overlaysDir);
const run = promisify(execFile);

// kubectl renders the kustomize overlays; no cluster is needed.
const skip = skipUnlessInstalled('the manifest test', { kubectl: ['version', '--client'] });

/**
 * The Secrets production expects the operator to create, with values of the
 * shape Orderflow checks at start. docs/deploy.md must list each of them.
 */
const externalSecrets = {
  'orderflow-database': { url: 'postgres://orderflow:secret@db.example.com:5432/orderflow?sslmode=require' },
  'orderflow-redis': { url: 'rediss://default:secret@redis.example.com:6380' },
  'orderflow-payment-gateway': { url: 'https://gateway.example.com' },
};

async function render(overlay: string): Promise<KubeObject[]> {
  const { stdout } = await run('kubectl', ['kustomize', path.join(overlaysDir, overlay)], {
    maxBuffer: 16 * 1024 * 1024,
  });
  return parseManifests(stdout);
}

describe('Kubernetes manifests', { skip }, () => {
  const rendered = new Map<string, KubeObject[]>();
  before(async () => {
    for (const overlay of overlays) rendered.set(overlay, await render(overlay));
  });

  it('has the overlays the deployment guide names', () => {
    assert.deepEqual(overlays.toSorted(), ['dev', 'production', 'production-without-keda']);
  });

  for (const overlay of overlays) {
    describe(`overlay ${overlay}`, () => {
      it('every object is valid against its schema, with no unknown field', async () => {
        const problems: string[] = [];
        for (const object of rendered.get(overlay)!) {
          for (const problem of await schemaProblems(object))
            problems.push(`${object.kind} ${object.metadata.name}: ${problem}`);
        }
        assert.deepEqual(problems, []);
      });

      it('every reference holds: selectors, ports, autoscaling targets, configuration, probes, hardening', () => {
        assert.deepEqual(
          crossReferenceProblems(rendered.get(overlay)!, { externalSecrets: overlay === 'dev' ? {} : externalSecrets }),
          [],
        );
      });

      it('runs the api, worker and relay roles, each scaled by exactly one autoscaler or a fixed count', () => {
        const objects = rendered.get(overlay)!;
        const deployments = objects.filter((o) => o.kind === 'Deployment').map((o) => o.metadata.name);
        assert.deepEqual(deployments.toSorted(), ['orderflow-api', 'orderflow-relay', 'orderflow-worker']);
        const autoscaled = objects
          .filter((o) => o.kind === 'HorizontalPodAutoscaler' || o.kind === 'ScaledObject')
          .map((o) => o.spec.scaleTargetRef.name);
        for (const name of deployments) {
          const fixed =
            objects.find((o) => o.kind === 'Deployment' && o.metadata.name === name)!.spec.replicas !== undefined;
          assert.equal(
            Number(fixed) + autoscaled.filter((n) => n === name).length,
            1,
            `${name}: ${fixed ? 'a replica count' : 'no replica count'} and ${autoscaled.filter((n) => n === name).length} autoscalers`,
          );
        }
      });
    });
  }

  it('production scales workers with KEDA on the backlog; without KEDA with an HPA on the same metric', () => {
    const keda = rendered.get('production')!.find((o) => o.kind === 'ScaledObject')!;
    assert.equal(keda.spec.triggers[0].type, 'prometheus');
    assert.match(keda.spec.triggers[0].metadata.query, /orderflow_job_backlog\{queue="payments\.charge"\}/);
    const fallback = rendered
      .get('production-without-keda')!
      .find((o) => o.kind === 'HorizontalPodAutoscaler' && o.metadata.name === 'orderflow-worker')!;
    assert.equal(fallback.spec.metrics[0].external.metric.name, 'orderflow_job_backlog');
    assert.equal(fallback.spec.metrics[0].external.target.averageValue, keda.spec.triggers[0].metadata.threshold);
    assert.equal(rendered.get('production-without-keda')!.filter((o) => o.kind === 'ScaledObject').length, 0);
  });

  it('production serves HTTPS only, through an Ingress with a cert-manager certificate', () => {
    const ingress = rendered.get('production')!.find((o) => o.kind === 'Ingress')!;
    assert.ok(ingress.metadata.annotations?.['cert-manager.io/cluster-issuer']);
    assert.equal(ingress.metadata.annotations?.['nginx.ingress.kubernetes.io/force-ssl-redirect'], 'true');
    assert.deepEqual(ingress.spec.tls[0].hosts, [ingress.spec.rules[0].host]);
  });

  it('docs/deploy.md names every Secret the operator creates', () => {
    const guide = readFileSync(path.join(root, 'docs', 'deploy.md'), 'utf8');
    for (const name of Object.keys(externalSecrets))
      assert.ok(guide.includes(name), `docs/deploy.md does not mention ${name}`);
  });

  // The checks themselves, on broken copies of real objects.
  describe('the checks catch what they exist for', () => {
    const objects = () => structuredClone(rendered.get('dev')!);
    const find = (list: KubeObject[], kind: string, name: string) =>
      list.find((o) => o.kind === kind && o.metadata.name === name)!;

    it('a misspelled field, at the top of a spec and deep in a container', async () => {
      const deployment = find(objects(), 'Deployment', 'orderflow-api');
      deployment.spec.replicass = 2;
      deployment.spec.template.spec.containers[0].imagePullPolice = 'Always';
      assert.deepEqual((await schemaProblems(deployment)).toSorted(), [
        'unknown field /spec/replicass',
        'unknown field /spec/template/spec/containers/0/imagePullPolice',
      ]);
    });

    it('a wrong type, a value outside an enum, a missing required field', async () => {
      const deployment = find(objects(), 'Deployment', 'orderflow-worker');
      deployment.spec.replicas = 'two';
      deployment.spec.template.spec.containers[0].imagePullPolicy = 'Sometimes';
      delete deployment.spec.template.spec.containers[0].name;
      const problems = (await schemaProblems(deployment)).join('\n');
      assert.match(problems, /\/spec\/replicas must be integer/);
      assert.match(problems, /imagePullPolicy must be equal to one of the allowed values/);
      assert.match(problems, /containers\/0 must have required property name/);
    });

    it('a KEDA ScaledObject with a misspelled field or a trigger without a type', async () => {
      const scaledObject = structuredClone(rendered.get('production')!.find((o) => o.kind === 'ScaledObject')!);
      assert.deepEqual(await schemaProblems(scaledObject), []);
      scaledObject.spec.minReplicaCounts = 1;
      delete scaledObject.spec.triggers[0].type;
      const problems = await schemaProblems(scaledObject);
      assert.ok(problems.includes('unknown field /spec/minReplicaCounts'), problems.join('\n'));
      assert.ok(problems.includes('data/spec/triggers/0 must have required property type'), problems.join('\n'));
    });

    it('maps stay open: any label or ConfigMap key is fine', async () => {
      const config = find(
        objects(),
        'ConfigMap',
        rendered.get('dev')!.find((o) => o.kind === 'ConfigMap')!.metadata.name,
      );
      config.data.ANYTHING = 'x';
      config.metadata.labels = { ...config.metadata.labels, 'example.com/anything': 'x' };
      assert.deepEqual(await schemaProblems(config), []);
    });

    it('a kind no schema covers', async () => {
      assert.deepEqual(
        await schemaProblems({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }),
        ['no schema for example.com/v1 Widget'],
      );
    });

    const crossProblems = (list: KubeObject[]) => crossReferenceProblems(list, { externalSecrets: {} });

    it('a Service whose target port no pod names, and one that selects nothing', () => {
      const list = objects();
      find(list, 'Service', 'orderflow-api').spec.ports[0].targetPort = 'web';
      find(list, 'Service', 'orderflow-worker').spec.selector['app.kubernetes.io/component'] = 'wrker';
      assert.deepEqual(crossProblems(list), [
        'Service orderflow-api: port http targets web, which Deployment orderflow-api does not expose',
        'Service orderflow-worker: selector matches no pods',
      ]);
    });

    it('a Deployment whose selector misses its own pods, and an autoscaler of a missing Deployment', () => {
      const list = objects();
      find(list, 'Deployment', 'orderflow-relay').spec.selector.matchLabels['app.kubernetes.io/component'] = 'relays';
      find(list, 'HorizontalPodAutoscaler', 'orderflow-api').spec.scaleTargetRef.name = 'orderflow-apis';
      const problems = crossProblems(list);
      assert.ok(
        problems.includes("Deployment orderflow-relay: selector does not match its pod template's labels"),
        problems.join('\n'),
      );
      assert.ok(
        problems.includes(
          'HorizontalPodAutoscaler orderflow-api: scales Deployment orderflow-apis, which does not exist',
        ),
        problems.join('\n'),
      );
    });

    it('a misspelled variable, a configuration Orderflow refuses, a variable from a missing Secret', () => {
      const list = objects();
      const worker = find(list, 'Deployment', 'orderflow-worker').spec.template.spec.containers[0];
      worker.env.push({ name: 'DATABSE_URL', value: 'postgres://x' });
      worker.env.find((e: any) => e.name === 'ROLE').value = 'payer';
      find(list, 'Deployment', 'orderflow-api').spec.template.spec.containers[0].env.find(
        (e: any) => e.name === 'REDIS_URL',
      ).valueFrom.secretKeyRef.name = 'orderflow-cache';
      const problems = crossProblems(list).join('\n');
      assert.match(
        problems,
        /Deployment orderflow-worker container orderflow: sets DATABSE_URL, which Orderflow does not read/,
      );
      assert.match(
        problems,
        /Deployment orderflow-worker container orderflow: Orderflow would refuse this configuration: ROLE: expected one of all, api, worker, relay, got "payer"/,
      );
      assert.match(
        problems,
        /Deployment orderflow-api container orderflow: REDIS_URL comes from Secret orderflow-cache key url, which does not exist/,
      );
    });

    it('a probe on a route Orderflow does not serve, a writable root filesystem, a grace period shorter than the drain', () => {
      const list = objects();
      const pod = find(list, 'Deployment', 'orderflow-api').spec.template.spec;
      pod.containers[0].readinessProbe.httpGet.path = '/ready';
      pod.containers[0].securityContext.readOnlyRootFilesystem = false;
      pod.terminationGracePeriodSeconds = 30;
      const problems = crossProblems(list).join('\n');
      assert.match(problems, /readinessProbe requests \/ready, which Orderflow does not serve/);
      assert.match(problems, /container orderflow: the root filesystem is writable/);
      assert.match(problems, /terminationGracePeriodSeconds 30 leaves no room for the 25 s drain after a 5 s preStop/);
    });

    it('knows the variables src/config.ts reads', () => {
      const variables = configVariables();
      for (const name of [
        'ROLE',
        'PORT',
        'DATABASE_URL',
        'BROKER_URL',
        'REDIS_URL',
        'AUTH_JWKS_URL',
        'WORKER_CONCURRENCY',
      ])
        assert.ok(variables.has(name), name);
    });
  });
});
