/**
 * TensorFlow.js feature engine: any graph or layers model, cut at one node, globally
 * average-pooled. Also owns the choice of TensorFlow.js backend, which is process-wide.
 */
import * as tf from '@tensorflow/tfjs';
import { DeepfeatError, ModelError, errorMessage } from '../../../shared/errors.js';
import type { BackendChoice, FeatureEngine } from './engine.js';

type Log = (msg: string, extra?: object) => void;
export type InputRange = '0,1' | '-1,1' | '0,255';

// ───────────────────────────── backend choice ─────────────────────────────

/** Native TensorFlow bindings, best first. Optional packages: absent on most hosts. */
const NATIVE_PACKAGES = [
  { pkg: '@tensorflow/tfjs-node-gpu', label: 'tensorflow (GPU)' },
  { pkg: '@tensorflow/tfjs-node', label: 'tensorflow (CPU)' },
] as const;

/** One promise per choice, so concurrent loads initialise a backend once. */
const chosen = new Map<BackendChoice, Promise<string>>();

/**
 * Make TensorFlow.js run on the chosen backend and return its label for logs
 * ('tensorflow (GPU)', 'tensorflow (CPU)', 'wasm' or 'cpu').
 *
 * 'auto' tries @tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node, then WebAssembly, then plain
 * JS; an explicit choice fails with a ModelError rather than silently running somewhere slower.
 * TensorFlow.js has one active backend per process: the last call wins, so a process should use
 * one choice for all its engines.
 */
export function useBackend(choice: BackendChoice = 'auto', log?: Log): Promise<string> {
  let p = chosen.get(choice);
  if (!p) {
    p = pickBackend(choice, log);
    chosen.set(choice, p);
    p.catch(() => chosen.delete(choice)); // a failed choice may be retried
  }
  return p;
}

async function pickBackend(choice: BackendChoice, log?: Log): Promise<string> {
  if (choice === 'auto' || choice === 'tensorflow') {
    const label = await tryNative(log);
    if (label) return label;
    if (choice === 'tensorflow') {
      throw new ModelError(
        "backend 'tensorflow' was asked for but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node " +
          "can be loaded here; install one of them, or use backend 'wasm'",
      );
    }
  }
  if (choice === 'auto' || choice === 'wasm') {
    let ok = false;
    let cause: unknown;
    try {
      await import('@tensorflow/tfjs-backend-wasm');
      ok = await tf.setBackend('wasm');
    } catch (err) {
      cause = err;
    }
    if (ok) return 'wasm';
    if (choice === 'wasm') {
      throw new ModelError(`backend 'wasm' could not start: ${cause ? errorMessage(cause) : 'initialisation failed'}`, {
        cause,
      });
    }
    log?.("WebAssembly backend could not start; falling back to the plain JS 'cpu' backend (much slower)", {
      reason: cause ? errorMessage(cause) : 'initialisation failed',
    });
  }
  if (!(await tf.setBackend('cpu'))) throw new ModelError("TensorFlow.js backend 'cpu' could not start");
  return 'cpu';
}

async function tryNative(log?: Log): Promise<string | undefined> {
  for (const { pkg, label } of NATIVE_PACKAGES) {
    try {
      await importOptional(pkg);
    } catch (err) {
      log?.(`${pkg} not loaded`, { reason: errorMessage(err).split('\n')[0] });
      continue;
    }
    // The package registers 'tensorflow' with the copy of @tensorflow/tfjs-core it resolves;
    // if that is not ours (version mismatch), we cannot use it.
    if (tf.findBackendFactory('tensorflow') && (await tf.setBackend('tensorflow'))) {
      // tfjs-node-gpu runs on the CPU when it finds no usable GPU; say so rather than claim a GPU.
      const usingGpu = (tf.backend() as { isUsingGpuDevice?: boolean }).isUsingGpuDevice;
      if (label === 'tensorflow (GPU)' && usingGpu === false) {
        log?.(`${pkg} loaded but TensorFlow found no usable GPU; running on CPU`);
        return 'tensorflow (CPU)';
      }
      return label;
    }
    log?.(`${pkg} loaded but registered no usable 'tensorflow' backend (different @tensorflow/tfjs-core copy?)`);
  }
  return undefined;
}

