// biome-ignore-all lint/suspicious/noExplicitAny: parsed YAML is checked field by field
/**
 * deploy/k8s/ and the compose `api` service, checked offline (no cluster, no Docker engine here):
 * every Kubernetes object against its published JSON schema (kubernetes-models,
 * @kubernetes-models/keda), then what the schemas cannot say — a Deployment per worker kind
 * running `deepfeat worker KIND`, extractors requesting a GPU, selectors that match, the Service
 * reaching the API's port, and the KEDA triggers naming the extract queue's real BullMQ key and
 * the API route that reports its backlog. Also: the README's curl lines are the ones
 * examples/service.sh runs (test/api-pipeline.e2e.test.ts runs that file).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { QueueKeys } from 'bullmq';
import { parseAllDocuments, parse } from 'yaml';
import { ScaledObject, TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Service } from 'kubernetes-models/v1/Service';
import { KIND_NAMES } from '../cli/workers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIR = join(ROOT, 'deploy/k8s');

type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string }; [k: string]: any };

const MODELS: Record<string, new (data: any) => { validate(): void }> = {
  'apps/v1/Deployment': Deployment,
  'v1/Service': Service,
  'v1/ConfigMap': ConfigMap,
  'v1/Namespace': Namespace,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
};

function objects(): Array<Obj & { file: string }> {
  const out: Array<Obj & { file: string }> = [];
  for (const file of readdirSync(DIR)
    .filter((f) => f.endsWith('.yaml'))
    .sort()) {
    for (const doc of parseAllDocuments(readFileSync(join(DIR, file), 'utf8'))) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]!.message}`);
      const value = doc.toJS() as Obj | null;
      if (value) out.push({ ...value, file });
    }
  }
  return out;
}

test('every object in deploy/k8s/ passes its Kubernetes or KEDA schema', (t) => {
  const all = objects();
  t.true(all.length >= 9);
  for (const { file, ...o } of all) {
    const Model = MODELS[`${o.apiVersion}/${o.kind}`];
    t.truthy(Model, `${file}: no schema for ${o.apiVersion} ${o.kind}`);
    t.notThrows(() => new Model!(o).validate(), `${file}: ${o.kind} ${o.metadata.name}`);
    if (o.kind !== 'Namespace') t.is(o.metadata.namespace, 'deepfeat', `${file}: ${o.metadata.name}`);
  }
  // The check itself catches a broken object.
  t.throws(() => new Deployment({ metadata: { name: 'x' }, spec: { replicas: 'two' } } as any).validate());
});

test('a Deployment per worker kind, each running `deepfeat worker KIND`; extractors request a GPU', (t) => {
  const deployments = objects().filter((o) => o.kind === 'Deployment');
  const kinds = KIND_NAMES.filter((k) => k !== 'all');
  for (const kind of kinds) {
    const d = deployments.find((o) => o.metadata.name === `deepfeat-${kind}`);
    t.truthy(d, kind);
    const c = d!.spec.template.spec.containers[0];
    t.deepEqual(c.command, ['npx', 'tsx', 'cli/main.ts', 'worker', kind]);
    t.true(c.envFrom.some((e: any) => e.configMapRef?.name === 'deepfeat-config'));
  }
  for (const d of deployments) {
    // The selector picks the pods the template makes.
    for (const [k, v] of Object.entries(d.spec.selector.matchLabels))
      t.is(d.spec.template.metadata.labels[k], v, d.metadata.name);
  }
  const extractor = deployments.find((o) => o.metadata.name === 'deepfeat-extractor')!.spec.template.spec.containers[0];
  t.is(String(extractor.resources.limits['nvidia.com/gpu']), '1');
  t.is(String(extractor.resources.requests['nvidia.com/gpu']), '1');
});

test('the API Deployment serves on the Service port, with tokens from a mounted secret and health probes', (t) => {
  const all = objects();
  const api = all.find((o) => o.kind === 'Deployment' && o.metadata.name === 'deepfeat-api')!;
  const svc = all.find((o) => o.kind === 'Service' && o.metadata.name === 'deepfeat-api')!;
  const c = api.spec.template.spec.containers[0];
  t.deepEqual(c.command.slice(0, 4), ['npx', 'tsx', 'cli/main.ts', 'serve']);
  const port = Number(c.command[c.command.indexOf('--port') + 1]);
  t.is(c.ports[0].containerPort, port);
  for (const [k, v] of Object.entries(svc.spec.selector)) t.is(api.spec.template.metadata.labels[k], v);
  t.is(svc.spec.ports[0].targetPort, c.ports[0].name);
  t.is(c.readinessProbe.httpGet.path, '/readyz');
  t.is(c.livenessProbe.httpGet.path, '/healthz');
  const tokensFile = c.env.find((e: any) => e.name === 'DEEPFEAT_API_TOKENS_FILE').value as string;
  const mount = c.volumeMounts.find((m: any) => tokensFile.startsWith(`${m.mountPath}/`));
  const volume = api.spec.template.spec.volumes.find((v: any) => v.name === mount.name);
  t.is(volume.secret.secretName, 'deepfeat-api-tokens');
});

test("KEDA scales the extractor Deployment on the extract queue's BullMQ keys and the API's backlog", (t) => {
  const all = objects();
  const so = all.find((o) => o.kind === 'ScaledObject')!;
  t.is(so.spec.scaleTargetRef.name, 'deepfeat-extractor');
  t.truthy(all.find((o) => o.kind === 'Deployment' && o.metadata.name === so.spec.scaleTargetRef.name));
  const config = all.find((o) => o.kind === 'ConfigMap')!.data;
  // The wait list's key as BullMQ itself builds it for this prefix and queue.
  const redis = so.spec.triggers.find((tr: any) => tr.type === 'redis');
  t.is(redis.metadata.listName, new QueueKeys(config.DEEPFEAT_QUEUE_PREFIX).toKey('extract', 'wait'));
  t.is(redis.metadata.addressFromEnv, 'REDIS_ADDRESS');
  t.truthy(config.REDIS_ADDRESS);
  // The API route KEDA asks, and the field it reads (GET /v1/queues, test/api.e2e.test.ts).
  const api = so.spec.triggers.find((tr: any) => tr.type === 'metrics-api');
  t.is(new URL(api.metadata.url).pathname, '/v1/queues');
  t.is(api.metadata.valueLocation, 'queues.extract.backlog');
  t.is(api.metadata.authMode, 'bearer');
  const auth = all.find((o) => o.kind === 'TriggerAuthentication' && o.metadata.name === api.authenticationRef.name)!;
  t.is(auth.spec.secretTargetRef[0].parameter, 'token');
});

test('docker-compose has an api service: serve on the compose network, published on loopback, tokens from a secret', (t) => {
  const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as any;
  const api = compose.services.api;
  t.deepEqual(api.command.slice(0, 4), ['npx', 'tsx', 'cli/main.ts', 'serve']);
  t.is(api.environment.REDIS_URL, 'redis://redis:6379');
  t.is(api.environment.DEEPFEAT_API_TOKENS_FILE, `/run/secrets/${api.secrets[0]}`);
  t.truthy(compose.secrets[api.secrets[0]].file);
  for (const p of api.ports) t.regex(String(p), /^127\.0\.0\.1:/);
  t.deepEqual(api.depends_on, compose.services.planner.depends_on);
});

test("the README's Service section shows only curl lines that examples/service.sh runs", (t) => {
  const script = readFileSync(join(ROOT, 'examples/service.sh'), 'utf8');
  const scriptLines = new Set(script.split('\n').map((l) => l.trim()));
  t.true([...scriptLines].filter((l) => l.startsWith('curl ')).length >= 10);
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf('\n## Service\n');
  if (start < 0) {
    // Until the section is written, the script is still checked to be valid shell (sh -n below).
    t.log('README has no "## Service" section yet');
  } else {
    const end = readme.indexOf('\n## ', start + 1);
    const section = readme.slice(start, end < 0 ? undefined : end);
    const curls = section
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('curl ') || l.startsWith('RUN=$(curl '));
    t.true(curls.length > 0);
    for (const line of curls) t.true(scriptLines.has(line), `README line not in examples/service.sh: ${line}`);
  }
  const check = spawnSync('sh', ['-n', join(ROOT, 'examples/service.sh')]);
  t.is(check.status, 0, String(check.stderr));
});
