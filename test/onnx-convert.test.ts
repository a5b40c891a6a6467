/**
 * The TF.js graph → ONNX converter, op by op, on small synthetic graph models built in memory with
 * seeded random weights: each is run by TensorFlow.js (CPU backend, the reference) and, converted,
 * by ONNX Runtime, and the pooled features must agree. Covers the ops and forms the converter
 * claims that the builtin MobileNetV2 (test/onnx.test.ts) never uses — odd sizes with SAME
 * padding, dilations, explicit padding, other fused activations, per-channel and scalar constants,
 * pools, Mean, ConcatV2, Pad — and the errors for what it does not cover.
 */
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import type * as Ort from 'onnxruntime-node';
import { loadOrt } from '../services/extractor/engines/onnx.js';
import {
  convertGraphToOnnx,
  ONNX_INPUT,
  ONNX_OUTPUT,
  UnsupportedGraphError,
} from '../services/extractor/engines/onnx/convert.js';
import { mulberry32 } from '../shared/random.js';

// ---------------------------------------------------------------------------------------------
// Building TF.js graph models (the model.json `modelTopology` format) in memory.

type Attr = Record<string, unknown>;
interface TfNode {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, Attr>;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');
const ints = (...v: number[]): Attr => ({ list: { i: v.map(String) } });
const str = (s: string): Attr => ({ s: b64(s) });
const strs = (...v: string[]): Attr => ({ list: { s: v.map(b64) } });
const T = { type: 'DT_FLOAT' };

/** Attributes of a 2-D convolution (Conv2D, depthwise, fused). */
function convAttr(
  o: {
    stride?: number;
    padding?: 'SAME' | 'VALID' | 'EXPLICIT';
    dilation?: number;
    explicit?: number[];
    format?: string;
  } = {},
): Record<string, Attr> {
  const s = o.stride ?? 1;
  const d = o.dilation ?? 1;
  return {
    T,
    strides: ints(1, s, s, 1),
    padding: str(o.padding ?? 'SAME'),
    data_format: str(o.format ?? 'NHWC'),
    dilations: ints(1, d, d, 1),
    explicit_paddings: o.explicit ? ints(...o.explicit) : { list: {} },
    use_cudnn_on_gpu: { b: true },
  };
}

function poolAttr(k: number, s: number, padding: 'SAME' | 'VALID', format = 'NHWC'): Record<string, Attr> {
  return { T, ksize: ints(1, k, k, 1), strides: ints(1, s, s, 1), padding: str(padding), data_format: str(format) };
}

/** A graph under construction: one NHWC float input 'x' [-1, h, w, 3], constants with seeded random values. */
class Graph {
  readonly nodes: TfNode[] = [];
  readonly #specs: tf.io.WeightsManifestEntry[] = [];
  readonly #chunks: Uint8Array[] = [];
  readonly #rand: () => number;
  readonly input = 'x';

  constructor(
    seed: number,
    readonly h = 16,
    readonly w = 16,
  ) {
    this.#rand = mulberry32(seed);
    this.nodes.push({
      name: this.input,
      op: 'Placeholder',
      attr: {
        dtype: T,
        shape: { shape: { dim: [{ size: '-1' }, { size: String(h) }, { size: String(w) }, { size: '3' }] } },
      },
    });
  }

  /** Uniform in [lo, hi). */
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.#rand();
  }

