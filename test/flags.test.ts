/**
 * `deepfeat run`'s flag values (cli/flags.ts) and the run request schema's bounds: every odd value
 * is refused with the flag, the value quoted and the fix, never read loosely by Number().
 */
import path from 'node:path';
import test from 'ava';
import {
  featureSpec,
  modelReference,
  parseName,
  parseSeed,
  parseShardSize,
  parseSplit,
  parseWholeNumber,
} from '../cli/flags.js';
import { BadRequestError } from '../shared/errors.js';
import { DEFAULT_FEATURES, RAW_PIXELS } from '../shared/features.js';
import { RUN_LIMITS, runRequestSchema } from '../shared/queues.js';
import { mulberry32 } from '../shared/random.js';
import { runRequestWith } from './helpers/run-request.js';

const refused = (t: import('ava').ExecutionContext, fn: () => unknown, message: RegExp) => {
  const err = t.throws(fn, { instanceOf: BadRequestError });
  t.regex(err?.message ?? '', message);
  t.false(/[\n\r]/.test(err?.message ?? ''), 'one line');
};

test('--seed takes whole decimal numbers 0..2^32-1 only: larger ones would alias smaller seeds', (t) => {
  // Why the bound: the split's PRNG keeps 32 bits of the seed.
  const first = (seed: number) => mulberry32(seed)();
  t.is(first(0), first(2 ** 32), 'seed 2^32 gives the split of seed 0');
  t.is(parseSeed('0'), 0);
  t.is(parseSeed('42'), 42);
  t.is(parseSeed('4294967295'), 2 ** 32 - 1);
  for (const bad of ['4294967296', '9007199254740993', '-1', '1.5', '1e3', '0x10', ' 7', '', '42abc']) {
    refused(t, () => parseSeed(bad), /^--seed ".*": expected a whole number from 0 to 4294967295 \(.*seed.*\)$/);
  }
});

test('--split takes three decimal fractions; hex, binary, blanks and exponents are refused', (t) => {
  t.deepEqual(parseSplit('0.7,0.1,0.2'), { train: 0.7, val: 0.1, test: 0.2 });
  t.deepEqual(parseSplit('7,1,2'), { train: 7, val: 1, test: 2 });
  t.deepEqual(parseSplit('.8/0/.2'), { train: 0.8, val: 0, test: 0.2 });
  for (const bad of [
    ' 0x1,,0b1',
    '0x1,0,1',
    '1,,1',
    '1e0,0,1',
    '0.7,0.1',
    '0.7,0.1,0.1,0.1',
    '0,0.5,0.5',
    '1,0,0',
    '-1,1,1',
  ]) {
    refused(
      t,
      () => parseSplit(bad),
      /^--split ".*": expected three decimal fractions TRAIN,VAL,TEST like 0\.7,0\.1,0\.2/,
    );
  }
});

test('--name says the allowed form of a model name', (t) => {
  t.is(parseName('cats-v2.1_x'), 'cats-v2.1_x');
  for (const bad of ['../../x', '-x', '', 'a/b', 'x'.repeat(101), 'a\nb']) {
    refused(
      t,
      () => parseName(bad),
      /^--name ".*": a model name is 1 to 100 letters, digits, "\.", "_" or "-", starting/,
    );
  }
  // The value is quoted (JSON-escaped) and capped: a newline in it cannot start a line.
  const err = t.throws(() => parseName(`a\n${'z'.repeat(500)}`));
  t.true(err!.message.includes('"a\\nzzz'));
  t.true(err!.message.length < 400, `${err!.message.length} characters`);
});

test('--shard-size and other counts: whole decimal numbers within their bounds', (t) => {
  t.is(parseShardSize('256'), 256);
  t.is(parseShardSize(String(RUN_LIMITS.shardSize.max)), RUN_LIMITS.shardSize.max);
  for (const bad of ['0', '100001', '1e9', '1.5', '0x10', '']) {
    refused(
      t,
      () => parseShardSize(bad),
      /^--shard-size ".*": expected a whole number from 1 to 100000 \(images per extract job\)$/,
    );
  }
  refused(t, () => parseWholeNumber('--concurrency', '2x', { min: 1, max: 256 }, 'jobs'), /^--concurrency "2x"/);
});

const flags = (o: Record<string, string | boolean>) => ({ features: 'backbone', ...o });

