/**
 * TensorFlow.js graph model → ONNX, cut at one node and globally average-pooled, so ONNX Runtime
 * can run the same backbone as TensorFlow.js and give the same features.
 *
 * TF.js graphs are NHWC; ONNX convolutions are NCHW. The converted graph takes its input as NCHW
 * float32 [N, 3, H, W] (the engine lays pixels out that way itself, so no Transpose runs), keeps
 * every 4-D activation NCHW, and rewrites constants and axes that assume NHWC (filters, per-channel
 * vectors, reduction axes).
 *
 * Covered ops (what common TF.js image backbones — MobileNet v1/v2/v3-style, ResNet, EfficientNet
 * whose squeeze-and-excitation gates use Mean with keep_dims rather than Reshape — are converted
 * to): Placeholder, Const, Identity, Conv2D, DepthwiseConv2dNative, the fused _FusedConv2D /
 * FusedDepthwiseConv2dNative (BiasAdd or FusedBatchNorm, then Relu/Relu6/Elu/LeakyRelu/Sigmoid/
 * Tanh), BiasAdd, Add/AddV2/Sub/Mul/RealDiv/Maximum/Minimum, Relu/Relu6/Elu/LeakyRelu/Sigmoid/Tanh,
 * AvgPool/MaxPool, Mean, Squeeze, ConcatV2, Pad/PadV2; SAME, VALID and EXPLICIT padding, strides
 * or dilations (not both). Anything else raises UnsupportedGraphError naming the op, and the
 * caller falls back to TensorFlow.js. test/onnx-convert.test.ts checks each against TensorFlow.js.
 *
 * Layers models (Keras topology) are converted by ./layers.ts, which emitBackbone hands them to,
 * with the helpers exported here. (layers.ts and keras-model.ts import this module and this module
 * imports layers.ts: an ES module cycle that is safe because no module uses another's bindings
 * while it loads, only when called.)
 */
import { createHash } from 'node:crypto';
import { tf } from '../tf.js';
import { isLayersModel } from '../graph-cut.js';
import { emitLayersBackbone } from './layers.js';
import { DataType, encodeModel, type AttributeValue, type NodeInit, type TensorInit } from './proto.js';

/** Bumped whenever the converter's output changes, so cached conversions are redone. */
export const CONVERTER_VERSION = 4;
export const OPSET = 13;
export const ONNX_INPUT = 'input_nchw';
export const ONNX_OUTPUT = 'features';

export class UnsupportedGraphError extends Error {
  override name = 'UnsupportedGraphError';
}

export interface ConvertedModel {
  bytes: Uint8Array;
  /** TF.js node names converted, for logs. */
  nodes: number;
}

interface TfNode {
  name: string;
  op: string;
  input?: string[];
  attr?: Record<string, TfAttr>;
}
interface TfAttr {
  i?: string | number;
  f?: number;
  b?: boolean;
  s?: string;
  list?: { i?: (string | number)[]; s?: string[]; f?: number[] };
  type?: string;
  shape?: unknown;
}

/** A constant: data in TF's own layout and shape. */
interface ConstValue {
  data: Float32Array;
  shape: number[];
}

/** What a TF tensor became: an ONNX value (NCHW if 4-D activation) or a constant not yet emitted. */
type Value =
  | { kind: 'tensor'; name: string; layout: 'nchw' | 'plain'; rank: number }
  | { kind: 'const'; value: ConstValue; name: string };

/** TF NHWC axis → NCHW axis. */
const NHWC_TO_NCHW = [0, 2, 3, 1];

function attrString(a: TfAttr | undefined): string | undefined {
  return a?.s === undefined ? undefined : Buffer.from(a.s, 'base64').toString('utf8');
}
function attrInts(a: TfAttr | undefined): number[] {
  return (a?.list?.i ?? []).map(Number);
}
function attrStrings(a: TfAttr | undefined): string[] {
  return (a?.list?.s ?? []).map((s) => Buffer.from(s, 'base64').toString('utf8'));
}

/** Input reference 'name:1' / '^ctrl' → [node name, output index], or undefined for control inputs. */
function parseRef(ref: string): [string, number] | undefined {
  if (ref.startsWith('^')) return undefined;
  const m = /^(.*?)(?::(\d+))?$/.exec(ref)!;
  return [m[1]!, m[2] === undefined ? 0 : Number(m[2])];
}