  #const(name: string, shape: number[], data: Float32Array | Int32Array): string {
    const dtype = data instanceof Int32Array ? 'int32' : 'float32';
    const dt = data instanceof Int32Array ? 'DT_INT32' : 'DT_FLOAT';
    if (data.length !== shape.reduce((a, b) => a * b, 1))
      throw new Error(`constant ${name}: ${data.length} values for shape ${shape}`);
    this.nodes.push({
      name,
      op: 'Const',
      attr: {
        value: {
          tensor: { dtype: dt, tensorShape: shape.length ? { dim: shape.map((s) => ({ size: String(s) })) } : {} },
        },
        dtype: { type: dt },
      },
    });
    this.#specs.push({ name, shape, dtype });
    this.#chunks.push(new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)));
    return name;
  }

  /** A float constant of random values in [lo, hi). */
  random(name: string, shape: number[], lo = -1, hi = 1): string {
    const n = shape.reduce((a, b) => a * b, 1);
    return this.#const(
      name,
      shape,
      Float32Array.from({ length: n }, () => this.uniform(lo, hi)),
    );
  }

  floats(name: string, shape: number[], values: number[]): string {
    return this.#const(name, shape, Float32Array.from(values));
  }

  int32(name: string, shape: number[], values: number[]): string {
    return this.#const(name, shape, Int32Array.from(values));
  }

  op(name: string, op: string, input: string[], attr: Record<string, Attr> = { T }): string {
    this.nodes.push({ name, op, input, attr });
    return name;
  }

  /** Conv2D with a random [k, k, cin, cout] filter (values in ±scale). */
  conv(
    name: string,
    from: string,
    cin: number,
    cout: number,
    k = 3,
    o: Parameters<typeof convAttr>[0] = {},
    scale = 1,
  ): string {
    const wgt = this.random(`${name}/filter`, [k, k, cin, cout], -scale, scale);
    return this.op(name, 'Conv2D', [from, wgt], convAttr(o));
  }

  artifacts(): tf.io.ModelArtifacts {
    const total = this.#chunks.reduce((a, c) => a + c.length, 0);
    const data = new Uint8Array(total);
    let at = 0;
    for (const c of this.#chunks) {
      data.set(c, at);
      at += c.length;
    }
    return {
      format: 'graph-model',
      modelTopology: { node: structuredClone(this.nodes), versions: { producer: 1982 } },
      weightSpecs: [...this.#specs],
      weightData: data.buffer,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Running a graph both ways.

let ort: typeof Ort;

test.before(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
  ort = await loadOrt();
});

interface Features {
  data: Float32Array;
  shape: number[];
}

/** Two random NHWC images in [-1, 1), as TF.js takes them and as NCHW for the ONNX model. */
function inputs(g: Graph, seed: number): { nhwc: Float32Array; nchw: Float32Array } {
  const rand = mulberry32(seed);
  const [n, h, w, c] = [2, g.h, g.w, 3];
  const nhwc = Float32Array.from({ length: n * h * w * c }, () => rand() * 2 - 1);
  const nchw = new Float32Array(nhwc.length);
  for (let a = 0; a < n; a++)
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++)
        for (let k = 0; k < c; k++) nchw[((a * c + k) * h + y) * w + x] = nhwc[((a * h + y) * w + x) * c + k]!;
  return { nhwc, nchw };
}

/** TF.js: the node's output, averaged over height and width when it is 4-D (what the engines do). */
async function viaTfjs(artifacts: tf.io.ModelArtifacts, node: string, x: Float32Array, g: Graph): Promise<Features> {
  const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  try {
    return tf.tidy(() => {
      const y = model.execute(tf.tensor4d(x, [2, g.h, g.w, 3]), node) as tf.Tensor;
      const pooled = y.rank === 4 ? tf.mean(y, [1, 2]) : y;
      return { data: pooled.dataSync() as Float32Array, shape: pooled.shape };
    });
  } finally {
    model.dispose();
  }
}

/** The converter, then ONNX Runtime on the CPU. */
async function viaOnnx(artifacts: tf.io.ModelArtifacts, node: string, x: Float32Array, g: Graph): Promise<Features> {
  const { bytes } = convertGraphToOnnx(artifacts, node, 'test');
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'] });
  try {
    const out = await session.run({ [ONNX_INPUT]: new ort.Tensor('float32', x, [2, 3, g.h, g.w]) });
    const y = out[ONNX_OUTPUT]!;
    return { data: y.data as Float32Array, shape: y.dims.map(Number) };
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

interface Case {
  title: string;
  h?: number;
  w?: number;
  /** Builds the graph; returns the node to convert and, when TF.js cannot run that node itself, an equivalent node it runs as the reference. */
  build: (g: Graph) => string | { node: string; reference: string };
}

const cases: Case[] = [];
const add = (c: Case) => cases.push(c);

// --- Conv2D: padding, strides, dilations -----------------------------------------------------

add({ title: 'Conv2D 3×3 VALID', build: (g) => g.conv('conv', g.input, 3, 8, 3, { padding: 'VALID' }) });
add({ title: 'Conv2D 3×3 SAME', build: (g) => g.conv('conv', g.input, 3, 8, 3, { padding: 'SAME' }) });
// SAME with stride 2: TF pads floor(total/2) before and the rest after (ONNX SAME_UPPER). On
// 15×15 a 3×3 kernel pads 1+1, a 4×4 one 1+2 and a 2×2 one 0+1; on 16×16 a 3×3 kernel pads 0+1.
for (const [size, k] of [
  [15, 3],
  [15, 4],
  [15, 2],
  [16, 3],
  [15, 5],
] as const) {
  add({
    title: `Conv2D ${k}×${k} SAME stride 2 on ${size}×${size}`,
    h: size,
    w: size,
    build: (g) => g.conv('conv', g.input, 3, 6, k, { stride: 2 }),
  });
}
add({
  title: 'Conv2D 3×3 VALID stride 2 on 15×15',
  h: 15,
  w: 15,
  build: (g) => g.conv('conv', g.input, 3, 6, 3, { stride: 2, padding: 'VALID' }),
});
add({
  title: 'Conv2D non-square input 15×12 SAME stride 2',
  h: 15,
  w: 12,
  build: (g) => g.conv('conv', g.input, 3, 6, 4, { stride: 2 }),
});
add({ title: 'Conv2D 1×1', build: (g) => g.conv('conv', g.input, 3, 5, 1) });
// SAME pads (k − 1)·d in total: odd (so placed asymmetrically) only for an even kernel and odd dilation.
for (const padding of ['SAME', 'VALID'] as const) {
  for (const [k, d] of [
    [3, 2],
    [4, 2],
    [2, 3],
    [4, 3],
  ] as const) {
    add({
      title: `Conv2D ${k}×${k} dilations ${d} ${padding} on 15×15`,
      h: 15,
      w: 15,
      build: (g) => g.conv('conv', g.input, 3, 6, k, { dilation: d, padding }),
    });
  }
}
// TF.js runs EXPLICIT padding for Conv2D (getPadding reads explicit_paddings): NHWC (before, after) pairs.
add({
  title: 'Conv2D EXPLICIT padding, asymmetric, stride 2',
  h: 15,
  w: 15,
  build: (g) =>
    g.conv('conv', g.input, 3, 6, 3, { stride: 2, padding: 'EXPLICIT', explicit: [0, 0, 1, 2, 2, 0, 0, 0] }),
});
add({
  title: 'Conv2D EXPLICIT padding, stride 1',
  build: (g) => g.conv('conv', g.input, 3, 6, 3, { padding: 'EXPLICIT', explicit: [0, 0, 0, 3, 1, 1, 0, 0] }),
});

// --- _FusedConv2D ----------------------------------------------------------------------------

function fusedConv(
  g: Graph,
  name: string,
  ops: string[],
  extra: Record<string, Attr> = {},
  o: Parameters<typeof convAttr>[0] = {},
  scale = 1,
): string {
  const wgt = g.random(`${name}/filter`, [3, 3, 3, 8], -scale, scale);
  const bias = g.random(`${name}/bias`, [8]);
  return g.op(name, '_FusedConv2D', [g.input, wgt, bias], {
    ...convAttr(o),
    fused_ops: strs(...ops),
    num_args: { i: '1' },
    epsilon: { f: 0 },
    ...extra,
  });
}
add({ title: '_FusedConv2D [BiasAdd]', build: (g) => fusedConv(g, 'fused', ['BiasAdd']) });
add({ title: '_FusedConv2D [BiasAdd, Relu]', build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'Relu']) });
add({
  title: '_FusedConv2D [BiasAdd, Relu6] reaching 6',
  build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'Relu6'], {}, {}, 3),
});
add({
  title: '_FusedConv2D [BiasAdd, LeakyRelu] alpha 0.3',
  build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'LeakyRelu'], { leakyrelu_alpha: { f: 0.3 } }),
});
add({
  title: '_FusedConv2D [BiasAdd, LeakyRelu] default alpha',
  build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'LeakyRelu']),
});
add({ title: '_FusedConv2D [BiasAdd, Elu]', build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'Elu']) });
add({ title: '_FusedConv2D [BiasAdd, Sigmoid]', build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'Sigmoid']) });
add({
  title: '_FusedConv2D [BiasAdd, Relu] SAME stride 2 on 15×15',
  h: 15,
  w: 15,
  build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'Relu'], {}, { stride: 2 }),
});
add({
  title: '_FusedConv2D [BiasAdd, Relu] dilations 2',
  h: 15,
  w: 15,
  build: (g) => fusedConv(g, 'fused', ['BiasAdd', 'Relu'], {}, { dilation: 2 }),
});
// TF.js has no fused tanh activation ("Unknown fused activation tanh"): the reference is the same
// convolution unfused.
add({
  title: '_FusedConv2D [BiasAdd, Tanh] (reference: Conv2D → BiasAdd → Tanh)',
  build: (g) => {
    const node = fusedConv(g, 'fused', ['BiasAdd', 'Tanh']);
    const conv = g.op('ref/conv', 'Conv2D', [g.input, 'fused/filter'], convAttr());
    const biased = g.op('ref/bias', 'BiasAdd', [conv, 'fused/bias'], { T, data_format: str('NHWC') });
    return { node, reference: g.op('ref/tanh', 'Tanh', [biased]) };
  },
});
// TF.js refuses to run _FusedConv2D with FusedBatchNorm ("FusedConv2d and DepthwiseConv2d with
// FusedBatchNorm is not supported"): the reference is Conv2D → FusedBatchNormV3 → Relu6, which
// TF.js runs, with the same constants.
for (const eps of [undefined, 0.01]) {
  add({
    title: `_FusedConv2D [FusedBatchNorm, Relu6] epsilon ${eps ?? 'default'} (reference: Conv2D → FusedBatchNormV3 → Relu6)`,
    build: (g) => {
      const wgt = g.random('fused/filter', [3, 3, 3, 8], -3, 3);
      const bn = ['scale', 'offset', 'mean', 'variance'].map((p) =>
        p === 'variance'
          ? g.random(`fused/${p}`, [8], 0.001, 2)
          : p === 'scale'
            ? g.random(`fused/${p}`, [8], 0.5, 2)
            : g.random(`fused/${p}`, [8], -2, 2),
      );
      const epsAttr: Record<string, Attr> = eps === undefined ? {} : { epsilon: { f: eps } };
      const node = g.op('fused', '_FusedConv2D', [g.input, wgt, ...bn], {
        ...convAttr(),
        fused_ops: strs('FusedBatchNorm', 'Relu6'),
        num_args: { i: '4' },
        ...epsAttr,
      });
      const conv = g.op('ref/conv', 'Conv2D', [g.input, wgt], convAttr());
      const norm = g.op('ref/bn', 'FusedBatchNormV3', [conv, ...bn], {
        T,
        U: T,
        data_format: str('NHWC'),
        is_training: { b: false },
        ...epsAttr,
      });
      return { node, reference: g.op('ref/relu6', 'Relu6', [norm]) };
    },
  });
}

