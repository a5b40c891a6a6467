/**
 * The TF.js layers model → ONNX converter (services/extractor/engines/onnx/layers.ts), layer by
 * layer, on small models built with tf.layers and given seeded random weights: each is saved as a
 * user's model.json would be, run by TensorFlow.js (CPU backend, the reference) loaded from those
 * artifacts, and, converted, by ONNX Runtime; the pooled features must agree to 1e-4 relative.
 * Then the model forms (Sequential, functional, Keras-era, Keras 3 inbound nodes, quantized
 * weights), what the converter refuses, the engines' wiring (auto and onnx), and the real thing:
 * nsfwjs's InceptionV3 on real CIFAR-10 images.
 */
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import type * as Ort from 'onnxruntime-node';
import { loadDemoImages } from '../cli/demo-data.js';
import type { EngineDeps } from '../services/extractor/engines/engine.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { loadOrt } from '../services/extractor/engines/onnx.js';
import {
  convertGraphToOnnx,
  ONNX_INPUT,
  ONNX_OUTPUT,
  UnsupportedGraphError,
} from '../services/extractor/engines/onnx/convert.js';
import { planLayersCut } from '../services/extractor/engines/onnx/layers.js';
import { decodeImage } from '../services/extractor/image.js';
import { ModelError } from '../shared/errors.js';
import { mulberry32 } from '../shared/random.js';
import {
  INCEPTION_GLOBAL_POOL,
  INCEPTION_MIXED7,
  INCEPTION_RANGE,
  INCEPTION_SIZE,
  inceptionV3Files,
} from './helpers/inception.js';
import type { ModelFiles } from './helpers/tiny-models.js';

const L = tf.layers;
type ST = tf.SymbolicTensor;

let ort: typeof Ort;

test.before(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  ort = await loadOrt();
});

// ---------------------------------------------------------------------------------------------
// Building, saving and running layers models.

/** `layer` applied to `x`: one symbolic output. */
function on(layer: tf.layers.Layer, x: ST | ST[]): ST {
  return layer.apply(x) as ST;
}

/** A functional model from an h×w×3 input named 'image' through `body`. */
function functional(h: number, w: number, body: (x: ST) => ST): tf.LayersModel {
  const input = tf.input({ shape: [h, w, 3], name: 'image' });
  return tf.model({ inputs: input, outputs: body(input) });
}

/**
 * Seeded weights in ranges that keep every layer's output lively: kernels ±√(3/fan-in)·scale,
 * biases and BN offsets ±0.5, BN scales 0.5..1.5, variances 0.3..2, PReLU slopes 0..0.5.
 */
function randomize(model: tf.LayersModel, seed: number, scale = 1): void {
  const rand = mulberry32(seed);
  const values = model.weights.map((w) => {
    const shape = w.shape as number[];
    const n = shape.reduce((a, b) => a * b, 1);
    const name = w.originalName;
    let [lo, hi] = [-0.5, 0.5];
    if (/moving_variance$/.test(name)) [lo, hi] = [0.3, 2];
    else if (/gamma$/.test(name)) [lo, hi] = [0.5, 1.5];
    else if (/alpha$/.test(name)) [lo, hi] = [0, 0.5];
    else if (!/(moving_mean|beta|bias)$/.test(name)) {
      const s = scale * Math.sqrt(3 / Math.max(1, n / shape[shape.length - 1]!));
      [lo, hi] = [-s, s];
    }
    return tf.tensor(
      Float32Array.from({ length: n }, () => lo + (hi - lo) * rand()),
      shape,
    );
  });
  model.setWeights(values);
  tf.dispose(values);
}

/** What a user hands over: the model saved by TF.js itself (`format: layers-model`). */
async function save(model: tf.LayersModel): Promise<tf.io.ModelArtifacts> {
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      saved = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  return { ...saved!, format: 'layers-model' };
}

interface Features {
  data: Float32Array;
  shape: number[];
}

/** n random NHWC images in [-1, 1), and the same as NCHW for the ONNX model. */
function inputs(h: number, w: number, seed: number, n = 2): { nhwc: Float32Array; nchw: Float32Array } {
  const rand = mulberry32(seed);
  const nhwc = Float32Array.from({ length: n * h * w * 3 }, () => rand() * 2 - 1);
  return { nhwc, nchw: toNchw(nhwc, n, h, w) };
}

function toNchw(nhwc: Float32Array, n: number, h: number, w: number): Float32Array {
  const nchw = new Float32Array(nhwc.length);
  for (let a = 0; a < n; a++)
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let k = 0; k < 3; k++) nchw[((a * 3 + k) * h + y) * w + x] = nhwc[((a * h + y) * w + x) * 3 + k]!;
  return nchw;
}

/** TF.js, loaded from the artifacts and cut as tfjs.ts cutLayers cuts: the layer's output, averaged over H and W when 4-D. */
async function viaTfjs(
  artifacts: tf.io.ModelArtifacts,
  layer: string,
  x: Float32Array,
  h: number,
  w: number,
): Promise<Features> {
  const model = await tf.loadLayersModel(tf.io.fromMemory(artifacts));
  try {
    const sub = tf.model({ inputs: model.inputs, outputs: model.getLayer(layer).output as ST });
    const pooled = tf.tidy(() => {
      const y = sub.predict(tf.tensor4d(x, [x.length / (h * w * 3), h, w, 3])) as tf.Tensor;
      return y.rank === 4 ? y.mean([1, 2]) : y;
    });
    try {
      return { data: pooled.dataSync() as Float32Array, shape: pooled.shape };
    } finally {
      pooled.dispose();
    }
  } finally {
    model.dispose();
  }
}

