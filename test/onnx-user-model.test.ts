/**
 * A user's own ONNX model as the backbone (services/extractor/engines/onnx-user.ts): our own
 * converter's output fed back in gives the builtin engine's features at the same node (4-D
 * tensors pooled, 2-D taken as they are); a hand-built NHWC model is read in its layout, with
 * --mean/--std folded into per-channel tables exactly as the formula says; a fixed batch of 1 is
 * honoured; unknown tensors list real candidates; truncated or garbage files fail with a clear
 * ModelError, never a crash; the CLI's flags are checked.
 */
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { featureSpec, parseChannelStats } from '../cli/flags.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { builtinModelArtifacts, DEFAULT_BUILTIN_NODE } from '../services/extractor/engines/builtin-model.js';
import { exportClassifier } from '../services/extractor/engines/classifier-export.js';
import type { EngineDeps } from '../services/extractor/engines/engine.js';
import { planGraphCut } from '../services/extractor/engines/graph-cut.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { convertGraphToOnnx } from '../services/extractor/engines/onnx/convert.js';
import { OnnxFormatError, readOnnxModel } from '../services/extractor/engines/onnx/read.js';
import { decodeImage } from '../services/extractor/image.js';
import { BadRequestError, ModelError } from '../shared/errors.js';
import { channelLuts, inputLut, type FeatureSpec } from '../shared/features.js';
import { predictProba, type LinearSoftmaxModel } from '../shared/softmax-model.js';
import { NHWC_WEIGHTS, nhwcModel, rank3Model } from './helpers/onnx-models.js';
import { maxRowRelErr } from './helpers/compare.js';

const files = new Map<string, Uint8Array>();
const deps = (over: Partial<EngineDeps> = {}): EngineDeps => ({
  readObject: async (url, maxBytes) => {
    const f = files.get(url);
    if (!f) throw new Error(`no such file ${url}`);
    if (maxBytes !== undefined && f.byteLength > maxBytes) throw new ModelError(`${url} is too large`);
    return f;
  },
  threads: 1,
  ...over,
});

const W = NHWC_WEIGHTS;

/** Random 8×8 RGB images. */
function randomImages(n: number, side = 8): Uint8Array[] {
  let seed = 7;
  const next = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed >>> 8;
  };
  return Array.from({ length: n }, () => Uint8Array.from({ length: side * side * 3 }, () => next() % 256));
}

/** What the NHWC model's "relu" pooled by mean over H, W is, in double precision. */
function expectedRelu(img: Uint8Array, mean = [0, 0, 0], std = [1, 1, 1]): number[] {
  const out = [0, 0, 0];
  for (let p = 0; p < 64; p++) {
    for (let c = 0; c < 3; c++) out[c]! += Math.max(0, ((img[p * 3 + c]! / 255 - mean[c]!) / std[c]!) * W[c]!);
  }
  return out.map((v) => v / 64);
}

test('mean/std folding: each channel table equals (v/255 − mean)/std, and without them inputLut', (t) => {
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const luts = channelLuts('0,1', mean, std);
  for (let c = 0; c < 3; c++) {
    for (const v of [0, 1, 128, 255]) t.is(luts[c]![v], Math.fround((v / 255 - mean[c]!) / std[c]!));
  }
  t.deepEqual(channelLuts('-1,1')[1], inputLut('-1,1'));
});

test('a hand-built NHWC model: layout read from the input, 4-D tensor pooled, mean/std applied', async (t) => {
  files.set('/m/nhwc.onnx', nhwcModel());
  const images = randomImages(5);
  const mean: [number, number, number] = [0.5, 0.25, 0.1];
  const std: [number, number, number] = [0.2, 0.5, 2];
  const e = await loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'relu', mean, std }, deps());
  try {
    t.is(e.id, '/m/nhwc.onnx@relu');
    t.deepEqual(e.input, { width: 8, height: 8 });
    t.is(e.dim, 3);
    t.regex(e.backend, /^onnxruntime \(CPU/);
    const rows = await e.embed(images);
    for (const [i, img] of images.entries()) {
      const want = expectedRelu(img, mean, std);
      for (let c = 0; c < 3; c++) t.true(Math.abs(rows[i * 3 + c]! - want[c]!) < 1e-5, `image ${i} channel ${c}`);
    }
    // The images differ, so the rows do too.
    t.notDeepEqual(Array.from(rows.subarray(0, 3)), Array.from(rows.subarray(3, 6)));
  } finally {
    e.dispose();
  }
  // A 2-D tensor is taken as it is.
  const v = await loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'vec' }, deps());
  try {
    const rows = await v.embed(images.slice(0, 1));
    let max = [0, 0, 0];
    for (let p = 0; p < 64; p++)
      max = max.map((m, c) => Math.max(m, Math.fround(images[0]![p * 3 + c]! / 255) * W[c]!));
    for (let c = 0; c < 3; c++) t.true(Math.abs(rows[c]! - max[c]!) < 1e-6);
  } finally {
    v.dispose();
  }
});

