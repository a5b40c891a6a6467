/**
 * TensorFlow.js layers model (a Keras topology: Sequential, or a functional Model) → ONNX, cut at
 * one layer and pooled exactly as the graph converter (convert.ts) pools a graph node, so ONNX
 * Runtime runs layers backbones too and they can be published as classifier.onnx.
 *
 * The topology and weights are read by keras-model.ts as TensorFlow.js reads them (every model.json
 * form TF.js loads; quantized weights dequantised by TF.js's own decoder).
 *
 * Activations stay NCHW from the input on (the engine feeds NCHW float32, as for graph models);
 * Keras is channels_last, so channel axes, per-channel constants and filters are rewritten, and
 * Flatten/Reshape transpose back to NHWC first so that a Dense layer after them sees Keras's order.
 *
 * Covered layers: InputLayer; Conv2D, DepthwiseConv2D, SeparableConv2D (bias, activation, padding
 * same/valid, strides, dilations); Dense (on [N, D], or per pixel on an image as a 1×1 conv);
 * BatchNormalization (folded into the convolution or Dense layer before it when that layer's only
 * use is this normalisation, else a per-channel Mul and Add); Activation, ReLU (max_value),
 * LeakyReLU, PReLU, ELU, Softmax; Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate;
 * MaxPooling2D, AveragePooling2D ('same' averages over real pixels only, as TF does),
 * GlobalAveragePooling2D, GlobalMaxPooling2D; ZeroPadding2D, Cropping2D; Flatten; Reshape to
 * [1, 1, C] (squeeze-and-excite gates) or to one axis; Rescaling; Dropout and the other layers that
 * are the identity at inference. Activations: linear, relu, relu6, elu, selu, sigmoid,
 * hard_sigmoid (TF.js's 0.2x + 0.5), tanh, softplus, softsign, softmax, swish/silu, mish, gelu,
 * gelu_new. Anything else — another layer class, channels_first, a layer applied twice, a model
 * nested as a layer, a dilated DepthwiseConv2D (TF.js ignores its dilation, and the two engines
 * must agree) — raises UnsupportedGraphError naming it, and the engine falls back to
 * TensorFlow.js. test/onnx-layers.test.ts checks each against TensorFlow.js.
 */
import type * as tf from '@tensorflow/tfjs';
import { ModelError } from '../../../../shared/errors.js';
import { capText, quote } from '../../../../shared/text.js';
import { inputSide } from '../graph-cut.js';
import { type GraphBuilder, UnsupportedGraphError, int64, padAttributes, tfFilterToOnnx } from './convert.js';
import {
  type KerasLayer,
  type Weight,
  Weights,
  cfg,
  dependencies,
  describe,
  inputShape,
  isRecord,
  readKerasModel,
} from './keras-model.js';
import type { AttributeValue } from './proto.js';

/** An ONNX value: rank 4 is an image activation, NCHW; rank 2 is [N, D]. */
interface Value {
  name: string;
  rank: number;
}

/** y ↦ k·y + c per output channel: a batch normalisation folded into the layer before it. */
interface Affine {
  k: Float64Array;
  c: Float64Array;
}

/** Keras (NHWC) axis of a rank-4 activation → its NCHW axis. */
const NHWC_TO_NCHW = [0, 2, 3, 1];

/** Layers that compute nothing at inference. */
const IDENTITY_LAYERS = new Set([
  'Dropout',
  'SpatialDropout1D',
  'SpatialDropout2D',
  'GaussianNoise',
  'GaussianDropout',
  'AlphaDropout',
  'ActivityRegularization',
]);

/** Layers whose output is linear in their input per output channel, so a following BatchNormalization folds in. */
const FOLDABLE = new Set(['Conv2D', 'DepthwiseConv2D', 'SeparableConv2D', 'Dense']);

/**
 * Where a layers model is cut, from its topology alone: the layer (an exact name, as TF.js's
 * getLayer takes it), the engine id — `${modelName}@${layer}`, as the TF.js engine names it
 * (tfjs.ts cutLayers), so runs and published models compare across engines — and the square
 * input side.
 * @throws ModelError when the layer does not exist or the input is unusable (the same messages
 *   as the TF.js engine); UnsupportedGraphError when the topology is not one this module reads.
 */
