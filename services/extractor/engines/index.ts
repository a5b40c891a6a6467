/**
 * `loadEngine(spec)`: the one way the extractor gets a FeatureEngine. Model bytes come from the
 * installed nsfwjs package (builtin backbone) or from the caller's `readObject` (a user's model,
 * local or s3://); nothing is downloaded from the internet at run time.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { DeepfeatError, ModelError, errorMessage } from '../../../shared/errors.js';
import type { EngineDeps, FeatureEngine, FeatureSpec } from './engine.js';
import { DEFAULT_RAW_PIXELS_SIZE, createRawPixelsEngine } from './raw-pixels.js';
import { createOnnxEngine } from './onnx.js';
import { createTfjsEngine, isLayersModel, planGraphCut, type InputRange } from './tfjs.js';

export type { BackendChoice, EngineChoice, EngineDeps, FeatureEngine, FeatureSpec, OnnxProvider } from './engine.js';
export { useBackend } from './tfjs.js';

/**
 * Node of the builtin MobileNetV2 (nsfwjs `mobilenet_v2_mid`) whose globally averaged output is
 * the default feature vector. Measured with `bench/probe-layers.ts` (defaults: 500 CIFAR-10 cats +
 * 500 dogs, 32×32 through decodeImage to 224×224, wasm; five seeded stratified 70/30 splits;
 * standardised features; accuracy on the 30%, mean over splits):
 *
 * | node                                  | dim  | nearest mean | ridge ± sd    |
 * |---------------------------------------|-----:|-------------:|--------------:|
 * | raw pixels 32×32 (baseline)           | 3072 | 55.3%        | 56.9% ± 2.0   |
 * | expanded_conv_11/expand/Relu6         |  816 | 61.0%        | 71.0% ± 1.6   |
 * | expanded_conv_11/project              |  136 | 61.3%        | 66.6% ± 1.5   |
 * | expanded_conv_11/add                  |  136 | 59.9%        | 68.5% ± 1.1   |
 * | expanded_conv_12/expand/Relu6         |  816 | 62.3%        | 69.7% ± 2.9   |
 * | expanded_conv_12/project              |  136 | 61.9%        | 68.2% ± 2.3   |
 * | expanded_conv_12/add                  |  136 | 61.7%        | 68.3% ± 1.8   |
 * | expanded_conv_13/expand/Relu6  ◀      |  816 | 62.3%        | 71.1% ± 2.2   |
 * | expanded_conv_13/project              |  224 | 60.5%        | 70.0% ± 1.8   |
 * | expanded_conv_14/expand/Relu6         | 1344 | 62.5%        | 69.9% ± 1.8   |
 * | expanded_conv_14/project              |  224 | 61.4%        | 67.9% ± 1.8   |
 * | expanded_conv_14/add                  |  224 | 63.1%        | 71.1% ± 2.7   |
 * | expanded_conv_15/expand/Relu6         | 1344 | 62.7%        | 70.7% ± 2.6   |
 * | expanded_conv_15/project              |  224 | 61.9%        | 65.2% ± 2.1   |
 * | expanded_conv_15/add                  |  224 | 64.6%        | 69.9% ± 2.0   |
 * | expanded_conv_16/expand/Relu6         | 1344 | 58.3%        | 68.1% ± 2.7   |
 * | expanded_conv_16/project              |  448 | 65.3%        | 69.6% ± 1.8   |
 * | feature_vector/SpatialSqueeze (final) | 1792 | 64.6%        | 69.1% ± 1.9   |
 * ("project" = project/BatchNorm/FusedBatchNormV3; ridge = ridge classifier, L2 picked on a
 * validation slice of train. A run standardising on each split's train rows only, instead of
 * on all images, gave every number within 0.7 points of these.)
 *
 * expanded_conv_13/expand/Relu6, expanded_conv_14/add and expanded_conv_11/expand/Relu6 tie
 * (71.0–71.1%, well inside the split-to-split spread). expanded_conv_13/expand/Relu6 is kept:
 * tied best with the linear classifier, better than expanded_conv_11 by nearest mean, 816-d, and
 * its forward pass stops three blocks before the end. The final 1792-d feature vector is about
 * 2 points worse here, not the 7 a single earlier probe suggested.
 */
export const DEFAULT_BUILTIN_NODE = 'expanded_conv_13/expand/Relu6';

/** The builtin backbone: MobileNetV2 (width 1.4, 224×224) graph model shipped in nsfwjs@4.4.0. */
export const BUILTIN_MODEL_ID = 'mobilenet_v2_mid';
const BUILTIN_INPUT_RANGE = '0,1'; // the graph scales to [-1, 1] itself

/**
 * Build the engine `spec` asks for, warmed up and ready.
 * @throws ModelError when the model cannot be read or loaded or has no such node.
 */