/** The converter, then ONNX Runtime on the CPU. */
async function viaOnnx(artifacts: tf.io.ModelArtifacts, layer: string, x: Float32Array, h: number, w: number) {
  const { bytes } = convertGraphToOnnx(artifacts, layer, 'test');
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], intraOpNumThreads: 1 });
  try {
    const out = await session.run({ [ONNX_INPUT]: new ort.Tensor('float32', x, [x.length / (h * w * 3), 3, h, w]) });
    const y = out[ONNX_OUTPUT]!;
    return { data: y.data as Float32Array, shape: y.dims.map(Number) } satisfies Features;
  } finally {
    await session.release();
  }
}

/** max |a − b| / max |b|: the worst error relative to the scale of the reference. */
function relErr(a: Float32Array, b: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

/** Both ways agree on `layer` of `artifacts`, on two random images; returns the reference. */
async function agree(
  t: import('ava').ExecutionContext,
  artifacts: tf.io.ModelArtifacts,
  layer: string,
  h: number,
  w: number,
  seed: number,
): Promise<Features> {
  const x = inputs(h, w, seed);
  const want = await viaTfjs(artifacts, layer, x.nhwc, h, w);
  const got = await viaOnnx(artifacts, layer, x.nchw, h, w);
  t.deepEqual(got.shape, want.shape, `${layer}: shape`);
  t.true(want.data.every(Number.isFinite), `${layer}: reference is finite`);
  // A reference of (near) zeros would make any converter look right.
  t.true(Math.max(...want.data.map(Math.abs)) > 1e-3, `${layer}: reference output is not all zero`);
  const err = relErr(got.data, want.data);
  t.true(err < 1e-4, `${layer}: max relative error ${err.toExponential(2)}`);
  return want;
}

interface Case {
  title: string;
  h?: number;
  w?: number;
  /** Weight scale (larger drives activations past their knees: relu6, sigmoid saturation). */
  scale?: number;
  build: (h: number, w: number) => tf.LayersModel;
  /** Layers to cut at; each must agree. */
  cuts: string[];
  /**
   * Edits the saved topology where TF.js's own save loses what a Keras export keeps, so that
   * TF.js (the reference) reads back the model it built.
   */
  patch?: (layers: Array<{ name: string; config: Record<string, unknown> }>) => void;
}

const cases: Case[] = [];
const add = (c: Case) => cases.push(c);

// --- Conv2D: padding, strides, dilations, bias, activation -----------------------------------------

add({
  title: 'Sequential Conv2D 3×3 valid with bias and relu (first layer carries the input shape)',
  build: (h, w) =>
    tf.sequential({
      layers: [L.conv2d({ inputShape: [h, w, 3], filters: 6, kernelSize: 3, activation: 'relu', name: 'conv' })],
    }),
  cuts: ['conv'],
});
// TF's 'same' puts the odd extra pixel at the end (ONNX SAME_UPPER): on 15×15 a 3×3 kernel at
// stride 2 pads 1+1, 4×4 pads 1+2, 2×2 pads 0+1; on 16×16 a 3×3 kernel pads 0+1.
for (const [size, k] of [
  [15, 3],
  [15, 4],
  [15, 2],
  [16, 3],
] as const) {
  add({
    title: `Conv2D ${k}×${k} same stride 2 on ${size}×${size}`,
    h: size,
    w: size,
    build: (h, w) =>
      functional(h, w, (x) =>
        on(L.conv2d({ filters: 5, kernelSize: k, strides: 2, padding: 'same', name: 'conv' }), x),
      ),
    cuts: ['conv'],
  });
}
add({
  title: 'Conv2D non-square 15×12 input, [3, 2] kernel, [2, 1] strides, same',
  h: 15,
  w: 12,
  build: (h, w) =>
    functional(h, w, (x) =>
      on(L.conv2d({ filters: 4, kernelSize: [3, 2], strides: [2, 1], padding: 'same', name: 'conv' }), x),
    ),
  cuts: ['conv'],
});
for (const padding of ['same', 'valid'] as const) {
  for (const [k, d] of [
    [3, 2],
    [2, 3],
  ] as const) {
    add({
      title: `Conv2D ${k}×${k} dilation ${d} ${padding} on 15×15`,
      h: 15,
      w: 15,
      build: (h, w) =>
        functional(h, w, (x) => on(L.conv2d({ filters: 4, kernelSize: k, dilationRate: d, padding, name: 'conv' }), x)),
      cuts: ['conv'],
    });
  }
}

// --- BatchNormalization: folded, and not -------------------------------------------------------

add({
  title: 'Conv2D (no bias) → BatchNormalization folded into it → ReLU',
  h: 15,
  w: 15,
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(
        L.conv2d({ filters: 8, kernelSize: 3, strides: 2, padding: 'same', useBias: false, name: 'conv' }),
        x,
      );
      return on(L.reLU({ name: 'relu' }), on(L.batchNormalization({ name: 'bn' }), c));
    }),
  cuts: ['conv', 'bn', 'relu'],
});
add({
  title: 'Conv2D with bias → BatchNormalization (epsilon 0.01, no scale) folded',
  build: (h, w) =>
    functional(h, w, (x) =>
      on(
        L.batchNormalization({ name: 'bn', epsilon: 0.01, scale: false }),
        on(L.conv2d({ filters: 6, kernelSize: 3, name: 'conv' }), x),
      ),
    ),
  cuts: ['bn'],
});
add({
  title: 'BatchNormalization not foldable: after a conv with an activation, after an Add, with no center',
  build: (h, w) =>
    functional(h, w, (x) => {
      const a = on(L.conv2d({ filters: 6, kernelSize: 3, padding: 'same', activation: 'relu', name: 'a' }), x);
      const bnA = on(L.batchNormalization({ name: 'bn_a' }), a);
      const b = on(L.conv2d({ filters: 6, kernelSize: 1, name: 'b' }), x);
      const sum = on(L.add({ name: 'sum' }), [bnA, b]);
      return on(L.batchNormalization({ name: 'bn_sum', center: false }), sum);
    }),
  cuts: ['bn_a', 'bn_sum'],
});
add({
  title: 'a conv used by a BatchNormalization and by something else is not folded',
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(L.conv2d({ filters: 6, kernelSize: 3, padding: 'same', name: 'conv' }), x);
      return on(L.add({ name: 'sum' }), [c, on(L.batchNormalization({ name: 'bn' }), c)]);
    }),
  cuts: ['sum'],
});