/**
 * Convert `artifacts` (a TF.js graph model in memory) cut at `node` (a full node name, as
 * resolveNode returns it) to ONNX bytes whose output is [N, C]: the node's activation averaged
 * over H and W (or the node itself when it is already [N, D]).
 * @throws UnsupportedGraphError when the graph uses an op or layout this converter does not cover.
 */
export function convertGraphToOnnx(
  artifacts: tf.io.ModelArtifacts,
  node: string,
  producerVersion: string,
): ConvertedModel {
  const b = new GraphBuilder();
  const converted = emitBackbone(b, artifacts, node, { input: ONNX_INPUT, output: ONNX_OUTPUT });
  const bytes = encodeModel({
    producerName: 'deepfeat',
    producerVersion,
    opsetVersion: OPSET,
    docString: `converted from a TensorFlow.js model, cut at ${node}, averaged over height and width`,
    graph: {
      name: 'deepfeat_features',
      nodes: b.nodes,
      initializers: b.initializers,
      inputs: [{ name: ONNX_INPUT, elemType: DataType.FLOAT, shape: ['N', 3, 'H', 'W'] }],
      outputs: [{ name: ONNX_OUTPUT, elemType: DataType.FLOAT, shape: ['N', 'D'] }],
    },
  });
  return { bytes, nodes: converted.nodes };
}

/**
 * Adds the graph model's nodes up to `node` to `b`, reading the image from `io.input` (float32
 * NCHW, already in the model's pixel range) and writing the pooled features [N, D] to
 * `io.output`: the node's activation averaged over H and W, or the node itself when it is
 * already [N, D]. Both names must be reserved in `b` (GraphBuilder's constructor). Shared by the
 * feature engine's model (convertGraphToOnnx) and the published classifier (classifier.ts).
 * A layers model goes to layers.ts emitLayersBackbone, `node` being the layer's name.
 * @throws UnsupportedGraphError when the graph uses an op or layout this converter does not cover.
 */
