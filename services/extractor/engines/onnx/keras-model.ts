/**
 * A TF.js layers model's Keras topology and weights, read as TensorFlow.js reads them, for the
 * layers → ONNX converter (layers.ts): the layers with their configs and the layers feeding each,
 * from any of the forms graph-cut.ts isLayersModel recognises (`format: layers-model`; the Keras
 * config as the topology; the Keras-era `{keras_version, backend, model_config}`), Sequential
 * (also Keras < 2.2.3's bare layer list) or functional (`inbound_nodes` in Keras 2's list form or
 * Keras 3's `args`/`keras_history` form); and the float32 weights by `<layer>/<weight>` name,
 * dequantised by TF.js's own decoder. What it cannot read raises UnsupportedGraphError, so the
 * engine falls back to TensorFlow.js.
 */
import { tf } from '../tf.js';
import { quote } from '../../../../shared/text.js';
import { UnsupportedGraphError } from './convert.js';

export type Json = Record<string, unknown>;

/** One layer of the topology, with the names of the layers it takes its inputs from. */
export interface KerasLayer {
  name: string;
  className: string;
  config: Json;
  inputs: string[];
  /**
   * The input TF.js creates for a Sequential model whose first layer carries the input shape:
   * not one of the model's layers (TF.js's model.layers omits it), so it cannot be cut at.
   */
  implicit?: boolean;
}

export interface KerasModel {
  /** In topology order; an implicit input first. */
  layers: KerasLayer[];
  byName: Map<string, KerasLayer>;
  /** The model's input layers (TF.js's model.inputs). */
  inputs: KerasLayer[];
}

export interface Weight {
  data: Float32Array;
  shape: number[];
}

// ---------------------------------------------------------------------------------------------
// Reading the topology.

/**
 * The Keras topology of a layers model, in any of the three forms graph-cut.ts isLayersModel
 * recognises.
 * @throws UnsupportedGraphError for a model class or layout this module does not read.
 */
export function readKerasModel(artifacts: tf.io.ModelArtifacts): KerasModel {
  const topo = artifacts.modelTopology;
  if (!isRecord(topo)) throw new UnsupportedGraphError('not a TF.js layers model (no modelTopology)');
  const model = isRecord(topo.model_config) ? topo.model_config : topo;
  const cls = model.class_name;
  let layers: KerasLayer[];
  let inputs: string[];
  if (cls === 'Sequential') ({ layers, inputs } = sequential(model.config));
  else if (cls === 'Model' || cls === 'Functional') ({ layers, inputs } = functional(model.config));
  else {
    throw new UnsupportedGraphError(
      `model class ${quote(String(cls))} is not covered by the ONNX converter (Sequential, Model or Functional are)`,
    );
  }
  const byName = new Map<string, KerasLayer>();
  for (const l of layers) {
    if (byName.has(l.name)) throw new UnsupportedGraphError(`two layers are named ${quote(l.name)}`);
    byName.set(l.name, l);
  }
  const inputLayers = inputs.map((name) => {
    const l = byName.get(name);
    if (l?.className !== 'InputLayer')
      throw new UnsupportedGraphError(`model input ${quote(name)} is not an InputLayer`);
    return l;
  });
  return { layers, byName, inputs: inputLayers };
}

function sequential(config: unknown): { layers: KerasLayer[]; inputs: string[] } {
  // Keras before 2.2.3 wrote the layer list as the config itself.
  const list = Array.isArray(config) ? config : isRecord(config) ? config.layers : undefined;
  if (!Array.isArray(list) || list.length === 0) throw new UnsupportedGraphError('Sequential model with no layers');
  const layers: KerasLayer[] = [];
  let prev: string | undefined;
  for (const [i, raw] of list.entries()) {
    const l = layerOf(raw, i);
    if (i === 0 && l.className !== 'InputLayer') {
      const shape = batchShape(l.config);
      if (!shape) {
        throw new UnsupportedGraphError(
          `the first layer ${quote(l.name)} of the Sequential model gives no input shape`,
        );
      }
      // What TF.js's Sequential.add creates (and names) for it.
      const input: KerasLayer = {
        name: `${l.name}_input`,
        className: 'InputLayer',
        config: { batch_input_shape: shape, dtype: l.config.dtype ?? 'float32' },
        inputs: [],
        implicit: true,
      };
      layers.push(input);
      prev = input.name;
    }
    layers.push({ ...l, inputs: prev === undefined ? [] : [prev] });
    prev = l.name;
  }
  return { layers, inputs: [layers[0]!.name] };
}

