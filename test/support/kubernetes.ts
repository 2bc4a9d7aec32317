// Checks rendered Kubernetes manifests the way an API server would, with no
// API server: each object against its schema (kubernetes-models for the
// built-in kinds, @kubernetes-models/keda for KEDA's), including fields the
// schema does not know, and the references between objects that only show up
// once a cluster runs them (a Service with no pods, a probe on a port that
// does not exist, an environment Orderflow would refuse at start).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../../src/config.ts';

const root = path.resolve(import.meta.dirname, '..', '..');

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: any;
}

export function parseManifests(text: string): KubeObject[] {
  return parseAllDocuments(text)
    .map((document) => {
      if (document.errors.length > 0)
        throw new Error(`invalid YAML: ${document.errors.map((e) => e.message).join('; ')}`);
      return document.toJS() as KubeObject | null;
    })
    .filter((object): object is KubeObject => object !== null);
}

type Validate = (this: unknown) => void;

/** The package that holds the schemas of an API group. */
function modelModule(apiVersion: string): string {
  const group = apiVersion.includes('/') ? apiVersion.split('/')[0]! : '';
  if (group === 'keda.sh') return `@kubernetes-models/keda/${apiVersion}`;
  return `kubernetes-models/${apiVersion}`;
}

/** The model class's validate (it validates `this`), or undefined when no schema is known for the kind. */
async function validatorFor(apiVersion: string, kind: string): Promise<Validate | undefined> {
  let module: Record<string, unknown>;
  try {
    module = (await import(modelModule(apiVersion))) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const model = module[kind] as { apiVersion?: string; kind?: string; prototype: { validate: Validate } } | undefined;
  if (!model || model.apiVersion !== apiVersion || model.kind !== kind) return undefined;
  return model.prototype.validate;
}

/**
 * Every problem the schema finds in one object: wrong types, values outside
 * an enum, missing required fields (as messages from the schema validator),
 * and fields the schema does not have ("unknown field /spec/replicass").
 *
 * The validators kubernetes-models ships are compiled and allow unknown
 * fields, as the OpenAPI schemas they come from do. But a compiled validator
 * reads every property its schema defines, and enumerates the keys of maps
 * (labels, ConfigMap data), so validating a proxy that records each read
 * shows which fields the schema knows; a field it never read is unknown.
 */
export async function schemaProblems(object: KubeObject): Promise<string[]> {
  const validate = await validatorFor(object.apiVersion, object.kind);
  if (!validate) return [`no schema for ${object.apiVersion} ${object.kind}`];
  const reads = new WeakMap<object, Set<string> | 'all'>();
  const proxies = new WeakMap<object, object>();
  const wrap = (value: unknown): unknown => {
    if (value === null || typeof value !== 'object') return value;
    const existing = proxies.get(value);
    if (existing) return existing;
    const mark = (target: object, key: string) => {
      const seen = reads.get(target);
      if (seen === 'all') return;
      if (seen) seen.add(key);
      else reads.set(target, new Set([key]));
    };
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        if (typeof key === 'string') mark(target, key);
        return wrap(Reflect.get(target, key, receiver));
      },
      has(target, key) {
        if (typeof key === 'string') mark(target, key);
        return Reflect.has(target, key);
      },
      ownKeys(target) {
        reads.set(target, 'all');
        return Reflect.ownKeys(target);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };

  // The API server decodes Secret data with Go's base64, which skips line
  // breaks, and kustomize writes long values as multi-line blocks; the
  // schema's "byte" format does not skip them.
  if (object.kind === 'Secret' && object.data) {
    object = {
      ...object,
      data: Object.fromEntries(
        Object.entries(object.data as Record<string, string>).map(([k, v]) => [k, v.replace(/[\r\n]/g, '')]),
      ),
    };
  }
  const problems: string[] = [];
  try {
    validate.call(wrap(object));
  } catch (error) {
    problems.push(...String((error as Error).message).split(', '));
  }
  const walk = (value: unknown, at: string) => {
    if (value === null || typeof value !== 'object') return;
    if (Array.isArray(value)) {
      value.forEach((item, i) => walk(item, `${at}/${i}`));
      return;
    }
    const seen = reads.get(value);
    // Never looked into: a free-form object (the schema says only "object").
    if (seen === undefined) return;
    for (const [key, child] of Object.entries(value)) {
      if (seen !== 'all' && !seen.has(key)) problems.push(`unknown field ${at}/${key}`);
      else walk(child, `${at}/${key}`);
    }
  };
  walk(object, '');
  return problems;
}

// ---------------------------------------------------------------------------
// Cross-references.

type Workload = KubeObject & { kind: 'Deployment' | 'StatefulSet' };

const isWorkload = (o: KubeObject): o is Workload => o.kind === 'Deployment' || o.kind === 'StatefulSet';
const matches = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  selector !== undefined &&
  Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => labels?.[k] === v);
