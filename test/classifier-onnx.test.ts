/**
 * classifier.onnx (services/extractor/engines/classifier-export.ts): one ONNX graph from uint8
 * NHWC images to probabilities and features gives what the pipeline gives — the feature engine's
 * vectors, then predictProba on the head — for the builtin backbone, a user's graph model with
 * another pixel range, a user's layers model (modern and Keras-era), and raw pixels; backbones it
 * cannot express say why instead.
 */
import test from 'ava';
import * as ort from 'onnxruntime-node';
import { loadDemoImages } from '../cli/demo-data.js';
import { exportClassifier } from '../services/extractor/engines/classifier-export.js';
import type { EngineDeps } from '../services/extractor/engines/engine.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { decodeImage } from '../services/extractor/image.js';
import type { FeatureSpec } from '../shared/features.js';
import { assertModelArtifact } from '../shared/model-format.js';
import { predictProba, type LinearSoftmaxModel } from '../shared/softmax-model.js';
import { nhwcModel } from './helpers/onnx-models.js';
import { kerasEraModel, tinyGraphModel, tinyLayersModel, type ModelFiles } from './helpers/tiny-models.js';

const files = new Map<string, Uint8Array>();
const deps: Pick<EngineDeps, 'readObject' | 'maxModelBytes'> & EngineDeps = {
  readObject: async (url) => {
    const f = files.get(url);
    if (!f) throw new Error(`no such test file ${url}`);
    return f;
  },
  threads: 1,
  engine: 'onnx',
};

/** A head with fixed pseudo-random weights over d features and k classes. */
function head(d: number, k: number, seed = 1): LinearSoftmaxModel {
  const r = (i: number) => Math.sin(seed * 1000 + i * 12.9898) * 0.5;
  return {
    classes: Array.from({ length: k }, (_, c) => `class-${c}`),
    mean: Array.from({ length: d }, (_, j) => r(j) * 0.1),
    std: Array.from({ length: d }, (_, j) => 0.5 + Math.abs(r(j + d))),
    weights: Array.from({ length: k }, (_, c) => Array.from({ length: d }, (_, j) => r(c * d + j + 7) * 0.2)),
    bias: Array.from({ length: k }, (_, c) => r(c + 99)),
  };
}

async function demoPixels(size: number, n = 6): Promise<Uint8Array[]> {
  const demo = await loadDemoImages({ perClass: n / 2 });
  return Promise.all(demo.map((d) => decodeImage(d.png, { width: size, height: size, maxPixels: 1e7 })));
}

/** Runs classifier.onnx on images; returns its two outputs. */
async function runClassifier(bytes: Uint8Array, images: Uint8Array[], size: number) {
  const session = await ort.InferenceSession.create(bytes);
  try {
    const batch = new Uint8Array(images.length * size * size * 3);
    for (const [i, img] of images.entries()) batch.set(img, i * img.length);
    const out = await session.run({ image: new ort.Tensor('uint8', batch, [images.length, size, size, 3]) });
    return { probabilities: out.probabilities!.data as Float32Array, features: out.features!.data as Float32Array };
  } finally {
    await session.release();
  }
}

