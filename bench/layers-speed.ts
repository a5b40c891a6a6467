/**
 * How fast do TF.js layers models extract on ONNX Runtime (converted by
 * services/extractor/engines/onnx/layers.ts) against TensorFlow.js WebAssembly, the engine they
 * had before? Measured, never asserted.
 *
 *   npx tsx bench/layers-speed.ts [--images 32] [--batch 8] [--reps 3]
 *
 * Models: nsfwjs@4.4.0's InceptionV3 (a real Keras-era, uint8-quantized layers model, 299×299)
 * cut at mixed7 and at its global pool; and a Darknet-tiny-style layers model built here with
 * seeded random weights (224×224: six 3×3 conv + BatchNormalization + LeakyReLU(0.1) +
 * max-pool stages, 16→1024 channels, then global average pooling), standing in for the
 * Darknet-tiny model of issue 12. Real CIFAR-10 images decoded by the pipeline's decodeImage go
 * through loadEngine as an extractor runs it, batch by batch; images/s is the median over `reps`
 * timed passes after a warm-up pass. Also prints the largest per-image relative difference
 * between the two engines' features, as a check that both ran the same model.
 */
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { tf } from '../services/extractor/engines/tf.js';
import { loadDemoImages } from '../cli/demo-data.js';
import type { EngineDeps, FeatureEngine } from '../services/extractor/engines/engine.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { decodeImage } from '../services/extractor/image.js';
import type { InputRange } from '../shared/features.js';
import { mulberry32 } from '../shared/random.js';
import { maxRowRelErr } from '../test/helpers/compare.js';
import {
  INCEPTION_GLOBAL_POOL,
  INCEPTION_MIXED7,
  INCEPTION_RANGE,
  INCEPTION_SIZE,
  inceptionV3Files,
} from '../test/helpers/inception.js';
import type { ModelFiles } from '../test/helpers/tiny-models.js';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: '32' },
    batch: { type: 'string', default: '8' },
    reps: { type: 'string', default: '3' },
  },
});
const IMAGES = Number(args.images);
const BATCH = Number(args.batch);
const REPS = Number(args.reps);
const cores = availableParallelism();

/** The Darknet-tiny-style backbone: conv 3×3 (no bias) → BN → LeakyReLU 0.1 → max-pool, six times. */
async function darknetTinyFiles(): Promise<ModelFiles> {
  const input = tf.input({ shape: [224, 224, 3], name: 'image' });
  let x = input;
  for (const [i, filters] of [16, 32, 64, 128, 256, 512, 1024].entries()) {
    const conv = tf.layers.conv2d({ filters, kernelSize: 3, padding: 'same', useBias: false, name: `conv_${i}` });
    x = tf.layers.batchNormalization({ name: `bn_${i}` }).apply(conv.apply(x)) as tf.SymbolicTensor;
    x = tf.layers.leakyReLU({ alpha: 0.1, name: `leaky_${i}` }).apply(x) as tf.SymbolicTensor;
    if (i < 5) x = tf.layers.maxPooling2d({ poolSize: 2, name: `pool_${i}` }).apply(x) as tf.SymbolicTensor;
  }
  const out = tf.layers.globalAveragePooling2d({ name: 'gap' }).apply(x) as tf.SymbolicTensor;
  const model = tf.model({ inputs: input, outputs: out });
  const rand = mulberry32(12);
  const values = model.weights.map((w) => {
    const shape = w.shape as number[];
    const n = shape.reduce((a, b) => a * b, 1);
    const [lo, hi] = /variance|gamma/.test(w.originalName)
      ? [0.5, 1.5]
      : /mean|beta/.test(w.originalName)
        ? [-0.2, 0.2]
        : [-Math.sqrt(3 / (n / shape.at(-1)!)), Math.sqrt(3 / (n / shape.at(-1)!))];
    return tf.tensor(
      Float32Array.from({ length: n }, () => lo + (hi - lo) * rand()),
      shape,
    );
  });
  model.setWeights(values);
  tf.dispose(values);
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      saved = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  model.dispose();
  return {
    json: JSON.stringify({
      format: 'layers-model',
      modelTopology: saved!.modelTopology,
      weightsManifest: [{ paths: ['w.bin'], weights: saved!.weightSpecs }],
    }),
    weights: Buffer.from(saved!.weightData as ArrayBuffer),
  };
}