const where = (o: KubeObject) => `${o.kind} ${o.metadata.name}`;
const podSpec = (w: Workload) => w.spec.template.spec;
const containersOf = (w: Workload): any[] => [...(podSpec(w).initContainers ?? []), ...podSpec(w).containers];
const portNames = (w: Workload) =>
  new Set(podSpec(w).containers.flatMap((c: any) => (c.ports ?? []).map((p: any) => p.name)));
const containerPorts = (w: Workload) =>
  new Set(podSpec(w).containers.flatMap((c: any) => (c.ports ?? []).map((p: any) => p.containerPort)));

/** The variables src/config.ts reads: loadConfig, given an environment that records each lookup. */
export function configVariables(): Set<string> {
  const read = new Set<string>();
  loadConfig(new Proxy({}, { get: (_target, key) => (typeof key === 'string' && read.add(key), undefined) }));
  return read;
}

/** The routes the app serves outside /v1, from the OpenAPI document the tests keep in step with the routes. */
function operationRoutes(): Set<string> {
  const document = JSON.parse(readFileSync(path.join(root, 'docs', 'openapi.json'), 'utf8')) as {
    paths: Record<string, unknown>;
  };
  return new Set(Object.keys(document.paths).filter((p) => !p.startsWith('/v1')));
}

