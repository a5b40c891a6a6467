/**
 * The published classifier as one ONNX graph: image bytes in, class probabilities out, so a
 * downloaded model runs anywhere ONNX Runtime does, without deepfeat.
 *
 *   image    uint8 [N, S, S, 3]  RGB, decoded and resized as model.json's preprocessing says
 *   → pixel values: a 256-entry lookup (Gather) of the run's input range, the same float32
 *     table every engine converts through (shared/features.ts inputLut), so the values are
 *     bit-identical to the pipeline's
 *   → backbone: Transpose to NCHW, the converted graph cut at the run's node, global average
 *     pool (convert.ts emitBackbone); for raw pixels, the values flattened in HWC order
 *   → features      float32 [N, D]  (an output: the pooled vector, for retrieval)
 *   → (x − mean) / std → x·Wᵀ + b → Softmax
 *   → probabilities float32 [N, K]  (an output, in model.json's `classes` order)
 *
 * With multi-scale features (`multiScale: true`, engines/multi-scale.ts), the backbone runs a
 * second time on the batch at half the side (emitHalfScale) and the two pooled vectors are
 * concatenated, full size first.
 *
 * With flip averaging (the run's spec has `flip: true`, engines/flip.ts), the image batch is
 * followed by its horizontal mirrors (Slice with step −1 on the width axis, Concat: 2N images),
 * and the 2N pooled rows are averaged pairwise ((a + b) · 0.5) into the N features: the
 * computation the extractors made, in the same batch order.
 */
import type * as tf from '@tensorflow/tfjs';
import { GraphBuilder, OPSET, emitBackbone } from './convert.js';
import type { FeatureTransform } from '../../../../shared/softmax-model.js';
import { type AttributeValue, DataType, encodeModel } from './proto.js';

export const CLASSIFIER_INPUT = 'image';
export const CLASSIFIER_PROBABILITIES = 'probabilities';
export const CLASSIFIER_FEATURES = 'features';

/** The standardisation and linear softmax head, as model.json holds them. */
export interface ClassifierHead {
  /** Applied to the features before standardisation (shared/softmax-model.ts). */
  featureTransform?: FeatureTransform;
  classes: readonly string[];
  mean: readonly number[];
  std: readonly number[];
  /** k rows × d columns. */
  weights: readonly (readonly number[])[];
  bias: readonly number[];
}

export type ClassifierBackbone =
  | { kind: 'raw-pixels' }
  | { kind: 'graph'; artifacts: tf.io.ModelArtifacts /** Full node name (planGraphCut's). */; node: string };

export interface ClassifierGraphOptions {
  backbone: ClassifierBackbone;
  /** Square input side. */
  size: number;
  /** Input value of each pixel byte 0..255 (inputLut of the run's range). */
  lut: Float32Array;
  head: ClassifierHead;
  producerVersion: string;
  /** Stored in the model: where it came from. */
  docString: string;
  /** Flip averaging: features of the image and its mirror, averaged. */
  flip?: boolean;
  /** Multi-scale features: the backbone also at half the side (2×2 means, rounded), vectors concatenated. */
  halfScale?: boolean;
}

/** How the flip pieces add nodes and constants to either graph writer. */
export interface GraphSink {
  node(opType: string, inputs: string[], output: string, attributes?: Record<string, AttributeValue>): void;
  constant(name: string, data: BigInt64Array | Float32Array, dims: number[]): string;
  fresh(name: string): string;
}

const INT64_MIN = -(2n ** 63n);
const int64 = (...values: bigint[]) => BigInt64Array.from(values);

/**
 * `output` = the NHWC batch `input` followed by its horizontal mirrors (axis 2 reversed): 2N
 * images. Slice takes its bounds as inputs from opset 10 on.
 */