// --- Depthwise and separable ---------------------------------------------------------------------

add({
  title: 'DepthwiseConv2D multiplier 2, same, stride 2 on 15×15, relu6, then BN folded into the next one',
  h: 15,
  w: 15,
  scale: 3,
  build: (h, w) =>
    functional(h, w, (x) => {
      const d = on(
        L.depthwiseConv2d({
          kernelSize: 3,
          depthMultiplier: 2,
          strides: 2,
          padding: 'same',
          activation: 'relu6',
          name: 'dw',
        }),
        x,
      );
      const d2 = on(L.depthwiseConv2d({ kernelSize: 3, padding: 'valid', useBias: false, name: 'dw2' }), d);
      return on(L.batchNormalization({ name: 'bn' }), d2);
    }),
  cuts: ['dw', 'bn'],
});
add({
  title: 'SeparableConv2D multiplier 2, same, stride 2, bias, elu; and one without bias, BN folded',
  h: 15,
  w: 15,
  build: (h, w) =>
    functional(h, w, (x) => {
      const s = on(
        L.separableConv2d({
          filters: 7,
          kernelSize: 3,
          depthMultiplier: 2,
          strides: 2,
          padding: 'same',
          activation: 'elu',
          name: 'sep',
        }),
        x,
      );
      const s2 = on(L.separableConv2d({ filters: 5, kernelSize: 3, useBias: false, name: 'sep2' }), s);
      return on(L.batchNormalization({ name: 'bn' }), s2);
    }),
  cuts: ['sep', 'bn'],
  // TF.js saves SeparableConv2D without depth_multiplier (and reads it back as 1); Keras writes it.
  patch: (layers) => {
    layers.find((l) => l.name === 'sep')!.config.depth_multiplier = 2;
  },
});
add({
  title: 'SeparableConv2D dilation 2 same',
  h: 15,
  w: 15,
  build: (h, w) =>
    functional(h, w, (x) =>
      on(L.separableConv2d({ filters: 4, kernelSize: 3, dilationRate: 2, padding: 'same', name: 'sep' }), x),
    ),
  cuts: ['sep'],
});

// --- Activations -------------------------------------------------------------------------------------

const ACTIVATIONS = [
  'linear',
  'relu',
  'relu6',
  'elu',
  'selu',
  'sigmoid',
  'hardSigmoid',
  'tanh',
  'softplus',
  'softsign',
  'softmax',
  'swish',
  'mish',
  'gelu',
] as const;
for (const activation of ACTIVATIONS) {
  add({
    title: `activation ${activation}: an Activation layer, and a conv's own`,
    scale: 3,
    build: (h, w) =>
      functional(h, w, (x) => {
        const c = on(L.conv2d({ filters: 6, kernelSize: 3, name: 'conv' }), x);
        const a = on(L.activation({ activation, name: 'act' }), c);
        return on(L.conv2d({ filters: 4, kernelSize: 3, activation, name: 'conv_act' }), a);
      }),
    cuts: ['act', 'conv_act'],
  });
}
add({
  title: 'ReLU (max_value 1.5 and none), LeakyReLU (alpha 0.2), ELU, Softmax layers',
  scale: 3,
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(L.conv2d({ filters: 6, kernelSize: 3, name: 'conv' }), x);
      const capped = on(L.reLU({ maxValue: 1.5, name: 'capped' }), c);
      const plain = on(L.reLU({ name: 'plain' }), c);
      const leaky = on(L.leakyReLU({ alpha: 0.2, name: 'leaky' }), c);
      const elu = on(L.elu({ name: 'elu' }), c);
      // Keras's default axis is -1 (TF.js's Softmax layer defaults to 1, which it cannot run on an image).
      const soft = on(L.softmax({ axis: -1, name: 'soft' }), c);
      return on(L.concatenate({ name: 'all' }), [capped, plain, leaky, elu, soft]);
    }),
  cuts: ['capped', 'plain', 'leaky', 'elu', 'soft', 'all'],
});
add({
  title: 'PReLU with shared spatial axes, and per pixel',
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(L.conv2d({ filters: 6, kernelSize: 3, name: 'conv' }), x);
      const shared = on(L.prelu({ sharedAxes: [1, 2], name: 'shared' }), c);
      return on(L.prelu({ name: 'per_pixel' }), shared);
    }),
  cuts: ['shared', 'per_pixel'],
});

// --- Merges ------------------------------------------------------------------------------------------