// --- Depthwise ----------------------------------------------------------------------------------

function depthwise(g: Graph, name: string, m: number, o: Parameters<typeof convAttr>[0] = {}, k = 3): string {
  const wgt = g.random(`${name}/filter`, [k, k, 3, m]);
  return g.op(name, 'DepthwiseConv2dNative', [g.input, wgt], convAttr(o));
}
add({ title: 'DepthwiseConv2dNative multiplier 2 SAME', build: (g) => depthwise(g, 'dw', 2) });
add({
  title: 'DepthwiseConv2dNative multiplier 2 SAME stride 2 on 15×15 (4×4)',
  h: 15,
  w: 15,
  build: (g) => depthwise(g, 'dw', 2, { stride: 2 }, 4),
});
add({ title: 'DepthwiseConv2dNative multiplier 3 VALID', build: (g) => depthwise(g, 'dw', 3, { padding: 'VALID' }) });
add({
  title: 'DepthwiseConv2dNative multiplier 1 dilations 2 SAME',
  h: 15,
  w: 15,
  build: (g) => depthwise(g, 'dw', 1, { dilation: 2 }),
});
add({
  title: 'DepthwiseConv2dNative multiplier 2 4×4 dilations 3 SAME',
  h: 15,
  w: 15,
  build: (g) => depthwise(g, 'dw', 2, { dilation: 3 }, 4),
});
add({
  title: 'FusedDepthwiseConv2dNative multiplier 2 [BiasAdd, Relu6]',
  build: (g) => {
    const wgt = g.random('dw/filter', [3, 3, 3, 2], -3, 3);
    const bias = g.random('dw/bias', [6]);
    return g.op('dw', 'FusedDepthwiseConv2dNative', [g.input, wgt, bias], {
      ...convAttr(),
      fused_ops: strs('BiasAdd', 'Relu6'),
      num_args: { i: '1' },
    });
  },
});

