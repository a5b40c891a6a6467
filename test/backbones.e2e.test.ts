/**
 * `--backbone` end to end on real parts (redis-server, S3 server, worker processes): a small run
 * on a non-default shipped backbone (MobileNetV2 1.0, a Keras-era layers model converted to ONNX)
 * trains and publishes with that backbone's id, node and input size recorded; a node the
 * backbone does not have fails the run at once as MODEL_INVALID, listing real layers.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { decodeImage } from '../services/extractor/image.js';
import { BUILTIN_BACKBONES } from '../shared/backbones.js';
import { BUILTIN_MODELS } from '../shared/features.js';
import type { RunStatus } from '../shared/run-state.js';
import { deployment, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const PER_CLASS = 12;
let dep: Deployment;
const workers: WorkerProcess[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '12' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
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

test.serial('run --backbone mobilenet_v2 trains and publishes on that backbone at its default node', async (t) => {
  t.timeout(180_000);
  const b = BUILTIN_BACKBONES.mobilenet_v2;
  const r = await runCli(dep.env, [
    'run',
    source(),
    '--name',
    'mnv2',
    '--backbone',
    'mobilenet_v2',
    '--wait',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as RunStatus;
  t.is(s.stage, 'published', JSON.stringify(s.error));
  t.deepEqual((s.request as { features?: unknown }).features, {
    kind: 'builtin',
    id: 'mobilenet_v2',
    flip: true,
    multiScale: true,
  });
  t.is(s.engine, `mobilenet_v2@${b.defaultNode}+half+flip`);
  t.regex(String(s.backend), /onnxruntime/);
  t.is(s.engineInput, `${b.inputSize}x${b.inputSize}`);
  t.is(s.done, 2 * PER_CLASS);
  t.truthy(s.model);
  // The published classifier.onnx holds the converted layers backbone too: it runs without deepfeat.
  t.regex(String(s.model?.classifier), /\/classifier\.onnx$/, s.model?.classifierUnavailable);
  const status = await runCli(dep.env, ['status', s.runId]);
  t.regex(status.stdout, /features\s+mobilenet_v2/);
});

test.serial('run --backbone NAME:NODE with a node the backbone lacks fails at once, listing real layers', async (t) => {
  t.timeout(120_000);
  const r = await runCli(dep.env, ['run', source(), '--backbone', 'inception_v3:no_such_layer', '--wait', '--json']);
  t.is(r.code, 2, r.stderr);
  const s = JSON.parse(r.stdout) as RunStatus;
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'MODEL_INVALID');
  t.regex(s.error!.message, /layer "no_such_layer" not found in inception_v3/);
  t.regex(s.error!.message, /mixed10/);
});

test.serial('run --backbone with an unknown name is refused before anything is queued (exit 2)', async (t) => {
  const r = await runCli(dep.env, ['run', source(), '--backbone', 'resnet50', '--wait']);
  t.is(r.code, 2);
  t.regex(r.stderr, /--backbone "resnet50": expected NAME or NAME:NODE with NAME one of mobilenet_v2_mid, /);
  t.is(r.stdout, '');
});

test.serial('deepfeat backbones --json lists the three shipped backbones', async (t) => {
  const r = await runCli(dep.env, ['backbones', '--json']);
  t.is(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout) as Array<{ id: string; inputSize: number; defaultNode: string; dim: number }>;
  t.deepEqual(
    rows.map((row) => [row.id, row.inputSize, row.defaultNode, row.dim]),
    Object.values(BUILTIN_BACKBONES).map((b) => [b.id, b.inputSize, b.defaultNode, b.dim]),
  );
});

test.serial(
  "every shipped backbone loads on ONNX Runtime at its default node with the catalogue's dim and size",
  async (t) => {
    t.timeout(180_000);
    const [img] = await loadDemoImages({ perClass: 1 });
    for (const id of BUILTIN_MODELS) {
      const b = BUILTIN_BACKBONES[id];
      const engine = await loadEngine(
        { kind: 'builtin', id },
        { readObject: () => Promise.reject(new Error('no reads')), threads: 1, engine: 'onnx' },
      );
      try {
        t.is(engine.id, `${id}@${b.defaultNode}`);
        t.is(engine.dim, b.dim, id);
        t.deepEqual(engine.input, { width: b.inputSize, height: b.inputSize });
        t.regex(engine.backend, /onnxruntime/);
        const row = await engine.embed([
          await decodeImage(img!.png, { width: b.inputSize, height: b.inputSize, maxPixels: 1e7 }),
        ]);
        t.is(row.length, b.dim);
        t.true(row.every(Number.isFinite));
        t.true(
          row.some((v) => v !== 0),
          `${id}: all-zero features`,
        );
      } finally {
        engine.dispose();
      }
    }
  },
);