export async function loadEngine(spec: FeatureSpec, deps: EngineDeps): Promise<FeatureEngine> {
  const started = performance.now();
  const engine = await build(spec, deps);
  deps.log?.('feature engine ready', {
    engine: engine.id,
    backend: engine.backend,
    dim: engine.dim,
    input: `${engine.input.width}x${engine.input.height}`,
    loadMs: Math.round(performance.now() - started),
  });
  return engine;
}

async function build(spec: FeatureSpec, deps: EngineDeps): Promise<FeatureEngine> {
  switch (spec.kind) {
    case 'raw-pixels':
      return createRawPixelsEngine(spec.size ?? DEFAULT_RAW_PIXELS_SIZE);
    case 'builtin': {
      if (spec.id !== BUILTIN_MODEL_ID) {
        throw new ModelError(`unknown builtin model "${String(spec.id)}"; the builtin models are: ${BUILTIN_MODEL_ID}`);
      }
      return graphEngine(
        { artifacts: await builtinModelArtifacts(), modelName: BUILTIN_MODEL_ID, node: spec.node ?? DEFAULT_BUILTIN_NODE, inputRange: BUILTIN_INPUT_RANGE },
        deps,
      );
    }
    case 'tfjs': {
      if (typeof spec.model !== 'string' || spec.model === '' || typeof spec.node !== 'string' || spec.node === '') {
        throw new ModelError("a 'tfjs' feature spec needs model (path or s3:// URL of model.json) and node");
      }
      return graphEngine(
        {
          artifacts: await readTfjsArtifacts(spec.model, deps.readObject),
          modelName: spec.model,
          node: spec.node,
          inputSize: spec.inputSize,
          inputRange: spec.inputRange ?? '0,1',
        },
        deps,
      );
    }
    default: {
      const kind = (spec as { kind?: unknown }).kind;
      throw new ModelError(`unknown feature spec kind "${String(kind)}"; expected raw-pixels, builtin or tfjs`);
    }
  }
}

interface GraphModelSource {
  artifacts: tf.io.ModelArtifacts;
  modelName: string;
  node: string;
  inputSize?: number;
  inputRange: InputRange;
}

/**
 * A TF.js model on the engine DEEPFEAT_ENGINE asks for. 'auto' picks the fastest that can run it:
 * ONNX Runtime (CUDA, else CPU) for graph models that convert; TF.js when the graph uses an op
 * the converter does not cover, for layers models, and on hosts where ONNX Runtime has no CUDA
 * but tfjs-node-gpu finds a GPU.
 */
async function graphEngine(src: GraphModelSource, deps: EngineDeps): Promise<FeatureEngine> {
  const choice = deps.engine ?? 'auto';
  const tfjsEngine = () =>
    createTfjsEngine({
      artifacts: src.artifacts,
      modelName: src.modelName,
      node: src.node,
      inputSize: src.inputSize,
      inputRange: src.inputRange,
      backend: deps.backend,
      log: deps.log,
    });
  if (choice === 'tfjs') return tfjsEngine();
  if (isLayersModel(src.artifacts)) {
    if (choice === 'onnx') {
      throw new ModelError(`${src.modelName} is a TF.js layers model; the ONNX engine converts graph models only: use DEEPFEAT_ENGINE=tfjs or auto`);
    }
    return tfjsEngine();
  }
  const cut = planGraphCut(src.artifacts, src.node, src.modelName, src.inputSize);
  let onnx: FeatureEngine;
  try {
    onnx = await createOnnxEngine({
      artifacts: src.artifacts,
      id: cut.id,
      node: cut.full,
      size: cut.size,
      inputRange: src.inputRange,
      threads: deps.threads && deps.threads > 0 ? deps.threads : os.availableParallelism(),
      provider: deps.onnxProvider ?? 'auto',
      cacheDir: deps.cacheDir || undefined,
      log: deps.log,
    });
  } catch (err) {
    const reason = errorMessage(err);
    if (choice === 'onnx') {
      throw new ModelError(`${src.modelName} cannot run on ONNX Runtime: ${reason}; use DEEPFEAT_ENGINE=tfjs or auto`, { cause: err });
    }
    // auto: a graph the converter does not cover (or, should it happen, one ONNX Runtime rejects
    // after conversion) still runs, on TensorFlow.js, which executes the original graph.
    deps.log?.('ONNX conversion not possible; using TensorFlow.js', { reason });
    return tfjsEngine();
  }
  if (choice === 'auto' && !onnx.backend.includes('CUDA') && canResolve('@tensorflow/tfjs-node-gpu')) {
    // A GPU host whose onnxruntime-node lacks CUDA: TF.js on the GPU beats ONNX Runtime on the CPU.
    const gpu = await tfjsEngine().catch(() => undefined);
    if (gpu?.backend.includes('GPU')) {
      deps.log?.('using TensorFlow.js on the GPU rather than ONNX Runtime on the CPU');
      onnx.dispose();
      return gpu;
    }
    gpu?.dispose();
  }
  return onnx;
}