test('a model exported with a fixed batch of 1 takes batches one image at a time; opset 18 ReduceMean', async (t) => {
  const images = randomImages(3);
  for (const [key, bytes] of [
    ['/m/batch1.onnx', nhwcModel({ batch: 1 })],
    ['/m/opset18.onnx', nhwcModel({ opset: 18 })],
  ] as const) {
    files.set(key, bytes);
    const e = await loadEngine({ kind: 'onnx', model: key, node: 'relu' }, deps());
    try {
      const rows = await e.embed(images);
      t.is(rows.length, 9, key);
      for (const [i, img] of images.entries()) {
        const want = expectedRelu(img);
        for (let c = 0; c < 3; c++) t.true(Math.abs(rows[i * 3 + c]! - want[c]!) < 1e-5, `${key} ${i} ${c}`);
      }
    } finally {
      e.dispose();
    }
  }
});

test('layout and size: ambiguous shapes need --input-layout and --input-size; contradictions are refused', async (t) => {
  files.set('/m/open.onnx', nhwcModel({ shape: ['N', 'H', 'W', 'C'] }));
  const spec = (over: Partial<Extract<FeatureSpec, { kind: 'onnx' }>>): FeatureSpec => ({
    kind: 'onnx',
    model: '/m/open.onnx',
    node: 'relu',
    ...over,
  });
  await t.throwsAsync(loadEngine(spec({}), deps()), { instanceOf: ModelError, message: /give --input-layout nchw/ });
  await t.throwsAsync(loadEngine(spec({ inputLayout: 'nhwc' }), deps()), {
    instanceOf: ModelError,
    message: /not fixed: give --input-size/,
  });
  const e = await loadEngine(spec({ inputLayout: 'nhwc', inputSize: 8 }), deps());
  const rows = await e.embed(randomImages(1));
  e.dispose();
  t.true(Math.abs(rows[0]! - expectedRelu(randomImages(1)[0]!)[0]!) < 1e-5);
  files.set('/m/nhwc.onnx', nhwcModel());
  await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'relu', inputLayout: 'nchw' }, deps()), {
    instanceOf: ModelError,
    message: /no 3 channels where --input-layout nchw puts them/,
  });
  await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'relu', inputSize: 16 }, deps()), {
    instanceOf: ModelError,
    message: /fixed at 8×8, not --input-size 16/,
  });
  await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'relu' }, deps({ engine: 'tfjs' })), {
    instanceOf: ModelError,
    message: /ONNX Runtime only: set DEEPFEAT_ENGINE=auto or onnx/,
  });
});

test('an unknown tensor fails with the real candidates; a tensor of another rank is refused', async (t) => {
  files.set('/m/nhwc.onnx', nhwcModel());
  const err = await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'conv9' }, deps()), {
    instanceOf: ModelError,
  });
  t.regex(err!.message, /tensor "conv9" is not produced by any node of "\/m\/nhwc.onnx" \(3 nodes\)/);
  t.regex(err!.message, /"scaled" \(Mul\), "relu" \(Relu\)/);
  // A 3-D tensor (its rank recorded as a graph output here) is neither pooled nor taken as it is.
  files.set('/m/rank3.onnx', rank3Model());
  await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/rank3.onnx', node: 'flat' }, deps()), {
    instanceOf: ModelError,
    message: /tensor "flat" of "\/m\/rank3.onnx" has 3 dimensions; deepfeat pools 4-D activations/,
  });
  // The graph input is not a node output; the node must be something a node computes.
  await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'img' }, deps()), {
    instanceOf: ModelError,
    message: /not produced by any node/,
  });
});