function functional(config: unknown): { layers: KerasLayer[]; inputs: string[] } {
  if (!isRecord(config) || !Array.isArray(config.layers))
    throw new UnsupportedGraphError('functional model with no layers');
  const layers = config.layers.map((raw, i) => {
    const l = layerOf(raw, i);
    return { ...l, inputs: inboundNames(isRecord(raw) ? raw.inbound_nodes : undefined, l.name) };
  });
  // [[name, 0, 0], …], or Keras 3's [name, 0, 0] for a single input.
  let refs = config.input_layers;
  if (Array.isArray(refs) && typeof refs[0] === 'string') refs = [refs];
  if (!Array.isArray(refs)) throw new UnsupportedGraphError('functional model with no input_layers');
  const inputs = refs.map((r) => {
    if (!Array.isArray(r) || typeof r[0] !== 'string') throw new UnsupportedGraphError('malformed input_layers');
    return r[0];
  });
  return { layers, inputs };
}

function layerOf(raw: unknown, i: number): { name: string; className: string; config: Json } {
  if (!isRecord(raw) || typeof raw.class_name !== 'string') {
    throw new UnsupportedGraphError(`layer ${i} of the topology has no class_name`);
  }
  const config = isRecord(raw.config) ? raw.config : {};
  const name = typeof config.name === 'string' ? config.name : typeof raw.name === 'string' ? raw.name : undefined;
  if (name === undefined) throw new UnsupportedGraphError(`layer ${i} (${quote(raw.class_name)}) has no name`);
  return { name, className: raw.class_name, config };
}

/**
 * Names of the layers feeding one layer. Keras 2 writes `[[["conv", 0, 0, {}], …]]` (one list per
 * call of the layer); Keras 3 `[{args: [...], kwargs}]` whose tensors carry `keras_history`.
 */
function inboundNames(nodes: unknown, layer: string): string[] {
  if (nodes === undefined || nodes === null || (Array.isArray(nodes) && nodes.length === 0)) return [];
  if (!Array.isArray(nodes)) throw new UnsupportedGraphError(`layer ${quote(layer)} has malformed inbound_nodes`);
  if (nodes.length > 1) {
    throw new UnsupportedGraphError(`layer ${quote(layer)} is applied ${nodes.length} times (a shared layer)`);
  }
  const node = nodes[0];
  const refs: unknown[] = [];
  if (Array.isArray(node)) refs.push(...node);
  else if (isRecord(node)) collectHistory(node.args, refs);
  return refs.map((r) => {
    if (!Array.isArray(r) || typeof r[0] !== 'string') {
      throw new UnsupportedGraphError(`layer ${quote(layer)} has a malformed inbound node`);
    }
    if ((r[1] ?? 0) !== 0 || (r[2] ?? 0) !== 0) {
      throw new UnsupportedGraphError(
        `layer ${quote(layer)} takes output ${String(r[2])} of call ${String(r[1])} of ${quote(r[0])}; ` +
          'only single-output layers called once are covered',
      );
    }
    return r[0];
  });
}

function collectHistory(v: unknown, out: unknown[]): void {
  if (Array.isArray(v)) for (const e of v) collectHistory(e, out);
  else if (isRecord(v)) {
    const history = isRecord(v.config) ? v.config.keras_history : undefined;
    if (v.class_name === '__keras_tensor__' && Array.isArray(history)) out.push(history);
  }
}

