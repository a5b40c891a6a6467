/**
 * A minimal ONNX protobuf READER for a user's model (the counterpart of proto.ts, which writes):
 * just enough of ModelProto, GraphProto, NodeProto, ValueInfoProto and TensorProto to list the
 * graph's inputs (name, element type, shape), initializer names, node outputs (the tensors one
 * can pool), known value shapes, and the opset — plus where the graph sits in the bytes, so a cut
 * can append to it (onnx-user.ts).
 *
 * The bytes are untrusted: every length is checked against the buffer, nesting is fixed by the
 * schema (no recursion into subgraphs or attributes, so no recursion bomb), and every failure is
 * an OnnxFormatError with a message that never quotes the bytes. The caller bounds the size
 * (DEEPFEAT_MAX_MODEL_BYTES, through readObject).
 *
 * Field numbers are those of onnx/onnx.proto (see proto.ts).
 */

/** The bytes are not a well-formed ONNX model (truncated, garbage, or not protobuf). */
export class OnnxFormatError extends Error {
  override name = 'OnnxFormatError';
}

/**
 * Most nodes, initializers and value infos a graph may list, each. Real models have up to some
 * hundred thousand nodes; an empty NodeProto takes 2 bytes, so without a cap a 1 GiB file could ask
 * for half a billion objects.
 */
export const MAX_GRAPH_ENTRIES = 1_000_000;
/** Most names the reader keeps in all (node inputs and outputs, graph entries): bounds its memory. */
const MAX_NAMES = 20_000_000;
/** Most dimensions one shape may have. */
const MAX_RANK = 64;

/** One dimension: a fixed size, a named symbolic size, or unknown. */
export type Dim = number | string | undefined;

export interface ValueShape {
  name: string;
  /** TensorProto.DataType code; 0 when not given. */
  elemType: number;
  /** undefined when the type carries no shape (rank unknown). */
  shape: Dim[] | undefined;
}

export interface OnnxNodeInfo {
  opType: string;
  name: string;
  inputs: string[];
  outputs: string[];
}

export interface OnnxModelInfo {
  irVersion: number;
  /** Version of the default ('' or 'ai.onnx') operator set; 0 when the model imports none. */
  opset: number;
  /** Graph inputs that are not initializers: what a caller must feed. */
  inputs: ValueShape[];
  outputs: ValueShape[];
  initializers: Set<string>;
  nodes: OnnxNodeInfo[];
  /** Every value whose type the model records (inputs, outputs, value_info), by name. */
  shapes: Map<string, ValueShape>;
  /** Byte range of ModelProto.graph's payload, and of the whole field (tag + length + payload). */
  graph: { start: number; end: number; fieldStart: number };
}

/** One protobuf field: its number, wire type, value or payload, and where it sits in the buffer. */
export type Field =
  | { no: number; wire: 0; value: bigint; start: number; end: number }
  | { no: number; wire: 2; bytes: Uint8Array; start: number; end: number }
  | { no: number; wire: 1 | 5; start: number; end: number };

/**
 * The fields of one message, in order; throws OnnxFormatError on anything malformed. Offsets are
 * relative to `base` (the message's own start in a larger buffer).
 */
export function* fields(buf: Uint8Array, base = 0): Generator<Field> {
  let pos = 0;
  const varint = (): bigint => {
    let v = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (pos >= buf.length) throw new OnnxFormatError('the file ends inside a number (truncated?)');
      const b = buf[pos++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, v);
    }
    throw new OnnxFormatError('a number is longer than 10 bytes (not protobuf)');
  };
  while (pos < buf.length) {
    const start = pos;
    const tag = varint();
    const no = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    if (no === 0) throw new OnnxFormatError('field number 0 (not protobuf)');
    if (wire === 0) {
      const value = varint();
      yield { no, wire, value, start: base + start, end: base + pos };
    } else if (wire === 2) {
      const len = varint();
      if (len > BigInt(buf.length - pos))
        throw new OnnxFormatError('a field runs past the end of the file (truncated?)');
      const bytes = buf.subarray(pos, pos + Number(len));
      pos += Number(len);
      yield { no, wire, bytes, start: base + start, end: base + pos };
    } else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      if (pos + n > buf.length) throw new OnnxFormatError('the file ends inside a field (truncated?)');
      pos += n;
      yield { no, wire, start: base + start, end: base + pos };
    } else {
      throw new OnnxFormatError(`wire type ${wire} is not used by ONNX (not an ONNX model)`);
    }
  }
}

const decoder = new TextDecoder('utf-8', { fatal: false });
function str(f: Field): string {
  if (f.wire !== 2) throw new OnnxFormatError(`field ${f.no} should be text`);
  return decoder.decode(f.bytes);
}
function int(f: Field): number {
  if (f.wire !== 0) throw new OnnxFormatError(`field ${f.no} should be a number`);
  return Number(BigInt.asIntN(64, f.value));
}
function msg(f: Field): Uint8Array {
  if (f.wire !== 2) throw new OnnxFormatError(`field ${f.no} should be a message`);
  return f.bytes;
}