export function planLayersCut(
  artifacts: tf.io.ModelArtifacts,
  layer: string,
  modelName: string,
  inputSize?: number,
): { layer: string; id: string; size: number } {
  const model = readKerasModel(artifacts);
  if (model.inputs.length !== 1) {
    throw new ModelError(
      `model ${modelName} has ${model.inputs.length} inputs; feature extraction needs a model with one image input`,
    );
  }
  const names = model.layers.filter((l) => !l.implicit).map((l) => l.name);
  if (!names.includes(layer)) {
    throw new ModelError(
      `layer "${layer}" not found in ${modelName} (${names.length} layers); deepest layers: ${names.slice(-15).join(', ')}`,
    );
  }
  const size = inputSide(inputShape(model.inputs[0]!), inputSize, modelName);
  return { layer, id: `${modelName}@${layer}`, size };
}

/**
 * Adds the layers model's layers up to `layer` to `b`, reading the image from `io.input` (float32
 * NCHW, already in the model's pixel range) and writing the pooled features [N, D] to `io.output`:
 * the layer's output averaged over H and W when it is an image activation, as is when [N, D]. The
 * contract of convert.ts emitBackbone, which hands layers models here.
 * @throws UnsupportedGraphError when the model uses a layer or setting this converter does not cover.
 */
