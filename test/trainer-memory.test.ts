/**
 * The trainer's memory budget (DEEPFEAT_TRAINER_MEMORY): the estimate, the budget, and the
 * refusal naming the numbers and the ways out. Unit tests; the refusal by a real trainer before
 * it reads any shard is in trainer-memory.e2e.test.ts.
 */
import test from 'ava';
import {
  TRAINER_FIXED_BYTES,
  checkTrainerMemory,
  trainerMemoryBudget,
  trainerMemoryNeed,
  TRAINER_PARAM_VECTORS,
} from '../services/trainer/memory.js';
import { featureProvenance } from '../services/trainer/worker.js';
import { buildModelArtifact } from '../services/evaluator/model-artifact.js';
import { DatasetError } from '../shared/errors.js';
import type { Candidate } from '../shared/model-format.js';
import type { RunMetrics } from '../shared/run-state.js';

const GiB = 2 ** 30;

test('trainerMemoryNeed: a fixed part plus the matrix and a little more per row', (t) => {
  const million = trainerMemoryNeed({ rows: 1_000_000, dim: 816, classes: 10 });
  const matrix = 1_000_000 * 816 * 4;
  t.true(million > matrix + TRAINER_FIXED_BYTES);
  t.true(million < 1.25 * matrix + TRAINER_FIXED_BYTES, `${million / GiB} GiB`);
  t.is(
    trainerMemoryNeed({ rows: 0, dim: 816, classes: 10 }),
    TRAINER_FIXED_BYTES + 10 * 817 * 8 * TRAINER_PARAM_VECTORS,
  );
  // The bench's train job (README "Memory"): 337 MiB peak for 20,000 × 816; the estimate is above it.
  const bench = trainerMemoryNeed({ rows: 20_000, dim: 816, classes: 10 }) / 2 ** 20;
  t.true(bench >= 337 && bench < 500, `${bench} MiB`);
});

test('trainerMemoryBudget: the setting, else 80% of the host, or of a container limit below it', (t) => {
  t.deepEqual(trainerMemoryBudget(2048, { total: 64 * GiB }), {
    bytes: 2048 * 2 ** 20,
    source: 'DEEPFEAT_TRAINER_MEMORY=2048',
  });
  const host = trainerMemoryBudget(0, { total: 10 * GiB, constrained: 2 ** 64 });
  t.is(host.bytes, 8 * GiB);
  t.regex(host.source, /80% of this host's memory, 10\.0 GiB/);
  const container = trainerMemoryBudget(0, { total: 64 * GiB, constrained: 4 * GiB });
  t.is(container.bytes, Math.floor(3.2 * GiB));
  t.regex(container.source, /container's memory limit, 4\.0 GiB/);
  t.is(trainerMemoryBudget(0, { total: 10 * GiB, constrained: 0 }).bytes, 8 * GiB);
});

test('checkTrainerMemory: passes within the budget; refuses over it naming the numbers and the fixes', (t) => {
  const size = { rows: 1_000_000, dim: 816, classes: 10 };
  t.notThrows(() => checkTrainerMemory(size, { bytes: 8 * GiB, source: 's' }, 'r1'));
  const err = t.throws(
    () => checkTrainerMemory(size, { bytes: 2 * GiB, source: 'DEEPFEAT_TRAINER_MEMORY=2048' }, 'r1'),
    {
      instanceOf: DatasetError,
    },
  );
  t.true(err!.permanent);
  t.is(err!.code, 'DATASET_INVALID');
  t.regex(err!.message, /run r1 is too large for this trainer: 1,000,000 train\+val images × 816 features/);
  t.regex(err!.message, /3\.0 GiB float32 matrix/);
  t.regex(err!.message, /about 3\.\d GiB in all, over its budget of 2\.0 GiB \(DEEPFEAT_TRAINER_MEMORY=2048\)/);
  t.regex(err!.message, /more memory/);
  t.regex(err!.message, /fewer images: a sample/);
});

const result = (shard: number, rows: number, engine = 'raw-pixels:32x32', backend = 'js') => ({
  shard,
  rows,
  failed: 0,
  engine,
  backend,
  input: '32x32',
});

test('featureProvenance: engine, backends and input from the extract results; rows only when every shard reported', (t) => {
  const all = { a: result(1, 5, undefined, 'onnx'), b: result(0, 7), c: result(2, 3) };
  t.deepEqual(featureProvenance(all, 3, 'r1'), {
    rows: 15,
    features: { engine: 'raw-pixels:32x32', backends: ['js', 'onnx'], input: { width: 32, height: 32 } },
  });
  const partial = featureProvenance({ a: result(0, 7), bad: { shard: 1 } }, 2, 'r1');
  t.is(partial.rows, undefined);
  t.is(partial.features?.engine, 'raw-pixels:32x32');
  t.deepEqual(featureProvenance({}, 2, 'r1'), {});
  const err = t.throws(() => featureProvenance({ a: result(0, 1), b: result(1, 1, 'mobilenet@x') }, 2, 'r1'), {
    instanceOf: DatasetError,
  });
  t.regex(err!.message, /made by different feature extractors/);
});

const candidate: Candidate = {
  runId: 'r20260101000000-abcdef',
  classes: ['cat', 'dog'],
  dim: 2,
  mean: [0, 0],
  std: [1, 1],
  weights: [
    [1, 0],
    [0, 1],
  ],
  bias: [0, 0],
  lambda: 0.1,
  validation: [],
  trainImages: 10,
  valImages: 2,
  fitMs: 1,
};
const metrics = { accuracy: 1 } as RunMetrics;

test('buildModelArtifact: from the payload and the candidate alone; the spec fills in when no extract job reported', (t) => {
  const inputs = {
    runId: candidate.runId,
    name: 'pets',
    source: 's3://b/pets/',
    spec: { kind: 'tfjs' as const, model: 's3://b/m/model.json', node: 'pool', inputSize: 96 },
    metrics,
    createdAt: '2026-01-01T00:00:00.000Z',
  };
  const withEngine = buildModelArtifact({
    ...inputs,
    candidate: { ...candidate, features: { engine: 'm@pool', backends: ['onnx'], input: { width: 96, height: 96 } } },
  });
  t.like(withEngine, { name: 'pets', version: candidate.runId, source: 's3://b/pets/' });
  t.deepEqual(withEngine.features, { spec: inputs.spec, engine: 'm@pool', dim: 2, input: { width: 96, height: 96 } });
  const without = buildModelArtifact({ ...inputs, candidate });
  t.deepEqual(without.features, { spec: inputs.spec, engine: 'unknown', dim: 2, input: { width: 96, height: 96 } });
});

test('trainerMemoryNeed: many classes count, not only rows (2,000 classes × 3,072 raw pixels do not fit 700 MiB)', (t) => {
  // Found by an attacker: 2,000 classes with one train image each passed a 700 MiB budget at an
  // estimated 405 MiB, and the trainer then grew to 2.4 GiB (weights, gradients, L-BFGS history).
  const need = trainerMemoryNeed({ rows: 2000, dim: 3072, classes: 2000 });
  t.true(need > 2 * GiB, `${need / GiB} GiB`);
  const err = t.throws(() =>
    checkTrainerMemory({ rows: 2000, dim: 3072, classes: 2000 }, trainerMemoryBudget(700), 'r2'),
  );
  t.regex(err!.message, /with 2,000 classes the fit needs about/);
});