export function emitFlipBatch(g: GraphSink, input: string, output: string): void {
  const mirrored = g.fresh('flip/mirrored');
  const bound = (name: string, v: bigint) => g.constant(`flip/${name}`, int64(v), [1]);
  g.node(
    'Slice',
    [input, bound('starts', -1n), bound('ends', INT64_MIN), bound('axes', 2n), bound('steps', -1n)],
    mirrored,
  );
  g.node('Concat', [input, mirrored], output, { axis: { kind: 'int', value: 0 } });
}

/**
 * The head's feature transform on `features`: 'signed-sqrt' as Sign(x)·Sqrt(Abs(x)). Returns the
 * tensor the head standardises (`features` itself when there is no transform).
 */
export function emitFeatureTransform(g: GraphSink, transform: FeatureTransform | undefined, features: string): string {
  if (transform === undefined) return features;
  const abs = g.fresh('head/abs');
  const root = g.fresh('head/sqrt');
  const sign = g.fresh('head/sign');
  const out = g.fresh('head/transformed');
  g.node('Abs', [features], abs);
  g.node('Sqrt', [abs], root);
  g.node('Sign', [features], sign);
  g.node('Mul', [sign, root], out);
  return out;
}

/** `output` [N, d] = the mean of rows i and N + i of `both` [2N, d], as (a + b) · 0.5. */
export function emitPairMean(g: GraphSink, both: string, d: number, output: string): void {
  const pairs = g.fresh('flip/pairs');
  g.node('Reshape', [both, g.constant('flip/pair_shape', int64(2n, -1n, BigInt(d)), [3])], pairs);
  const first = g.fresh('flip/first');
  const second = g.fresh('flip/second');
  g.node('Gather', [pairs, g.constant('flip/index0', int64(0n), [])], first, { axis: { kind: 'int', value: 0 } });
  g.node('Gather', [pairs, g.constant('flip/index1', int64(1n), [])], second, { axis: { kind: 'int', value: 0 } });
  const sum = g.fresh('flip/sum');
  g.node('Add', [first, second], sum);
  g.node('Mul', [sum, g.constant('flip/half', Float32Array.of(0.5), [])], output);
}

/**
 * The half-scale input of multi-scale features from the uint8 NHWC batch `images`: each 2×2
 * block's mean rounded half up (AveragePool's exact float mean of four bytes, + 0.5, Floor: the
 * bytes engines/multi-scale.ts halveImage makes), then the pixel table `lut`. Returns the NCHW
 * float tensor the backbone takes.
 */
export function emitHalfScale(g: GraphSink, images: string, lut: string): string {
  const float = g.fresh('half/float');
  g.node('Cast', [images], float, { to: { kind: 'int', value: DataType.FLOAT } });
  const nchw = g.fresh('half/nchw');
  g.node('Transpose', [float], nchw, { perm: { kind: 'ints', value: [0, 3, 1, 2] } });
  const mean = g.fresh('half/mean');
  g.node('AveragePool', [nchw], mean, {
    kernel_shape: { kind: 'ints', value: [2, 2] },
    strides: { kind: 'ints', value: [2, 2] },
  });
  const shifted = g.fresh('half/shifted');
  g.node('Add', [mean, g.constant('half/one_half', Float32Array.of(0.5), [])], shifted);
  const rounded = g.fresh('half/rounded');
  g.node('Floor', [shifted], rounded);
  const indices = g.fresh('half/index');
  g.node('Cast', [rounded], indices, { to: { kind: 'int', value: DataType.INT32 } });
  const values = g.fresh('half/value');
  g.node('Gather', [lut, indices], values, { axis: { kind: 'int', value: 0 } });
  return values;
}

/**
 * ONNX bytes of the whole classifier.
 * @throws UnsupportedGraphError when the backbone's graph cannot be converted.
 */
