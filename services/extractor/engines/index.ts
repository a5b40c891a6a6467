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
import { capText, quote } from '../../../shared/text.js';
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
        throw new ModelError(
          `unknown builtin model ${quote(String(spec.id))}; the builtin models are: ${BUILTIN_MODEL_ID}`,
        );
      }
      if (spec.node !== undefined) checkNodeName(spec.node);
      return graphEngine(
        {
          artifacts: await builtinModelArtifacts(),
          modelName: BUILTIN_MODEL_ID,
          node: spec.node ?? DEFAULT_BUILTIN_NODE,
          inputRange: BUILTIN_INPUT_RANGE,
        },
        deps,
      );
    }
    case 'tfjs': {
      if (typeof spec.model !== 'string' || spec.model === '' || typeof spec.node !== 'string' || spec.node === '') {
        throw new ModelError("a 'tfjs' feature spec needs model (path or s3:// URL of model.json) and node");
      }
      if (spec.model.length > MAX_MODEL_REF_CHARS) {
        throw new ModelError(
          `model ${quote(spec.model)} is longer than ${MAX_MODEL_REF_CHARS} characters: give an s3:// URL or a local path of model.json`,
        );
      }
      checkNodeName(spec.node);
      return graphEngine(
        {
          artifacts: await readTfjsArtifacts(spec.model, deps.readObject, deps.maxModelBytes),
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
      throw new ModelError(
        `${src.modelName} is a TF.js layers model; the ONNX engine converts graph models only: use DEEPFEAT_ENGINE=tfjs or auto`,
      );
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
      throw new ModelError(`${src.modelName} cannot run on ONNX Runtime: ${reason}; use DEEPFEAT_ENGINE=tfjs or auto`, {
        cause: err,
      });
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
    const bundles = await Promise.all(
      def.weightBundles.map(async (load) => Buffer.from((await load()).default, 'base64')),
    );
    const weights = Buffer.concat(bundles);
    const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) as ArrayBuffer;
    return tf.io.getModelArtifactsForJSONSync(json, tf.io.getWeightSpecs(json.weightsManifest), weightData);
  } catch (err) {
    throw new ModelError(
      `cannot load the builtin model ${BUILTIN_MODEL_ID} from the nsfwjs package: ${errorMessage(err)}`,
      {
        cause: err,
      },
    );
  }
}

/**
 * Longest model reference (s3:// URL or local path) a spec may carry: S3 keys are at most 1024
 * bytes, and messages about the model name it.
 */
export const MAX_MODEL_REF_CHARS = 1100;
/** Longest node name: TF-Hub's run to about 200 characters; the name is quoted in messages. */
export const MAX_NODE_CHARS = 512;
/**
 * Largest model.json read. It holds the topology and the weight manifest, not the weights (real
 * ones are kilobytes to a few MB), and JSON.parse needs several times the text's size in heap.
 */
export const MAX_MODEL_JSON_BYTES = 64 * 1024 * 1024;
/** Most weight files one manifest may name: TF.js exports shard at 4 MB, 256 files per GB. */
export const MAX_WEIGHT_FILES = 1024;
/** When the caller gives no limit: the default of DEEPFEAT_MAX_MODEL_BYTES. */
const DEFAULT_MAX_MODEL_BYTES = 1024 ** 3;
// C0, DEL and C1 controls: never in a real node name or weight path, and harmful on a terminal.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

function checkNodeName(node: string): void {
  if (node.length > MAX_NODE_CHARS || CONTROL.test(node)) {
    throw new ModelError(
      `node ${quote(node)} is not a node name (at most ${MAX_NODE_CHARS} characters, no control characters): ` +
        'give the name of a node (graph model) or layer (layers model) to pool',
    );
  }
}