// --- BiasAdd and elementwise ops -------------------------------------------------------------

add({
  title: 'BiasAdd standalone',
  build: (g) =>
    g.op('bias', 'BiasAdd', [g.conv('conv', g.input, 3, 8), g.random('b', [8])], { T, data_format: str('NHWC') }),
});

const BINARY = ['Add', 'AddV2', 'Sub', 'Mul', 'RealDiv', 'Maximum', 'Minimum'] as const;
/** A constant divisor away from zero. */
const divisor = (g: Graph) => (g.uniform(0, 1) < 0.5 ? -1 : 1) * g.uniform(0.5, 1.5);
for (const op of BINARY) {
  const C = 6;
  const constValues = (g: Graph, n: number) =>
    Array.from({ length: n }, () => (op === 'RealDiv' ? divisor(g) : g.uniform(-1, 1)));
  add({
    title: `${op} activation, per-channel const [C]`,
    build: (g) => g.op('out', op, [g.conv('conv', g.input, 3, C), g.floats('c', [C], constValues(g, C))]),
  });
  add({
    title: `${op} per-channel const [C], activation (const first)`,
    build: (g) => {
      const conv = g.conv('conv', g.input, 3, C);
      // Dividing by an activation: keep it away from zero.
      const den =
        op === 'RealDiv' ? g.op('den', 'AddV2', [g.op('sig', 'Sigmoid', [conv]), g.floats('half', [], [0.5])]) : conv;
      return g.op('out', op, [g.floats('c', [C], constValues(g, C)), den]);
    },
  });
  add({
    title: `${op} activation, scalar const`,
    build: (g) => g.op('out', op, [g.conv('conv', g.input, 3, C), g.floats('c', [], constValues(g, 1))]),
  });
  add({
    title: `${op} scalar const, activation (const first)`,
    build: (g) => {
      const conv = g.conv('conv', g.input, 3, C);
      const den =
        op === 'RealDiv' ? g.op('den', 'AddV2', [g.op('sig', 'Sigmoid', [conv]), g.floats('half', [], [0.5])]) : conv;
      return g.op('out', op, [g.floats('c', [], constValues(g, 1)), den]);
    },
  });
  add({
    title: `${op} activation + activation`,
    build: (g) => {
      const a = g.conv('a', g.input, 3, C);
      const b = g.conv('b', g.input, 3, C);
      const den =
        op === 'RealDiv' ? g.op('den', 'AddV2', [g.op('sig', 'Sigmoid', [b]), g.floats('half', [], [0.5])]) : b;
      return g.op('out', op, [a, den]);
    },
  });
  add({
    title: `${op} activation, const [1, H, W, C] (varies over space)`,
    build: (g) => {
      const conv = g.conv('conv', g.input, 3, C, 3, { padding: 'VALID' });
      return g.op('out', op, [conv, g.floats('c', [1, 14, 14, C], constValues(g, 14 * 14 * C))]);
    },
  });
}
add({
  title: 'Mul activation, const [1, 1, 1, C]',
  build: (g) => g.op('out', 'Mul', [g.conv('conv', g.input, 3, 6), g.random('c', [1, 1, 1, 6])]),
});
add({
  title: 'Add activation, const [W, C] (broadcast over N and H)',
  build: (g) => g.op('out', 'Add', [g.conv('conv', g.input, 3, 6), g.random('c', [16, 6], -3, 3)]),
});