/** The pipeline's answer and the classifier's agree: features (relative) and probabilities (absolute). */
async function checkAgainstPipeline(
  t: import('ava').ExecutionContext,
  spec: FeatureSpec,
  k: number,
  transform?: LinearSoftmaxModel['featureTransform'],
) {
  const engine = await loadEngine(spec, deps);
  try {
    const size = engine.input.width;
    const images = await demoPixels(size);
    const features = await engine.embed(images);
    const h = { ...head(engine.dim, k), ...(transform ? { featureTransform: transform } : {}) };
    const exported = await exportClassifier({ spec, head: h, engineId: engine.id, deps });
    if (!exported.ok) return t.fail(exported.reason);
    t.deepEqual(exported.info.input.shape, ['N', size, size, 3]);
    t.is(exported.info.bytes, exported.bytes.byteLength);
    t.regex(exported.info.sha256, /^[0-9a-f]{64}$/);
    const out = await runClassifier(exported.bytes, images, size);
    let worstFeature = 0;
    let worstP = 0;
    for (let i = 0; i < images.length; i++) {
      const row = features.subarray(i * engine.dim, (i + 1) * engine.dim);
      let num = 0;
      let den = 0;
      for (let j = 0; j < engine.dim; j++) {
        num += (out.features[i * engine.dim + j]! - row[j]!) ** 2;
        den += row[j]! ** 2;
      }
      worstFeature = Math.max(worstFeature, Math.sqrt(num / Math.max(den, 1e-30)));
      const p = predictProba(h, row);
      for (let c = 0; c < k; c++) worstP = Math.max(worstP, Math.abs(p[c]! - out.probabilities[i * k + c]!));
    }
    t.log(`${engine.id}: features rel. error ${worstFeature.toExponential(2)}, |Δp| ${worstP.toExponential(2)}`);
    t.true(worstFeature < 1e-5, `features differ by ${worstFeature}`);
    t.true(worstP < 1e-5, `probabilities differ by ${worstP}`);
  } finally {
    engine.dispose();
  }
}

test('builtin backbone: classifier.onnx gives the engine features and the head probabilities', async (t) => {
  t.timeout(120_000);
  await checkAgainstPipeline(t, { kind: 'builtin', id: 'mobilenet_v2_mid' }, 4);
});

test('flip averaging: the classifier mirrors and averages in its graph as the extractors do', async (t) => {
  t.timeout(180_000);
  await checkAgainstPipeline(t, { kind: 'builtin', id: 'mobilenet_v2_mid', flip: true }, 3);
  const m = tinyGraphModel();
  files.set('/models/tiny-flip/model.json', new TextEncoder().encode(m.json));
  files.set('/models/tiny-flip/w.bin', m.weights);
  await checkAgainstPipeline(t, { kind: 'tfjs', model: '/models/tiny-flip/model.json', node: 'relu', flip: true }, 2);
  files.set('/models/nhwc-flip.onnx', nhwcModel());
  await checkAgainstPipeline(t, { kind: 'onnx', model: '/models/nhwc-flip.onnx', node: 'relu', flip: true }, 2);
});

test('a head with the signed-sqrt transform: classifier.onnx applies it as predictProba does', async (t) => {
  t.timeout(180_000);
  await checkAgainstPipeline(t, { kind: 'builtin', id: 'mobilenet_v2_mid', flip: true }, 3, 'signed-sqrt');
  files.set('/models/nhwc-sqrt.onnx', nhwcModel());
  // The NHWC model's features can be negative (weights −2): the sign matters.
  await checkAgainstPipeline(t, { kind: 'onnx', model: '/models/nhwc-sqrt.onnx', node: 'scaled' }, 2, 'signed-sqrt');
});

test('flip averaging changes the builtin features, and its id says so', async (t) => {
  t.timeout(120_000);
  const plain = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps);
  const flip = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', flip: true }, deps);
  try {
    t.is(flip.id, `${plain.id}+flip`);
    t.is(flip.preferredBatch, Math.max(1, Math.floor(plain.preferredBatch / 2)));
    const images = await demoPixels(plain.input.width, 2);
    const a = await plain.embed(images);
    const b = await flip.embed(images);
    let diff = 0;
    for (let i = 0; i < a.length; i++) diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    t.true(diff > 1e-3, `flip-averaged features equal the plain ones (max |Δ| ${diff})`);
  } finally {
    plain.dispose();
    flip.dispose();
  }
});

test('raw pixels: the 32x32 classifier gives the raw-pixel features exactly', async (t) => {
  await checkAgainstPipeline(t, { kind: 'raw-pixels', size: 32 }, 3);
});

test("a user's graph model with the [-1, 1] range: the graph scales pixels as the engine does", async (t) => {
  const m = tinyGraphModel();
  files.set('/models/tiny/model.json', new TextEncoder().encode(m.json));
  files.set('/models/tiny/w.bin', m.weights);
  await checkAgainstPipeline(
    t,
    { kind: 'tfjs', model: '/models/tiny/model.json', node: 'relu', inputRange: '-1,1' },
    2,
  );
});