/**
 * A user's TensorFlow.js model: read model.json, then every weight file its manifest names, in
 * the folder of model.json (local) or under its key prefix (s3://), in manifest order.
 *
 * The model is untrusted input, so everything that can be checked is checked before a weight file
 * is read: every path stays beside model.json, and the bytes the manifest's weights need fit in
 * `maxModelBytes`; each read is bounded by what is left of it. Messages never hold a byte count
 * of a file read, nor a parser's quote of its text.
 */
export async function readTfjsArtifacts(
  modelUrl: string,
  readObject: EngineDeps['readObject'],
  maxModelBytes = DEFAULT_MAX_MODEL_BYTES,
): Promise<tf.io.ModelArtifacts> {
  const name = quote(modelUrl);
  const raw = await read(readObject, modelUrl, 'model.json', Math.min(MAX_MODEL_JSON_BYTES, maxModelBytes));
  let json: tf.io.ModelJSON;
  try {
    json = JSON.parse(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8')) as tf.io.ModelJSON;
  } catch {
    // No parser detail and no cause: V8's message quotes the text around the error, i.e. the file.
    throw new ModelError(`${name} is not valid JSON; point the spec at a TensorFlow.js model.json`);
  }
  if (!isRecord(json) || typeof json.modelTopology !== 'object' || json.modelTopology === null) {
    throw new ModelError(`${name} has no modelTopology: it is not a TensorFlow.js model.json`);
  }
  const manifest: unknown = json.weightsManifest ?? [];
  if (
    !Array.isArray(manifest) ||
    !manifest.every((g) => isRecord(g) && Array.isArray(g.paths) && Array.isArray(g.weights))
  ) {
    throw new ModelError(`${name}: weightsManifest must be a list of {paths, weights} groups`);
  }
  const groups = manifest as tf.io.WeightsManifestConfig;
  const rels: unknown[] = groups.flatMap((g) => g.paths);
  if (rels.length > MAX_WEIGHT_FILES) {
    throw new ModelError(
      `${name}: weightsManifest names more than ${MAX_WEIGHT_FILES} weight files: re-export the model with larger shards`,
    );
  }
  const urls = rels.map((rel) => siblingOf(modelUrl, rel));
  const specs: unknown[] = groups.flatMap((g) => g.weights);
  const need = weightBytes(specs, name, maxModelBytes);

  const files: Uint8Array[] = [];
  let total = 0;
  for (const [i, url] of urls.entries()) {
    const bytes = await read(readObject, url, `weight file ${quote(rels[i] as string)}`, maxModelBytes - total);
    files.push(bytes);
    total += bytes.byteLength;
  }
  if (need.exact ? total !== need.bytes : total < need.bytes) {
    throw new ModelError(
      `${name}: weight files do not match the manifest: re-export the model so that model.json and its weight files ` +
        'come from the same export',
    );
  }
  // One copy into the buffer TF.js keeps (tf.io.concatenateArrayBuffers would make two).
  const weightData = new Uint8Array(total);
  let off = 0;
  for (const f of files.splice(0)) {
    weightData.set(f, off);
    off += f.byteLength;
  }
  return tf.io.getModelArtifactsForJSONSync(json, tf.io.getWeightSpecs(groups), weightData.buffer);
}

/** Bytes per element of each dtype TF.js decodes weights from. */
const DTYPE_BYTES: Readonly<Record<string, number>> = {
  float32: 4,
  int32: 4,
  bool: 1,
  uint8: 1,
  uint16: 2,
  float16: 2,
  complex64: 8,
};
/** Quantized weights are stored in these. */
const QUANTIZED_BYTES: Readonly<Record<string, number>> = { uint8: 1, uint16: 2, float16: 2 };

/**
 * Bytes the manifest's weights take in the weight files: exact, or (with string weights, whose
 * length is in the data) a lower bound of 4 bytes per string. Checked against `maxBytes` as it is
 * summed, so a manifest declaring enormous shapes is refused before any weight file is read.
 */
function weightBytes(specs: readonly unknown[], name: string, maxBytes: number): { bytes: number; exact: boolean } {
  let total = 0;
  let exact = true;
  for (const s of specs) {
    if (
      !isRecord(s) ||
      typeof s.name !== 'string' ||
      typeof s.dtype !== 'string' ||
      !Array.isArray(s.shape) ||
      !s.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
    ) {
      throw new ModelError(
        `${name}: weightsManifest lists a weight that is not {name, shape, dtype} with whole-number dims: re-export the model`,
      );
    }
    let per: number | undefined;
    if (s.quantization !== undefined) {
      const q = s.quantization;
      per = isRecord(q) && typeof q.dtype === 'string' ? QUANTIZED_BYTES[q.dtype] : undefined;
    } else if (s.dtype === 'string') {
      per = 4;
      exact = false;
    } else {
      per = DTYPE_BYTES[s.dtype];
    }
    if (per === undefined) {
      throw new ModelError(
        `${name}: weight ${quote(s.name)} has a dtype TensorFlow.js cannot load: re-export the model`,
      );
    }
    let n = (s.shape as number[]).includes(0) ? 0 : per;
    for (const d of s.shape as number[]) {
      if (n > maxBytes) break; // already too large; stop before the product overflows
      n *= d;
    }
    total += n;
    if (total > maxBytes) {
      throw new ModelError(
        `${name}: its weights need more than ${maxBytes} bytes, the most a worker loads for one model: ` +
          'use a smaller model, or have the operator raise DEEPFEAT_MAX_MODEL_BYTES',
      );
    }
  }
  return { bytes: total, exact };
}

/**
 * A weight file the manifest names: in the folder of model.json (local) or under its key prefix
 * (s3://), or below. TF.js exports put their shards beside model.json; a path that climbs out
 * ("..") or is absolute or a URL would let a model.json pick any file the worker can read.
 */
function siblingOf(modelUrl: string, rel: unknown): string {
  const ok =
    typeof rel === 'string' &&
    rel !== '' &&
    rel.length <= 1024 &&
    !CONTROL.test(rel) &&
    !rel.includes('\\') &&
    !/^[a-z][a-z0-9+.-]*:/i.test(rel) &&
    rel.split('/').every((seg) => seg !== '' && seg !== '..');
  if (!ok) {
    const shown = typeof rel === 'string' ? quote(rel) : capText(String(JSON.stringify(rel)));
    throw new ModelError(
      `${quote(modelUrl)}: weight path ${shown} must name a file in the folder of model.json or below it ` +
        '(no "..", no absolute path or URL): fix weightsManifest or re-export the model',
    );
  }
  if (modelUrl.startsWith('s3://')) {
    const rest = modelUrl.slice('s3://'.length);
    const slash = rest.indexOf('/');
    if (slash < 0) throw new ModelError(`${quote(modelUrl)} names no object: expected s3://bucket/path/model.json`);
    return `s3://${rest.slice(0, slash)}/${path.posix.join(path.posix.dirname(rest.slice(slash + 1)), rel)}`;
  }
  return path.join(path.dirname(modelUrl), rel);
}

/** One file through the caller's reader, at most `maxBytes` of it. */
async function read(
  readObject: EngineDeps['readObject'],
  url: string,
  what: string,
  maxBytes: number,
): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await readObject(url, maxBytes);
  } catch (err) {
    // Storage errors keep their own class: a transient one must stay retryable.
    if (err instanceof DeepfeatError) throw err;
    throw new ModelError(`cannot read ${what} at ${capText(url)}: ${capText(errorMessage(err))}`, { cause: err });
  }
  // The reader should have refused it; one that ignores the bound must not get past it either.
  if (bytes.byteLength > maxBytes) {
    throw new ModelError(
      `${what} at ${quote(url)} is larger than ${maxBytes} bytes, the most a worker reads for it: ` +
        'use a smaller model, or have the operator raise DEEPFEAT_MAX_MODEL_BYTES',
    );
  }
  return bytes;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