test('truncated, garbage, empty and non-ONNX files fail with a clear ModelError, never a crash', async (t) => {
  const good = nhwcModel();
  const cases: Array<[string, Uint8Array]> = [
    ['truncated', good.subarray(0, Math.floor(good.length / 2))],
    ['garbage', Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 256)],
    ['empty', new Uint8Array(0)],
    ['json', new TextEncoder().encode('{"modelTopology": {}}')],
    ['huge length', Uint8Array.from([0x08, 0x08, 0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f])],
  ];
  for (const [name, bytes] of cases) {
    files.set(`/m/${name}.onnx`, bytes);
    const err = await t.throwsAsync(loadEngine({ kind: 'onnx', model: `/m/${name}.onnx`, node: 'relu' }, deps()), {
      instanceOf: ModelError,
    });
    t.regex(err!.message, new RegExp(`^"/m/${name}.onnx" is not a readable ONNX model: .+; export it again`), name);
  }
  t.throws(() => readOnnxModel(good.subarray(0, 10)), { instanceOf: OnnxFormatError });
  // 4 MB of empty nodes (2 bytes each): refused past the cap, not turned into millions of objects.
  const many = new Uint8Array(2 * 3_000_001).fill(0x0a);
  for (let i = 1; i < many.length; i += 2) many[i] = 0;
  const graph = Uint8Array.from([...Buffer.from([0x08, 0x08, 0x3a]), ...varint(many.length)]);
  t.throws(() => readOnnxModel(Buffer.concat([graph, many])), {
    instanceOf: OnnxFormatError,
    message: /more than 3000000 nodes, weights and values/,
  });
  // A file over the size limit is refused by the reader, before it is parsed.
  await t.throwsAsync(loadEngine({ kind: 'onnx', model: '/m/nhwc.onnx', node: 'relu' }, deps({ maxModelBytes: 100 })), {
    instanceOf: ModelError,
    message: /too large/,
  });
});

test('our converter output fed back in as a user model gives the builtin engine features at the same node', async (t) => {
  const artifacts = await builtinModelArtifacts();
  const cut = planGraphCut(artifacts, DEFAULT_BUILTIN_NODE, 'builtin', undefined);
  const { bytes } = convertGraphToOnnx(artifacts, cut.full, 'test');
  files.set('s3://models/mobilenet.onnx', bytes);
  const info = readOnnxModel(bytes);
  // The converted graph pools the node's NCHW activation last: pool the 4-D tensor ourselves, and
  // also take the already pooled 2-D output as it is.
  const last = info.nodes.find((n) => n.outputs.includes('features'))!;
  const activation = last.inputs[0]!;
  const demo = await loadDemoImages({ perClass: 2 });
  const images = await Promise.all(demo.map((d) => decodeImage(d.png, { width: 224, height: 224, maxPixels: 1e7 })));
  const builtin = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps({ engine: 'onnx' }));
  const want = await builtin.embed(images);
  builtin.dispose();
  for (const node of [activation, 'features']) {
    const e = await loadEngine({ kind: 'onnx', model: 's3://models/mobilenet.onnx', node, inputSize: 224 }, deps());
    try {
      t.is(e.dim, builtin.dim, node);
      const got = await e.embed(images);
      const err = maxRowRelErr(got, want, e.dim);
      t.log(`${node} (${last.opType} input): dim ${e.dim}, worst relative error ${err.toExponential(2)}`);
      t.true(err < 1e-5, `${node}: relative error ${err}`);
    } finally {
      e.dispose();
    }
  }
});

test('CLI flags: an .onnx --model makes an onnx spec; --mean/--std/--input-layout are checked and ONNX-only', (t) => {
  const flags = (o: Record<string, string>) => ({ features: 'backbone', ...o });
  t.deepEqual(
    featureSpec(
      flags({
        model: 's3://bkt/m/model.onnx',
        node: 'x',
        inputLayout: 'nhwc',
        inputRange: '0,1',
        mean: '0.485,0.456,0.406',
        std: '0.229,0.224,0.225',
        inputSize: '224',
      }),
    ),
    {
      kind: 'onnx',
      model: 's3://bkt/m/model.onnx',
      node: 'x',
      inputSize: 224,
      inputLayout: 'nhwc',
      inputRange: '0,1',
      mean: [0.485, 0.456, 0.406],
      std: [0.229, 0.224, 0.225],
      flip: true,
    },
  );
  t.deepEqual(parseChannelStats('--mean', '-1,.5,2.', false), [-1, 0.5, 2]);
  for (const bad of ['1,2', '1,2,3,4', '1,2,x', '1e3,0,0', ' 1,2,3', '1,,2', '9999999,0,0']) {
    t.throws(() => parseChannelStats('--mean', bad, false), {
      instanceOf: BadRequestError,
      message: /^--mean ".*": expected three decimals/,
    });
  }
  t.throws(() => parseChannelStats('--std', '0.2,0,0.2', true), { message: /each above 0/ });
  t.throws(() => featureSpec(flags({ model: 's3://bkt/model.json', node: 'x', mean: '0,0,0' })), {
    instanceOf: BadRequestError,
    message: /^--mean "0,0,0": this flag applies only to an ONNX --model/,
  });
  t.throws(() => featureSpec(flags({ inputLayout: 'nchw' })), {
    message: /^--input-layout "nchw": this flag applies only/,
  });
  t.throws(() => featureSpec(flags({ model: 'm.onnx' })), { message: /--model needs --node: the name of the tensor/ });
});