/** Import a package that may not be installed, without TypeScript needing its types. */
function importOptional(specifier: string): Promise<unknown> {
  return import(specifier);
}

// ───────────────────────────── engine ─────────────────────────────

export interface TfjsEngineOptions {
  /** Topology + weights, e.g. from `tf.io.fromMemory`-ready sources (no URL loading here). */
  artifacts: tf.io.ModelArtifacts;
  /** Short name for the id and messages: 'mobilenet_v2_mid' or the model's URL. */
  modelName: string;
  /** Graph node or layer name; for graph models a unique '/'-suffix of the full name also works. */
  node: string;
  /** Square input side; default from the model's input shape. */
  inputSize?: number;
  inputRange?: InputRange;
  backend?: BackendChoice;
  log?: Log;
  /** Largest batch sent through the network at once (bounds memory); default 32. */
  maxBatch?: number;
}

/** Runs one NHWC batch and returns pooled rows [n, dim] (caller disposes input and output). */
type Runner = (x: tf.Tensor4D) => Promise<tf.Tensor2D>;

/**
 * Global average pooling to one row per image: rank 4 (N,H,W,C) → mean over H and W;
 * rank 2 (N,D) → as is. Always returns a new float32 tensor (safe to dispose the input).
 */
export function poolToRows(t: tf.Tensor, nodeLabel: string): tf.Tensor2D {
  return tf.tidy(() => {
    const f = t.dtype === 'float32' ? t : t.cast('float32');
    if (f.rank === 4) return f.mean([1, 2]) as tf.Tensor2D;
    if (f.rank === 2) return f.clone() as tf.Tensor2D;
    throw new ModelError(
      `node ${nodeLabel} gives a rank-${f.rank} tensor [${f.shape.join(', ')}]; features need rank 4 ` +
        '(N,H,W,C, averaged over H and W) or rank 2 (N,D): choose another node',
    );
  });
}

/** Load a TensorFlow.js model from memory, cut it at `node`, warm it up, and wrap it as a FeatureEngine. */
export async function createTfjsEngine(opts: TfjsEngineOptions): Promise<FeatureEngine> {
  const { artifacts, modelName, log } = opts;
  const inputRange = opts.inputRange ?? '0,1';
  const maxBatch = opts.maxBatch ?? 32;
  const backend = await useBackend(opts.backend, log);

  const isLayers = isLayersModel(artifacts);

  let model: tf.GraphModel | tf.LayersModel;
  try {
    model = isLayers
      ? await tf.loadLayersModel(tf.io.fromMemory(artifacts))
      : await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  } catch (err) {
    throw new ModelError(`cannot load TensorFlow.js model ${modelName}: ${errorMessage(err)}`, { cause: err });
  }

  try {
    const cut =
      model instanceof tf.GraphModel
        ? cutGraph(model, artifacts, opts.node, modelName)
        : cutLayers(model, opts.node, modelName);
    const size = inputSide(cut.inputShape, opts.inputSize, modelName);
    const engine = new TfjsEngine({
      id: `${modelName}@${cut.label}`,
      backend: `tfjs ${backend}`,
      size,
      inputRange,
      inputDtype: cut.inputDtype,
      maxBatch,
      run: cut.run,
      dispose: () => model.dispose(),
    });
    try {
      await engine.warmUp();
    } catch (err) {
      if (err instanceof DeepfeatError) throw err;
      // e.g. an op this backend has no kernel for: the model cannot be used here.
      throw new ModelError(
        `model ${modelName} fails a test run to node "${opts.node}" on ${backend}: ${errorMessage(err)}`,
        {
          cause: err,
        },
      );
    }
    return engine;
  } catch (err) {
    model.dispose();
    throw err;
  }
}

/** A layers model (Keras-style topology) rather than a graph model. */
export function isLayersModel(artifacts: tf.io.ModelArtifacts): boolean {
  return (
    artifacts.format === 'layers-model' ||
    (artifacts.format === undefined && isRecord(artifacts.modelTopology) && 'class_name' in artifacts.modelTopology)
  );
}

