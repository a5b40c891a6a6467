/**
 * The published classifier for a run whose backbone is a user's own ONNX model: the same
 * contract as classifier.ts (uint8 NHWC image in; probabilities and features out), composed
 * around the user's graph, which is kept as it is:
 *
 *   image    uint8 [N, S, S, 3]
 *   → pixel values: one 256-entry table per channel (Gather on a 768-entry table, indexed by
 *     byte + 256·channel): the range, mean and std the engine used (shared/features.ts
 *     channelLuts), so the values are bit-identical to the pipeline's
 *   → the model's layout (Transpose for NCHW), written into the model's own input tensor, which
 *     stops being a graph input
 *   → the user's graph up to the run's tensor, pooled as the engine pools it (onnx-user.ts poolNodes)
 *   → features [N, D] → (x − mean) / std → x·Wᵀ + b → Softmax → probabilities [N, K]
 *
 * Flip averaging as in classifier.ts: the image batch and its mirrors in, pooled rows averaged
 * pairwise.
 */
import { type OnnxBackbone, poolNodes, rewriteGraph } from '../onnx-user.js';
import {
  CLASSIFIER_FEATURES,
  CLASSIFIER_INPUT,
  CLASSIFIER_PROBABILITIES,
  type ClassifierHead,
  type GraphSink,
  emitFeatureTransform,
  emitFlipBatch,
  emitPairMean,
} from './classifier.js';
import { DataType, type NodeInit, type TensorInit } from './proto.js';

/**
 * The user's tensors that carry a name the classifier gives its own input or outputs, each with
 * the name it takes instead (our own converter's output, fed back in, has a tensor "features").
 * @throws Error when an initializer has such a name (not renamed: weights are kept byte for byte).
 */
export function renamesFor(b: OnnxBackbone): Map<string, string> {
  const taken = new Set([
    ...b.info.nodes.flatMap((n) => [...n.inputs, ...n.outputs]),
    ...b.info.inputs.map((i) => i.name),
  ]);
  const renames = new Map<string, string>();
  for (const name of [CLASSIFIER_INPUT, CLASSIFIER_FEATURES, CLASSIFIER_PROBABILITIES]) {
    if (b.info.initializers.has(name)) {
      throw new Error(
        `the model has a weight named ${JSON.stringify(name)}, a name classifier.onnx gives its own input or output`,
      );
    }
    if (!taken.has(name)) continue;
    let to = `deepfeat/user/${name}`;
    for (let i = 1; taken.has(to); i++) to = `deepfeat/user/${name}_${i}`;
    renames.set(name, to);
  }
  return renames;
}

/** ONNX bytes of the whole classifier around `b`, whose pooled tensor has `rank` dimensions. */
export function buildUserClassifierOnnx(
  b: OnnxBackbone,
  rank: number,
  luts: readonly [Float32Array, Float32Array, Float32Array],
  head: ClassifierHead,
  flip = false,
): Uint8Array {
  const renames = renamesFor(b);
  const input = renames.get(b.input) ?? b.input;
  const k = head.classes.length;
  const d = head.mean.length;
  const nodes: NodeInit[] = [];
  const initializers: TensorInit[] = [];
  const f32 = (name: string, data: Float32Array, dims: number[]): string => {
    initializers.push({ name, dataType: DataType.FLOAT, dims, data });
    return name;
  };
  const node = (opType: string, inputs: string[], output: string, attributes?: NodeInit['attributes']) =>
    nodes.push({ opType, name: `${output}/${opType}`, inputs, outputs: [output], attributes });
  // Our names all start with deepfeat/, which no tensor of the user's graph is renamed to.
  const sink: GraphSink = {
    node,
    constant: (name, data, dims) => {
      const full = `deepfeat/${name}`;
      initializers.push({
        name: full,
        dataType: data instanceof BigInt64Array ? DataType.INT64 : DataType.FLOAT,
        dims,
        data,
      });
      return full;
    },
    fresh: (name) => `deepfeat/${name}`,
  };
  let images = CLASSIFIER_INPUT;
  if (flip) {
    if (b.info.opset < 10)
      throw new Error(`flip averaging needs opset 10 or later; the model has opset ${b.info.opset}`);
    images = 'deepfeat/flip/batch';
    emitFlipBatch(sink, CLASSIFIER_INPUT, images);
  }

  // Pixel bytes → the model's input values: index byte + 256·channel into the three tables.
  const table = new Float32Array(768);
  for (const [c, lut] of luts.entries()) table.set(lut, 256 * c);
  node('Cast', [images], 'deepfeat/pixels/index', { to: { kind: 'int', value: DataType.INT32 } });
  initializers.push({
    name: 'deepfeat/pixels/channel_offset',
    dataType: DataType.INT32,
    dims: [3],
    data: Int32Array.from([0, 256, 512]),
  });
  node('Add', ['deepfeat/pixels/index', 'deepfeat/pixels/channel_offset'], 'deepfeat/pixels/channel_index');
  node('Gather', [f32('deepfeat/pixels/lut', table, [768]), 'deepfeat/pixels/channel_index'], 'deepfeat/pixels/value', {
    axis: { kind: 'int', value: 0 },
  });
  if (b.layout === 'nchw') {
    node('Transpose', ['deepfeat/pixels/value'], input, { perm: { kind: 'ints', value: [0, 3, 1, 2] } });
  } else {
    node('Identity', ['deepfeat/pixels/value'], input);
  }

  const features = flip ? 'deepfeat/flip/pooled' : CLASSIFIER_FEATURES;
  const pooled = poolNodes({ ...b, node: renames.get(b.node) ?? b.node }, rank, features);
  nodes.push(...pooled.nodes);
  initializers.push(...pooled.initializers);
  if (flip) emitPairMean(sink, features, d, CLASSIFIER_FEATURES);

  // The head, in the order predictProba (shared/softmax-model.ts) computes it.
  const transformed = emitFeatureTransform(sink, head.featureTransform, CLASSIFIER_FEATURES);
  node('Sub', [transformed, f32('deepfeat/head/mean', Float32Array.from(head.mean), [d])], 'deepfeat/head/centred');
  node(
    'Div',
    ['deepfeat/head/centred', f32('deepfeat/head/std', Float32Array.from(head.std), [d])],
    'deepfeat/head/standardised',
  );
  const wt = new Float32Array(d * k); // Wᵀ, d × k, for MatMul
  for (const [c, row] of head.weights.entries()) for (const [j, w] of row.entries()) wt[j * k + c] = w;
  node('MatMul', ['deepfeat/head/standardised', f32('deepfeat/head/weights', wt, [d, k])], 'deepfeat/head/product');
  node(
    'Add',
    ['deepfeat/head/product', f32('deepfeat/head/bias', Float32Array.from(head.bias), [k])],
    'deepfeat/head/logits',
  );
  node('Softmax', ['deepfeat/head/logits'], CLASSIFIER_PROBABILITIES, { axis: { kind: 'int', value: 1 } });

  return rewriteGraph(
    b,
    {
      nodes,
      initializers,
      inputs: [{ name: CLASSIFIER_INPUT, elemType: DataType.UINT8, shape: ['N', b.size, b.size, 3] }],
      outputs: [
        { name: CLASSIFIER_PROBABILITIES, elemType: DataType.FLOAT, shape: ['N', k] },
        { name: CLASSIFIER_FEATURES, elemType: DataType.FLOAT, shape: ['N', d] },
      ],
    },
    true,
    renames,
  );
}