add({
  title: 'Add (residual, three inputs), Multiply (three), Average, Maximum, Minimum',
  build: (h, w) =>
    functional(h, w, (x) => {
      const [a, b, c] = ['a', 'b', 'c'].map((n) =>
        on(L.conv2d({ filters: 4, kernelSize: 3, padding: 'same', name: n }), x),
      ) as [ST, ST, ST];
      const merged = [
        on(L.add({ name: 'add' }), [a, b, c]),
        on(L.multiply({ name: 'mul' }), [a, b, c]),
        on(L.average({ name: 'avg' }), [a, b, c]),
        on(L.maximum({ name: 'max' }), [a, b]),
        on(L.minimum({ name: 'min' }), [a, b, c]),
      ];
      return on(L.concatenate({ name: 'all' }), merged);
    }),
  cuts: ['add', 'mul', 'avg', 'max', 'min', 'all'],
});
add({
  title: 'Concatenate on channels (axis -1 and 3) and on height (axis 1), then a conv over the result',
  build: (h, w) =>
    functional(h, w, (x) => {
      const a = on(L.conv2d({ filters: 4, kernelSize: 3, padding: 'same', name: 'a' }), x);
      const b = on(L.conv2d({ filters: 2, kernelSize: 1, name: 'b' }), x);
      const last = on(L.concatenate({ axis: -1, name: 'cat_last' }), [a, b]);
      // (Not [b, a, b]: TF.js's CPU concat kernel fails on a tensor given twice.)
      const three = on(L.concatenate({ axis: 3, name: 'cat_3' }), [b, a]);
      const c = on(L.conv2d({ filters: 4, kernelSize: 3, padding: 'same', name: 'c' }), x);
      const tall = on(L.concatenate({ axis: 1, name: 'cat_h' }), [a, c]);
      const both = on(L.concatenate({ name: 'cat' }), [last, three]);
      const wide = on(L.conv2d({ filters: 3, kernelSize: 3, padding: 'same', name: 'conv' }), both);
      const halved = on(
        L.conv2d({ filters: 3, kernelSize: 3, strides: [2, 1], padding: 'same', name: 'conv_h' }),
        tall,
      );
      return on(L.add({ name: 'after' }), [wide, halved]);
    }),
  cuts: ['cat_last', 'cat_3', 'cat_h', 'after'],
});

// --- Pools, padding, cropping --------------------------------------------------------------------------

for (const [size, k, s, padding] of [
  [15, 3, 2, 'same'],
  [15, 2, 2, 'same'],
  [16, 3, 2, 'same'],
  [15, 3, 2, 'valid'],
  [15, 3, 1, 'same'],
] as const) {
  add({
    title: `MaxPooling2D and AveragePooling2D ${k}×${k} stride ${s} ${padding} on ${size}×${size}`,
    h: size,
    w: size,
    build: (h, w) =>
      functional(h, w, (x) => {
        const c = on(L.conv2d({ filters: 4, kernelSize: 1, name: 'conv' }), x);
        const max = on(L.maxPooling2d({ poolSize: k, strides: s, padding, name: 'max' }), c);
        const avg = on(L.averagePooling2d({ poolSize: k, strides: s, padding, name: 'avg' }), c);
        return on(L.concatenate({ name: 'both' }), [max, avg]);
      }),
    cuts: ['max', 'avg'],
  });
}
add({
  title: 'pools with default strides (= pool size); GlobalAveragePooling2D and GlobalMaxPooling2D',
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(L.conv2d({ filters: 5, kernelSize: 3, name: 'conv' }), x);
      const p = on(L.maxPooling2d({ poolSize: 2, name: 'pool' }), c);
      const gap = on(L.globalAveragePooling2d({ name: 'gap' }), p);
      const gmp = on(L.globalMaxPooling2d({ name: 'gmp' }), c);
      return on(L.concatenate({ name: 'cat' }), [gap, gmp]);
    }),
  cuts: ['pool', 'gap', 'gmp', 'cat'],
});
add({
  title: 'ZeroPadding2D (asymmetric and symmetric) then valid convs; Cropping2D',
  h: 15,
  w: 15,
  build: (h, w) =>
    functional(h, w, (x) => {
      const p = on(
        L.zeroPadding2d({
          padding: [
            [1, 2],
            [0, 3],
          ],
          name: 'pad',
        }),
        x,
      );
      const c = on(L.conv2d({ filters: 4, kernelSize: 3, strides: 2, name: 'conv' }), p);
      const p2 = on(L.zeroPadding2d({ padding: 1, name: 'pad1' }), c);
      const c2 = on(L.conv2d({ filters: 4, kernelSize: 3, name: 'conv2' }), p2);
      return on(
        L.cropping2D({
          cropping: [
            [1, 0],
            [2, 1],
          ],
          name: 'crop',
        }),
        c2,
      );
    }),
  cuts: ['pad', 'conv', 'conv2', 'crop'],
});

// --- Flatten, Dense, Reshape, Rescaling, Dropout -------------------------------------------------------

add({
  title: 'Flatten (NHWC order) → Dense relu → Dropout → Dense, and Dense → BatchNormalization folded',
  h: 8,
  w: 8,
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(L.conv2d({ filters: 3, kernelSize: 3, strides: 2, name: 'conv' }), x);
      const flat = on(L.flatten({ name: 'flat' }), c);
      const d = on(L.dense({ units: 10, activation: 'relu', name: 'dense' }), flat);
      const drop = on(L.dropout({ rate: 0.5, name: 'drop' }), d);
      const d2 = on(L.dense({ units: 6, useBias: false, name: 'dense2' }), drop);
      return on(L.batchNormalization({ name: 'bn' }), d2);
    }),
  cuts: ['flat', 'dense', 'drop', 'bn'],
});
add({
  title: 'Dense on an image (per pixel, a 1×1 conv), with a BatchNormalization folded',
  build: (h, w) =>
    functional(h, w, (x) => {
      const d = on(L.dense({ units: 5, activation: 'tanh', name: 'dense' }), x);
      return on(L.batchNormalization({ name: 'bn' }), on(L.dense({ units: 4, name: 'dense2' }), d));
    }),
  cuts: ['dense', 'bn'],
});
add({
  title: 'squeeze-and-excite: GlobalAveragePooling2D → Dense → Reshape [1, 1, C] → Multiply; Reshape to one axis',
  build: (h, w) =>
    functional(h, w, (x) => {
      const c = on(L.conv2d({ filters: 8, kernelSize: 3, activation: 'relu', name: 'conv' }), x);
      const squeeze = on(L.globalAveragePooling2d({ name: 'squeeze' }), c);
      const reduce = on(L.dense({ units: 4, activation: 'relu', name: 'reduce' }), squeeze);
      const gate = on(L.dense({ units: 8, activation: 'sigmoid', name: 'gate' }), reduce);
      const shaped = on(L.reshape({ targetShape: [1, 1, 8], name: 'shaped' }), gate);
      const scaled = on(L.multiply({ name: 'scaled' }), [c, shaped]);
      const small = on(L.conv2d({ filters: 2, kernelSize: 3, strides: 3, name: 'small' }), scaled);
      return on(L.reshape({ targetShape: [2 * 4 * 4], name: 'row' }), small);
    }),
  cuts: ['shaped', 'scaled', 'row'],
});
add({
  title: 'Rescaling (1/127.5, -1) first, in a Sequential model',
  build: (h, w) =>
    tf.sequential({
      layers: [
        L.rescaling({ inputShape: [h, w, 3], scale: 1 / 127.5, offset: -1, name: 'scale' }),
        L.conv2d({ filters: 4, kernelSize: 3, name: 'conv' }),
      ],
    }),
  cuts: ['scale', 'conv'],
});