export function emitLayersBackbone(
  b: GraphBuilder,
  artifacts: tf.io.ModelArtifacts,
  layer: string,
  io: { input: string; output: string },
): { nodes: number } {
  const model = readKerasModel(artifacts);
  if (model.inputs.length !== 1) throw new UnsupportedGraphError(`the model has ${model.inputs.length} inputs`);
  const target = model.byName.get(layer);
  if (!target || target.implicit) throw new UnsupportedGraphError(`layer ${quote(layer)} is not in the model`);
  const order = dependencies(model, target);
  const weights = new Weights(artifacts, new Set(order.map((l) => l.name)));

  const consumers = new Map<string, KerasLayer[]>();
  for (const l of order) for (const i of l.inputs) consumers.set(i, [...(consumers.get(i) ?? []), l]);
  const values = new Map<string, Value>();
  /** BatchNormalization layers already applied by the layer before them. */
  const folded = new Set<string>();

  for (const l of order) {
    if (folded.has(l.name)) continue;
    const what = describe(l);
    const input = (i: number): Value => {
      const v = values.get(l.inputs[i] ?? '');
      if (!v) throw new UnsupportedGraphError(`${what} lacks input ${i}`);
      return v;
    };
    const set = (rank: number, name = b.fresh(l.name)) => {
      values.set(l.name, { name, rank });
      return name;
    };
    if (l.inputs.length === 0 && l.className !== 'InputLayer') throw new UnsupportedGraphError(`${what} has no input`);

    // A linear layer whose only use is a BatchNormalization takes the normalisation into its weights.
    const next = consumers.get(l.name);
    const bn =
      FOLDABLE.has(l.className) &&
      l !== target &&
      activationName(l) === 'linear' &&
      next?.length === 1 &&
      next[0]!.className === 'BatchNormalization' &&
      next[0]!.inputs.length === 1
        ? next[0]!
        : undefined;
    if (bn) {
      const x = input(0);
      const rank = l.className === 'Dense' ? x.rank : 4;
      const fold = batchNormAffine(bn, weights, rank);
      emitLinear(b, l, x, set(rank, b.fresh(bn.name)), weights, fold);
      values.set(bn.name, values.get(l.name)!);
      folded.add(bn.name);
      continue;
    }

    switch (l.className) {
      case 'InputLayer': {
        const dtype = l.config.dtype;
        if (dtype !== undefined && dtype !== null && dtype !== 'float32') {
          throw new UnsupportedGraphError(`input ${quote(l.name)} has dtype ${quote(String(dtype))}, not float32`);
        }
        b.node('Identity', [io.input], [set(4)]);
        break;
      }
      case 'Conv2D':
      case 'DepthwiseConv2D':
      case 'SeparableConv2D':
        emitLinear(b, l, input(0), set(4), weights);
        break;
      case 'Dense': {
        const x = input(0);
        emitLinear(b, l, x, set(x.rank), weights);
        break;
      }
      case 'BatchNormalization': {
        const x = input(0);
        const { k, c } = batchNormAffine(l, weights, x.rank);
        const out = set(x.rank);
        const scaled = b.fresh(`${out}/scaled`);
        b.node('Mul', [x.name, b.constant(`${out}/k`, perChannel(k, x.rank))], [scaled]);
        b.node('Add', [scaled, b.constant(`${out}/c`, perChannel(c, x.rank))], [out]);
        break;
      }
      case 'Activation': {
        const x = input(0);
        emitActivation(b, activationName(l), x, set(x.rank), what);
        break;
      }
      case 'ReLU': {
        const x = input(0);
        for (const key of ['negative_slope', 'threshold']) {
          const v = cfg(l, key);
          if (v !== undefined && v !== null && v !== 0) {
            throw new UnsupportedGraphError(`${what} has ${key} ${String(v)}; only max_value is covered`);
          }
        }
        const max = cfg(l, 'max_value');
        if (max === undefined || max === null) b.node('Relu', [x.name], [set(x.rank)]);
        else emitClip(b, x.name, set(x.rank), 0, num(max, `${what} max_value`));
        break;
      }
      case 'LeakyReLU': {
        const x = input(0);
        const alpha = cfg(l, 'alpha') ?? cfg(l, 'negative_slope') ?? 0.3;
        b.node('LeakyRelu', [x.name], [set(x.rank)], { alpha: { kind: 'float', value: num(alpha, `${what} alpha`) } });
        break;
      }
      case 'ELU': {
        const x = input(0);
        const alpha = num(cfg(l, 'alpha') ?? 1, `${what} alpha`);
        b.node('Elu', [x.name], [set(x.rank)], { alpha: { kind: 'float', value: alpha } });
        break;
      }
      case 'PReLU': {
        const x = input(0);
        const out = set(x.rank);
        b.node(
          'PRelu',
          [x.name, b.constant(`${out}/alpha`, preluSlope(weights.need(l, 'alpha'), x.rank, what))],
          [out],
        );
        break;
      }
      case 'Softmax': {
        const x = input(0);
        const axis = cfg(l, 'axis') ?? -1;
        b.node('Softmax', [x.name], [set(x.rank)], { axis: { kind: 'int', value: kerasAxis(axis, x.rank, what) } });
        break;
      }
      case 'Add':
      case 'Subtract':
      case 'Multiply':
      case 'Average':
      case 'Maximum':
      case 'Minimum': {
        const xs = l.inputs.map((_, i) => input(i));
        const rank = sameRank(xs, what);
        if (xs.length < 2) throw new UnsupportedGraphError(`${what} merges ${xs.length} input`);
        const out = set(rank);
        const names = xs.map((x) => x.name);
        if (l.className === 'Subtract') {
          if (xs.length !== 2) throw new UnsupportedGraphError(`${what} subtracts ${xs.length} inputs`);
          b.node('Sub', names, [out]);
        } else if (l.className === 'Multiply') {
          // Mul is binary: a chain, in input order.
          let acc = names[0]!;
          for (const [i, n] of names.slice(1).entries()) {
            const to = i === names.length - 2 ? out : b.fresh(`${out}/product`);
            b.node('Mul', [acc, n], [to]);
            acc = to;
          }
        } else {
          const op = { Add: 'Sum', Average: 'Mean', Maximum: 'Max', Minimum: 'Min' }[l.className]!;
          b.node(op, names, [out]);
        }
        break;
      }
      case 'Concatenate': {
        const xs = l.inputs.map((_, i) => input(i));
        const rank = sameRank(xs, what);
        const axis = kerasAxis(cfg(l, 'axis') ?? -1, rank, what);
        b.node(
          'Concat',
          xs.map((x) => x.name),
          [set(rank)],
          { axis: { kind: 'int', value: axis } },
        );
        break;
      }
      case 'MaxPooling2D':
      case 'AveragePooling2D': {
        const x = image(input(0), what);
        channelsLast(l, what);
        const kernel = pair(cfg(l, 'pool_size') ?? 2, `${what} pool_size`);
        const strideCfg = cfg(l, 'strides');
        const strides = strideCfg === undefined || strideCfg === null ? kernel : pair(strideCfg, `${what} strides`);
        const avg = l.className === 'AveragePooling2D';
        b.node(avg ? 'AveragePool' : 'MaxPool', [x], [set(4)], {
          kernel_shape: { kind: 'ints', value: kernel },
          strides: { kind: 'ints', value: strides },
          ...padAttributes(paddingOf(l), what),
          // Keras's 'same' average pooling divides by the number of real (unpadded) pixels.
          ...(avg ? { count_include_pad: { kind: 'int', value: 0 } as AttributeValue } : {}),
        });
        break;
      }
      case 'GlobalAveragePooling2D':
      case 'GlobalMaxPooling2D': {
        const x = image(input(0), what);
        channelsLast(l, what);
        const keep = cfg(l, 'keepdims') === true;
        b.node(l.className === 'GlobalAveragePooling2D' ? 'ReduceMean' : 'ReduceMax', [x], [set(keep ? 4 : 2)], {
          axes: { kind: 'ints', value: [2, 3] },
          keepdims: { kind: 'int', value: keep ? 1 : 0 },
        });
        break;
      }
      case 'ZeroPadding2D': {
        const x = image(input(0), what);
        channelsLast(l, what);
        const [[top, bottom], [left, right]] = pairsOf(cfg(l, 'padding') ?? 1, `${what} padding`);
        const out = set(4);
        b.node(
          'Pad',
          [
            x,
            b.constant(`${out}/pads`, int64([0, 0, top, left, 0, 0, bottom, right]), [8]),
            b.constant(`${out}/value`, new Float32Array([0]), []),
          ],
          [out],
        );
        break;
      }
      case 'Cropping2D': {
        const x = image(input(0), what);
        channelsLast(l, what);
        const [[top, bottom], [left, right]] = pairsOf(cfg(l, 'cropping') ?? 0, `${what} cropping`);
        const out = set(4);
        // Negative ends count from the end; an end of 0 would mean "before the start", so a side
        // not cropped ends past the end instead.
        const end = (n: number) => (n === 0 ? Number.MAX_SAFE_INTEGER : -n);
        b.node(
          'Slice',
          [
            x,
            b.constant(`${out}/starts`, int64([top, left]), [2]),
            b.constant(`${out}/ends`, int64([end(bottom), end(right)]), [2]),
            b.constant(`${out}/axes`, int64([2, 3]), [2]),
          ],
          [out],
        );
        break;
      }
      case 'Flatten': {
        const x = input(0);
        channelsLast(l, what);
        emitFlatten(b, x, set(2));
        break;
      }
      case 'Reshape': {
        const x = input(0);
        const target = cfg(l, 'target_shape');
        if (!Array.isArray(target)) throw new UnsupportedGraphError(`${what} has no target_shape`);
        if (x.rank === 2 && target.length === 3 && target[0] === 1 && target[1] === 1) {
          // [N, C] → [N, 1, 1, C] (NHWC), i.e. [N, C, 1, 1] here: a squeeze-and-excite gate.
          const out = set(4);
          b.node('Unsqueeze', [x.name, b.constant(`${out}/axes`, int64([2, 3]), [2])], [out]);
        } else if (target.length === 1) {
          emitFlatten(b, x, set(2));
        } else {
          throw new UnsupportedGraphError(
            `${what} reshapes a rank-${x.rank} tensor to [${target.map(String).join(', ')}]; ` +
              'only [1, 1, C] from [N, C] and flattening to one axis are covered',
          );
        }
        break;
      }
      case 'Rescaling': {
        const x = input(0);
        const out = set(x.rank);
        const scaled = b.fresh(`${out}/scaled`);
        const vec = (v: unknown, key: string) =>
          Array.isArray(v)
            ? perChannel(Float64Array.from(v.map((e) => num(e, `${what} ${key}`))), x.rank)
            : { data: new Float32Array([num(v, `${what} ${key}`)]), shape: [] };
        b.node('Mul', [x.name, b.constant(`${out}/scale`, vec(cfg(l, 'scale') ?? 1, 'scale'))], [scaled]);
        b.node('Add', [scaled, b.constant(`${out}/offset`, vec(cfg(l, 'offset') ?? 0, 'offset'))], [out]);
        break;
      }
      default: {
        if (!IDENTITY_LAYERS.has(l.className)) {
          throw new UnsupportedGraphError(
            `layer ${quote(l.name)} of class ${quote(l.className)} is not covered by the ONNX converter`,
          );
        }
        values.set(l.name, input(0));
      }
    }
  }

  const last = values.get(target.name)!;
  if (last.rank === 4) {
    b.node('ReduceMean', [last.name], [io.output], {
      axes: { kind: 'ints', value: [2, 3] },
      keepdims: { kind: 'int', value: 0 },
    });
  } else if (last.rank === 2) {
    b.node('Identity', [last.name], [io.output]);
  } else {
    throw new UnsupportedGraphError(
      `layer ${quote(layer)} gives a rank-${last.rank} tensor; features need a 4-D activation or [N, D]`,
    );
  }
  return { nodes: order.length };
}