interface Subject {
  label: string;
  files: ModelFiles;
  node: string;
  size: number;
  range: InputRange;
}

function deps(files: ModelFiles, over: Partial<EngineDeps>): EngineDeps {
  return {
    readObject: async (url) => {
      if (url.endsWith('/model.json')) return new TextEncoder().encode(files.json);
      if (url.endsWith('/w.bin')) return files.weights;
      throw new Error(`unexpected read of ${url}`);
    },
    threads: cores,
    ...over,
  };
}

/** Median images/s over REPS timed passes of every image, BATCH at a time (after one warm-up pass). */
async function speed(engine: FeatureEngine, images: Uint8Array[]): Promise<{ ips: number; features: Float32Array }> {
  const pass = async () => {
    const out = new Float32Array(images.length * engine.dim);
    for (let i = 0; i < images.length; i += BATCH) {
      out.set(await engine.embed(images.slice(i, i + BATCH)), i * engine.dim);
    }
    return out;
  };
  const features = await pass();
  const rates: number[] = [];
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    await pass();
    rates.push(images.length / ((performance.now() - t0) / 1000));
  }
  rates.sort((a, b) => a - b);
  return { ips: rates[Math.floor(rates.length / 2)]!, features };
}

const demo = await loadDemoImages({ perClass: Math.ceil(IMAGES / 2) });
const inception = await inceptionV3Files();
const darknet = await darknetTinyFiles();
const subjects: Subject[] = [
  {
    label: 'InceptionV3 (nsfwjs) @ mixed7',
    files: inception,
    node: INCEPTION_MIXED7,
    size: INCEPTION_SIZE,
    range: INCEPTION_RANGE,
  },
  {
    label: 'InceptionV3 (nsfwjs) @ global pool',
    files: inception,
    node: INCEPTION_GLOBAL_POOL,
    size: INCEPTION_SIZE,
    range: INCEPTION_RANGE,
  },
  { label: 'Darknet-tiny-style (random weights) @ gap', files: darknet, node: 'gap', size: 224, range: '0,1' },
];

console.log(`${IMAGES} CIFAR-10 images, batch ${BATCH}, median of ${REPS} passes, ${cores} cores\n`);
console.log(
  '| model | dim | ONNX Runtime (CPU, all cores) img/s | TF.js WebAssembly img/s | speed-up | max rel. diff |',
);
console.log('|---|---:|---:|---:|---:|---:|');
for (const s of subjects) {
  const images = await Promise.all(
    demo.slice(0, IMAGES).map((d) => decodeImage(d.png, { width: s.size, height: s.size, maxPixels: 1e7 })),
  );
  const spec = { kind: 'tfjs' as const, model: `/bench/${s.label}/model.json`, node: s.node, inputRange: s.range };
  const onnx = await loadEngine(spec, deps(s.files, { engine: 'onnx' }));
  const a = await speed(onnx, images);
  const backend = onnx.backend;
  onnx.dispose();
  const tfjs = await loadEngine(spec, deps(s.files, { engine: 'tfjs', backend: 'wasm' }));
  const b = await speed(tfjs, images);
  const dim = tfjs.dim;
  tfjs.dispose();
  const diff = maxRowRelErr(a.features, b.features, dim);
  console.log(
    `| ${s.label} | ${dim} | ${a.ips.toFixed(1)} (${backend}) | ${b.ips.toFixed(1)} | ${(a.ips / b.ips).toFixed(1)}× | ${diff.toExponential(1)} |`,
  );
}