// --- Activations -------------------------------------------------------------------------------

for (const op of ['Relu', 'Relu6', 'Elu', 'LeakyRelu', 'Sigmoid', 'Tanh']) {
  add({ title: `${op} standalone`, build: (g) => g.op('act', op, [g.conv('conv', g.input, 3, 8, 3, {}, 3)]) });
}
add({
  title: 'LeakyRelu alpha 0.05',
  build: (g) => g.op('act', 'LeakyRelu', [g.conv('conv', g.input, 3, 8)], { T, alpha: { f: 0.05 } }),
});

// --- Pools -------------------------------------------------------------------------------------

for (const op of ['AvgPool', 'MaxPool']) {
  for (const [size, k, s, padding] of [
    [15, 3, 2, 'SAME'],
    [15, 2, 2, 'SAME'],
    [15, 4, 2, 'SAME'],
    [15, 3, 1, 'SAME'],
    [16, 3, 2, 'SAME'],
    [15, 3, 2, 'VALID'],
  ] as const) {
    add({
      title: `${op} ${k}×${k} stride ${s} ${padding} on ${size}×${size}`,
      h: size,
      w: size,
      // After a convolution, so pooled values are not all the input's and padding matters per channel.
      build: (g) => g.op('pool', op, [g.conv('conv', g.input, 3, 4, 1)], poolAttr(k, s, padding)),
    });
  }
}