// ---------------------------------------------------------------------------------------------
// Layers.

/**
 * Conv2D, DepthwiseConv2D, SeparableConv2D or Dense, with its bias, then its activation; `fold`
 * (a BatchNormalization after it) scaled into the weights and added to the bias.
 */
function emitLinear(b: GraphBuilder, l: KerasLayer, x: Value, out: string, weights: Weights, fold?: Affine): void {
  const what = describe(l);
  const act = activationName(l);
  const useBias = cfg(l, 'use_bias') !== false;
  const pre = act === 'linear' ? out : b.fresh(`${out}/linear`);

  if (l.className === 'Dense' && x.rank === 2) {
    const kernel = weights.need(l, 'kernel', 2);
    const [din, units] = kernel.shape as [number, number];
    const w = Float32Array.from(kernel.data);
    const bias = biasOf(l, weights, useBias, units, fold);
    if (fold) for (let i = 0; i < din; i++) for (let o = 0; o < units; o++) w[i * units + o]! *= fold.k[o]!;
    const product = b.fresh(`${out}/matmul`);
    b.node('MatMul', [x.name, b.constant(`${out}/W`, { data: w, shape: [din, units] })], [product]);
    b.node('Add', [product, b.constant(`${out}/B`, bias, [units])], [pre]);
  } else {
    if (x.rank !== 4) throw new UnsupportedGraphError(`${what} takes a rank-${x.rank} tensor; expected an image`);
    channelsLast(l, what);
    let input = x.name;
    let w: Weight;
    let attrs: Record<string, AttributeValue>;
    if (l.className === 'Dense') {
      // Dense on an image acts on each pixel's channels: a 1×1 convolution.
      const kernel = weights.need(l, 'kernel', 2);
      w = tfFilterToOnnx({ data: kernel.data, shape: [1, 1, ...kernel.shape] }, false);
      attrs = {};
    } else {
      const kernelSize = pair(cfg(l, 'kernel_size'), `${what} kernel_size`);
      const strides = pair(cfg(l, 'strides') ?? 1, `${what} strides`);
      const dilations = pair(cfg(l, 'dilation_rate') ?? 1, `${what} dilation_rate`);
      const groups = cfg(l, 'groups');
      if (groups !== undefined && groups !== null && groups !== 1) {
        throw new UnsupportedGraphError(`${what} has groups ${String(groups)}; only 1 is covered`);
      }
      const spatial = {
        kernel_shape: { kind: 'ints', value: kernelSize },
        strides: { kind: 'ints', value: strides },
        dilations: { kind: 'ints', value: dilations },
        ...padAttributes(paddingOf(l), what, { kernel: kernelSize, strides, dilations }),
      } satisfies Record<string, AttributeValue>;
      if (l.className === 'Conv2D') {
        w = tfFilterToOnnx(weights.need(l, 'kernel', 4), false);
        attrs = spatial;
      } else {
        if (l.className === 'DepthwiseConv2D' && dilations.some((d) => d !== 1)) {
          // TF.js's DepthwiseConv2D ignores dilation_rate (tfjs-layers 4.22: "TODO: Add support for
          // dilation"): converted with it, the features would differ from the TF.js engine's under
          // the same engine id, so this model stays on TF.js.
          throw new UnsupportedGraphError(
            `${what} has dilation_rate [${dilations.join(', ')}], which TensorFlow.js ignores on DepthwiseConv2D`,
          );
        }
        const dw = tfFilterToOnnx(weights.need(l, 'depthwise_kernel', 4), true);
        const cin = weights.need(l, 'depthwise_kernel', 4).shape[2]!;
        if (l.className === 'DepthwiseConv2D') {
          w = dw;
          attrs = { ...spatial, group: { kind: 'int', value: cin } };
        } else {
          // SeparableConv2D: the depthwise convolution, then a 1×1 pointwise one that carries the bias.
          input = b.fresh(`${out}/depthwise`);
          b.node('Conv', [x.name, b.constant(`${out}/depthwise/W`, dw)], [input], {
            ...spatial,
            group: { kind: 'int', value: cin },
          });
          w = tfFilterToOnnx(weights.need(l, 'pointwise_kernel', 4), false);
          attrs = {};
        }
      }
    }
    const cout = w.shape[0]!;
    const bias = biasOf(l, weights, useBias, cout, fold);
    if (fold) {
      const per = w.data.length / cout;
      for (let o = 0; o < cout; o++) for (let j = 0; j < per; j++) w.data[o * per + j]! *= fold.k[o]!;
    }
    const inputs = [input, b.constant(`${out}/W`, w)];
    if (useBias || fold) inputs.push(b.constant(`${out}/B`, bias, [cout]));
    const [kh, kw] = w.shape.slice(2) as [number, number];
    b.node('Conv', inputs, [pre], { kernel_shape: { kind: 'ints', value: [kh, kw] }, ...attrs });
  }
  if (act !== 'linear') emitActivation(b, act, { name: pre, rank: x.rank === 2 ? 2 : 4 }, out, what);
}