for (const [form, make] of [
  ['modern', tinyLayersModel],
  ['Keras-era', async () => kerasEraModel(await tinyLayersModel())],
] as const) {
  test(`a ${form} layers model: classifier.onnx gives the engine features and the head probabilities`, async (t) => {
    const m = await make();
    const dir = `/models/layers-${form}`;
    files.set(`${dir}/model.json`, new TextEncoder().encode(m.json));
    files.set(`${dir}/w.bin`, m.weights);
    await checkAgainstPipeline(t, { kind: 'tfjs', model: `${dir}/model.json`, node: 'conv', inputRange: '-1,1' }, 3);
    await checkAgainstPipeline(t, { kind: 'tfjs', model: `${dir}/model.json`, node: 'gap' }, 2);
  });
}

/** tinyGraphModel with its Relu swapped for Softplus: TF.js runs it, the ONNX converter does not cover it. */
function softplusGraphModel(): ModelFiles {
  const m = tinyGraphModel();
  const json = JSON.parse(m.json) as { modelTopology: { node: Array<{ name: string; op: string }> } };
  json.modelTopology.node.find((n) => n.name === 'relu')!.op = 'Softplus';
  return { json: JSON.stringify(json), weights: m.weights };
}

test('a backbone the converter does not cover gets no classifier.onnx, and a reason that says what still works', async (t) => {
  const m = softplusGraphModel();
  files.set('/models/softplus/model.json', new TextEncoder().encode(m.json));
  files.set('/models/softplus/w.bin', m.weights);
  const r = await exportClassifier({
    spec: { kind: 'tfjs', model: '/models/softplus/model.json', node: 'relu' },
    head: head(4, 2),
    deps,
  });
  t.false(r.ok);
  if (!r.ok) {
    t.is(r.file, null);
    t.regex(r.reason, /cannot be written as ONNX: op Softplus \(node relu\) is not covered.*deepfeat predict/);
  }
});

test('a model the evaluator cannot read, or a spec that no longer matches the features, gives a reason', async (t) => {
  const unreadable = await exportClassifier({
    spec: { kind: 'tfjs', model: '/models/gone/model.json', node: 'relu' },
    head: head(4, 2),
    deps,
  });
  t.false(unreadable.ok);
  if (!unreadable.ok) t.regex(unreadable.reason, /could not read the backbone/);
  const mismatch = await exportClassifier({
    spec: { kind: 'raw-pixels', size: 8 },
    head: head(8 * 8 * 3, 2),
    engineId: 'raw-pixels:16x16',
    deps,
  });
  t.false(mismatch.ok);
  if (!mismatch.ok) t.regex(mismatch.reason, /raw-pixels:16x16.*raw-pixels:8x8/);
});

test('model.json checks the classifier field it names', (t) => {
  const base = {
    format: 'deepfeat.model/v1',
    name: 'm',
    version: 'r20261130000000-abcdef',
    ...head(2, 2),
    features: {
      spec: { kind: 'raw-pixels', size: 1 },
      engine: 'raw-pixels:1x1',
      dim: 2,
      input: { width: 1, height: 1 },
    },
    metrics: { accuracy: 0.5 },
  };
  t.notThrows(() => assertModelArtifact({ ...base, classifier: { file: null, reason: 'layers model' } }, 'x'));
  t.throws(() => assertModelArtifact({ ...base, classifier: { file: '../../etc/passwd', sha256: 'x' } }, 'x'), {
    message: /"classifier" must name classifier.onnx/,
  });
});