function batchShape(config: Json): (number | null)[] | undefined {
  const shape = config.batch_input_shape ?? config.batch_shape;
  if (Array.isArray(shape)) return shape as (number | null)[];
  if (Array.isArray(config.input_shape)) return [null, ...(config.input_shape as (number | null)[])];
  return undefined;
}

export function inputShape(l: KerasLayer): (number | null)[] {
  return batchShape(l.config) ?? [];
}

/** The layers `target` depends on, itself last, in dependency order (iterative post-order DFS). */
export function dependencies(model: KerasModel, target: KerasLayer): KerasLayer[] {
  const order: KerasLayer[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: Array<{ layer: KerasLayer; expanded: boolean }> = [{ layer: target, expanded: false }];
  while (stack.length > 0) {
    const top = stack.pop()!;
    const name = top.layer.name;
    if (top.expanded) {
      state.set(name, 'done');
      order.push(top.layer);
      continue;
    }
    if (state.get(name) === 'done') continue;
    if (state.get(name) === 'open') throw new UnsupportedGraphError(`the topology has a cycle through ${quote(name)}`);
    state.set(name, 'open');
    stack.push({ layer: top.layer, expanded: true });
    for (const i of top.layer.inputs) {
      const dep = model.byName.get(i);
      if (!dep) throw new UnsupportedGraphError(`layer ${quote(name)} takes input from missing layer ${quote(i)}`);
      if (state.get(i) !== 'done') stack.push({ layer: dep, expanded: false });
    }
  }
  return order;
}

// ---------------------------------------------------------------------------------------------
// Weights.

/** The float32 weights of the layers wanted, found by name as TF.js's loadWeights finds them. */
export class Weights {
  readonly #byName = new Map<string, Weight>();

  constructor(artifacts: tf.io.ModelArtifacts, layers: Set<string>) {
    if (!artifacts.weightSpecs || !artifacts.weightData) return;
    const wanted = (key: string) => layers.has(key.slice(0, key.lastIndexOf('/')));
    const decoded = tf.io.decodeWeights(artifacts.weightData, artifacts.weightSpecs);
    try {
      const floats = Object.entries(decoded).filter(([, t]) => t.dtype === 'float32');
      const keep = (key: string, t: tf.Tensor) =>
        this.#byName.set(key, { data: Float32Array.from(t.dataSync() as Float32Array), shape: t.shape });
      for (const [name, t] of floats) if (wanted(name)) keep(name, t);
      // TF 2.2+ exports can put a cell name between layer and weight ('layer/cell/kernel'): as
      // TF.js does, a name not found as it is is also tried without the token before the last.
      for (const [name, t] of floats) {
        const parts = name.split('/');
        if (parts.length < 3) continue;
        const short = [...parts.slice(0, -2), parts[parts.length - 1]].join('/');
        if (wanted(short) && !this.#byName.has(short)) keep(short, t);
      }
    } finally {
      tf.dispose(Object.values(decoded));
    }
  }

  get(l: KerasLayer, weight: string): Weight | undefined {
    return this.#byName.get(`${l.name}/${weight}`);
  }

  /** The weight, of `rank` dimensions when given. */
  need(l: KerasLayer, weight: string, rank?: number): Weight {
    const w = this.get(l, weight);
    if (!w)
      throw new UnsupportedGraphError(`${describe(l)}: weight ${quote(`${l.name}/${weight}`)} is not in the weights`);
    if (rank !== undefined && w.shape.length !== rank) {
      throw new UnsupportedGraphError(`${describe(l)}: weight ${weight} has shape [${w.shape.join(', ')}]`);
    }
    return w;
  }
}

// ---------------------------------------------------------------------------------------------
// Config values.

export function cfg(l: KerasLayer, key: string): unknown {
  if (key in l.config) return l.config[key];
  // TF.js writes snake_case; a hand-written topology may use TF.js's own camelCase.
  const camel = key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  return l.config[camel];
}

export function describe(l: KerasLayer): string {
  // The class name comes from the file too: shown bare only when it is a plain identifier.
  return `layer ${quote(l.name)} (${/^\w{1,64}$/.test(l.className) ? l.className : quote(l.className)})`;
}

export function isRecord(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