/** The layer's bias (zeros without one), with `fold` applied: k·bias + c. */
function biasOf(l: KerasLayer, weights: Weights, useBias: boolean, n: number, fold?: Affine): Float32Array {
  const bias = new Float32Array(n);
  if (useBias) {
    const w = weights.need(l, 'bias', 1);
    if (w.data.length !== n) {
      throw new UnsupportedGraphError(`${describe(l)}: bias has ${w.data.length} values for ${n} channels`);
    }
    bias.set(w.data);
  }
  if (fold) {
    if (fold.k.length !== n) {
      throw new UnsupportedGraphError(
        `${describe(l)}: the normalisation after it has ${fold.k.length} channels, not ${n}`,
      );
    }
    for (let o = 0; o < n; o++) bias[o] = bias[o]! * fold.k[o]! + fold.c[o]!;
  }
  return bias;
}

/** A BatchNormalization at inference as y = k·x + c per channel: k = γ/√(var + ε), c = β − mean·k. */
function batchNormAffine(l: KerasLayer, weights: Weights, rank: number): Affine {
  const what = describe(l);
  const axisCfg = cfg(l, 'axis') ?? -1;
  const axis = Array.isArray(axisCfg) && axisCfg.length === 1 ? axisCfg[0] : axisCfg;
  if (axis !== -1 && axis !== rank - 1) {
    throw new UnsupportedGraphError(`${what} normalises axis ${shown(axisCfg)}; only the channel axis is covered`);
  }
  const eps = num(cfg(l, 'epsilon') ?? 1e-3, `${what} epsilon`);
  const mean = weights.need(l, 'moving_mean', 1).data;
  const variance = weights.need(l, 'moving_variance', 1).data;
  const gamma = cfg(l, 'scale') === false ? undefined : weights.need(l, 'gamma', 1).data;
  const beta = cfg(l, 'center') === false ? undefined : weights.need(l, 'beta', 1).data;
  const n = mean.length;
  if (variance.length !== n || (gamma && gamma.length !== n) || (beta && beta.length !== n)) {
    throw new UnsupportedGraphError(`${what}: its parameters differ in length`);
  }
  const k = new Float64Array(n);
  const c = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    k[i] = (gamma ? gamma[i]! : 1) / Math.sqrt(variance[i]! + eps);
    c[i] = (beta ? beta[i]! : 0) - mean[i]! * k[i]!;
  }
  return { k, c };
}

