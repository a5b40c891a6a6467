/**
 * TensorFlow.js feature engine: any graph or layers model, cut at one node, globally
 * average-pooled. The backend it runs on is tfjs-backend.ts's choice; where a graph is cut,
 * graph-cut.ts's.
 */
import { tf } from './tf.js';
import type { TfjsBackendChoice } from '../../../shared/config.js';
import { DeepfeatError, ModelError, errorMessage } from '../../../shared/errors.js';
import { DEFAULT_INPUT_RANGE, type InputRange, inputLut } from '../../../shared/features.js';
import type { FeatureEngine } from './engine.js';
import { inputSide, isLayersModel, resolveCut } from './graph-cut.js';
import { useBackend } from './tfjs-backend.js';

type Log = (msg: string, extra?: object) => void;

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
  backend?: TfjsBackendChoice;
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
  const inputRange = opts.inputRange ?? DEFAULT_INPUT_RANGE;
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
  const { full, label } = resolveCut(artifacts, node, modelName);
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

class TfjsEngine implements FeatureEngine {
  readonly id: string;
  readonly backend: string;
  readonly input: { width: number; height: number };
  readonly preferredBatch: number;
  #dim = 0;
  /** Input value of each pixel byte, in the model's range (shared/features.ts). */
  readonly #lut: Float32Array;
  readonly #o: {
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
    this.#lut = inputLut(o.inputRange);
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
    const lut = this.#lut;
    const buf = new Float32Array(images.length * per);
    images.forEach((img, i) => {
      const base = i * per;
      for (let j = 0; j < per; j++) buf[base + j] = lut[img[j]!]!;
    });
    return tf.tensor4d(buf, shape, 'float32');
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#o.dispose();
  }
}
