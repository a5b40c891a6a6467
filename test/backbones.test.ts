/**
 * The shipped backbones as a user meets them before any run: `deepfeat backbones` (table and
 * JSON, from the catalogue in shared/backbones.ts) and `--backbone NAME[:NODE]` as cli/flags.ts
 * turns it into a feature spec, with every refusal naming the problem and the fix.
 * Pure logic: no Redis, S3 server or model load (the end-to-end run is in backbones.e2e.test.ts).
 */
import test from 'ava';
import { backboneRows, formatBackbones } from '../cli/backbones.js';
import { featureSpec } from '../cli/flags.js';
import { BUILTIN_BACKBONES, parseBackboneRef } from '../shared/backbones.js';
import { BadRequestError } from '../shared/errors.js';
import { BUILTIN_MODELS, DEFAULT_FEATURES } from '../shared/features.js';
import { parseJobData } from '../shared/queues.js';
import { BUILTIN_INPUT_RANGES } from '../services/extractor/feature-cache/spec-id.js';

const flags = (backbone: string, more: Record<string, string> = {}) => ({ features: 'backbone', backbone, ...more });

test('the catalogue holds every builtin id, the first being the default spec', (t) => {
  t.deepEqual(Object.keys(BUILTIN_BACKBONES).sort(), [...BUILTIN_MODELS].sort());
  t.deepEqual(DEFAULT_FEATURES, { kind: 'builtin', id: BUILTIN_MODELS[0], flip: true, multiScale: true });
  for (const id of BUILTIN_MODELS) t.is(BUILTIN_BACKBONES[id].id, id);
  t.is(BUILTIN_BACKBONES.inception_v3.inputSize, 299);
  t.is(BUILTIN_BACKBONES.mobilenet_v2.inputSize, 224);
  // The feature cache keys each backbone by the same range its engine feeds.
  for (const id of BUILTIN_MODELS) t.is(BUILTIN_INPUT_RANGES[id], BUILTIN_BACKBONES[id].inputRange);
});

test('--backbone NAME and NAME:NODE become builtin specs; --node may give the node instead', (t) => {
  t.deepEqual(featureSpec(flags('inception_v3')), {
    kind: 'builtin',
    id: 'inception_v3',
    flip: true,
    multiScale: true,
  });
  t.deepEqual(featureSpec(flags('mobilenet_v2:block_12_add')), {
    kind: 'builtin',
    id: 'mobilenet_v2',
    node: 'block_12_add',
    flip: true,
    multiScale: true,
  });
  // A graph node name holds slashes; only the first colon separates.
  t.deepEqual(featureSpec(flags('mobilenet_v2_mid:expanded_conv_11/add')), {
    kind: 'builtin',
    id: 'mobilenet_v2_mid',
    node: 'expanded_conv_11/add',
    flip: true,
    multiScale: true,
  });
  t.deepEqual(featureSpec(flags('inception_v3', { node: 'mixed6' })), {
    kind: 'builtin',
    id: 'inception_v3',
    node: 'mixed6',
    flip: true,
    multiScale: true,
  });
  // The spec passes the job schema every producer is held to.
  for (const id of BUILTIN_MODELS) {
    t.notThrows(() =>
      parseJobData('plan', {
        runId: 'r1',
        request: {
          source: 's3://bkt/p/',
          name: 'p',
          features: featureSpec(flags(id)),
          seed: 1,
          split: { train: 0.7, val: 0.1, test: 0.2 },
          shardSize: 32,
        },
      }),
    );
  }
});

test('an unknown backbone is refused naming every known one and where to look', (t) => {
  for (const value of ['nope', 'MobileNet_V2', 'inception_v3x:mixed7', '', ':mixed7', 'constructor', '__proto__']) {
    const err = t.throws(() => featureSpec(flags(value)), { instanceOf: BadRequestError });
    t.regex(err!.message, /^--backbone ".*": expected NAME or NAME:NODE with NAME one of /);
    for (const id of BUILTIN_MODELS) t.true(err!.message.includes(id), err!.message);
    t.regex(err!.message, /deepfeat backbones/);
    t.is(parseBackboneRef(value), undefined);
  }
  // Terminal control characters in the value are shown escaped, never raw.
  const err = t.throws(() => featureSpec(flags('x\u001b[2Jy')));
  t.false(err!.message.includes('\u001b'));
});

test('--backbone is refused with another extractor, two nodes, an empty node, or input flags', (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ ...flags('inception_v3'), model: 'm.json', node: 'x' }, /--backbone and --model ask for two different/],
    [{ ...flags('inception_v3'), features: 'raw-pixels' }, /--backbone and --features raw-pixels/],
    [flags('inception_v3:mixed7', { node: 'mixed6' }), /already names a node: give the node once/],
    [flags('inception_v3:'), /give a node after the colon, or drop the colon/],
    [flags('inception_v3', { inputSize: '224' }), /^--input-size "224": a shipped backbone fixes its input/],
    [flags('inception_v3', { inputRange: '0,1' }), /^--input-range "0,1": a shipped backbone fixes/],
  ];
  for (const [o, re] of cases) {
    const err = t.throws(() => featureSpec(o as never), { instanceOf: BadRequestError });
    t.regex(err!.message, re);
  }
});

test('deepfeat backbones lists each backbone with size, default node, dim, engine and figures', (t) => {
  const rows = backboneRows();
  t.deepEqual(
    rows.map((r) => r.id),
    [...BUILTIN_MODELS],
  );
  t.true(rows[0]!.default);
  t.false(rows.slice(1).some((r) => r.default));
  const text = formatBackbones(rows);
  const lines = text.split('\n');
  t.regex(lines[0]!, /^backbone\s+input\s+default node\s+dim\s+engine\s+images\/s\s+accuracy$/);
  for (const r of rows) {
    const line = lines.find((l) => l.startsWith(`${r.id} `));
    t.truthy(line, r.id);
    t.true(line!.includes(`${r.inputSize}x${r.inputSize}`));
    t.true(line!.includes(r.defaultNode));
    t.true(line!.includes(` ${r.dim} `));
    t.regex(line!, /onnxruntime \((graph|layers)\)/);
    if (r.measured) {
      t.true(line!.includes(`${(100 * r.measured.accuracy).toFixed(1)}%`));
      t.true(line!.includes(r.measured.imagesPerSecond.toFixed(1)));
    }
  }
  t.regex(text, /--backbone NAME\[:NODE\]/);
  // JSON round-trips the same rows.
  t.deepEqual(JSON.parse(JSON.stringify(rows)), rows);
});