test('--node, --input-size and --input-range that would be ignored are refused', (t) => {
  refused(
    t,
    () => featureSpec(flags({ features: 'raw-pixels', node: 'x' })),
    /^--node "x": raw pixels have no nodes to pool: drop --node, or use --features backbone$/,
  );
  for (const [flag, key, value] of [
    ['--input-size', 'inputSize', '64'],
    ['--input-range', 'inputRange', '0,1'],
  ] as const) {
    for (const features of ['raw-pixels', 'backbone']) {
      refused(
        t,
        () => featureSpec(flags({ features, [key]: value })),
        new RegExp(`^${flag} "${value}": this flag applies only to your own --model .*: drop it, or add --model$`),
      );
    }
  }
  refused(
    t,
    () => featureSpec(flags({ features: 'raw-pixels', model: 's3://bkt/m.json', node: 'n' })),
    /--model and --features raw-pixels .*: choose one/,
  );
  refused(t, () => featureSpec(flags({ model: 's3://bkt/m.json' })), /--model needs --node/);
  refused(t, () => featureSpec(flags({ node: '' })), /^--node "": give the name/);
  t.deepEqual(featureSpec(flags({ features: 'raw-pixels' })), RAW_PIXELS);
  t.deepEqual(featureSpec(flags({})), DEFAULT_FEATURES);
  t.deepEqual(featureSpec(flags({ node: 'n' })), {
    kind: 'builtin',
    id: 'mobilenet_v2_mid',
    node: 'n',
    flip: true,
    multiScale: true,
  });
});

test('multi-scale features: on for the shipped backbones, asked for a TF.js --model, refused where they cannot be made', (t) => {
  t.like(featureSpec(flags({})), { multiScale: true, flip: true });
  t.false('multiScale' in featureSpec(flags({ multiScale: false })));
  t.like(featureSpec(flags({ multiScale: false })), { kind: 'builtin', flip: true });
  t.false('multiScale' in featureSpec(flags({ model: 's3://bkt/m.json', node: 'n' })));
  t.like(featureSpec(flags({ model: 's3://bkt/m.json', node: 'n', multiScale: true })), {
    kind: 'tfjs',
    multiScale: true,
  });
  refused(
    t,
    () => featureSpec(flags({ model: 's3://bkt/m.onnx', node: 'n', multiScale: true })),
    /^--multi-scale .*ONNX --model runs at the input size it was written for/,
  );
  t.false('multiScale' in featureSpec(flags({ model: 's3://bkt/m.onnx', node: 'n' })));
  refused(t, () => featureSpec(flags({ features: 'raw-pixels', multiScale: true })), /raw pixels have one scale/);
  t.deepEqual(featureSpec(flags({ features: 'raw-pixels', multiScale: false })), RAW_PIXELS);
});

test('--input-size has the engine bounds, 8..2048, in the CLI and in the schema', (t) => {
  const spec = (inputSize: string) => featureSpec(flags({ model: 's3://bkt/m.json', node: 'n', inputSize }));
  t.deepEqual(spec('2048'), { kind: 'tfjs', model: 's3://bkt/m.json', node: 'n', inputSize: 2048, flip: true });
  for (const bad of ['4096', '7', '224.0', '0x100']) {
    refused(t, () => spec(bad), /^--input-size ".*": expected a whole number from 8 to 2048/);
  }
  const request = runRequestWith;
  t.true(runRequestSchema.safeParse(request({ kind: 'tfjs', model: 'm', node: 'n', inputSize: 2048 })).success);
  t.false(runRequestSchema.safeParse(request({ kind: 'tfjs', model: 'm', node: 'n', inputSize: 4096 })).success);
});

test('the run request schema holds the same bounds for every producer', (t) => {
  const base = {
    source: 's3://bucket/x/',
    name: 'm',
    features: RAW_PIXELS,
    seed: 1,
    split: { train: 0.7, val: 0.1, test: 0.2 },
    shardSize: 256,
  };
  t.true(runRequestSchema.safeParse(base).success);
  const bad: Array<[string, Record<string, unknown>]> = [
    ['seed 2^32', { seed: 2 ** 32 }],
    ['negative seed', { seed: -1 }],
    ['shard size over the limit', { shardSize: RUN_LIMITS.shardSize.max + 1 }],
    ['infinite split', { split: { train: Number.POSITIVE_INFINITY, val: 0, test: 1 } }],
  ];
  for (const [what, change] of bad) t.false(runRequestSchema.safeParse({ ...base, ...change }).success, what);
  const name = runRequestSchema.safeParse({ ...base, name: '../../x' });
  t.false(name.success);
  t.regex(name.error!.issues[0]!.message, /a model name is 1 to 100 letters/);
});

test('--model: other URL schemes and dot segments are refused before queueing; a relative path is made absolute', (t) => {
  // Found by an attacker: file:, http: and s3://b/../.. were queued and failed only in the extractor.
  for (const bad of [
    'file:///etc/passwd',
    'http://127.0.0.1/model.json',
    's3://src/../../etc/passwd',
    's3://bkt//m.json',
  ]) {
    const err = t.throws(() => modelReference(bad), { instanceOf: BadRequestError }, bad);
    t.true(err!.message.startsWith(`--model ${JSON.stringify(bad)}`), err!.message);
  }
  t.is(modelReference('s3://models/mobilenet/model.json'), 's3://models/mobilenet/model.json');
  t.is(modelReference('m/model.json'), path.resolve('m/model.json'));
  t.is(modelReference('/srv/models/m/model.json'), '/srv/models/m/model.json');
});