export function emitBackbone(
  b: GraphBuilder,
  artifacts: tf.io.ModelArtifacts,
  node: string,
  io: { input: string; output: string },
): { nodes: number } {
  if (isLayersModel(artifacts)) return emitLayersBackbone(b, artifacts, node, io);
  const topo = artifacts.modelTopology as { node?: TfNode[] } | undefined;
  const tfNodes = topo?.node;
  if (!Array.isArray(tfNodes)) throw new UnsupportedGraphError('not a TensorFlow.js graph model (no node list)');
  if (!artifacts.weightSpecs || !artifacts.weightData) throw new UnsupportedGraphError('graph model has no weights');
  const byName = new Map(tfNodes.map((n) => [n.name, n]));
  const target = parseRef(node);
  if (!target || !byName.has(target[0])) throw new UnsupportedGraphError(`node ${node} is not in the graph`);
  if (target[1] !== 0) throw new UnsupportedGraphError(`node ${node}: only a node's first output can be converted`);

  // Only what the target depends on, in dependency order (iterative post-order DFS).
  const order: TfNode[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: Array<{ name: string; expanded: boolean }> = [{ name: target[0], expanded: false }];
  while (stack.length > 0) {
    const top = stack.pop()!;
    if (top.expanded) {
      state.set(top.name, 'done');
      order.push(byName.get(top.name)!);
      continue;
    }
    if (state.get(top.name) === 'done') continue;
    if (state.get(top.name) === 'open') throw new UnsupportedGraphError(`graph has a cycle through ${top.name}`);
    const n = byName.get(top.name);
    if (!n) throw new UnsupportedGraphError(`graph refers to missing node ${top.name}`);
    state.set(top.name, 'open');
    stack.push({ name: top.name, expanded: true });
    for (const ref of n.input ?? []) {
      const r = parseRef(ref);
      if (r && state.get(r[0]) !== 'done') stack.push({ name: r[0], expanded: false });
    }
  }

  const weights = decodeConstants(artifacts, new Set(order.filter((n) => n.op === 'Const').map((n) => n.name)));
  const values = new Map<string, Value>();
  const input = (n: TfNode, i: number): Value => {
    const ref = (n.input ?? []).filter((r) => !r.startsWith('^'))[i];
    const r = ref === undefined ? undefined : parseRef(ref);
    if (!r) throw new UnsupportedGraphError(`${n.op} node ${n.name} lacks input ${i}`);
    if (r[1] !== 0) throw new UnsupportedGraphError(`${n.op} node ${n.name} uses output ${r[1]} of ${r[0]}`);
    const v = values.get(r[0]);
    if (!v) throw new UnsupportedGraphError(`${n.op} node ${n.name}: input ${r[0]} was not converted`);
    return v;
  };
  const constInput = (n: TfNode, i: number, what: string): ConstValue => {
    const v = input(n, i);
    if (v.kind !== 'const') throw new UnsupportedGraphError(`${n.op} node ${n.name}: ${what} must be a constant`);
    return v.value;
  };
  const activation = (n: TfNode, i: number): string => {
    const v = input(n, i);
    if (v.kind !== 'tensor' || v.layout !== 'nchw') {
      throw new UnsupportedGraphError(`${n.op} node ${n.name}: input ${i} must be a 4-D image activation`);
    }
    return v.name;
  };

  let placeholders = 0;
  for (const n of order) {
    const out = b.fresh(n.name);
    const set = (layout: 'nchw' | 'plain', rank: number) =>
      values.set(n.name, { kind: 'tensor', name: out, layout, rank });
    switch (n.op) {
      case 'Placeholder': {
        if (++placeholders > 1) throw new UnsupportedGraphError('graph has more than one input');
        const dtype = n.attr?.dtype?.type;
        if (dtype !== undefined && dtype !== 'DT_FLOAT')
          throw new UnsupportedGraphError(`input ${n.name} has dtype ${dtype}, not float32`);
        b.node('Identity', [io.input], [out]);
        set('nchw', 4);
        break;
      }
      case 'Const': {
        const c = weights.get(n.name);
        if (!c) throw new UnsupportedGraphError(`constant ${n.name} has no float32 value in the weights`);
        values.set(n.name, { kind: 'const', value: c, name: out });
        break;
      }
      case 'Identity':
      case 'StopGradient':
      case 'Snapshot':
        values.set(n.name, input(n, 0));
        break;
      case 'Conv2D':
      case 'DepthwiseConv2dNative':
      case '_FusedConv2D':
      case 'FusedDepthwiseConv2dNative':
        convertConv(b, n, out, activation(n, 0), constInput(n, 1, 'the filter'), (i) =>
          constInput(n, 2 + i, `fused argument ${i}`),
        );
        set('nchw', 4);
        break;
      case 'BiasAdd': {
        checkNhwc(n);
        const bias = constInput(n, 1, 'the bias');
        b.node('Add', [activation(n, 0), b.constant(`${out}/bias`, channelVector(bias.data))], [out]);
        set('nchw', 4);
        break;
      }
      case 'Add':
      case 'AddV2':
      case 'Sub':
      case 'Mul':
      case 'RealDiv':
      case 'Maximum':
      case 'Minimum': {
        const opType = {
          Add: 'Add',
          AddV2: 'Add',
          Sub: 'Sub',
          Mul: 'Mul',
          RealDiv: 'Div',
          Maximum: 'Max',
          Minimum: 'Min',
        }[n.op]!;
        const [x, y] = [input(n, 0), input(n, 1)];
        if (x.kind === 'const' && y.kind === 'const')
          throw new UnsupportedGraphError(`${n.op} node ${n.name} has only constant inputs`);
        const t = (x.kind === 'tensor' ? x : y) as Extract<Value, { kind: 'tensor' }>;
        const other = x.kind === 'tensor' ? y : x;
        if (other.kind === 'tensor' && other.layout !== t.layout) {
          throw new UnsupportedGraphError(`${n.op} node ${n.name} mixes an image activation with a non-image tensor`);
        }
        const name = (v: Value) =>
          v.kind === 'tensor' ? v.name : b.constant(v.name, constFor(v.value, t.layout === 'nchw'));
        b.node(opType, [name(x), name(y)], [out]);
        set(t.layout, t.rank);
        break;
      }
      case 'Relu':
      case 'Relu6':
      case 'Elu':
      case 'LeakyRelu':
      case 'Sigmoid':
      case 'Tanh': {
        const x = input(n, 0);
        if (x.kind !== 'tensor') throw new UnsupportedGraphError(`${n.op} node ${n.name} on a constant`);
        emitActivation(b, n.op, x.name, out, n.attr?.alpha?.f);
        set(x.layout, x.rank);
        break;
      }
      case 'AvgPool':
      case 'MaxPool': {
        const k = attrInts(n.attr?.ksize);
        const s = attrInts(n.attr?.strides);
        checkNhwc(n);
        if (k[0] !== 1 || k[3] !== 1 || s[0] !== 1 || s[3] !== 1)
          throw new UnsupportedGraphError(`${n.op} node ${n.name} pools over batch or channels`);
        b.node(n.op === 'AvgPool' ? 'AveragePool' : 'MaxPool', [activation(n, 0)], [out], {
          kernel_shape: { kind: 'ints', value: [k[1]!, k[2]!] },
          strides: { kind: 'ints', value: [s[1]!, s[2]!] },
          ...padding(n),
          // TF's SAME average pooling divides by the number of real (unpadded) pixels.
          ...(n.op === 'AvgPool' ? { count_include_pad: { kind: 'int', value: 0 } as AttributeValue } : {}),
        });
        set('nchw', 4);
        break;
      }
      case 'Mean': {
        const x = activation(n, 0);
        const axes = [...constInput(n, 1, 'the axes').data].map((a) => NHWC_TO_NCHW[a < 0 ? a + 4 : a]!);
        const keep = n.attr?.keep_dims?.b === true;
        const sorted = [...axes].sort();
        if (!keep && sorted.join() !== '2,3')
          throw new UnsupportedGraphError(`Mean node ${n.name} reduces axes other than height and width`);
        b.node('ReduceMean', [x], [out], {
          axes: { kind: 'ints', value: sorted },
          keepdims: { kind: 'int', value: keep ? 1 : 0 },
        });
        if (keep) set('nchw', 4);
        else set('plain', 2);
        break;
      }
      case 'Squeeze': {
        const x = input(n, 0);
        const dims = attrInts(n.attr?.squeeze_dims ?? n.attr?.axis);
        if (x.kind !== 'tensor' || x.layout !== 'nchw' || [...dims].sort().join() !== '1,2') {
          throw new UnsupportedGraphError(
            `Squeeze node ${n.name}: only squeezing height and width of an image activation is supported`,
          );
        }
        b.node('Squeeze', [x.name, b.constant(`${out}/axes`, int64([2, 3]), [2])], [out]);
        set('plain', 2);
        break;
      }
      case 'ConcatV2': {
        const ins = (n.input ?? []).filter((r) => !r.startsWith('^'));
        const axisConst = constInput(n, ins.length - 1, 'the axis');
        const axis = axisConst.data[0]!;
        const names = ins.slice(0, -1).map((_, i) => activation(n, i));
        b.node('Concat', names, [out], { axis: { kind: 'int', value: NHWC_TO_NCHW[axis < 0 ? axis + 4 : axis]! } });
        set('nchw', 4);
        break;
      }
      case 'Pad':
      case 'PadV2': {
        const p = constInput(n, 1, 'the paddings').data; // [4, 2] NHWC (before, after)
        const before = NHWC_TO_NCHW.map((_, nchw) => p[NHWC_TO_NCHW.indexOf(nchw) * 2]!);
        const after = NHWC_TO_NCHW.map((_, nchw) => p[NHWC_TO_NCHW.indexOf(nchw) * 2 + 1]!);
        const value = n.op === 'PadV2' ? constInput(n, 2, 'the pad value').data[0]! : 0;
        b.node(
          'Pad',
          [
            activation(n, 0),
            b.constant(`${out}/pads`, int64([...before, ...after]), [8]),
            b.constant(`${out}/value`, new Float32Array([value]), []),
          ],
          [out],
        );
        set('nchw', 4);
        break;
      }
      default:
        throw new UnsupportedGraphError(`op ${n.op} (node ${n.name}) is not covered by the ONNX converter`);
    }
  }

  const last = values.get(target[0])!;
  if (last.kind !== 'tensor') throw new UnsupportedGraphError(`node ${node} is a constant`);
  if (last.layout === 'nchw') {
    b.node('ReduceMean', [last.name], [io.output], {
      axes: { kind: 'ints', value: [2, 3] },
      keepdims: { kind: 'int', value: 0 },
    });
  } else if (last.rank === 2) {
    b.node('Identity', [last.name], [io.output]);
  } else {
    throw new UnsupportedGraphError(
      `node ${node} gives a rank-${last.rank} tensor; features need a 4-D activation or [N, D]`,
    );
  }
  return { nodes: order.length };
}

/** Tensors at least this long are stored once however often a graph adds them (GraphBuilder.constant). */
const SHARED_CONSTANT_MIN_ELEMENTS = 64;

/** ONNX nodes and initializers with unique names (every name goes through fresh()). */
export class GraphBuilder {
  readonly nodes: NodeInit[] = [];
  readonly initializers: TensorInit[] = [];
  /** The graph's own inputs and outputs are taken: a TF node of such a name gets another. */
  readonly #names: Set<string>;

  constructor(reserved: readonly string[] = [ONNX_INPUT, ONNX_OUTPUT]) {
    this.#names = new Set(reserved);
  }

  fresh(base: string): string {
    let name = base;
    for (let i = 1; this.#names.has(name); i++) name = `${base}_${i}`;
    this.#names.add(name);
    return name;
  }

  node(opType: string, inputs: string[], outputs: string[], attributes?: Record<string, AttributeValue>): void {
    this.nodes.push({ opType, name: this.fresh(`${outputs[0]}/${opType}`), inputs, outputs, attributes });
  }

  /**
   * Adds a float32 (or int64) initializer and returns its name. A large tensor equal to one
   * already added (same type, shape and bytes) is not stored twice: its name is returned. A graph
   * that runs one backbone at two input sizes (multi-scale features, classifier.ts) emits the same
   * weights twice and keeps one copy.
   */
  constant(
    base: string,
    value: { data: Float32Array | BigInt64Array; shape: number[] } | Float32Array | BigInt64Array,
    shape?: number[],
  ): string {
    const v = ArrayBuffer.isView(value) ? { data: value, shape: shape ?? [value.length] } : value;
    const isInt = v.data instanceof BigInt64Array;
    let key: string | undefined;
    if (v.data.length >= SHARED_CONSTANT_MIN_ELEMENTS) {
      const bytes = new Uint8Array(v.data.buffer, v.data.byteOffset, v.data.byteLength);
      key = `${isInt ? 'i' : 'f'}:${v.shape.join('x')}:${createHash('sha256').update(bytes).digest('hex')}`;
      const same = this.#byContent.get(key);
      if (same !== undefined) return same;
    }
    const name = this.fresh(base);
    this.initializers.push({ name, dataType: isInt ? DataType.INT64 : DataType.FLOAT, dims: v.shape, data: v.data });
    if (key !== undefined) this.#byContent.set(key, name);
    return name;
  }
  readonly #byContent = new Map<string, string>();
}

export function int64(values: number[]): BigInt64Array {
  return BigInt64Array.from(values.map((v) => BigInt(v)));
}

/** A per-channel vector [C] as [C, 1, 1], to broadcast over an NCHW activation. */
function channelVector(data: Float32Array): { data: Float32Array; shape: number[] } {
  return { data, shape: [data.length, 1, 1] };
}

/**
 * A constant operand of an elementwise op, laid out for its partner. TF broadcasts from the last
 * axis (C in NHWC): pad the constant's shape to rank 4 on the left, then transpose NHWC → NCHW.
 */
function constFor(c: ConstValue, nchw: boolean): { data: Float32Array; shape: number[] } {
  if (!nchw || c.shape.length === 0) return { data: c.data, shape: c.shape };
  if (c.shape.length > 4)
    throw new UnsupportedGraphError(`constant of rank ${c.shape.length} next to an image activation`);
  const [n, h, w, ch] = [...Array(4 - c.shape.length).fill(1), ...c.shape] as number[];
  const out = new Float32Array(c.data.length);
  for (let a = 0; a < n!; a++)
    for (let y = 0; y < h!; y++)
      for (let x = 0; x < w!; x++)
        for (let k = 0; k < ch!; k++)
          out[((a * ch! + k) * h! + y) * w! + x] = c.data[((a * h! + y) * w! + x) * ch! + k]!;
  return { data: out, shape: [n!, ch!, h!, w!] };
}

function checkNhwc(n: TfNode): void {
  const fmt = attrString(n.attr?.data_format);
  if (fmt !== undefined && fmt !== 'NHWC')
    throw new UnsupportedGraphError(`${n.op} node ${n.name} uses data format ${fmt}; only NHWC is covered`);
}

/**
 * ONNX padding attributes for TF's SAME / VALID / EXPLICIT. `conv` (kernel, strides, dilations,
 * [h, w] each) is given for convolutions: ONNX Runtime refuses auto_pad SAME_* on a dilated
 * convolution, so that one gets explicit pads.
 */
function padding(
  n: TfNode,
  conv?: { kernel: number[]; strides: number[]; dilations: number[] },
): Record<string, AttributeValue> {
  const p = attrString(n.attr?.padding);
  if (p === 'EXPLICIT') {
    const e = attrInts(n.attr?.explicit_paddings); // NHWC (before, after) pairs
    return { pads: { kind: 'ints', value: [e[2]!, e[4]!, e[3]!, e[5]!] } };
  }
  return padAttributes(p, `${n.op} node ${n.name}`, conv);
}

/**
 * ONNX padding attributes for TF's (and Keras's) SAME / VALID, for `what` (named in errors); see
 * padding(). Shared with layers.ts.
 */
export function padAttributes(
  p: string | undefined,
  what: string,
  conv?: { kernel: number[]; strides: number[]; dilations: number[] },
): Record<string, AttributeValue> {
  if (p === 'SAME' && conv && conv.dilations.some((d) => d !== 1)) {
    // With stride 1, SAME pads (k - 1) * d in total whatever the input size, the odd pixel at the
    // end as below. With a stride too the pads would depend on the input size (TF and TF.js
    // refuse dilations with strides anyway).
    if (conv.strides.some((s) => s !== 1))
      throw new UnsupportedGraphError(`${what} has both dilations and strides above 1`);
    const total = conv.kernel.map((k, i) => (k - 1) * conv.dilations[i]!);
    const before = total.map((t) => Math.floor(t / 2));
    return { pads: { kind: 'ints', value: [...before, ...total.map((t, i) => t - before[i]!)] } };
  }
  // TF's SAME puts the odd extra pixel at the end: ONNX SAME_UPPER.
  if (p === 'SAME') return { auto_pad: { kind: 'string', value: 'SAME_UPPER' } };
  if (p === 'VALID') return { auto_pad: { kind: 'string', value: 'VALID' } };
  throw new UnsupportedGraphError(`${what} has padding ${p ?? '(none)'}`);
}

function emitActivation(b: GraphBuilder, op: string, x: string, out: string, alpha?: number): void {
  switch (op) {
    case 'Relu':
      b.node('Relu', [x], [out]);
      return;
    case 'Relu6':
      b.node(
        'Clip',
        [x, b.constant(`${out}/min`, new Float32Array([0]), []), b.constant(`${out}/max`, new Float32Array([6]), [])],
        [out],
      );
      return;
    case 'Elu':
      b.node('Elu', [x], [out]);
      return;
    case 'LeakyRelu':
      b.node('LeakyRelu', [x], [out], { alpha: { kind: 'float', value: alpha ?? 0.2 } });
      return;
    case 'Sigmoid':
      b.node('Sigmoid', [x], [out]);
      return;
    case 'Tanh':
      b.node('Tanh', [x], [out]);
      return;
    default:
      throw new UnsupportedGraphError(`activation ${op} is not covered by the ONNX converter`);
  }
}

/** Conv2D / depthwise, plain or fused with a bias or batch norm and an activation. */
function convertConv(
  b: GraphBuilder,
  n: TfNode,
  out: string,
  x: string,
  filter: ConstValue,
  arg: (i: number) => ConstValue,
): void {
  checkNhwc(n);
  const depthwise = n.op.includes('Depthwise');
  const strides = attrInts(n.attr?.strides);
  const dil = attrInts(n.attr?.dilations);
  if (filter.shape.length !== 4) throw new UnsupportedGraphError(`${n.op} node ${n.name}: filter is not 4-D`);
  const [kh, kw, cin] = filter.shape as [number, number, number, number];
  const { data: w, shape: onnxShape } = tfFilterToOnnx(filter, depthwise);
  const [cout, inPerGroup] = onnxShape as [number, number];

  const fused = n.op.startsWith('_Fused') || n.op.startsWith('Fused') ? attrStrings(n.attr?.fused_ops) : [];
  let bias: Float32Array | undefined;
  let act: string | undefined;
  for (const f of fused) {
    if (f === 'BiasAdd') bias = arg(0).data;
    else if (f === 'FusedBatchNorm') {
      // y = (conv - mean) * scale / sqrt(var + eps) + offset, folded into the filter and a bias.
      const [scale, offset, mean, variance] = [arg(0).data, arg(1).data, arg(2).data, arg(3).data];
      const eps = n.attr?.epsilon?.f ?? 0.001;
      const per = w.length / cout;
      bias = new Float32Array(cout);
      for (let o = 0; o < cout; o++) {
        const k = scale[o]! / Math.sqrt(variance[o]! + eps);
        for (let j = 0; j < per; j++) w[o * per + j]! *= k;
        bias[o] = offset[o]! - mean[o]! * k;
      }
    } else if (['Relu', 'Relu6', 'Elu', 'LeakyRelu', 'Sigmoid', 'Tanh'].includes(f)) act = f;
    else throw new UnsupportedGraphError(`${n.op} node ${n.name} fuses ${f}, which the ONNX converter does not cover`);
  }
  if (bias && bias.length !== cout)
    throw new UnsupportedGraphError(`${n.op} node ${n.name}: bias has ${bias.length} values for ${cout} channels`);

  const inputs = [x, b.constant(`${out}/W`, { data: w, shape: [cout, inPerGroup, kh, kw] })];
  if (bias) inputs.push(b.constant(`${out}/B`, bias, [cout]));
  const convOut = act ? b.fresh(`${out}/conv`) : out;
  const s2 = [strides[1] ?? 1, strides[2] ?? 1];
  const d2 = [dil[1] ?? 1, dil[2] ?? 1];
  b.node('Conv', inputs, [convOut], {
    kernel_shape: { kind: 'ints', value: [kh, kw] },
    strides: { kind: 'ints', value: s2 },
    dilations: { kind: 'ints', value: d2 },
    group: { kind: 'int', value: depthwise ? cin : 1 },
    ...padding(n, { kernel: [kh, kw], strides: s2, dilations: d2 }),
  });
  if (act) emitActivation(b, act, convOut, out, n.attr?.leakyrelu_alpha?.f);
}

/**
 * A TF/Keras filter [kh, kw, in, out] (depthwise: [kh, kw, in, multiplier]) as an ONNX Conv weight
 * [out, in/group, kh, kw], in a new array. Shared with layers.ts.
 */
export function tfFilterToOnnx(
  filter: { data: Float32Array; shape: readonly number[] },
  depthwise: boolean,
): { data: Float32Array; shape: number[] } {
  const [kh, kw, cin, m] = filter.shape as [number, number, number, number];
  const cout = depthwise ? cin * m : m;
  const w = new Float32Array(filter.data.length);
  const inPerGroup = depthwise ? 1 : cin;
  for (let y = 0; y < kh; y++)
    for (let xk = 0; xk < kw; xk++)
      for (let i = 0; i < cin; i++)
        for (let o = 0; o < m; o++) {
          const src = ((y * kw + xk) * cin + i) * m + o;
          const oc = depthwise ? i * m + o : o;
          const ic = depthwise ? 0 : i;
          w[((oc * inPerGroup + ic) * kh + y) * kw + xk] = filter.data[src]!;
        }
  return { data: w, shape: [cout, inPerGroup, kh, kw] };
}

/** Float32 values of the graph's constants (dequantised by TF.js's own weight decoder). */
function decodeConstants(artifacts: tf.io.ModelArtifacts, wanted: Set<string>): Map<string, ConstValue> {
  const out = new Map<string, ConstValue>();
  const decoded = tf.io.decodeWeights(artifacts.weightData!, artifacts.weightSpecs!);
  try {
    for (const [name, t] of Object.entries(decoded)) {
      if (!wanted.has(name)) continue;
      if (t.dtype !== 'float32' && t.dtype !== 'int32') continue;
      out.set(name, { data: Float32Array.from(t.dataSync() as Float32Array | Int32Array), shape: t.shape });
    }
  } finally {
    tf.dispose(Object.values(decoded));
  }
  return out;
}
