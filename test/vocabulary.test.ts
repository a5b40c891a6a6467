/**
 * Each vocabulary is declared once (shared/features.ts, shared/config.ts, shared/dataset.ts) and
 * everything else derives from it: these tests hold the job schema, config parsing, help text,
 * the planner's split names and the engines' pixel conversion to the same lists.
 */
import test from 'ava';
import { splitNamed } from '../services/planner/plan.js';
import { createRawPixelsEngine } from '../services/extractor/engines/raw-pixels.js';
import {
  ENGINE_CHOICES,
  ENV_DOC,
  LOG_LEVELS,
  ONNX_PROVIDERS,
  TFJS_BACKENDS,
  loadConfig,
  type Config,
} from '../shared/config.js';
import { SPLITS } from '../shared/dataset.js';
import { BadRequestError, ConfigError } from '../shared/errors.js';
import {
  BUILTIN_MODELS,
  INPUT_RANGES,
  INPUT_RANGE_SCALES,
  RAW_PIXELS,
  RAW_PIXELS_SIZE,
  inputLut,
} from '../shared/features.js';
import { itemSchema, parseJobData } from '../shared/queues.js';

const extract = (features: unknown) => ({
  runId: 'r1',
  shard: 0,
  sourceBucket: 'b',
  features,
  manifest: { key: 'runs/r1/manifest.jsonl', start: 0, end: 50, count: 1 },
});
const tfjsSpec = (inputRange: unknown) => ({ kind: 'tfjs', model: 's3://b/m/model.json', node: 'pool', inputRange });

test('every input range is accepted by the job schema; another is refused with the list', (t) => {
  for (const range of INPUT_RANGES) {
    t.deepEqual(parseJobData('extract', extract(tfjsSpec(range))).features, tfjsSpec(range) as never, range);
  }
  const err = t.throws(() => parseJobData('extract', extract(tfjsSpec('0,2'))), { instanceOf: BadRequestError });
  t.true(err!.message.includes('features.inputRange: '), err!.message);
  for (const range of INPUT_RANGES) t.true(err!.message.includes(`'${range}'`), `${range} in: ${err!.message}`);
});

test('every split is accepted by the manifest item schema and named by the planner; another is refused', (t) => {
  const item = (split: unknown) => itemSchema.safeParse({ key: 'k/1.jpg', label: 'cat', split });
  for (const split of SPLITS) {
    t.is(item(split).data?.split, split);
    t.is(splitNamed(split), split);
  }
  const r = item('holdout');
  t.false(r.success);
  for (const split of SPLITS) t.true(r.error!.message.includes(`'${split}'`), r.error!.message);
});

test('every builtin model id is accepted by the job schema', (t) => {
  for (const id of BUILTIN_MODELS) t.notThrows(() => parseJobData('extract', extract({ kind: 'builtin', id })));
  const err = t.throws(() => parseJobData('extract', extract({ kind: 'builtin', id: 'resnet50' })), {
    instanceOf: BadRequestError,
  });
  t.true(err!.message.includes('features.id: '), err!.message);
});

test('raw-pixel sizes: the job schema and the engine take exactly the same range', (t) => {
  const { min, max } = RAW_PIXELS_SIZE;
  for (const size of [min, RAW_PIXELS_SIZE.default, max]) {
    t.notThrows(() => parseJobData('extract', extract({ kind: 'raw-pixels', size })), String(size));
    t.is(createRawPixelsEngine(size).dim, size * size * 3);
  }
  for (const size of [min - 1, max + 1]) {
    t.throws(() => parseJobData('extract', extract({ kind: 'raw-pixels', size })), { instanceOf: BadRequestError });
    t.throws(() => createRawPixelsEngine(size), { message: new RegExp(`from ${min} to ${max}`) });
  }
  t.deepEqual(RAW_PIXELS, { kind: 'raw-pixels', size: RAW_PIXELS_SIZE.default });
});

/** Each choice setting: its variable, its list, and where loadConfig puts it. */
const CHOICE_SETTINGS: Array<[string, readonly string[], (c: Config) => string]> = [
  ['DEEPFEAT_ENGINE', ENGINE_CHOICES, (c) => c.extractor.engine],
  ['DEEPFEAT_TFJS_BACKEND', TFJS_BACKENDS, (c) => c.extractor.tfjsBackend],
  ['DEEPFEAT_ONNX_PROVIDER', ONNX_PROVIDERS, (c) => c.extractor.onnxProvider],
  ['LOG_LEVEL', LOG_LEVELS, (c) => c.logLevel],
];

for (const [name, values, read] of CHOICE_SETTINGS) {
  test(`${name}: every value of its list is parsed, another is refused with the list, ENV_DOC names them`, (t) => {
    for (const v of values) t.is(read(loadConfig({ [name]: v })), v);
    const err = t.throws(() => loadConfig({ [name]: 'quantum' }), { instanceOf: ConfigError });
    t.deepEqual(err!.problems, [`${name}="quantum": expected one of ${values.join(', ')}`]);
    t.true(ENV_DOC[name]!.includes(values.join('|')), ENV_DOC[name]);
  });
}

test('inputLut: each range maps byte 0 and 255 to the ends its name gives, linearly, in float32', (t) => {
  for (const range of INPUT_RANGES) {
    const [lo, hi] = range.split(',').map(Number) as [number, number];
    const lut = inputLut(range);
    t.is(lut.length, 256);
    t.is(lut[0], lo, range);
    t.is(lut[255], hi, range);
    const { scale, offset } = INPUT_RANGE_SCALES[range];
    for (let v = 0; v < 256; v++) t.is(lut[v], Math.fround(v * scale + offset), `${range} at ${v}`);
  }
});

test('raw pixels through the shared table are bit-identical to pixel / 255', async (t) => {
  const engine = createRawPixelsEngine(RAW_PIXELS_SIZE.min * 16);
  const img = Uint8Array.from({ length: engine.dim }, (_, i) => i % 256);
  const rows = await engine.embed([img]);
  t.deepEqual(
    rows,
    Float32Array.from(img, (v) => v / 255),
  );
});