/** What the image sets (the Dockerfile's ENV): the environment every Orderflow container starts from. */
function imageEnvironment(): Record<string, string> {
  // As the Dockerfile reference says: comment lines are removed before line
  // continuations are joined, so a comment may sit inside a multi-line ENV.
  const dockerfile = readFileSync(path.join(root, 'Dockerfile'), 'utf8')
    .replace(/^\s*#.*\n/gm, '')
    .replace(/\\\n/g, ' ');
  const env: Record<string, string> = {};
  for (const line of dockerfile.split('\n').filter((l) => l.startsWith('ENV '))) {
    for (const [, name, quoted, bare] of line.slice(4).matchAll(/([A-Z_]+)=(?:"([^"]*)"|(\S+))/g))
      env[name!] = quoted ?? bare!;
  }
  return env;
}

export interface CrossReferenceOptions {
  /**
   * Secrets the operator creates (not in the manifests), and a value of the
   * right shape for each environment variable read from them, to check
   * Orderflow's configuration with.
   */
  externalSecrets: Record<string, Record<string, string>>;
}

/** Every reference in the set of objects that would not hold in a cluster. */
export function crossReferenceProblems(objects: KubeObject[], options: CrossReferenceOptions): string[] {
  const problems: string[] = [];
  const workloads = objects.filter(isWorkload);
  const byKind = (kind: string) => objects.filter((o) => o.kind === kind);
  const named = (kind: string, name: string) => objects.find((o) => o.kind === kind && o.metadata.name === name);
  const selected = (selector: Record<string, string> | undefined) =>
    workloads.filter((w) => matches(selector, w.spec.template.metadata?.labels));

  for (const w of workloads) {
    if (!matches(w.spec.selector?.matchLabels, w.spec.template.metadata?.labels))
      problems.push(`${where(w)}: selector does not match its pod template's labels`);
  }

  for (const service of byKind('Service')) {
    const pods = selected(service.spec.selector);
    if (pods.length === 0) {
      problems.push(`${where(service)}: selector matches no pods`);
      continue;
    }
    for (const port of service.spec.ports ?? []) {
      const target = port.targetPort ?? port.port;
      for (const w of pods) {
        const found = typeof target === 'string' ? portNames(w).has(target) : containerPorts(w).has(target);
        if (!found)
          problems.push(
            `${where(service)}: port ${port.name ?? port.port} targets ${target}, which ${where(w)} does not expose`,
          );
      }
    }
  }

  for (const pdb of byKind('PodDisruptionBudget')) {
    if (selected(pdb.spec.selector?.matchLabels).length === 0) problems.push(`${where(pdb)}: selector matches no pods`);
  }

  for (const policy of byKind('NetworkPolicy')) {
    const selector = policy.spec.podSelector?.matchLabels;
    const pods = selected(selector);
    if (selector && Object.keys(selector).length > 0 && pods.length === 0)
      problems.push(`${where(policy)}: podSelector matches no pods`);
    for (const rule of policy.spec.ingress ?? []) {
      for (const port of rule.ports ?? []) {
        if (typeof port.port !== 'string') continue;
        for (const w of pods)
          if (!portNames(w).has(port.port))
            problems.push(`${where(policy)}: ingress port ${port.port} is not a port of ${where(w)}`);
      }
    }
  }

  const scaled = (o: KubeObject, ref: { kind?: string; name: string }) => {
    const target = named(ref.kind ?? 'Deployment', ref.name);
    if (!target) problems.push(`${where(o)}: scales ${ref.kind ?? 'Deployment'} ${ref.name}, which does not exist`);
    return target as Workload | undefined;
  };
  for (const hpa of byKind('HorizontalPodAutoscaler')) {
    const target = scaled(hpa, hpa.spec.scaleTargetRef);
    const onCpu = (hpa.spec.metrics ?? []).some((m: any) => m.type === 'Resource' && m.resource?.name === 'cpu');
    if (target && onCpu) {
      for (const c of podSpec(target).containers)
        if (!c.resources?.requests?.cpu)
          problems.push(`${where(hpa)}: scales on CPU but container ${c.name} requests none`);
    }
    if (target && target.spec.replicas !== undefined)
      problems.push(`${where(hpa)}: ${where(target)} sets replicas, which every apply would reset`);
  }
  for (const scaledObject of byKind('ScaledObject')) {
    const target = scaled(scaledObject, scaledObject.spec.scaleTargetRef);
    if (target && target.spec.replicas !== undefined)
      problems.push(`${where(scaledObject)}: ${where(target)} sets replicas, which every apply would reset`);
  }
  const autoscalers = [...byKind('HorizontalPodAutoscaler'), ...byKind('ScaledObject')].map(
    (o) => o.spec.scaleTargetRef.name as string,
  );
  for (const name of new Set(autoscalers)) {
    if (autoscalers.filter((n) => n === name).length > 1)
      problems.push(`Deployment ${name} has more than one autoscaler`);
  }

  for (const ingress of byKind('Ingress')) {
    for (const rule of ingress.spec.rules ?? []) {
      for (const p of rule.http?.paths ?? []) {
        const backend = p.backend.service;
        const service = named('Service', backend.name);
        if (!service) {
          problems.push(`${where(ingress)}: backend Service ${backend.name} does not exist`);
          continue;
        }
        const port = (service.spec.ports ?? []).find((sp: any) =>
          backend.port.name ? sp.name === backend.port.name : sp.port === backend.port.number,
        );
        if (!port)
          problems.push(
            `${where(ingress)}: Service ${backend.name} has no port ${backend.port.name ?? backend.port.number}`,
          );
      }
    }
  }

  for (const set of byKind('StatefulSet')) {
    const service = named('Service', set.spec.serviceName);
    if (!service || service.spec.clusterIP !== 'None')
      problems.push(`${where(set)}: serviceName ${set.spec.serviceName} is not a headless Service`);
  }

  // ConfigMaps, Secrets and volumes a pod refers to.
  const secretValue = (name: string, key: string): string | undefined => {
    const secret = named('Secret', name);
    if (secret) {
      if (secret.stringData?.[key] !== undefined) return secret.stringData[key];
      if (secret.data?.[key] !== undefined) return Buffer.from(secret.data[key], 'base64').toString('utf8');
      return undefined;
    }
    return options.externalSecrets[name]?.[key];
  };
  for (const w of workloads) {
    const spec = podSpec(w);
    const claims = new Set((w.spec.volumeClaimTemplates ?? []).map((t: any) => t.metadata.name));
    for (const volume of spec.volumes ?? []) {
      if (volume.configMap && !volume.configMap.optional && !named('ConfigMap', volume.configMap.name))
        problems.push(
          `${where(w)}: volume ${volume.name} uses ConfigMap ${volume.configMap.name}, which does not exist`,
        );
      if (
        volume.secret &&
        !volume.secret.optional &&
        !named('Secret', volume.secret.secretName) &&
        !options.externalSecrets[volume.secret.secretName]
      )
        problems.push(
          `${where(w)}: volume ${volume.name} uses Secret ${volume.secret.secretName}, which does not exist`,
        );
      if (volume.persistentVolumeClaim && !named('PersistentVolumeClaim', volume.persistentVolumeClaim.claimName))
        problems.push(
          `${where(w)}: volume ${volume.name} uses claim ${volume.persistentVolumeClaim.claimName}, which does not exist`,
        );
    }
    const volumes = new Set([...(spec.volumes ?? []).map((v: any) => v.name), ...claims]);
    for (const container of containersOf(w)) {
      const at = `${where(w)} container ${container.name}`;
      for (const mount of container.volumeMounts ?? [])
        if (!volumes.has(mount.name)) problems.push(`${at}: mounts ${mount.name}, which is not a volume`);
      for (const source of container.envFrom ?? []) {
        if (source.configMapRef && !source.configMapRef.optional && !named('ConfigMap', source.configMapRef.name))
          problems.push(`${at}: envFrom ConfigMap ${source.configMapRef.name}, which does not exist`);
        if (source.secretRef)
          problems.push(
            `${at}: envFrom Secret ${source.secretRef.name}: name each variable instead, so the configuration check can see it`,
          );
      }
      for (const variable of container.env ?? []) {
        const ref = variable.valueFrom?.configMapKeyRef ?? variable.valueFrom?.secretKeyRef;
        if (!ref || ref.optional) continue;
        const isSecret = variable.valueFrom.secretKeyRef !== undefined;
        const value = isSecret ? secretValue(ref.name, ref.key) : named('ConfigMap', ref.name)?.data?.[ref.key];
        if (value === undefined)
          problems.push(
            `${at}: ${variable.name} comes from ${isSecret ? 'Secret' : 'ConfigMap'} ${ref.name} key ${ref.key}, which does not exist`,
          );
      }
      for (const [kind, probe] of [
        ['startupProbe', container.startupProbe],
        ['livenessProbe', container.livenessProbe],
        ['readinessProbe', container.readinessProbe],
      ] as const) {
        const port = probe?.httpGet?.port;
        if (typeof port === 'string' && !(container.ports ?? []).some((p: any) => p.name === port))
          problems.push(`${at}: ${kind} uses port ${port}, which the container does not name`);
      }
    }
  }

  // Orderflow's own pods: the environment the app would start with, probes on its routes, and the hardening.
  const known = configVariables();
  const routes = operationRoutes();
  const imageEnv = imageEnvironment();
  for (const w of workloads.filter((x) => x.metadata.labels?.['app.kubernetes.io/name'] === 'orderflow')) {
    const spec = podSpec(w);
    const component = w.spec.template.metadata.labels['app.kubernetes.io/component'];
    const grace = spec.terminationGracePeriodSeconds ?? 30;
    for (const container of containersOf(w)) {
      const at = `${where(w)} container ${container.name}`;
      const env: Record<string, string> = { ...imageEnv };
      const optional: string[] = [];
      for (const source of container.envFrom ?? []) {
        const data = source.configMapRef ? named('ConfigMap', source.configMapRef.name)?.data : undefined;
        for (const [key, value] of Object.entries(data ?? {})) env[(source.prefix ?? '') + key] = String(value);
      }
      for (const variable of container.env ?? []) {
        const ref = variable.valueFrom?.configMapKeyRef ?? variable.valueFrom?.secretKeyRef;
        if (variable.value !== undefined) env[variable.name] = variable.value;
        else if (ref) {
          const value = variable.valueFrom.secretKeyRef
            ? secretValue(ref.name, ref.key)
            : named('ConfigMap', ref.name)?.data?.[ref.key];
          if (value !== undefined) env[variable.name] = value;
          if (ref.optional) optional.push(variable.name);
        } else
          problems.push(
            `${at}: ${variable.name} has a value Orderflow's check cannot read (${JSON.stringify(variable.valueFrom)})`,
          );
      }
      for (const name of Object.keys(env)) {
        if (!known.has(name) && !(name in imageEnv))
          problems.push(`${at}: sets ${name}, which Orderflow does not read (src/config.ts)`);
      }
      // The configuration must load both with and without the optional variables.
      for (const variant of [env, Object.fromEntries(Object.entries(env).filter(([k]) => !optional.includes(k)))]) {
        try {
          const config = loadConfig(variant);
          if (container.args?.[0] === 'serve' && config.role !== component)
            problems.push(`${at}: runs ROLE=${config.role} under the ${component} label`);
          if (
            container.args?.[0] === 'serve' &&
            !(container.ports ?? []).some((p: any) => p.name === 'http' && p.containerPort === config.port)
          )
            problems.push(`${at}: listens on ${config.port}, not on its http port`);
          if (!(container.volumeMounts ?? []).some((m: any) => m.mountPath === config.dataDir))
            problems.push(`${at}: DATA_DIR ${config.dataDir} is not a volume (the root filesystem is read-only)`);
        } catch (error) {
          problems.push(`${at}: Orderflow would refuse this configuration: ${(error as Error).message}`);
        }
      }
      const probes = [
        ['startupProbe', '/healthz'],
        ['livenessProbe', '/healthz'],
        ['readinessProbe', '/readyz'],
      ] as const;
      for (const [kind, wanted] of probes) {
        if (container.args?.[0] !== 'serve') continue;
        const probePath = container[kind]?.httpGet?.path;
        if (probePath === undefined) problems.push(`${at}: no ${kind}`);
        else if (!routes.has(probePath))
          problems.push(`${at}: ${kind} requests ${probePath}, which Orderflow does not serve`);
        else if (probePath !== wanted) problems.push(`${at}: ${kind} should request ${wanted}, not ${probePath}`);
      }
      const security = { ...spec.securityContext, ...container.securityContext };
      if (security.runAsNonRoot !== true) problems.push(`${at}: runAsNonRoot is not set`);
      if (security.readOnlyRootFilesystem !== true) problems.push(`${at}: the root filesystem is writable`);
      if (security.allowPrivilegeEscalation !== false) problems.push(`${at}: privilege escalation is allowed`);
      if (!security.capabilities?.drop?.includes('ALL')) problems.push(`${at}: capabilities are not all dropped`);
      if (security.seccompProfile?.type !== 'RuntimeDefault')
        problems.push(`${at}: seccomp profile is not RuntimeDefault`);
      if (!container.resources?.requests?.memory || !container.resources?.limits?.memory)
        problems.push(`${at}: no memory request and limit`);
      const preStop = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0);
      if (grace <= 25 + preStop)
        problems.push(
          `${at}: terminationGracePeriodSeconds ${grace} leaves no room for the 25 s drain after a ${preStop} s preStop`,
        );
    }
  }
  return problems;
}