let seed = 1;
for (const c of cases) {
  const caseSeed = seed++;
  test(c.title, async (t) => {
    const [h, w] = [c.h ?? 16, c.w ?? 16];
    const model = c.build(h, w);
    randomize(model, caseSeed * 7919, c.scale);
    const saved = await save(model);
    model.dispose();
    let artifacts = saved;
    if (c.patch) {
      const topo = structuredClone(saved.modelTopology) as {
        config: { layers: Parameters<NonNullable<Case['patch']>>[0] };
      };
      c.patch(topo.config.layers);
      t.notDeepEqual(topo, saved.modelTopology, 'the patch changed the topology');
      artifacts = { ...saved, modelTopology: topo };
    }
    for (const layer of c.cuts) await agree(t, artifacts, layer, h, w, caseSeed);
  });
}

// ---------------------------------------------------------------------------------------------
// Model forms.

/** A small residual backbone, functional: conv → BN → relu, depthwise, Add, pool, Concatenate. */
async function residualModel(seedValue: number): Promise<tf.io.ModelArtifacts> {
  const model = functional(16, 16, (x) => {
    const stem = on(
      L.reLU({ maxValue: 6, name: 'stem_relu' }),
      on(
        L.batchNormalization({ name: 'stem_bn' }),
        on(L.conv2d({ filters: 8, kernelSize: 3, padding: 'same', useBias: false, name: 'stem' }), x),
      ),
    );
    const dw = on(L.depthwiseConv2d({ kernelSize: 3, padding: 'same', activation: 'relu', name: 'dw' }), stem);
    const res = on(L.add({ name: 'res' }), [stem, on(L.conv2d({ filters: 8, kernelSize: 1, name: 'proj' }), dw)]);
    const pool = on(L.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same', name: 'pool' }), res);
    const avg = on(L.averagePooling2d({ poolSize: 2, padding: 'same', name: 'avg' }), res);
    return on(L.concatenate({ name: 'cat' }), [pool, avg]);
  });
  randomize(model, seedValue);
  const artifacts = await save(model);
  model.dispose();
  return artifacts;
}

/** The same topology as the Keras-era converters wrote it: `{keras_version, backend, model_config}`, no format. */
function kerasEra(a: tf.io.ModelArtifacts): tf.io.ModelArtifacts {
  const { format: _, ...rest } = a;
  return { ...rest, modelTopology: { keras_version: '2.1.6', backend: 'tensorflow', model_config: a.modelTopology } };
}

test('a functional residual model, its Keras-era form, and Keras 3 inbound nodes give the same features', async (t) => {
  const modern = await residualModel(11);
  const old = kerasEra(modern);
  const want = await agree(t, modern, 'cat', 16, 16, 3);
  const x = inputs(16, 16, 3);
  // The Keras-era file: TF.js loads it (as the reference) and the converter reads it.
  const viaOld = await agree(t, old, 'cat', 16, 16, 3);
  t.deepEqual(viaOld.data, want.data);
  // Keras 3 writes each call as {args: [tensors], kwargs}, a tensor as {class_name: '__keras_tensor__',
  // config: {keras_history: [layer, 0, 0]}}. TF.js cannot read that; the converter can.
  const topo = structuredClone(modern.modelTopology) as { config: { layers: Array<{ inbound_nodes: unknown[] }> } };
  for (const l of topo.config.layers) {
    l.inbound_nodes = (l.inbound_nodes as Array<Array<[string, number, number]>>).map((node) => {
      const tensors = node.map(([name, i, j]) => ({
        class_name: '__keras_tensor__',
        config: { shape: [], dtype: 'float32', keras_history: [name, i, j] },
      }));
      return { args: tensors.length === 1 ? tensors : [tensors], kwargs: {} };
    });
  }
  const keras3 = await viaOnnx({ ...modern, modelTopology: topo }, 'cat', x.nchw, 16, 16);
  t.true(relErr(keras3.data, want.data) < 1e-4);
});

test('a Sequential model in the pre-2.2.3 form (the layer list as the config) and with an explicit InputLayer', async (t) => {
  const model = tf.sequential({
    layers: [
      L.inputLayer({ inputShape: [16, 16, 3], name: 'in' }),
      L.conv2d({ filters: 4, kernelSize: 3, activation: 'relu', name: 'conv' }),
      L.globalAveragePooling2d({ name: 'gap' }),
    ],
  });
  randomize(model, 5);
  const artifacts = await save(model);
  model.dispose();
  const want = await agree(t, artifacts, 'gap', 16, 16, 4);
  const topo = artifacts.modelTopology as { config: { layers: unknown[] } };
  const listForm = { ...artifacts, modelTopology: { ...topo, config: topo.config.layers } };
  const got = await agree(t, listForm, 'gap', 16, 16, 4);
  t.deepEqual(got.data, want.data);
  t.is(planLayersCut(artifacts, 'in', 'm').id, 'm@in', 'an explicit InputLayer is a layer like TF.js lists it');
});

/**
 * The model's weights as tfjs-converter's --quantize_uint8 writes them: per weight, uint8 codes and
 * {dtype: 'uint8', min, scale} in the manifest, value = code · scale + min.
 */
function quantizeUint8(a: tf.io.ModelArtifacts): tf.io.ModelArtifacts {
  const specs: tf.io.WeightsManifestEntry[] = [];
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const spec of a.weightSpecs!) {
    const n = spec.shape.reduce((x, y) => x * y, 1);
    const values = new Float32Array((a.weightData as ArrayBuffer).slice(offset, offset + n * 4));
    offset += n * 4;
    const min = Math.min(...values);
    const max = Math.max(...values);
    const scale = max > min ? (max - min) / 255 : 1;
    chunks.push(Uint8Array.from(values, (v) => Math.round((v - min) / scale)));
    specs.push({ ...spec, quantization: { dtype: 'uint8', min, scale } });
  }
  const data = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    data.set(c, at);
    at += c.length;
  }
  return { ...a, weightSpecs: specs, weightData: data.buffer };
}