// --- Mean, Squeeze, Identity ---------------------------------------------------------------------

for (const [axes, keep] of [
  [[1, 2], false],
  [[1, 2], true],
  [[2, 1], false],
  [[-3, -2], true],
  [[3], true],
] as const) {
  add({
    title: `Mean over [${axes.join(', ')}] keep_dims ${keep}`,
    build: (g) =>
      g.op('mean', 'Mean', [g.conv('conv', g.input, 3, 8), g.int32('axes', [axes.length], [...axes])], {
        T,
        Tidx: { type: 'DT_INT32' },
        keep_dims: { b: keep },
      }),
  });
}
add({
  title: 'Mean keep_dims false, then Sigmoid and Mul by a per-channel const on [N, C]',
  build: (g) => {
    const mean = g.op('mean', 'Mean', [g.conv('conv', g.input, 3, 8, 3, {}, 3), g.int32('axes', [2], [1, 2])], {
      T,
      keep_dims: { b: false },
    });
    return g.op('out', 'Mul', [g.op('sig', 'Sigmoid', [mean]), g.random('c', [8])]);
  },
});
add({
  title: 'Squeeze [1, 2] after Mean keep_dims',
  build: (g) => {
    const mean = g.op('mean', 'Mean', [g.conv('conv', g.input, 3, 8), g.int32('axes', [2], [1, 2])], {
      T,
      keep_dims: { b: true },
    });
    return g.op('squeeze', 'Squeeze', [mean], { T, squeeze_dims: ints(1, 2) });
  },
});
add({
  title: 'Squeeze [1, 2] after a VALID AvgPool to 1×1 (the MobileNet head), then Identity and Relu',
  build: (g) => {
    const pool = g.op('pool', 'AvgPool', [g.conv('conv', g.input, 3, 8)], poolAttr(16, 1, 'VALID'));
    const sq = g.op('squeeze', 'Squeeze', [pool], { T, squeeze_dims: ints(1, 2) });
    return g.op('relu', 'Relu', [g.op('id', 'Identity', [sq])]);
  },
});

// --- ConcatV2, Pad -------------------------------------------------------------------------------

for (const axis of [-1, 3]) {
  add({
    title: `ConcatV2 on channels (axis const ${axis}), 3 inputs of different widths`,
    build: (g) => {
      const parts = [
        g.conv('a', g.input, 3, 4),
        g.conv('b', g.input, 3, 2, 1),
        g.op('c', 'Relu', [g.conv('c/conv', g.input, 3, 5)]),
      ];
      return g.op('concat', 'ConcatV2', [...parts, g.int32('axis', [], [axis])], {
        T,
        N: { i: '3' },
        Tidx: { type: 'DT_INT32' },
      });
    },
  });
}
add({
  title: 'ConcatV2 then a conv over the concatenated channels',
  build: (g) => {
    const cat = g.op(
      'concat',
      'ConcatV2',
      [g.conv('a', g.input, 3, 4), g.conv('b', g.input, 3, 2), g.int32('axis', [], [3])],
      { T, N: { i: '2' } },
    );
    return g.conv('after', cat, 6, 5);
  },
});
add({
  title: 'Pad (paddings const [4, 2], asymmetric) then VALID conv',
  build: (g) => {
    const pad = g.op('pad', 'Pad', [g.input, g.int32('paddings', [4, 2], [0, 0, 1, 2, 3, 0, 0, 0])], {
      T,
      Tpaddings: { type: 'DT_INT32' },
    });
    return g.conv('conv', pad, 3, 6, 3, { padding: 'VALID', stride: 2 });
  },
});
add({
  title: 'Pad on channels too, then VALID conv over 5 channels',
  build: (g) => {
    const pad = g.op('pad', 'Pad', [g.input, g.int32('paddings', [4, 2], [0, 0, 1, 1, 1, 1, 1, 1])]);
    return g.conv('conv', pad, 5, 4, 3, { padding: 'VALID' });
  },
});
add({
  title: 'PadV2 with constant value 0.7 then VALID conv',
  build: (g) => {
    const pad = g.op('pad', 'PadV2', [
      g.input,
      g.int32('paddings', [4, 2], [0, 0, 2, 1, 0, 3, 0, 0]),
      g.floats('value', [], [0.7]),
    ]);
    return g.conv('conv', pad, 3, 6, 3, { padding: 'VALID' });
  },
});