/**
 * A Keras activation by name (TF.js's implementations: hard_sigmoid is clip(0.2x + 0.5, 0, 1),
 * swish x·sigmoid(x), gelu the erf form, gelu_new the tanh approximation).
 */
function emitActivation(b: GraphBuilder, name: string, x: Value, out: string, what: string): void {
  const scalar = (base: string, v: number) => b.constant(`${out}/${base}`, new Float32Array([v]), []);
  const tmp = (base: string) => b.fresh(`${out}/${base}`);
  switch (name.replaceAll('_', '').toLowerCase()) {
    case 'linear':
      b.node('Identity', [x.name], [out]);
      return;
    case 'relu':
      b.node('Relu', [x.name], [out]);
      return;
    case 'relu6':
      emitClip(b, x.name, out, 0, 6);
      return;
    case 'elu':
      b.node('Elu', [x.name], [out]);
      return;
    case 'selu':
      b.node('Selu', [x.name], [out]);
      return;
    case 'sigmoid':
      b.node('Sigmoid', [x.name], [out]);
      return;
    case 'hardsigmoid':
      b.node('HardSigmoid', [x.name], [out], {
        alpha: { kind: 'float', value: 0.2 },
        beta: { kind: 'float', value: 0.5 },
      });
      return;
    case 'tanh':
      b.node('Tanh', [x.name], [out]);
      return;
    case 'softplus':
      b.node('Softplus', [x.name], [out]);
      return;
    case 'softsign':
      b.node('Softsign', [x.name], [out]);
      return;
    case 'softmax':
      // Over the channels: the last Keras axis, axis 1 here whether [N, D] or NCHW.
      b.node('Softmax', [x.name], [out], { axis: { kind: 'int', value: 1 } });
      return;
    case 'swish':
    case 'silu': {
      const s = tmp('sigmoid');
      b.node('Sigmoid', [x.name], [s]);
      b.node('Mul', [x.name, s], [out]);
      return;
    }
    case 'mish': {
      const sp = tmp('softplus');
      const th = tmp('tanh');
      b.node('Softplus', [x.name], [sp]);
      b.node('Tanh', [sp], [th]);
      b.node('Mul', [x.name, th], [out]);
      return;
    }
    case 'gelu': {
      // x · 0.5 · (1 + erf(x / √2))
      const [scaled, erf, plus, half] = ['scaled', 'erf', 'plus1', 'half'].map(tmp) as [string, string, string, string];
      b.node('Div', [x.name, scalar('sqrt2', Math.SQRT2)], [scaled]);
      b.node('Erf', [scaled], [erf]);
      b.node('Add', [erf, scalar('one', 1)], [plus]);
      b.node('Mul', [plus, scalar('half', 0.5)], [half]);
      b.node('Mul', [x.name, half], [out]);
      return;
    }
    case 'gelunew': {
      // 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 x³)))
      const [cube, inner, sum, arg, th, plus, half] = ['cube', 'inner', 'sum', 'arg', 'tanh', 'plus1', 'half'].map(
        tmp,
      ) as [string, string, string, string, string, string, string];
      b.node('Pow', [x.name, scalar('three', 3)], [cube]);
      b.node('Mul', [cube, scalar('c', 0.044715)], [inner]);
      b.node('Add', [x.name, inner], [sum]);
      b.node('Mul', [sum, scalar('k', Math.sqrt(2 / Math.PI))], [arg]);
      b.node('Tanh', [arg], [th]);
      b.node('Add', [th, scalar('one', 1)], [plus]);
      b.node('Mul', [plus, scalar('half', 0.5)], [half]);
      b.node('Mul', [x.name, half], [out]);
      return;
    }
    default:
      throw new UnsupportedGraphError(
        `${what} uses activation ${quote(name)}, which the ONNX converter does not cover`,
      );
  }
}

