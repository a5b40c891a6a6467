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
 */
import type * as tf from '@tensorflow/tfjs';
import { GraphBuilder, OPSET, emitBackbone } from './convert.js';
import { DataType, encodeModel } from './proto.js';

export const CLASSIFIER_INPUT = 'image';
export const CLASSIFIER_PROBABILITIES = 'probabilities';
export const CLASSIFIER_FEATURES = 'features';

/** The standardisation and linear softmax head, as model.json holds them. */
export interface ClassifierHead {
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

  // Pixel bytes → model input values, by lookup: Gather takes int32 or int64 indices.
  const indices = b.fresh('pixels/index');
  b.node('Cast', [CLASSIFIER_INPUT], [indices], { to: { kind: 'int', value: DataType.INT32 } });
  const values = b.fresh('pixels/value');
  b.node('Gather', [b.constant('pixels/lut', o.lut, [256]), indices], [values], { axis: { kind: 'int', value: 0 } });

  if (o.backbone.kind === 'raw-pixels') {
    b.node(
      'Reshape',
      [values, b.constant('pixels/shape', BigInt64Array.from([-1n, BigInt(d)]), [2])],
      [CLASSIFIER_FEATURES],
    );
  } else {
    const nchw = b.fresh('pixels/nchw');
    b.node('Transpose', [values], [nchw], { perm: { kind: 'ints', value: [0, 3, 1, 2] } });
    emitBackbone(b, o.backbone.artifacts, o.backbone.node, { input: nchw, output: CLASSIFIER_FEATURES });
  }

  // The head, in the order predictProba (shared/softmax-model.ts) computes it.
  const centred = b.fresh('head/centred');
  b.node('Sub', [CLASSIFIER_FEATURES, b.constant('head/mean', Float32Array.from(head.mean), [d])], [centred]);
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