test('uint8-quantized weights are dequantised as TF.js dequantises them', async (t) => {
  const float = await residualModel(21);
  const quantized = quantizeUint8(float);
  t.true((quantized.weightData as ArrayBuffer).byteLength * 4 === (float.weightData as ArrayBuffer).byteLength);
  const q = await agree(t, quantized, 'cat', 16, 16, 6);
  const f = await agree(t, float, 'cat', 16, 16, 6);
  // The quantized model really is another model (else this test would prove nothing).
  t.true(relErr(q.data, f.data) > 1e-4, 'quantization changed the features');
  t.true(relErr(q.data, f.data) < 0.1, 'and only a little');
});

// TF.js cannot load gelu_new (its loader turns the name into 'geluNew', which it does not know):
// the reference is TF.js's own GeluNew formula on the layer's input.
test('activation gelu_new (which TF.js cannot load): its tanh formula on the input', async (t) => {
  const model = functional(16, 16, (x) =>
    on(L.activation({ activation: 'gelu', name: 'act' }), on(L.conv2d({ filters: 4, kernelSize: 3, name: 'conv' }), x)),
  );
  randomize(model, 19, 3);
  const artifacts = await save(model);
  model.dispose();
  const topo = structuredClone(artifacts.modelTopology) as {
    config: { layers: Array<{ name: string; config: Record<string, unknown> }> };
  };
  topo.config.layers.find((l) => l.name === 'act')!.config.activation = 'gelu_new';
  const x = inputs(16, 16, 9);
  const loaded = await tf.loadLayersModel(tf.io.fromMemory(artifacts));
  const want = tf.tidy(() => {
    const conv = tf.model({ inputs: loaded.inputs, outputs: loaded.getLayer('conv').output as ST });
    const y = conv.predict(tf.tensor4d(x.nhwc, [2, 16, 16, 3])) as tf.Tensor;
    const inner = tf.mul(Math.sqrt(2 / Math.PI), tf.add(y, tf.mul(0.044715, tf.pow(y, 3))));
    return tf
      .mul(0.5, tf.mul(y, tf.add(1, tf.tanh(inner))))
      .mean([1, 2])
      .dataSync() as Float32Array;
  });
  loaded.dispose();
  const got = await viaOnnx({ ...artifacts, modelTopology: topo }, 'act', x.nchw, 16, 16);
  t.true(Math.max(...want.map(Math.abs)) > 1e-3);
  t.true(relErr(got.data, want) < 1e-4, `relative error ${relErr(got.data, want)}`);
});

// TF.js has no Subtract layer (Keras does): the reference is its two inputs' features, subtracted
// (pooling is a mean, so it commutes with the subtraction).
test('Subtract (a Keras layer TF.js cannot load): the difference of its inputs', async (t) => {
  const model = functional(16, 16, (x) => {
    const a = on(L.conv2d({ filters: 4, kernelSize: 3, name: 'a' }), x);
    const b = on(L.conv2d({ filters: 4, kernelSize: 3, name: 'b' }), x);
    return on(L.add({ name: 'sub' }), [a, b]);
  });
  randomize(model, 13);
  const artifacts = await save(model);
  model.dispose();
  const topo = structuredClone(artifacts.modelTopology) as {
    config: { layers: Array<{ name: string; class_name: string }> };
  };
  topo.config.layers.find((l) => l.name === 'sub')!.class_name = 'Subtract';
  const x = inputs(16, 16, 8);
  const [a, b] = [await viaTfjs(artifacts, 'a', x.nhwc, 16, 16), await viaTfjs(artifacts, 'b', x.nhwc, 16, 16)];
  const got = await viaOnnx({ ...artifacts, modelTopology: topo }, 'sub', x.nchw, 16, 16);
  const want = a.data.map((v, i) => v - b.data[i]!);
  t.true(Math.max(...want.map(Math.abs)) > 1e-3);
  t.true(relErr(got.data, want) < 1e-4, `relative error ${relErr(got.data, want)}`);
});

// ---------------------------------------------------------------------------------------------
// What the converter refuses.