function emitClip(b: GraphBuilder, x: string, out: string, min: number, max: number): void {
  b.node(
    'Clip',
    [x, b.constant(`${out}/min`, new Float32Array([min]), []), b.constant(`${out}/max`, new Float32Array([max]), [])],
    [out],
  );
}

/** To [N, D] in Keras's (NHWC) element order: an image activation is transposed back to NHWC first. */
function emitFlatten(b: GraphBuilder, x: Value, out: string): void {
  if (x.rank === 2) {
    b.node('Identity', [x.name], [out]);
    return;
  }
  const nhwc = b.fresh(`${out}/nhwc`);
  b.node('Transpose', [x.name], [nhwc], { perm: { kind: 'ints', value: [0, 2, 3, 1] } });
  b.node('Flatten', [nhwc], [out], { axis: { kind: 'int', value: 1 } });
}

/** PReLU's alpha (the input's shape without N, shared axes 1) laid out for an NCHW or [N, D] input. */
function preluSlope(alpha: Weight, rank: number, what: string): { data: Float32Array; shape: number[] } {
  if (rank === 2 || alpha.shape.length === 1) return { data: alpha.data, shape: alpha.shape };
  if (alpha.shape.length !== 3) throw new UnsupportedGraphError(`${what}: alpha has shape [${alpha.shape.join(', ')}]`);
  const [h, w, c] = alpha.shape as [number, number, number];
  const data = new Float32Array(alpha.data.length);
  for (let y = 0; y < h; y++)
    for (let xx = 0; xx < w; xx++)
      for (let k = 0; k < c; k++) data[(k * h + y) * w + xx] = alpha.data[(y * w + xx) * c + k]!;
  return { data, shape: [c, h, w] };
}

