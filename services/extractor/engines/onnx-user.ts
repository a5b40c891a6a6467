/**
 * A user's own ONNX model as a backbone: `--model model.onnx --node TENSOR`. The model is read
 * (bounded, through deps.readObject) and parsed by onnx/read.ts, its image input planned (layout
 * NCHW or NHWC, square size), and the graph cut: a pooling node appended to it (ReduceMean over
 * H and W for a 4-D tensor, the tensor as is for a 2-D one) and made a graph output, then run on
 * ONNX Runtime. Nothing is converted: ONNX Runtime executes the user's graph itself.
 *
 * The cut appends fields to the GraphProto's payload (protobuf concatenates repeated fields), so
 * the user's graph is kept byte for byte; only the pooled output is fetched, so ONNX Runtime
 * computes just the part of the graph it needs.
 */
import os from 'node:os';
import type * as Ort from 'onnxruntime-node';
import { DeepfeatError, ModelError, errorMessage } from '../../../shared/errors.js';
import {
  DEFAULT_INPUT_RANGE,
  channelLuts,
  type FeatureSpec,
  type InputLayout,
  type InputRange,
} from '../../../shared/features.js';
import { capText, quote } from '../../../shared/text.js';
import type { EngineDeps, FeatureEngine } from './engine.js';
import { createSession, loadOrt } from './onnx.js';
import { DataType, encodeModel, type NodeInit, type TensorInit, type ValueInfo } from './onnx/proto.js';
import { type Dim, OnnxFormatError, type OnnxModelInfo, fields, readOnnxModel, readValueInfo } from './onnx/read.js';

type OnnxSpec = Extract<FeatureSpec, { kind: 'onnx' }>;

/** A user's ONNX model, read and planned: what the engine and the published classifier start from. */
export interface OnnxBackbone {
  kind: 'onnx';
  bytes: Uint8Array;
  info: OnnxModelInfo;
  modelName: string;
  node: string;
  /** The image input's name, layout and square side. */
  input: string;
  layout: InputLayout;
  size: number;
  /** Largest batch the input takes: its fixed batch dimension (often 1 in exports), or unbounded. */
  maxBatch: number;
  inputRange: InputRange;
  mean?: readonly number[];
  std?: readonly number[];
  /** Rank of `node` when the model records its shape; else the engine finds it with a test run. */
  rank?: number;
}

/** Ops whose outputs make good features: offered when a node name is not found. */
const POOLABLE_OPS = new Set([
  'Relu',
  'Clip',
  'HardSwish',
  'Sigmoid',
  'Mul',
  'Add',
  'Concat',
  'GlobalAveragePool',
  'AveragePool',
  'MaxPool',
  'Flatten',
  'Gemm',
  'Reshape',
  'ReduceMean',
]);
/** Candidate tensors listed in a message. */
const MAX_CANDIDATES = 16;
const FIX_EXPORT = 'export it again (torch.onnx.export, tf2onnx) with its weights inside the file';

/**
 * Reads and plans a user's ONNX model as `spec` asks.
 * @throws ModelError when it cannot be read, is not ONNX, has no single float image input, its
 *   layout or size cannot be known, or has no tensor named `spec.node`.
 */
