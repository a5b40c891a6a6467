/**
 * A published model.json and latest.json read back by `download` are untrusted bytes in a bucket:
 * `assertModelArtifact` and `assertLatestPointer` (shared/model-format.ts) turn a malformed one
 * into MODEL_INVALID naming the first bad field, instead of a TypeError deep in the CLI.
 */
import test from 'ava';
import { exitCodeForError } from '../cli/exit-codes.js';
import { ModelError } from '../shared/errors.js';
import {
  MODEL_FORMAT,
  assertLatestPointer,
  assertModelArtifact,
  isModelName,
  isModelVersion,
  modelKey,
} from '../shared/model-format.js';
import { assertLinearSoftmaxModel } from '../shared/softmax-model.js';

const URI = 's3://artifacts/models/m/r20261128093000-1a2b3c/model.json';

function artifact(): Record<string, unknown> {
  return {
    format: MODEL_FORMAT,
    name: 'm',
    version: 'r20261128093000-1a2b3c',
    runId: 'r20261128093000-1a2b3c',
    createdAt: '2026-11-28T09:30:00.000Z',
    source: 's3://data/pets/',
    features: {
      spec: { kind: 'raw-pixels', size: 32 },
      engine: 'raw-pixels:32x32',
      dim: 2,
      input: { width: 32, height: 32 },
    },
    classes: ['cat', 'dog'],
    mean: [0, 0],
    std: [1, 1],
    weights: [
      [1, 0],
      [0, 1],
    ],
    bias: [0, 0],
    training: { lambda: 1, trainImages: 10, valImages: 2, validation: [] },
    metrics: { accuracy: 0.5 },
  };
}

test('a whole artifact passes', (t) => {
  const a = artifact();
  t.is(assertModelArtifact(a, URI), a as never);
});

test('a malformed artifact is MODEL_INVALID naming the field and the way out (exit 2)', (t) => {
  const cases: Array<[string, (a: Record<string, unknown>) => unknown, RegExp]> = [
    ['not an object', () => [], /expected a JSON object/],
    ['another format', (a) => ({ ...a, format: 'x' }), /"format" is not "deepfeat\.model\/v1"/],
    ['no classes', (a) => ({ ...a, classes: undefined }), /'classes' must be an array of at least 2 labels/],
    ['weights of the wrong shape', (a) => ({ ...a, weights: [[1, 0]] }), /'weights' must have one row per class/],
    ['no metrics', (a) => ({ ...a, metrics: undefined }), /"metrics\.accuracy" must be a number from 0 to 1/],
    ['no features', (a) => ({ ...a, features: 7 }), /"features" must say how features were made/],
    [
      "a dim that is not mean's",
      (a) => ({ ...a, features: { ...(a.features as object), dim: 3 } }),
      /"features\.dim" is not 2/,
    ],
    ['a version that is not a run id', (a) => ({ ...a, version: '../x' }), /"version" is not a run id/],
  ];
  for (const [what, make, message] of cases) {
    const err = t.throws(() => assertModelArtifact(make(artifact()), URI), { instanceOf: ModelError }, what);
    t.regex(err!.message, message, what);
    t.true(err!.message.startsWith(`"${URI}" is not a valid deepfeat model (`), what);
    t.regex(err!.message, /publish it again with deepfeat run, or download another version$/);
    t.is(exitCodeForError(err), 2);
  }
});

test('a bad value in a softmax model is shown capped: one value may be a megabyte of text', (t) => {
  const a = { ...artifact(), mean: ['x'.repeat(1_000_000), 0] };
  const err = t.throws(() => assertLinearSoftmaxModel(a), { instanceOf: ModelError });
  t.true(err!.message.length < 200, `${err!.message.length} characters`);
  t.regex(err!.message, /'mean\[0\]' is not a finite number \("xxx/);
});

test('latest.json must point at a version of the same model', (t) => {
  const version = 'r20261128093000-1a2b3c';
  t.is(
    assertLatestPointer({ version, key: modelKey('m', version) }, 'm', 's3://a/models/m/latest.json').version,
    version,
  );
  for (const bad of [
    { version, key: 'models/other/x/model.json' },
    { version: '../../x', key: 'models/m/../../x/model.json' },
    {},
    null,
  ]) {
    const err = t.throws(() => assertLatestPointer(bad, 'm', 's3://a/models/m/latest.json'), {
      instanceOf: ModelError,
    });
    t.regex(err!.message, /does not point at a published version of "m"/);
  }
});

test('names and versions: names are one key segment, versions are run ids', (t) => {
  t.true(isModelName('cats-v2.1_x'));
  for (const bad of ['../x', 'a/b', '', '.x', 'x'.repeat(101)]) t.false(isModelName(bad), bad);
  t.true(isModelVersion('r20261128093000-1a2b3c'));
  for (const bad of ['../../x', 'v1', 'r20261128093000-1a2b3c/..']) t.false(isModelVersion(bad), bad);
});