// --- A small backbone, many ops in a row -----------------------------------------------------------

add({
  title: 'a small residual backbone (fused conv, depthwise, BN-folded, residual add, pool, concat)',
  h: 15,
  w: 15,
  build: (g) => {
    const stem = fusedConv(g, 'stem', ['BiasAdd', 'Relu6'], {}, { stride: 2 }, 2);
    const dw = g.op(
      'dw',
      'FusedDepthwiseConv2dNative',
      [stem, g.random('dw/filter', [3, 3, 8, 1]), g.random('dw/bias', [8])],
      {
        ...convAttr(),
        fused_ops: strs('BiasAdd', 'Relu'),
        num_args: { i: '1' },
      },
    );
    const proj = g.conv('proj', dw, 8, 8, 1);
    const res = g.op('res', 'AddV2', [proj, stem]);
    const pool = g.op('pool', 'MaxPool', [res], poolAttr(3, 2, 'SAME'));
    const cat = g.op(
      'cat',
      'ConcatV2',
      [pool, g.op('avg', 'AvgPool', [res], poolAttr(2, 2, 'SAME')), g.int32('axis', [], [-1])],
      { T, N: { i: '2' } },
    );
    return g.op('out', 'Elu', [g.op('scaled', 'Mul', [cat, g.random('scale', [16])])]);
  },
});

// --- Graph shapes that stress naming and broadcasting ---------------------------------------------

add({
  title: 'squeeze-and-excitation gate: Mean keep_dims → 1×1 convs → Sigmoid → Mul with the activation',
  build: (g) => {
    const x = g.op('x/relu', 'Relu', [g.conv('x/conv', g.input, 3, 8)]);
    const squeezed = g.op('se/mean', 'Mean', [x, g.int32('se/axes', [2], [1, 2])], { T, keep_dims: { b: true } });
    const reduce = g.op('se/relu', 'Relu', [g.conv('se/reduce', squeezed, 8, 4, 1, { padding: 'VALID' })]);
    const gate = g.op('se/sigmoid', 'Sigmoid', [g.conv('se/expand', reduce, 4, 8, 1, { padding: 'VALID' })]);
    return g.op('se/mul', 'Mul', [x, gate]);
  },
});
// The converter names a fused node's pre-activation output `<node>/conv`; a TF node of that name
// must not clash with it.
add({
  title: "a TF node named like a fused conv's intermediate output (<node>/conv)",
  build: (g) => {
    const f = fusedConv(g, 'f', ['BiasAdd', 'Relu']);
    return g.conv('f/conv', f, 8, 4);
  },
});
// Nor may TF nodes named like the ONNX graph's input and output.
add({
  title: 'TF nodes named "features" and "input_nchw"',
  build: (g) => {
    const a = g.op('input_nchw', 'Relu', [g.conv('features', g.input, 3, 6)]);
    return g.op('features/out', 'Identity', [a]);
  },
});

let seed = 1;
for (const c of cases) {
  const caseSeed = seed++;
  test(c.title, async (t) => {
    const g = new Graph(caseSeed * 7919, c.h ?? 16, c.w ?? 16);
    const built = c.build(g);
    const { node, reference } = typeof built === 'string' ? { node: built, reference: built } : built;
    const artifacts = g.artifacts();
    const x = inputs(g, caseSeed);
    const want = await viaTfjs(artifacts, reference, x.nhwc, g);
    const got = await viaOnnx(artifacts, node, x.nchw, g);
    t.deepEqual(got.shape, want.shape);
    t.true(want.data.every(Number.isFinite));
    // A reference of (near) zeros would make any converter look right.
    t.true(Math.max(...want.data.map(Math.abs)) > 1e-3, 'reference output is not all zero');
    const err = relErr(got.data, want.data);
    t.true(err < 1e-4, `max relative error ${err.toExponential(2)}`);
  });
}