async function withUnsupportedLayer(): Promise<tf.io.ModelArtifacts> {
  const model = functional(16, 16, (x) => {
    const c = on(L.conv2d({ filters: 4, kernelSize: 3, name: 'conv' }), x);
    const up = on(L.upSampling2d({ size: [2, 2], name: 'up' }), c);
    return on(L.conv2d({ filters: 4, kernelSize: 3, name: 'after' }), up);
  });
  randomize(model, 9);
  const artifacts = await save(model);
  model.dispose();
  return artifacts;
}

test('a layer class the converter does not cover raises UnsupportedGraphError naming it; cutting before it converts', async (t) => {
  const artifacts = await withUnsupportedLayer();
  for (const layer of ['up', 'after']) {
    const err = t.throws(() => convertGraphToOnnx(artifacts, layer, 'test'), { instanceOf: UnsupportedGraphError });
    t.regex(err!.message, /layer "up" of class "UpSampling2D" is not covered by the ONNX converter/);
  }
  await agree(t, artifacts, 'conv', 16, 16, 7);
});

test('a dilated DepthwiseConv2D stays on TF.js, which ignores its dilation (the engines must agree)', async (t) => {
  const model = functional(15, 15, (x) =>
    on(L.depthwiseConv2d({ kernelSize: 3, dilationRate: 2, padding: 'same', name: 'dw' }), x),
  );
  randomize(model, 17);
  const artifacts = await save(model);
  model.dispose();
  const err = t.throws(() => convertGraphToOnnx(artifacts, 'dw', 'test'), { instanceOf: UnsupportedGraphError });
  t.regex(err!.message, /layer "dw" \(DepthwiseConv2D\) has dilation_rate \[2, 2\], which TensorFlow.js ignores/);
});

test('channels_first, a shared layer, a nested model and a multi-input model are refused with the reason', (t) => {
  const topo = (layers: unknown[], inputs = [['image', 0, 0]]) => ({
    format: 'layers-model',
    modelTopology: { class_name: 'Model', config: { name: 'm', layers, input_layers: inputs, output_layers: [] } },
  });
  const input = (name = 'image') => ({
    name,
    class_name: 'InputLayer',
    config: { name, batch_input_shape: [null, 8, 8, 3], dtype: 'float32' },
    inbound_nodes: [],
  });
  const pool = (name: string, config: object, inbound: unknown[]) => ({
    name,
    class_name: 'MaxPooling2D',
    config: { name, pool_size: [2, 2], padding: 'valid', ...config },
    inbound_nodes: inbound,
  });
  const cases: Array<[tf.io.ModelArtifacts, string, RegExp]> = [
    [
      topo([input(), pool('p', { data_format: 'channels_first' }, [[['image', 0, 0, {}]]])]),
      'p',
      /layer "p" \(MaxPooling2D\) uses data format "channels_first"; only channels_last is covered/,
    ],
    [
      topo([input(), pool('p', {}, [[['image', 0, 0, {}]], [['image', 0, 0, {}]]])]),
      'p',
      /layer "p" is applied 2 times \(a shared layer\)/,
    ],
    [
      topo([
        input(),
        {
          name: 'inner',
          class_name: 'Functional',
          config: { name: 'inner', layers: [] },
          inbound_nodes: [[['image', 0, 0, {}]]],
        },
      ]),
      'inner',
      /layer "inner" of class "Functional" is not covered/,
    ],
    [
      topo(
        [input(), input('second'), pool('p', {}, [[['image', 0, 0, {}]]])],
        [
          ['image', 0, 0],
          ['second', 0, 0],
        ],
      ),
      'p',
      /the model has 2 inputs/,
    ],
  ];
  for (const [artifacts, layer, message] of cases) {
    const err = t.throws(() => convertGraphToOnnx(artifacts, layer, 'test'), { instanceOf: UnsupportedGraphError });
    t.regex(err!.message, message);
  }
  // Planning a cut in a model with two inputs is the TF.js engine's ModelError, whatever the engine.
  t.throws(() => planLayersCut(cases[3]![0], 'p', 'two.json'), {
    instanceOf: ModelError,
    message: /model two.json has 2 inputs; feature extraction needs a model with one image input/,
  });
});

// ---------------------------------------------------------------------------------------------
// The engines: layers models run on ONNX Runtime under the TF.js engine's id.

function memoryDeps(files: Record<string, ModelFiles>, over: Partial<EngineDeps> = {}) {
  const logs: Array<{ msg: string; extra?: object }> = [];
  const deps: EngineDeps = {
    readObject: async (url) => {
      const [dir, file] = [url.slice(0, url.lastIndexOf('/')), url.slice(url.lastIndexOf('/') + 1)];
      const m = files[dir];
      if (m && file === 'model.json') return new TextEncoder().encode(m.json);
      if (m && file === 'w.bin') return m.weights;
      throw new Error(`no such test file ${url}`);
    },
    threads: 1,
    backend: 'cpu',
    log: (msg, extra) => logs.push({ msg, extra }),
    ...over,
  };
  return { deps, logs };
}

function filesOf(a: tf.io.ModelArtifacts): ModelFiles {
  return {
    json: JSON.stringify({
      modelTopology: a.modelTopology,
      format: a.format,
      weightsManifest: [{ paths: ['w.bin'], weights: a.weightSpecs }],
    }),
    weights: Buffer.from(a.weightData as ArrayBuffer),
  };
}