/**
 * Where a graph model is cut, worked out from its topology alone (no model load): the full node
 * name, its label for engine ids (as the TF.js engine names it), and the square input side.
 * Lets another engine (ONNX Runtime) run the same cut under the same id.
 * @throws ModelError for an unknown or ambiguous node or an unusable input.
 */
export function planGraphCut(
  artifacts: tf.io.ModelArtifacts,
  node: string,
  modelName: string,
  inputSize?: number,
): { full: string; id: string; size: number } {
  const names = graphNodeNames(artifacts);
  const full = resolveNode(names, node, modelName);
  const [fullBase, index = ''] = full.split(/(?=:\d+$)/);
  const label = shortestUniqueSuffix(fullBase!, names) + index;
  const topo = artifacts.modelTopology;
  const nodes = isRecord(topo) && Array.isArray(topo.node) ? (topo.node as unknown[]) : [];
  const inputs = nodes.filter((n): n is Record<string, unknown> => isRecord(n) && n.op === 'Placeholder');
  if (inputs.length !== 1) {
    throw new ModelError(
      `model ${modelName} has ${inputs.length} inputs; feature extraction needs a model with one image input`,
    );
  }
  const attr = inputs[0]!.attr as { shape?: { shape?: { dim?: { size?: string | number }[] } } } | undefined;
  const shape = (attr?.shape?.shape?.dim ?? []).map((d) => (d.size === undefined ? null : Number(d.size)));
  return { full, id: `${modelName}@${label}`, size: inputSide(shape, inputSize, modelName) };
}

interface Cut {
  /** Node name as shown in the engine id. */
  label: string;
  inputShape: readonly (number | null)[];
  inputDtype: tf.DataType;
  run: Runner;
}

function cutGraph(model: tf.GraphModel, artifacts: tf.io.ModelArtifacts, node: string, modelName: string): Cut {
  if (model.inputs.length !== 1) {
    throw new ModelError(
      `model ${modelName} has ${model.inputs.length} inputs; feature extraction needs a model with one image input`,
    );
  }
  const names = graphNodeNames(artifacts);
  const full = resolveNode(names, node, modelName);
  // The id names the node by its shortest unique suffix, however the caller spelled it.
  const [fullBase, index = ''] = full.split(/(?=:\d+$)/);
  const label = shortestUniqueSuffix(fullBase, names) + index;
  const [input] = model.inputs;
  let needsAsync = false;
  return {
    label,
    inputShape: input.shape ?? [],
    inputDtype: input.dtype,
    run: async (x) => {
      if (!needsAsync) {
        try {
          return tf.tidy(() => poolToRows(model.execute(x, full) as tf.Tensor, label));
        } catch (err) {
          if (err instanceof ModelError) throw err;
          // Models with control flow or dynamic shapes only run with executeAsync; try it once
          // (it throws the real problem again if that was something else) and keep using it.
          needsAsync = true;
        }
      }
      const y = (await model.executeAsync(x, full)) as tf.Tensor;
      try {
        return poolToRows(y, label);
      } finally {
        y.dispose();
      }
    },
  };
}

function cutLayers(model: tf.LayersModel, node: string, modelName: string): Cut {
  if (model.inputs.length !== 1) {
    throw new ModelError(
      `model ${modelName} has ${model.inputs.length} inputs; feature extraction needs a model with one image input`,
    );
  }
  const layerNames = model.layers.map((l) => l.name);
  if (!layerNames.includes(node)) {
    throw new ModelError(
      `layer "${node}" not found in ${modelName} (${layerNames.length} layers); deepest layers: ${layerNames.slice(-15).join(', ')}`,
    );
  }
  const output = model.getLayer(node).output;
  if (Array.isArray(output)) {
    throw new ModelError(
      `layer "${node}" of ${modelName} has ${output.length} outputs; choose a layer with one output`,
    );
  }
  const sub = tf.model({ inputs: model.inputs, outputs: output });
  return {
    label: node,
    inputShape: model.inputs[0].shape,
    inputDtype: model.inputs[0].dtype,
    run: async (x) => tf.tidy(() => poolToRows(sub.predict(x) as tf.Tensor, node)),
  };
}