/**
 * Reads what deepfeat needs of an ONNX ModelProto.
 * @throws OnnxFormatError when the bytes are not a well-formed ONNX model.
 */
export function readOnnxModel(bytes: Uint8Array): OnnxModelInfo {
  let irVersion = 0;
  let opset = 0;
  let graph: OnnxModelInfo['graph'] | undefined;
  let graphBytes: Uint8Array | undefined;
  // ModelProto: ir_version=1, graph=7, opset_import=8 (domain=1, version=2).
  for (const f of fields(bytes)) {
    if (f.no === 1) irVersion = int(f);
    else if (f.no === 7) {
      if (graph) throw new OnnxFormatError('the model holds two graphs');
      graphBytes = msg(f);
      graph = { start: f.end - graphBytes.length, end: f.end, fieldStart: f.start };
    } else if (f.no === 8) {
      let domain = '';
      let version = 0;
      for (const o of fields(msg(f))) {
        if (o.no === 1) domain = str(o);
        else if (o.no === 2) version = int(o);
      }
      if (domain === '' || domain === 'ai.onnx') opset = version;
    }
  }
  if (!graph || !graphBytes || irVersion <= 0) {
    throw new OnnxFormatError(
      irVersion <= 0 ? 'no ir_version (not an ONNX model, or truncated)' : 'no graph (not an ONNX model, or truncated)',
    );
  }
  const nodes: OnnxNodeInfo[] = [];
  const initializers = new Set<string>();
  const declaredInputs: ValueShape[] = [];
  const outputs: ValueShape[] = [];
  const shapes = new Map<string, ValueShape>();
  // GraphProto: node=1, initializer=5, input=11, output=12, value_info=13, sparse_initializer=15.
  let entries = 0;
  const budget = { names: MAX_NAMES };
  for (const f of fields(graphBytes)) {
    if (
      (f.no === 1 || f.no === 5 || f.no === 11 || f.no === 12 || f.no === 13 || f.no === 15) &&
      ++entries > 3 * MAX_GRAPH_ENTRIES
    ) {
      throw new OnnxFormatError(`the graph lists more than ${3 * MAX_GRAPH_ENTRIES} nodes, weights and values`);
    }
    if (f.no === 1) nodes.push(readNode(msg(f), budget));
    else if (f.no === 5 || f.no === 15) initializers.add(readTensorName(msg(f), f.no === 15));
    else if (f.no === 11 || f.no === 12 || f.no === 13) {
      const v = readValueInfo(msg(f));
      if (f.no === 11) declaredInputs.push(v);
      if (f.no === 12) outputs.push(v);
      if (!shapes.has(v.name) || v.shape) shapes.set(v.name, v);
    }
  }
  const inputs = declaredInputs.filter((v) => !initializers.has(v.name));
  return { irVersion, opset, inputs, outputs, initializers, nodes, shapes, graph };
}

// NodeProto: input=1, output=2, name=3, op_type=4 (attributes, which may hold subgraphs, are skipped).
function readNode(buf: Uint8Array, budget: { names: number }): OnnxNodeInfo {
  const n: OnnxNodeInfo = { opType: '', name: '', inputs: [], outputs: [] };
  for (const f of fields(buf)) {
    if ((f.no === 1 || f.no === 2) && --budget.names < 0) {
      throw new OnnxFormatError(`the graph's nodes name more than ${MAX_NAMES} tensors`);
    }
    if (f.no === 1) n.inputs.push(str(f));
    else if (f.no === 2) n.outputs.push(str(f));
    else if (f.no === 3) n.name = str(f);
    else if (f.no === 4) n.opType = str(f);
  }
  return n;
}

// TensorProto: name=8. SparseTensorProto: values=1 (a TensorProto, whose name is the sparse tensor's).
function readTensorName(buf: Uint8Array, sparse: boolean): string {
  for (const f of fields(buf)) {
    if (sparse && f.no === 1) return readTensorName(msg(f), false);
    if (!sparse && f.no === 8) return str(f);
  }
  return '';
}

// ValueInfoProto: name=1, type=2 → TypeProto.tensor_type=1 → elem_type=1, shape=2 → dim=1 →
// dim_value=1 | dim_param=2.
export function readValueInfo(buf: Uint8Array): ValueShape {
  const v: ValueShape = { name: '', elemType: 0, shape: undefined };
  for (const f of fields(buf)) {
    if (f.no === 1) v.name = str(f);
    else if (f.no === 2) {
      for (const t of fields(msg(f))) {
        if (t.no !== 1) continue; // sequence, map, optional types: no tensor shape
        for (const tt of fields(msg(t))) {
          if (tt.no === 1) v.elemType = int(tt);
          else if (tt.no === 2) {
            const shape: Dim[] = [];
            for (const d of fields(msg(tt))) {
              if (d.no !== 1) continue;
              let dim: Dim;
              for (const x of fields(msg(d))) {
                if (x.no === 1) dim = int(x);
                else if (x.no === 2) dim = str(x);
              }
              if (shape.push(dim) > MAX_RANK) throw new OnnxFormatError(`a shape has more than ${MAX_RANK} dimensions`);
            }
            v.shape = shape;
          }
        }
      }
    }
  }
  return v;
}
