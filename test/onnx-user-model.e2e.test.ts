/**
 * A user's own ONNX model end to end, on real parts (redis-server, the S3 server, worker
 * processes): `deepfeat run --model s3://…/model.onnx --node TENSOR --mean … --std …` extracts,
 * trains and publishes; a tensor that does not exist, and a file that is not ONNX, fail the run at
 * once (exit 2, MODEL_INVALID) with a message listing real tensors.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import type { RunStatus } from '../shared/run-state.js';
import { nhwcModel } from './helpers/onnx-models.js';
import { type Deployment, type WorkerProcess, deployment, runCli, spawnWorker } from './helpers/pipeline.js';

const PER_CLASS = 12;

let dep: Deployment;
const workers: WorkerProcess[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '16' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  await dep.put('models/nhwc16.onnx', nhwcModel({ side: 16 }));
  await dep.put('models/garbage.onnx', new TextEncoder().encode('this is not a model\n'));
  workers.push(
    spawnWorker(dep.env, 'planner'),
    spawnWorker(dep.env, 'trainer'),
    spawnWorker(dep.env, 'evaluator'),
    spawnWorker(dep.env, 'extractor'),
  );
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await dep?.close();
});

const source = () => `s3://${dep.dataBucket}/pets/`;
const model = (name: string) => `s3://${dep.dataBucket}/models/${name}`;

test.serial('an NHWC ONNX model with --mean/--std trains and publishes through real workers', async (t) => {
  t.timeout(180_000);
  const args = ['run', source(), '--name', 'onnx-user', '--model', model('nhwc16.onnx'), '--node', 'relu'];
  const r = await runCli(dep.env, [
    ...args,
    '--mean',
    '0.485,0.456,0.406',
    '--std',
    '0.229,0.224,0.225',
    '--wait',
    '--json',
  ]);
  const s = JSON.parse(r.stdout) as RunStatus;
  if (s.stage !== 'published') t.log(r.stderr, workers.map((w) => w.output()).join('\n'));
  t.is(r.code, 0, r.stderr);
  t.is(s.stage, 'published', s.error?.message);
  t.is(s.done, 2 * PER_CLASS);
  t.is(s.engine, `${model('nhwc16.onnx')}@relu+flip`);
  t.is(s.engineInput, '16x16');
  t.regex(s.backend ?? '', /^onnxruntime/);
  t.truthy(s.model?.uri);
  // classifier.onnx wraps the user's graph (test/onnx-user-model.test.ts checks its outputs).
  t.regex(s.model?.classifier ?? '', /classifier\.onnx$/, s.model?.classifierUnavailable);
  t.true((s.metrics?.testImages ?? 0) > 0);
});

test.serial('a tensor that does not exist fails the run at once, listing real tensors (exit 2)', async (t) => {
  t.timeout(90_000);
  const r = await runCli(dep.env, ['run', source(), '--model', model('nhwc16.onnx'), '--node', 'conv9', '--wait']);
  const out = r.stdout + r.stderr;
  t.is(r.code, 2, out);
  t.regex(out, /tensor "conv9" is not produced by any node of .*tensors you can pool include: .*"relu" \(Relu\)/, out);
});

test.serial('a file that is not ONNX fails the run at once as MODEL_INVALID (exit 2)', async (t) => {
  t.timeout(90_000);
  const r = await runCli(dep.env, [
    'run',
    source(),
    '--model',
    model('garbage.onnx'),
    '--node',
    'x',
    '--wait',
    '--json',
  ]);
  const s = JSON.parse(r.stdout) as RunStatus;
  t.is(r.code, 2, r.stderr);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'MODEL_INVALID');
  t.regex(s.error?.message ?? '', /is not a readable ONNX model: .*; export it again/);
});