/** Square input side: the asked-for size, checked against the model's input shape [N, H, W, 3]. */
function inputSide(shape: readonly (number | null)[], asked: number | undefined, modelName: string): number {
  const dims = shape.map((d) => (d === null || d < 0 ? undefined : d));
  if (shape.length !== 4) {
    throw new ModelError(
      `model ${modelName} takes input of shape [${shape.join(', ')}]; expected an NHWC image batch [N, H, W, 3]`,
    );
  }
  if (dims[3] !== undefined && dims[3] !== 3) {
    throw new ModelError(
      `model ${modelName} takes ${dims[3]} channels in its last input dimension; only NHWC RGB models (3 channels last) are supported`,
    );
  }
  const [, h, w] = dims;
  if (asked !== undefined) {
    if (!Number.isInteger(asked) || asked < 8 || asked > 2048) {
      throw new ModelError(`inputSize must be an integer from 8 to 2048, got ${asked}`);
    }
    if ((h !== undefined && h !== asked) || (w !== undefined && w !== asked)) {
      throw new ModelError(`model ${modelName} takes ${w ?? '?'}×${h ?? '?'} input; inputSize ${asked} does not fit`);
    }
    return asked;
  }
  if (h === undefined || w === undefined) {
    throw new ModelError(`model ${modelName} does not fix its input size ([${shape.join(', ')}]); set inputSize`);
  }
  if (h !== w)
    throw new ModelError(`model ${modelName} takes non-square ${w}×${h} input; only square inputs are supported`);
  // The model file sets this size, and the warm-up and every batch allocate side² × 3 per image:
  // a model.json declaring a 100000×100000 input must not get that far.
  if (!Number.isInteger(h) || h < 8 || h > 2048)
    throw new ModelError(`model ${modelName} takes ${w}×${h} input; input sides from 8 to 2048 are supported`);
  return h;
}

class TfjsEngine implements FeatureEngine {
  readonly id: string;
  readonly backend: string;
  readonly input: { width: number; height: number };
  readonly preferredBatch: number;
  #dim = 0;
  readonly #o: {
    inputRange: InputRange;
    inputDtype: tf.DataType;
    maxBatch: number;
    run: Runner;
    dispose: () => void;
  };
  #disposed = false;

  constructor(o: {
    id: string;
    backend: string;
    size: number;
    inputRange: InputRange;
    inputDtype: tf.DataType;
    maxBatch: number;
    run: Runner;
    dispose: () => void;
  }) {
    this.id = o.id;
    this.backend = o.backend;
    this.input = { width: o.size, height: o.size };
    this.preferredBatch = o.backend.includes('GPU') ? 32 : 8;
    this.#o = o;
  }

  /** One pass on a blank image: compiles kernels, checks the node, fixes `dim`. */
  async warmUp(): Promise<void> {
    const blank = new Uint8Array(this.input.width * this.input.height * 3);
    const rows = await this.#forward([blank]);
    try {
      this.#dim = rows.shape[1];
      await rows.data();
    } finally {
      rows.dispose();
    }
  }

  get dim(): number {
    return this.#dim;
  }

  async embed(images: readonly Uint8Array[]): Promise<Float32Array> {
    if (this.#disposed) throw new DeepfeatError('INTERNAL', `feature engine ${this.id} used after dispose()`);
    const out = new Float32Array(images.length * this.dim);
    for (let start = 0; start < images.length; start += this.#o.maxBatch) {
      const rows = await this.#forward(images.slice(start, start + this.#o.maxBatch));
      try {
        out.set(await rows.data<'float32'>(), start * this.dim);
      } finally {
        rows.dispose();
      }
    }
    return out;
  }

  async #forward(images: readonly Uint8Array[]): Promise<tf.Tensor2D> {
    const x = this.#toInput(images);
    try {
      return await this.#o.run(x);
    } finally {
      x.dispose();
    }
  }

  /** uint8 HWC images → one NHWC tensor, scaled to the model's expected range (done in JS: no tensor temporaries). */
  #toInput(images: readonly Uint8Array[]): tf.Tensor4D {
    const { width, height } = this.input;
    const per = width * height * 3;
    images.forEach((img, i) => {
      if (img.length !== per) {
        throw new DeepfeatError(
          'INTERNAL',
          `${this.id}: image ${i} has ${img.length} bytes, expected ${width}×${height}×3 = ${per}`,
        );
      }
    });
    const shape: [number, number, number, number] = [images.length, height, width, 3];
    if (this.#o.inputDtype === 'int32') {
      // Integer-input models take raw 0..255 pixels whatever inputRange says.
      const buf = new Int32Array(images.length * per);
      for (const [i, img] of images.entries()) buf.set(img, i * per);
      return tf.tensor4d(buf, shape, 'int32');
    }
    const [scale, offset] = { '0,1': [1 / 255, 0], '-1,1': [2 / 255, -1], '0,255': [1, 0] }[this.#o.inputRange];
    const buf = new Float32Array(images.length * per);
    images.forEach((img, i) => {
      const base = i * per;
      for (let j = 0; j < per; j++) buf[base + j] = img[j] * scale + offset;
    });
    return tf.tensor4d(buf, shape, 'float32');
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#o.dispose();
  }
}