export async function resolveOnnxBackbone(
  spec: OnnxSpec,
  deps: Pick<EngineDeps, 'readObject' | 'maxModelBytes'>,
): Promise<OnnxBackbone> {
  const name = quote(spec.model);
  const maxBytes = deps.maxModelBytes ?? 1024 ** 3;
  let bytes: Uint8Array;
  try {
    bytes = await deps.readObject(spec.model, maxBytes);
  } catch (err) {
    if (err instanceof DeepfeatError) throw err; // storage errors keep their class (transient stays retryable)
    throw new ModelError(`cannot read the ONNX model ${name}: ${capText(errorMessage(err))}`, { cause: err });
  }
  if (bytes.byteLength > maxBytes) {
    throw new ModelError(
      `${name} is larger than ${maxBytes} bytes, the most a worker reads for a model: use a smaller model, ` +
        'or have the operator raise DEEPFEAT_MAX_MODEL_BYTES',
    );
  }
  let info: OnnxModelInfo;
  try {
    info = readOnnxModel(bytes);
  } catch (err) {
    if (!(err instanceof OnnxFormatError)) throw err;
    // The reason is ours (never a quote of the bytes).
    throw new ModelError(`${name} is not a readable ONNX model: ${err.message}; ${FIX_EXPORT}`);
  }
  if (info.inputs.length !== 1) {
    throw new ModelError(
      `${name} takes ${info.inputs.length} inputs (${info.inputs.map((i) => quote(i.name, 60)).join(', ')}); ` +
        'deepfeat feeds one image tensor: export the model with a single image input',
    );
  }
  const input = info.inputs[0]!;
  if (input.elemType !== DataType.FLOAT) {
    throw new ModelError(
      `${name}: input ${quote(input.name)} is not float32 (ONNX type ${input.elemType}); deepfeat feeds float32 ` +
        'pixels: export the model with a float32 image input',
    );
  }
  const dims: Dim[] = input.shape ?? [undefined, undefined, undefined, undefined];
  if (dims.length !== 4) {
    throw new ModelError(
      `${name}: input ${quote(input.name)} has ${dims.length} dimensions; deepfeat feeds a 4-D image batch ` +
        '(N, 3, H, W or N, H, W, 3)',
    );
  }
  const fixed = (d: Dim): number | undefined => (typeof d === 'number' && d > 0 ? d : undefined);
  const layout = planLayout(name, dims.map(fixed), spec.inputLayout);
  const [h, w] = layout === 'nchw' ? [fixed(dims[2]), fixed(dims[3])] : [fixed(dims[1]), fixed(dims[2])];
  const size = planSize(name, h, w, spec.inputSize);

  const produced = new Set(info.nodes.flatMap((n) => n.outputs));
  if (!produced.has(spec.node)) {
    const pool = info.nodes.filter((n) => POOLABLE_OPS.has(n.opType));
    const list = (pool.length > 0 ? pool : info.nodes)
      .flatMap((n) => n.outputs.filter((o) => o !== '').map((o) => `${quote(o, 80)} (${capText(n.opType, 40)})`))
      .slice(-MAX_CANDIDATES);
    throw new ModelError(
      `tensor ${quote(spec.node)} is not produced by any node of ${name} (${info.nodes.length} nodes); ` +
        `tensors you can pool include: ${list.length > 0 ? list.join(', ') : 'none (the graph has no nodes)'}`,
    );
  }
  const shape = info.shapes.get(spec.node)?.shape;
  return {
    kind: 'onnx',
    bytes,
    info,
    modelName: spec.model,
    node: spec.node,
    input: input.name,
    layout,
    size,
    maxBatch: fixed(dims[0]) ?? Number.POSITIVE_INFINITY,
    inputRange: spec.inputRange ?? DEFAULT_INPUT_RANGE,
    ...(spec.mean ? { mean: spec.mean } : {}),
    ...(spec.std ? { std: spec.std } : {}),
    ...(shape ? { rank: shape.length } : {}),
  };
}

/**
 * NCHW when the fixed channel dimension (3) is second, NHWC when it is last; the user's
 * --input-layout when the shape cannot tell (both or neither is 3), and must agree with it when it can.
 */
function planLayout(name: string, d: (number | undefined)[], given: InputLayout | undefined): InputLayout {
  const first = d[1] === 3;
  const last = d[3] === 3;
  const fits = (l: InputLayout) => {
    const c = l === 'nchw' ? d[1] : d[3];
    return c === undefined || c === 3;
  };
  if (given) {
    if (!fits(given)) {
      throw new ModelError(
        `${name}: the input's shape has no 3 channels where --input-layout ${given} puts them: ` +
          `use --input-layout ${given === 'nchw' ? 'nhwc' : 'nchw'} or drop it`,
      );
    }
    return given;
  }
  if (first !== last) return first ? 'nchw' : 'nhwc';
  throw new ModelError(
    `${name}: the input's shape does not say whether channels come first or last: give --input-layout nchw ` +
      '(PyTorch exports) or nhwc (TensorFlow exports)',
  );
}

function planSize(name: string, h: number | undefined, w: number | undefined, given: number | undefined): number {
  if (h !== undefined && w !== undefined && h !== w) {
    throw new ModelError(`${name}: the input is ${h}×${w}; deepfeat feeds square images: export a square input`);
  }
  const fixed = h ?? w;
  if (given !== undefined) {
    if (fixed !== undefined && fixed !== given) {
      throw new ModelError(
        `${name}: the input is fixed at ${fixed}×${fixed}, not --input-size ${given}: drop --input-size`,
      );
    }
    return given;
  }
  if (fixed === undefined) {
    throw new ModelError(`${name}: the input's height and width are not fixed: give --input-size (e.g. 224)`);
  }
  return fixed;
}

