/**
 * ONNX models written by the tests with proto.ts's encoder, standing in for a user's own model
 * (test/onnx-user-model.test.ts, test/onnx-user-model.e2e.test.ts).
 */
import { DataType, encodeModel, type NodeInit } from '../../services/extractor/engines/onnx/proto.js';

/** Per-channel weights of nhwcModel's Mul. */
export const NHWC_WEIGHTS = [1, -2, 3];

/**
 * A hand-built NHWC model: img [B, S, S, 3] (S = side, default 8) → Mul by per-channel weights → "scaled" → Relu →
 * "relu" (4-D) → ReduceMax over H, W → "vec" (2-D).
 */
export function nhwcModel(
  opts: { batch?: number | string; opset?: number; shape?: (number | string)[]; side?: number } = {},
): Uint8Array {
  const opset18 = (opts.opset ?? 13) >= 18;
  const nodes: NodeInit[] = [
    { opType: 'Mul', name: 'mul', inputs: ['img', 'w'], outputs: ['scaled'] },
    { opType: 'Relu', name: 'relu_op', inputs: ['scaled'], outputs: ['relu'] },
    // Opset 18 takes ReduceMax's axes as an input.
    opset18
      ? {
          opType: 'ReduceMax',
          name: 'max',
          inputs: ['relu', 'axes'],
          outputs: ['vec'],
          attributes: { keepdims: { kind: 'int', value: 0 } },
        }
      : {
          opType: 'ReduceMax',
          name: 'max',
          inputs: ['relu'],
          outputs: ['vec'],
          attributes: { axes: { kind: 'ints', value: [1, 2] }, keepdims: { kind: 'int', value: 0 } },
        },
  ];
  return encodeModel({
    producerName: 'test',
    producerVersion: '1',
    opsetVersion: opts.opset ?? 13,
    graph: {
      name: 'nhwc',
      nodes,
      initializers: [
        { name: 'w', dataType: DataType.FLOAT, dims: [3], data: Float32Array.from(NHWC_WEIGHTS) },
        ...(opset18 ? [{ name: 'axes', dataType: DataType.INT64, dims: [2], data: BigInt64Array.from([1n, 2n]) }] : []),
      ],
      inputs: [
        {
          name: 'img',
          elemType: DataType.FLOAT,
          shape: opts.shape ?? [opts.batch ?? 'N', opts.side ?? 8, opts.side ?? 8, 3],
        },
      ],
      outputs: [{ name: 'vec', elemType: DataType.FLOAT, shape: ['N', 3] }],
    },
  });
}

/** img [N, 8, 8, 3] → Reshape to [N, 64, 3] → "flat" (3-D: neither pooled nor taken as it is). */
export function rank3Model(): Uint8Array {
  return encodeModel({
    producerName: 'test',
    producerVersion: '1',
    opsetVersion: 13,
    graph: {
      name: 'rank3',
      nodes: [{ opType: 'Reshape', name: 'reshape', inputs: ['img', 'shape'], outputs: ['flat'] }],
      initializers: [{ name: 'shape', dataType: DataType.INT64, dims: [3], data: BigInt64Array.from([0n, 64n, 3n]) }],
      inputs: [{ name: 'img', elemType: DataType.FLOAT, shape: ['N', 8, 8, 3] }],
      outputs: [{ name: 'flat', elemType: DataType.FLOAT, shape: ['N', 64, 3] }],
    },
  });
}