// ───────────────────────────── graph node names ─────────────────────────────

/** Names of the nodes of a graph model that can be pooled (everything but constants), in graph order. */
export function graphNodeNames(artifacts: tf.io.ModelArtifacts): string[] {
  const topo = artifacts.modelTopology;
  const nodes = isRecord(topo) && Array.isArray(topo.node) ? (topo.node as unknown[]) : [];
  const names: string[] = [];
  for (const n of nodes) {
    if (isRecord(n) && typeof n.name === 'string' && n.op !== 'Const') names.push(n.name);
  }
  return names;
}

/**
 * Find `node` among a graph's node names: an exact name, or a unique suffix that starts after a
 * '/' (so 'expanded_conv_13/expand/Relu6' finds the long TF-Hub name). An output index
 * (':1') is kept. Unknown or ambiguous names give a ModelError that lists names to use instead.
 */
export function resolveNode(names: readonly string[], node: string, modelName: string): string {
  const m = /^(.*?)(:\d+)?$/.exec(node.trim());
  const base = m?.[1] ?? node;
  const index = m?.[2] ?? '';
  if (base && names.includes(base)) return base + index;
  const hits = base ? names.filter((n) => n.endsWith(`/${base}`)) : [];
  if (hits.length === 1) return hits[0] + index;
  if (hits.length > 1) {
    throw new ModelError(
      `node "${node}" is ambiguous in ${modelName}: it ends ${hits.length} node names, e.g. ` +
        `${hits
          .slice(0, 5)
          .map((h) => shortestUniqueSuffix(h, names))
          .join(', ')}; give more of the name`,
    );
  }
  throw new ModelError(
    `node "${node}" not found in ${modelName} (${names.length} nodes); nodes you can pool include: ` +
      `${suggestNodes(names).join(', ')}`,
  );
}

/** Activations and pooled outputs, deepest last, as short names that `resolveNode` accepts. */
export function suggestNodes(names: readonly string[], max = 16): string[] {
  const useful = names.filter((n) => /relu|squeeze|pool|gelu|swish|sigmoid|add$/i.test(n.split('/').pop() ?? ''));
  const pick = (useful.length > 0 ? useful : names).slice(-max);
  return pick.map((n) => shortestUniqueSuffix(n, names));
}

/** The shortest '/'-suffix of `name` that no other name ends with. */
export function shortestUniqueSuffix(name: string, names: readonly string[]): string {
  const parts = name.split('/');
  for (let k = 1; k < parts.length; k++) {
    const suffix = parts.slice(-k).join('/');
    if (names.every((n) => n === name || !(n === suffix || n.endsWith(`/${suffix}`)))) return suffix;
  }
  return name;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