test('auto and onnx run a layers model on ONNX Runtime, with the TF.js engine’s id and features', async (t) => {
  const files = {
    '/m/residual': filesOf(await residualModel(31)),
    '/m/old': filesOf(kerasEra(await residualModel(31))),
  };
  const images = Array.from({ length: 3 }, (_, i) =>
    Uint8Array.from({ length: 16 * 16 * 3 }, (_, j) => (i * 71 + j * 37) % 256),
  );
  for (const dir of Object.keys(files)) {
    const spec = { kind: 'tfjs' as const, model: `${dir}/model.json`, node: 'res', inputRange: '-1,1' as const };
    const tfjs = await loadEngine(spec, memoryDeps(files, { engine: 'tfjs' }).deps);
    const auto = await loadEngine(spec, memoryDeps(files).deps);
    const onnx = await loadEngine(spec, memoryDeps(files, { engine: 'onnx' }).deps);
    try {
      t.regex(auto.backend, /^onnxruntime \(CPU/);
      t.regex(onnx.backend, /^onnxruntime \(CPU/);
      t.regex(tfjs.backend, /^tfjs/);
      t.is(auto.id, `${dir}/model.json@res`);
      t.is(auto.id, tfjs.id);
      t.is(onnx.id, tfjs.id);
      t.is(auto.dim, 8);
      const want = await tfjs.embed(images);
      const got = await auto.embed(images);
      t.true(relErr(got, want) < 1e-4, `relative error ${relErr(got, want)}`);
    } finally {
      for (const e of [tfjs, auto, onnx]) e.dispose();
    }
  }
  // An unknown layer fails before any engine is built, with the TF.js engine's message.
  for (const engine of ['auto', 'onnx'] as const) {
    await t.throwsAsync(
      loadEngine({ kind: 'tfjs', model: '/m/residual/model.json', node: 'nope' }, memoryDeps(files, { engine }).deps),
      {
        instanceOf: ModelError,
        message:
          /layer "nope" not found in \/m\/residual\/model.json \(\d+ layers\); deepest layers: .*res, pool, avg, cat/,
      },
    );
  }
});

test('a layer the converter does not cover: auto falls back to TF.js and says why; onnx fails naming it', async (t) => {
  const files = { '/m/up': filesOf(await withUnsupportedLayer()) };
  const spec = { kind: 'tfjs' as const, model: '/m/up/model.json', node: 'after' };
  const { deps, logs } = memoryDeps(files);
  const auto = await loadEngine(spec, deps);
  try {
    t.regex(auto.backend, /^tfjs/);
    t.is(auto.id, '/m/up/model.json@after');
    const fallback = logs.find((l) => l.msg === 'ONNX conversion not possible; using TensorFlow.js');
    t.regex(String((fallback?.extra as { reason?: string } | undefined)?.reason), /UpSampling2D/);
  } finally {
    auto.dispose();
  }
  await t.throwsAsync(loadEngine(spec, memoryDeps(files, { engine: 'onnx' }).deps), {
    instanceOf: ModelError,
    message:
      /\/m\/up\/model.json cannot run on ONNX Runtime: layer "up" of class "UpSampling2D" is not covered.*use DEEPFEAT_ENGINE=tfjs or auto/,
  });
  // Cut before it, the same model runs on ONNX Runtime.
  const conv = await loadEngine({ ...spec, node: 'conv' }, memoryDeps(files).deps);
  t.regex(conv.backend, /^onnxruntime/);
  conv.dispose();
});

// ---------------------------------------------------------------------------------------------
// The real thing: nsfwjs's InceptionV3 (Keras-era, uint8-quantized), on real CIFAR-10 images.

test.serial(
  'InceptionV3 (nsfwjs) cut at mixed7 and at its global pool: ONNX Runtime gives TF.js’s features',
  async (t) => {
    t.timeout(170_000);
    const files = { '/nsfwjs/inception_v3': await inceptionV3Files() };
    const demo = await loadDemoImages({ perClass: 4 });
    const images = await Promise.all(
      demo.map((d) => decodeImage(d.png, { width: INCEPTION_SIZE, height: INCEPTION_SIZE, maxPixels: 1e7 })),
    );
    try {
      for (const [node, dim] of [
        [INCEPTION_MIXED7, 768],
        [INCEPTION_GLOBAL_POOL, 2048],
      ] as const) {
        const spec = {
          kind: 'tfjs' as const,
          model: '/nsfwjs/inception_v3/model.json',
          node,
          inputRange: INCEPTION_RANGE,
        };
        const onnx = await loadEngine(spec, memoryDeps(files, { engine: 'onnx', threads: 2 }).deps);
        const tfjs = await loadEngine(spec, memoryDeps(files, { engine: 'tfjs', backend: 'wasm' }).deps);
        try {
          t.is(onnx.id, tfjs.id);
          t.deepEqual(onnx.input, { width: 299, height: 299 });
          t.is(onnx.dim, dim);
          const want = await tfjs.embed(images);
          const got = await onnx.embed(images);
          let worst = 0;
          for (let r = 0; r < images.length; r++) {
            const a = got.subarray(r * dim, (r + 1) * dim);
            const b = want.subarray(r * dim, (r + 1) * dim);
            let d = 0;
            let n = 0;
            for (let j = 0; j < dim; j++) {
              d += (a[j]! - b[j]!) ** 2;
              n += b[j]! ** 2;
            }
            worst = Math.max(worst, Math.sqrt(d / n));
          }
          t.log(
            `${node}: ${dim}-d, worst per-image relative error ${worst.toExponential(2)} (${onnx.backend} vs ${tfjs.backend})`,
          );
          t.true(n0(want) > 0.5, 'the reference features are not all zero');
          t.true(worst < 1e-4, `features differ by ${worst}`);
        } finally {
          onnx.dispose();
          tfjs.dispose();
        }
      }
    } finally {
      // The other tests' TF.js references run on the CPU backend.
      await tf.setBackend('cpu');
    }
  },
);

/** Fraction of non-zero values. */
function n0(v: Float32Array): number {
  let k = 0;
  for (const x of v) if (x !== 0) k++;
  return k / v.length;
}