/** Name of the pooled output the cut adds, and of the shape probe's. */
export const POOLED_OUTPUT = 'deepfeat/pooled';
const PROBE_OUTPUT = 'deepfeat/probe_shape';

/** What a rewrite adds to the user's graph. */
interface GraphAdditions {
  nodes: NodeInit[];
  initializers: TensorInit[];
  inputs?: ValueInfo[];
  outputs: ValueInfo[];
}

/**
 * The model's bytes with `extra` nodes, initializers, inputs and outputs appended to its graph,
 * and, with `replaceIo`, the image input and the graph's own outputs dropped (the published
 * classifier feeds the image input from its own nodes and has its own outputs). The extra fields
 * are written by proto.ts's encoder (as a one-graph model, whose graph payload is then taken
 * minus its name) and concatenated after the original graph fields: protobuf concatenates
 * repeated fields, so the user's nodes and weights are kept byte for byte.
 */
export function rewriteGraph(
  b: OnnxBackbone,
  extra: GraphAdditions,
  replaceIo = false,
  renames: ReadonlyMap<string, string> = new Map(),
): Uint8Array {
  const encoded = encodeModel({
    producerName: 'deepfeat',
    producerVersion: '',
    opsetVersion: b.info.opset,
    graph: {
      name: '',
      nodes: extra.nodes,
      initializers: extra.initializers,
      inputs: extra.inputs ?? [],
      outputs: extra.outputs,
    },
  });
  const g = readOnnxModel(encoded).graph;
  // GraphProto.name is field 2: the graph keeps the user's name.
  const added = [...fields(encoded.subarray(g.start, g.end))].filter((f) => f.no !== 2);
  const graphPayload = b.bytes.subarray(b.info.graph.start, b.info.graph.end);
  // GraphProto input = 11, output = 12.
  const kept = replaceIo
    ? [...fields(graphPayload)].filter(
        (f) => f.no !== 12 && !(f.no === 11 && f.wire === 2 && readValueInfo(f.bytes).name === b.input),
      )
    : [{ bytes: graphPayload }];
  const parts: Uint8Array[] = [
    ...kept.map((f) => {
      if (!('start' in f)) return f.bytes;
      // Nodes (1) name tensors in inputs (1) and outputs (2); value_info (13) in its name (1).
      if (renames.size > 0 && f.wire === 2 && (f.no === 1 || f.no === 13)) {
        return renamed(f.no, f.bytes, f.no === 1 ? [1, 2] : [1], renames);
      }
      return graphPayload.subarray(f.start, f.end);
    }),
    ...added.map((f) => encoded.subarray(g.start + f.start, g.start + f.end)),
  ];
  const graphLen = parts.reduce((n, p) => n + p.length, 0);
  const header = Uint8Array.from([0x3a, ...varint(graphLen)]); // field 7, wire type 2
  const before = b.bytes.subarray(0, b.info.graph.fieldStart);
  const after = b.bytes.subarray(b.info.graph.end);
  const out = new Uint8Array(before.length + after.length + header.length + graphLen);
  let off = 0;
  for (const p of [before, after, header, ...parts]) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Field `no` holding `msg` with the strings of `stringFields` renamed as `renames` says, re-encoded. */
function renamed(
  no: number,
  msg: Uint8Array,
  stringFields: number[],
  renames: ReadonlyMap<string, string>,
): Uint8Array {
  const parts: number[] = [];
  for (const f of fields(msg)) {
    const to = f.wire === 2 && stringFields.includes(f.no) ? renames.get(new TextDecoder().decode(f.bytes)) : undefined;
    if (to === undefined) {
      for (const x of msg.subarray(f.start, f.end)) parts.push(x);
    } else {
      const text = new TextEncoder().encode(to);
      parts.push(...varint((f.no << 3) | 2), ...varint(text.length), ...text);
    }
  }
  return Uint8Array.from([...varint((no << 3) | 2), ...varint(parts.length), ...parts]);
}

function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

/**
 * Nodes that pool `b.node` to float32 [N, D] named `output`: ReduceMean over H and W (by the
 * input's layout) for rank 4, the tensor itself for rank 2, then a Cast (float16 or double
 * activations become float32 features).
 * @throws ModelError for any other rank.
 */
export function poolNodes(
  b: OnnxBackbone,
  rank: number,
  output: string,
): Pick<GraphAdditions, 'nodes' | 'initializers'> {
  const nodes: NodeInit[] = [];
  const initializers: TensorInit[] = [];
  let pooled = b.node;
  if (rank === 4) {
    const axes = b.layout === 'nchw' ? [2, 3] : [1, 2];
    pooled = 'deepfeat/mean';
    // Opset 18 moved ReduceMean's axes from an attribute to an input.
    if (b.info.opset >= 18) {
      initializers.push({
        name: 'deepfeat/axes',
        dataType: DataType.INT64,
        dims: [2],
        data: BigInt64Array.from(axes.map(BigInt)),
      });
      nodes.push({
        opType: 'ReduceMean',
        name: 'deepfeat/ReduceMean',
        inputs: [b.node, 'deepfeat/axes'],
        outputs: [pooled],
        attributes: { keepdims: { kind: 'int', value: 0 } },
      });
    } else {
      nodes.push({
        opType: 'ReduceMean',
        name: 'deepfeat/ReduceMean',
        inputs: [b.node],
        outputs: [pooled],
        attributes: { axes: { kind: 'ints', value: axes }, keepdims: { kind: 'int', value: 0 } },
      });
    }
  } else if (rank !== 2) {
    throw new ModelError(
      `tensor ${quote(b.node)} of ${quote(b.modelName)} has ${rank} dimensions; deepfeat pools 4-D activations ` +
        '(N, C, H, W or N, H, W, C) and takes 2-D ones (N, D) as they are: pick another tensor',
    );
  }
  nodes.push({
    opType: 'Cast',
    name: 'deepfeat/Cast',
    inputs: [pooled],
    outputs: [output],
    attributes: { to: { kind: 'int', value: DataType.FLOAT } },
  });
  return { nodes, initializers };
}

/** The cut model: `node` pooled to [N, D] float32 as POOLED_OUTPUT (poolNodes), an extra graph output. */
export function cutOnnxModel(b: OnnxBackbone, rank: number): Uint8Array {
  return rewriteGraph(b, {
    ...poolNodes(b, rank, POOLED_OUTPUT),
    outputs: [{ name: POOLED_OUTPUT, elemType: DataType.FLOAT, shape: ['N', 'D'] }],
  });
}

/** The model with Shape(node) as an extra output, to learn the node's rank with one test run. */
function probeModel(b: OnnxBackbone): Uint8Array {
  return rewriteGraph(b, {
    nodes: [{ opType: 'Shape', name: 'deepfeat/Shape', inputs: [b.node], outputs: [PROBE_OUTPUT] }],
    initializers: [],
    outputs: [{ name: PROBE_OUTPUT, elemType: DataType.INT64, shape: ['R'] }],
  });
}

/**
 * The rank of `b.node`: from the model's recorded shapes, else from one run of the model on a
 * zero image (ONNX Runtime, CPU, one thread).
 * @throws ModelError when ONNX Runtime cannot load or run the model.
 */
export async function pooledRank(b: OnnxBackbone): Promise<number> {
  if (b.rank !== undefined) return b.rank;
  const ort = await loadOrt();
  return probeRank(ort, b, { id: `${b.modelName}@${b.node}`, threads: 1, provider: 'cpu' });
}

export interface OnnxUserEngineOptions {
  threads?: number;
  provider?: EngineDeps['onnxProvider'];
  log?: EngineDeps['log'];
}

/**
 * An ONNX Runtime engine for a user's ONNX model, warmed up.
 * @throws ModelError when ONNX Runtime cannot load or run the model, or the tensor has a rank
 *   that cannot be pooled.
 */
export async function createOnnxUserEngine(b: OnnxBackbone, o: OnnxUserEngineOptions = {}): Promise<FeatureEngine> {
  let ort: typeof Ort;
  try {
    ort = await loadOrt();
  } catch (err) {
    throw new ModelError(`onnxruntime-node cannot be loaded here: ${errorMessage(err).split('\n')[0]}`, { cause: err });
  }
  const id = `${b.modelName}@${b.node}`;
  const sessionOptions = {
    id,
    threads: o.threads && o.threads > 0 ? o.threads : os.availableParallelism(),
    provider: o.provider ?? 'auto',
    log: o.log,
  };
  const rank = b.rank ?? (await probeRank(ort, b, sessionOptions));
  const { session, backend } = await createSession(ort, cutOnnxModel(b, rank), sessionOptions);
  const engine = new OnnxUserEngine(ort, session, b, id, backend);
  try {
    await engine.warmUp();
  } catch (err) {
    engine.dispose();
    throw new ModelError(`ONNX Runtime fails a test run of ${quote(id)}: ${capText(errorMessage(err))}`, {
      cause: err,
    });
  }
  return engine;
}

async function probeRank(
  ort: typeof Ort,
  b: OnnxBackbone,
  options: Parameters<typeof createSession>[2],
): Promise<number> {
  const { session } = await createSession(ort, probeModel(b), { ...options, provider: 'cpu' });
  try {
    const shape = b.layout === 'nchw' ? [1, 3, b.size, b.size] : [1, b.size, b.size, 3];
    const x = new ort.Tensor('float32', new Float32Array(3 * b.size * b.size), shape);
    const out = await session.run({ [b.input]: x }, [PROBE_OUTPUT]);
    return Number(out[PROBE_OUTPUT]!.dims[0]);
  } catch (err) {
    throw new ModelError(
      `ONNX Runtime fails a test run of ${quote(b.modelName)} up to ${quote(b.node)}: ${capText(errorMessage(err))}`,
      { cause: err },
    );
  } finally {
    await session.release().catch(() => undefined);
  }
}

class OnnxUserEngine implements FeatureEngine {
  readonly input: { width: number; height: number };
  readonly preferredBatch: number;
  #dim = 0;
  #disposed = false;
  /** Per channel (R, G, B): the input value of each pixel byte (shared/features.ts channelLuts). */
  readonly #luts: [Float32Array, Float32Array, Float32Array];

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    private readonly b: OnnxBackbone,
    readonly id: string,
    readonly backend: string,
  ) {
    this.input = { width: b.size, height: b.size };
    this.preferredBatch = Math.min(b.maxBatch, backend.includes('CUDA') ? 32 : 8);
    this.#luts = channelLuts(b.inputRange, b.mean, b.std);
  }

  get dim(): number {
    return this.#dim;
  }

  async warmUp(): Promise<void> {
    const out = await this.#run([new Uint8Array(this.b.size * this.b.size * 3)]);
    this.#dim = out.length;
  }

  async embed(images: readonly Uint8Array[]): Promise<Float32Array> {
    if (this.#disposed) throw new DeepfeatError('INTERNAL', `feature engine ${this.id} used after dispose()`);
    const out = new Float32Array(images.length * this.#dim);
    // A model exported with a fixed batch (often 1) takes that many images per run.
    const step = Number.isFinite(this.b.maxBatch) ? this.b.maxBatch : Math.max(images.length, 1);
    for (let i = 0; i < images.length; i += step) {
      const rows = await this.#run(images.slice(i, i + step));
      if (rows.length !== Math.min(step, images.length - i) * this.#dim) {
        throw new DeepfeatError('INTERNAL', `${this.id}: ONNX Runtime returned ${rows.length} values for a batch`);
      }
      out.set(rows, i * this.#dim);
    }
    return out;
  }

  /** uint8 HWC images → float32 in the model's layout through the per-channel tables → pooled rows. */
  async #run(images: readonly Uint8Array[]): Promise<Float32Array> {
    const s = this.b.size;
    const plane = s * s;
    const x = new Float32Array(images.length * 3 * plane);
    const [lr, lg, lb] = this.#luts;
    for (let n = 0; n < images.length; n++) {
      const img = images[n]!;
      if (img.length !== plane * 3) {
        throw new DeepfeatError('INTERNAL', `${this.id}: image ${n} has ${img.length} bytes, expected ${s}×${s}×3`);
      }
      const base = n * 3 * plane;
      if (this.b.layout === 'nhwc') {
        for (let q = 0; q < plane * 3; q += 3) {
          x[base + q] = lr[img[q]!]!;
          x[base + q + 1] = lg[img[q + 1]!]!;
          x[base + q + 2] = lb[img[q + 2]!]!;
        }
      } else {
        for (let p = 0, q = 0; p < plane; p++, q += 3) {
          x[base + p] = lr[img[q]!]!;
          x[base + plane + p] = lg[img[q + 1]!]!;
          x[base + 2 * plane + p] = lb[img[q + 2]!]!;
        }
      }
    }
    const dims = this.b.layout === 'nchw' ? [images.length, 3, s, s] : [images.length, s, s, 3];
    const result = await this.session.run({ [this.b.input]: new this.ort.Tensor('float32', x, dims) }, [POOLED_OUTPUT]);
    const y = result[POOLED_OUTPUT]!;
    if (y.dims.length !== 2 || y.dims[0] !== images.length) {
      throw new ModelError(
        `${quote(this.id)}: the pooled tensor has shape [${y.dims.join(', ')}], expected [${images.length}, D]: ` +
          'pick a tensor with one row per image',
      );
    }
    return y.data as Float32Array;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    void this.session.release().catch(() => undefined);
  }
}