test('multi-scale features: classifier.onnx runs the backbone at half the side as the extractors do', async (t) => {
  t.timeout(300_000);
  // The defaults (flip, multi-scale, signed sqrt), then each piece alone.
  await checkAgainstPipeline(
    t,
    { kind: 'builtin', id: 'mobilenet_v2_mid', flip: true, multiScale: true },
    3,
    'signed-sqrt',
  );
  await checkAgainstPipeline(t, { kind: 'builtin', id: 'mobilenet_v2_mid', multiScale: true }, 2);
  const m = tinyGraphModel();
  files.set('/models/tiny-ms/model.json', new TextEncoder().encode(m.json));
  files.set('/models/tiny-ms/w.bin', m.weights);
  await checkAgainstPipeline(
    t,
    { kind: 'tfjs', model: '/models/tiny-ms/model.json', node: 'relu', multiScale: true },
    2,
  );
  // An odd side (17 → 8): both drop the last row and column, with the mirror images too.
  files.set('/models/tiny-17/model.json', new TextEncoder().encode(m.json.replaceAll('"16"', '"17"')));
  files.set('/models/tiny-17/w.bin', m.weights);
  await checkAgainstPipeline(
    t,
    { kind: 'tfjs', model: '/models/tiny-17/model.json', node: 'relu', flip: true, multiScale: true },
    2,
  );
  for (const [form, make] of [
    ['modern', tinyLayersModel],
    ['keras-era', async () => kerasEraModel(await tinyLayersModel())],
  ] as const) {
    const l = await make();
    files.set(`/models/layers-ms-${form}/model.json`, new TextEncoder().encode(l.json));
    files.set(`/models/layers-ms-${form}/w.bin`, l.weights);
    await checkAgainstPipeline(
      t,
      { kind: 'tfjs', model: `/models/layers-ms-${form}/model.json`, node: 'conv', flip: true, multiScale: true },
      2,
    );
  }
});

test('multi-scale engine: its rows are the plain features followed by the half-size view, and its id says so', async (t) => {
  t.timeout(120_000);
  const plain = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps);
  const multi = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', multiScale: true }, deps);
  const both = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', multiScale: true, flip: true }, deps);
  try {
    t.is(multi.id, `${plain.id}+half`);
    t.is(both.id, `${plain.id}+half+flip`);
    t.is(multi.dim, 2 * plain.dim);
    t.deepEqual(multi.input, plain.input);
    const images = await demoPixels(plain.input.width, 2);
    const a = await plain.embed(images);
    const b = await multi.embed(images);
    const d = plain.dim;
    let full = 0;
    let halfVsFull = 0;
    for (let i = 0; i < images.length; i++) {
      for (let j = 0; j < d; j++) {
        full = Math.max(full, Math.abs(a[i * d + j]! - b[i * 2 * d + j]!));
        halfVsFull = Math.max(halfVsFull, Math.abs(a[i * d + j]! - b[i * 2 * d + d + j]!));
      }
    }
    t.is(full, 0, 'the first half of each row is the plain features');
    t.true(halfVsFull > 1e-3, `the half-size view equals the full one (max |Δ| ${halfVsFull})`);
  } finally {
    plain.dispose();
    multi.dispose();
    both.dispose();
  }
});

test('multi-scale features refuse an ONNX model and a model whose input cannot be resized, naming the fix', async (t) => {
  files.set('/models/nhwc-ms.onnx', nhwcModel());
  const onnx = await t.throwsAsync(
    loadEngine({ kind: 'onnx', model: '/models/nhwc-ms.onnx', node: 'relu', multiScale: true }, deps),
  );
  t.regex(onnx!.message, /ONNX model.*--no-multi-scale/);
  // A graph model whose input is 10×10: its half (5×5) is under the smallest input.
  const m = tinyGraphModel();
  files.set('/models/tiny-10/model.json', new TextEncoder().encode(m.json.replaceAll('"16"', '"10"')));
  files.set('/models/tiny-10/w.bin', m.weights);
  const small = await t.throwsAsync(
    loadEngine({ kind: 'tfjs', model: '/models/tiny-10/model.json', node: 'relu', multiScale: true }, deps),
  );
  t.regex(small!.message, /half its input size \(5×5\).*--no-multi-scale \(multiScale: false in a run request\)/);
});