export function buildClassifierOnnx(o: ClassifierGraphOptions): Uint8Array {
  const { head, size } = o;
  const k = head.classes.length;
  const d = head.mean.length;
  const b = new GraphBuilder([CLASSIFIER_INPUT, CLASSIFIER_PROBABILITIES, CLASSIFIER_FEATURES]);

  const sink: GraphSink = {
    node: (opType, inputs, output, attributes) => b.node(opType, inputs, [output], attributes),
    constant: (name, data, dims) => b.constant(name, data, dims),
    fresh: (name) => b.fresh(name),
  };
  const flip = o.flip === true && o.backbone.kind === 'graph';
  let images = CLASSIFIER_INPUT;
  if (flip) {
    images = b.fresh('flip/batch');
    emitFlipBatch(sink, CLASSIFIER_INPUT, images);
  }

  // Pixel bytes → model input values, by lookup: Gather takes int32 or int64 indices.
  const indices = b.fresh('pixels/index');
  b.node('Cast', [images], [indices], { to: { kind: 'int', value: DataType.INT32 } });
  const values = b.fresh('pixels/value');
  const lut = b.constant('pixels/lut', o.lut, [256]);
  b.node('Gather', [lut, indices], [values], { axis: { kind: 'int', value: 0 } });

  if (o.backbone.kind === 'raw-pixels') {
    b.node(
      'Reshape',
      [values, b.constant('pixels/shape', BigInt64Array.from([-1n, BigInt(d)]), [2])],
      [CLASSIFIER_FEATURES],
    );
  } else {
    const nchw = b.fresh('pixels/nchw');
    b.node('Transpose', [values], [nchw], { perm: { kind: 'ints', value: [0, 3, 1, 2] } });
    const pooled = flip ? b.fresh('flip/pooled') : CLASSIFIER_FEATURES;
    const full = o.halfScale ? b.fresh('scale/full') : pooled;
    emitBackbone(b, o.backbone.artifacts, o.backbone.node, { input: nchw, output: full });
    if (o.halfScale) {
      const half = b.fresh('scale/half');
      emitBackbone(b, o.backbone.artifacts, o.backbone.node, { input: emitHalfScale(sink, images, lut), output: half });
      b.node('Concat', [full, half], [pooled], { axis: { kind: 'int', value: 1 } });
    }
    if (flip) emitPairMean(sink, pooled, d, CLASSIFIER_FEATURES);
  }

  // The head, in the order predictProba (shared/softmax-model.ts) computes it.
  const transformed = emitFeatureTransform(sink, head.featureTransform, CLASSIFIER_FEATURES);
  const centred = b.fresh('head/centred');
  b.node('Sub', [transformed, b.constant('head/mean', Float32Array.from(head.mean), [d])], [centred]);
  const scaled = b.fresh('head/standardised');
  b.node('Div', [centred, b.constant('head/std', Float32Array.from(head.std), [d])], [scaled]);
  const wt = new Float32Array(d * k); // Wᵀ, d × k, for MatMul
  for (const [c, row] of head.weights.entries()) for (const [j, w] of row.entries()) wt[j * k + c] = w;
  const product = b.fresh('head/product');
  b.node('MatMul', [scaled, b.constant('head/weights', wt, [d, k])], [product]);
  const logits = b.fresh('head/logits');
  b.node('Add', [product, b.constant('head/bias', Float32Array.from(head.bias), [k])], [logits]);
  b.node('Softmax', [logits], [CLASSIFIER_PROBABILITIES], { axis: { kind: 'int', value: 1 } });

  return encodeModel({
    producerName: 'deepfeat',
    producerVersion: o.producerVersion,
    opsetVersion: OPSET,
    docString: o.docString,
    graph: {
      name: 'deepfeat_classifier',
      nodes: b.nodes,
      initializers: b.initializers,
      inputs: [{ name: CLASSIFIER_INPUT, elemType: DataType.UINT8, shape: ['N', size, size, 3] }],
      outputs: [
        { name: CLASSIFIER_PROBABILITIES, elemType: DataType.FLOAT, shape: ['N', k] },
        { name: CLASSIFIER_FEATURES, elemType: DataType.FLOAT, shape: ['N', d] },
      ],
    },
  });
}