function canResolve(pkg: string): boolean {
  try {
    createRequire(import.meta.url).resolve(pkg);
    return true;
  } catch {
    return false;
  }
}

/** Topology and weights of the builtin backbone, from the installed nsfwjs package (no network). */
export async function builtinModelArtifacts(): Promise<tf.io.ModelArtifacts> {
  try {
    const { MobileNetV2MidModel: def } = await import('nsfwjs/models/mobilenet_v2_mid');
    const json = (await def.modelJson()).default;
    const bundles = await Promise.all(def.weightBundles.map(async (load) => Buffer.from((await load()).default, 'base64')));
    const weights = Buffer.concat(bundles);
    const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) as ArrayBuffer;
    return tf.io.getModelArtifactsForJSONSync(json, tf.io.getWeightSpecs(json.weightsManifest), weightData);
  } catch (err) {
    throw new ModelError(`cannot load the builtin model ${BUILTIN_MODEL_ID} from the nsfwjs package: ${errorMessage(err)}`, {
      cause: err,
    });
  }
}

/**
 * A user's TensorFlow.js model: read model.json, then every weight file its manifest names,
 * relative to it (same folder or prefix), in manifest order.
 */
export async function readTfjsArtifacts(
  modelUrl: string,
  readObject: EngineDeps['readObject'],
): Promise<tf.io.ModelArtifacts> {
  const raw = await read(readObject, modelUrl, 'model.json');
  let json: tf.io.ModelJSON;
  try {
    json = JSON.parse(Buffer.from(raw).toString('utf8')) as tf.io.ModelJSON;
  } catch (err) {
    throw new ModelError(`${modelUrl} is not valid JSON (${errorMessage(err)}); point the spec at a TensorFlow.js model.json`, {
      cause: err,
    });
  }
  if (typeof json !== 'object' || json === null || typeof json.modelTopology !== 'object' || json.modelTopology === null) {
    throw new ModelError(`${modelUrl} has no modelTopology: it is not a TensorFlow.js model.json`);
  }
  const manifest = json.weightsManifest ?? [];
  if (!Array.isArray(manifest) || !manifest.every((g) => Array.isArray(g?.paths) && Array.isArray(g?.weights))) {
    throw new ModelError(`${modelUrl}: weightsManifest must be a list of {paths, weights} groups`);
  }
  const files: ArrayBuffer[] = [];
  for (const group of manifest) {
    for (const rel of group.paths) {
      const bytes = await read(readObject, siblingOf(modelUrl, rel), `weight file "${rel}"`);
      files.push(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
    }
  }
  const weightData = tf.io.concatenateArrayBuffers(files);
  const expected = weightBytes(tf.io.getWeightSpecs(manifest));
  if (expected !== undefined && expected !== weightData.byteLength) {
    throw new ModelError(
      `${modelUrl}: weight files hold ${weightData.byteLength} bytes but the manifest describes ${expected}; ` +
        'are they from the same export?',
    );
  }
  return tf.io.getModelArtifactsForJSONSync(json, tf.io.getWeightSpecs(manifest), weightData);
}

/** Bytes the manifest's weights take, or undefined when it cannot be told (string weights). */
function weightBytes(specs: tf.io.WeightsManifestEntry[]): number | undefined {
  const size: Record<string, number> = { float32: 4, int32: 4, bool: 1, uint8: 1, uint16: 2, float16: 2, complex64: 8 };
  let total = 0;
  for (const s of specs) {
    const n = s.shape.reduce((a, b) => a * b, 1);
    const dtype = s.quantization?.dtype ?? s.dtype;
    const bytes = size[dtype];
    if (bytes === undefined) return undefined;
    total += n * bytes;
  }
  return total;
}

/** A file next to model.json: same folder (local) or same key prefix (s3://bucket/prefix/). */
function siblingOf(modelUrl: string, rel: string): string {
  if (/^[a-z][a-z0-9+.-]*:/i.test(rel) || rel.startsWith('/') || rel.startsWith('\\')) {
    throw new ModelError(`${modelUrl}: weight path "${rel}" must be relative to model.json`);
  }
  if (modelUrl.startsWith('s3://')) {
    const rest = modelUrl.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const bucket = rest.slice(0, slash);
    const key = path.posix.normalize(path.posix.join(path.posix.dirname(rest.slice(slash + 1)), rel));
    if (slash < 0 || key.startsWith('../') || key === '..') {
      throw new ModelError(`${modelUrl}: weight path "${rel}" points outside the bucket`);
    }
    return `s3://${bucket}/${key}`;
  }
  return path.resolve(path.dirname(modelUrl), rel);
}

async function read(readObject: EngineDeps['readObject'], url: string, what: string): Promise<Uint8Array> {
  try {
    return await readObject(url);
  } catch (err) {
    // Storage errors keep their own class: a transient one must stay retryable.
    if (err instanceof DeepfeatError) throw err;
    throw new ModelError(`cannot read ${what} at ${url}: ${errorMessage(err)}`, { cause: err });
  }
}