// ---------------------------------------------------------------------------------------------
// What the converter must refuse, naming the reason.

for (const op of ['Softplus', 'ResizeBilinear']) {
  test(`an unsupported op (${op}) raises UnsupportedGraphError naming it`, (t) => {
    const g = new Graph(99);
    const conv = g.conv('conv', g.input, 3, 4);
    const node =
      op === 'ResizeBilinear'
        ? g.op('extra', op, [conv, g.int32('size', [2], [8, 8])], {
            T,
            align_corners: { b: false },
            half_pixel_centers: { b: true },
          })
        : g.op('extra', op, [conv]);
    const err = t.throws(() => convertGraphToOnnx(g.artifacts(), node, 'test'), { instanceOf: UnsupportedGraphError });
    t.regex(err!.message, new RegExp(`op ${op} \\(node extra\\) is not covered`));
    // Cutting before it still converts.
    t.true(convertGraphToOnnx(g.artifacts(), conv, 'test').bytes.length > 0);
  });
}

for (const op of ['Conv2D', '_FusedConv2D', 'DepthwiseConv2dNative', 'AvgPool', 'MaxPool']) {
  test(`${op} with data_format NCHW is rejected`, (t) => {
    const g = new Graph(5);
    let node: string;
    if (op === 'AvgPool' || op === 'MaxPool') node = g.op('n', op, [g.input], poolAttr(2, 2, 'VALID', 'NCHW'));
    else if (op === 'DepthwiseConv2dNative')
      node = g.op('n', op, [g.input, g.random('w', [3, 3, 3, 1])], convAttr({ format: 'NCHW' }));
    else if (op === '_FusedConv2D') {
      node = g.op('n', op, [g.input, g.random('w', [3, 3, 3, 4]), g.random('b', [4])], {
        ...convAttr({ format: 'NCHW' }),
        fused_ops: strs('BiasAdd'),
        num_args: { i: '1' },
      });
    } else node = g.conv('n', g.input, 3, 4, 3, { format: 'NCHW' });
    const err = t.throws(() => convertGraphToOnnx(g.artifacts(), node, 'test'), { instanceOf: UnsupportedGraphError });
    t.regex(err!.message, new RegExp(`${op} node n uses data format NCHW; only NHWC is covered`));
  });
}

test('a SAME conv with both dilations and strides above 1 is rejected (its pads would depend on the input size)', (t) => {
  const g = new Graph(8, 15, 15);
  const node = g.conv('n', g.input, 3, 4, 3, { stride: 2, dilation: 2 });
  const err = t.throws(() => convertGraphToOnnx(g.artifacts(), node, 'test'), { instanceOf: UnsupportedGraphError });
  t.regex(err!.message, /Conv2D node n has both dilations and strides above 1/);
});

test('BiasAdd with data_format NCHW is rejected', (t) => {
  const g = new Graph(6);
  const node = g.op('n', 'BiasAdd', [g.conv('conv', g.input, 3, 4), g.random('b', [4])], {
    T,
    data_format: str('NCHW'),
  });
  const err = t.throws(() => convertGraphToOnnx(g.artifacts(), node, 'test'), { instanceOf: UnsupportedGraphError });
  t.regex(err!.message, /BiasAdd node n uses data format NCHW/);
});

test('a fused op the converter does not cover is named', (t) => {
  const g = new Graph(7);
  const node = g.op(
    'n',
    '_FusedConv2D',
    [g.input, g.random('w', [3, 3, 3, 4]), g.random('b', [4]), g.random('a', [4])],
    {
      ...convAttr(),
      fused_ops: strs('BiasAdd', 'Prelu'),
      num_args: { i: '2' },
    },
  );
  const err = t.throws(() => convertGraphToOnnx(g.artifacts(), node, 'test'), { instanceOf: UnsupportedGraphError });
  t.regex(err!.message, /_FusedConv2D node n fuses Prelu/);
});