/** A head with fixed pseudo-random weights over d features and k classes. */
function head(d: number, k: number): LinearSoftmaxModel {
  const r = (i: number) => Math.sin(1000 + i * 12.9898) * 0.5;
  return {
    classes: Array.from({ length: k }, (_, c) => `class-${c}`),
    mean: Array.from({ length: d }, (_, j) => r(j) * 0.1),
    std: Array.from({ length: d }, (_, j) => 0.5 + Math.abs(r(j + d))),
    weights: Array.from({ length: k }, (_, c) => Array.from({ length: d }, (_, j) => r(c * d + j + 7) * 0.2)),
    bias: Array.from({ length: k }, (_, c) => r(c + 99)),
  };
}

for (const [label, spec, k] of [
  [
    'NHWC model with --mean/--std',
    { kind: 'onnx', model: '/m/nhwc.onnx', node: 'relu', mean: [0.5, 0.25, 0.1], std: [0.2, 0.5, 2] },
    3,
  ],
  ['NCHW model (our converter output)', { kind: 'onnx', model: '/m/conv.onnx', node: 'features', inputSize: 224 }, 4],
] as const) {
  test(`classifier.onnx around a user's ONNX model (${label}) gives the engine features and the head probabilities`, async (t) => {
    files.set('/m/nhwc.onnx', nhwcModel());
    if (spec.model === '/m/conv.onnx') {
      const artifacts = await builtinModelArtifacts();
      const cut = planGraphCut(artifacts, DEFAULT_BUILTIN_NODE, 'builtin', undefined);
      files.set('/m/conv.onnx', convertGraphToOnnx(artifacts, cut.full, 'test').bytes);
    }
    const engine = await loadEngine(spec as FeatureSpec, deps());
    try {
      const size = engine.input.width;
      const demo = await loadDemoImages({ perClass: 2 });
      const images = await Promise.all(
        demo.map((d) => decodeImage(d.png, { width: size, height: size, maxPixels: 1e7 })),
      );
      const features = await engine.embed(images);
      const h = head(engine.dim, k);
      const exported = await exportClassifier({
        spec: spec as FeatureSpec,
        head: h,
        engineId: engine.id,
        deps: deps(),
      });
      if (!exported.ok) return t.fail(exported.reason);
      t.deepEqual(exported.info.input.shape, ['N', size, size, 3]);
      const session = await ort.InferenceSession.create(exported.bytes);
      const batch = new Uint8Array(images.length * size * size * 3);
      for (const [i, img] of images.entries()) batch.set(img, i * img.length);
      const out = await session.run({ image: new ort.Tensor('uint8', batch, [images.length, size, size, 3]) });
      await session.release();
      t.deepEqual(session.outputNames.slice().sort(), ['features', 'probabilities']);
      const f = out.features!.data as Float32Array;
      const p = out.probabilities!.data as Float32Array;
      t.true(maxRowRelErr(f, features, engine.dim) < 1e-6, 'features');
      let worst = 0;
      for (let i = 0; i < images.length; i++) {
        const want = predictProba(h, features.subarray(i * engine.dim, (i + 1) * engine.dim));
        for (let c = 0; c < k; c++) worst = Math.max(worst, Math.abs(want[c]! - p[i * k + c]!));
      }
      t.true(worst < 1e-5, `probabilities differ by ${worst}`);
    } finally {
      engine.dispose();
    }
  });
}

function varint(n: number): number[] {
  const out: number[] = [];
  for (; n >= 0x80; n = Math.floor(n / 0x80)) out.push((n % 0x80) | 0x80);
  return [...out, n];
}
