/**
 * `loadEngine(spec)`: the one way the extractor gets a FeatureEngine. It checks the spec, takes
 * the model's artifacts (builtin-model.ts, tfjs-artifacts.ts; nothing is downloaded from the
 * internet at run time) and picks the engine that runs them: raw pixels, ONNX Runtime or TF.js.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import type * as tf from '@tensorflow/tfjs';
import { ModelError, errorMessage } from '../../../shared/errors.js';
import { BUILTIN_MODELS, DEFAULT_INPUT_RANGE, type InputRange, RAW_PIXELS_SIZE } from '../../../shared/features.js';
import { quote } from '../../../shared/text.js';
import { BUILTIN_INPUT_RANGE, BUILTIN_MODEL_ID, DEFAULT_BUILTIN_NODE, builtinModelArtifacts } from './builtin-model.js';
import type { EngineDeps, FeatureEngine, FeatureSpec } from './engine.js';
import { graphNodeNames, isLayersModel, planGraphCut, resolveNode } from './graph-cut.js';
import { createOnnxEngine } from './onnx.js';
import { createRawPixelsEngine } from './raw-pixels.js';
import { readTfjsArtifacts } from './tfjs-artifacts.js';
import { createTfjsEngine } from './tfjs.js';

/**
 * Longest model reference (s3:// URL or local path) a spec may carry: S3 keys are at most 1024
 * bytes, and messages about the model name it.
 */
export const MAX_MODEL_REF_CHARS = 1100;
/** Longest node name: TF-Hub's run to about 200 characters; the name is quoted in messages. */
export const MAX_NODE_CHARS = 512;
// C0, DEL and C1 controls: never in a real node name, and harmful on a terminal.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

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
  const backbone = await resolveBackbone(spec, deps);
  return backbone.kind === 'raw-pixels' ? createRawPixelsEngine(backbone.size) : graphEngine(backbone, deps);
}

/** What a spec names, read and checked: raw pixels at a size, or a TF.js model with its cut. */
export type Backbone = { kind: 'raw-pixels'; size: number } | ({ kind: 'graph' } & GraphModelSource);

/**
 * The backbone `spec` names: its artifacts read (the builtin from the installed package, a
 * user's through deps.readObject), node and pixel range resolved to their defaults. The feature
 * engines and the published classifier (classifier-export.ts) both start here, so they run the
 * same model, cut and range.
 * @throws ModelError when the spec is malformed or the model cannot be read.
 */
export async function resolveBackbone(
  spec: FeatureSpec,
  deps: Pick<EngineDeps, 'readObject' | 'maxModelBytes'>,
): Promise<Backbone> {
  switch (spec.kind) {
    case 'raw-pixels':
      return { kind: 'raw-pixels', size: spec.size ?? RAW_PIXELS_SIZE.default };
    case 'builtin': {
      if (spec.id !== BUILTIN_MODEL_ID) {
        throw new ModelError(
          `unknown builtin model ${quote(String(spec.id))}; the builtin models are: ${BUILTIN_MODELS.join(', ')}`,
        );
      }
      if (spec.node !== undefined) checkNodeName(spec.node);
      return {
        kind: 'graph',
        artifacts: await builtinModelArtifacts(),
        modelName: BUILTIN_MODEL_ID,
        node: spec.node ?? DEFAULT_BUILTIN_NODE,
        inputRange: BUILTIN_INPUT_RANGE,
      };
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
      const artifacts = await readTfjsArtifacts(spec.model, deps.readObject, deps.maxModelBytes);
      // Before any loader sees it: a model.json with no nodes and no layers would otherwise fail
      // inside TensorFlow.js with a message about its internals.
      if (!isLayersModel(artifacts) && graphNodeNames(artifacts).length === 0) {
        resolveNode([], spec.node, spec.model);
      }
      return {
        kind: 'graph',
        artifacts,
        modelName: spec.model,
        node: spec.node,
        inputSize: spec.inputSize,
        inputRange: spec.inputRange ?? DEFAULT_INPUT_RANGE,
      };
    }
    default: {
      const kind = (spec as { kind?: unknown }).kind;
      throw new ModelError(`unknown feature spec kind "${String(kind)}"; expected raw-pixels, builtin or tfjs`);
    }
  }
}

export interface GraphModelSource {
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

function checkNodeName(node: string): void {
  if (node.length > MAX_NODE_CHARS || CONTROL.test(node)) {
    throw new ModelError(
      `node ${quote(node)} is not a node name (at most ${MAX_NODE_CHARS} characters, no control characters): ` +
        'give the name of a node (graph model) or layer (layers model) to pool',
    );
  }
}