/** A per-channel vector laid out to broadcast over an NCHW activation ([C, 1, 1]) or [N, C] ([C]). */
function perChannel(v: Float64Array, rank: number): { data: Float32Array; shape: number[] } {
  return { data: Float32Array.from(v), shape: rank === 4 ? [v.length, 1, 1] : [v.length] };
}

// ---------------------------------------------------------------------------------------------
// Config values.

/** The activation a layer applies after its linear part ('linear' when none). */
function activationName(l: KerasLayer): string {
  if (l.className === 'Activation' || FOLDABLE.has(l.className)) {
    const a = cfg(l, 'activation');
    if (a === undefined || a === null) return 'linear';
    if (typeof a === 'string') return a;
    // Keras 3 writes {module, class_name: 'function', config: 'relu'}.
    if (isRecord(a) && typeof a.config === 'string') return a.config;
    if (isRecord(a) && typeof a.class_name === 'string') return a.class_name;
    throw new UnsupportedGraphError(`${describe(l)} has an activation this converter cannot read`);
  }
  return 'linear';
}

function paddingOf(l: KerasLayer): string {
  const p = cfg(l, 'padding') ?? 'valid';
  return typeof p === 'string' ? capText(p.toUpperCase(), 100) : shown(p);
}

function channelsLast(l: KerasLayer, what: string): void {
  const f = cfg(l, 'data_format');
  if (f !== undefined && f !== null && f !== 'channels_last') {
    throw new UnsupportedGraphError(`${what} uses data format ${quote(String(f))}; only channels_last is covered`);
  }
}

function image(x: Value, what: string): string {
  if (x.rank !== 4) throw new UnsupportedGraphError(`${what} takes a rank-${x.rank} tensor; expected an image`);
  return x.name;
}

function sameRank(xs: Value[], what: string): number {
  const rank = xs[0]?.rank ?? 0;
  if (xs.some((x) => x.rank !== rank)) throw new UnsupportedGraphError(`${what} merges tensors of different ranks`);
  return rank;
}

/** A Keras axis (channels last, negative from the end) → the axis of our layout. */
function kerasAxis(axis: unknown, rank: number, what: string): number {
  const a = typeof axis === 'number' && Number.isInteger(axis) ? (axis < 0 ? axis + rank : axis) : -1;
  if (a <= 0 || a >= rank) throw new UnsupportedGraphError(`${what} works on axis ${shown(axis)}`);
  return rank === 4 ? NHWC_TO_NCHW[a]! : a;
}

function num(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new UnsupportedGraphError(`${what} is not a number`);
  return v;
}

/** A positive size per spatial axis: n or [h, w]. */
function pair(v: unknown, what: string): number[] {
  const p = typeof v === 'number' ? [v, v] : v;
  if (!Array.isArray(p) || p.length !== 2 || !p.every((n) => Number.isInteger(n) && n >= 1 && n <= 65536)) {
    throw new UnsupportedGraphError(`${what} is ${shown(v)}; expected a size or [height, width]`);
  }
  return p as number[];
}

/** ZeroPadding2D / Cropping2D amounts: n, [h, w] (both sides) or [[top, bottom], [left, right]]. */
function pairsOf(v: unknown, what: string): [[number, number], [number, number]] {
  // Bounded: each padded pixel is memory at run time (an input side is at most 2048).
  const ok = (n: unknown): n is number => Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 4096;
  if (ok(v))
    return [
      [v, v],
      [v, v],
    ];
  if (Array.isArray(v) && v.length === 2 && v.every(ok))
    return [
      [v[0], v[0]],
      [v[1], v[1]],
    ];
  if (Array.isArray(v) && v.length === 2 && v.every((p) => Array.isArray(p) && p.length === 2 && p.every(ok))) {
    return v as [[number, number], [number, number]];
  }
  throw new UnsupportedGraphError(`${what} is ${shown(v)}`);
}

/** A config value from the file, for a message: JSON, capped. */
function shown(v: unknown): string {
  return capText(String(JSON.stringify(v)), 100);
}
