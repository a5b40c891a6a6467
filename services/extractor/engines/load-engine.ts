/**
 * `loadEngine(spec)`: the one way the extractor gets a FeatureEngine. It checks the spec, takes
 * the model's artifacts (builtin-model.ts, tfjs-artifacts.ts; nothing is downloaded from the
 * internet at run time) and picks the engine that runs them: raw pixels, ONNX Runtime or TF.js.
 */
import { createRequire } from 'node:module';
import os from 'node:os';
import type * as tf from '@tensorflow/tfjs';
import { BUILTIN_BACKBONES } from '../../../shared/backbones.js';
import { ModelError, errorMessage } from '../../../shared/errors.js';
import {
  BUILTIN_MODELS,
  DEFAULT_INPUT_RANGE,
  type InputRange,
  RAW_PIXELS_SIZE,
  flipsFeatures,
  multiScaleFeatures,
} from '../../../shared/features.js';
import { quote } from '../../../shared/text.js';
import { builtinModelArtifacts } from './builtin-model.js';
import type { EngineDeps, FeatureEngine, FeatureSpec } from './engine.js';
import { withFlipAveraging } from './flip.js';
import { atInputSide, halfSide, withHalfScale } from './multi-scale.js';
import { graphNodeNames, isLayersModel, planGraphCut, resolveNode } from './graph-cut.js';
import { createOnnxEngine } from './onnx.js';
import { type OnnxBackbone, createOnnxUserEngine, resolveOnnxBackbone } from './onnx-user.js';
import { UnsupportedGraphError } from './onnx/convert.js';
import { planLayersCut } from './onnx/layers.js';
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
  const engine = multiScaleFeatures(spec) ? await buildMultiScale(spec, deps) : await buildPlain(spec, deps);
  return flipsFeatures(spec) ? withFlipAveraging(engine) : engine;
}

/**
 * The backbone at its input size and again at half of it (multi-scale.ts): two engines on the same
 * weights, the second from the model with its input declared at the half side.
 */
async function buildMultiScale(spec: FeatureSpec, deps: EngineDeps): Promise<FeatureEngine> {
  if (spec.kind === 'onnx') {
    // Before the model is read: it may be large, and the answer does not depend on it.
    throw new ModelError(
      `${quote(String(spec.model))} is an ONNX model, which runs at the input size it was written for: ` +
        `multi-scale features need a shipped backbone or a TF.js model; ${NO_MULTI_SCALE}`,
    );
  }
  const backbone = await resolveBackbone(spec, deps);
  if (backbone.kind !== 'graph') return buildPlain(spec, deps);
  const full = await graphEngine(backbone, deps);
  const side = halfSide(full.input.width);
  let half: FeatureEngine | undefined;
  try {
    if (side < MIN_HALF_SIDE)
      throw new ModelError(`the half-scale input would be under ${MIN_HALF_SIDE}×${MIN_HALF_SIDE}`);
    const artifacts = atInputSide(backbone.artifacts, side, backbone.modelName);
    half = await graphEngine({ ...backbone, artifacts, inputSize: side }, deps);
    return withHalfScale(full, half);
  } catch (err) {
    full.dispose();
    half?.dispose();
    // What the model cannot do is the user's to change; anything else is not about multi-scale.
    if (!(err instanceof ModelError || err instanceof UnsupportedGraphError)) throw err;
    throw new ModelError(
      `${quote(backbone.modelName)} cannot also run at half its input size (${side}×${side}) for multi-scale features: ` +
        `${errorMessage(err)}; ${NO_MULTI_SCALE}`,
      { cause: err },
    );
  }
}

/** The fix every multi-scale refusal names, for the CLI and for run requests. */
const NO_MULTI_SCALE = 'run with --no-multi-scale (multiScale: false in a run request)';

/** Smallest half-scale side: the smallest input the engines accept (graph-cut.ts inputSide). */
const MIN_HALF_SIDE = 8;

async function buildPlain(spec: FeatureSpec, deps: EngineDeps): Promise<FeatureEngine> {
  const backbone = await resolveBackbone(spec, deps);
  if (backbone.kind === 'raw-pixels') return createRawPixelsEngine(backbone.size);
  if (backbone.kind === 'onnx') {
    // An ONNX model runs on ONNX Runtime only: TF.js cannot execute it.
    if (deps.engine === 'tfjs') {
      throw new ModelError(
        `${quote(backbone.modelName)} is an ONNX model, which runs on ONNX Runtime only: set DEEPFEAT_ENGINE=auto or onnx`,
      );
    }
    return createOnnxUserEngine(backbone, { threads: deps.threads, provider: deps.onnxProvider, log: deps.log });
  }
  return graphEngine(backbone, deps);
}

/** What a spec names, read and checked: raw pixels at a size, or a TF.js model with its cut. */
export type Backbone = { kind: 'raw-pixels'; size: number } | ({ kind: 'graph' } & GraphModelSource) | OnnxBackbone;

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
      if (!(BUILTIN_MODELS as readonly string[]).includes(spec.id)) {
        throw new ModelError(
          `unknown builtin model ${quote(String(spec.id))}; the builtin models are: ${BUILTIN_MODELS.join(', ')}`,
        );
      }
      if (spec.node !== undefined) checkNodeName(spec.node);
      return {
        kind: 'graph',
        artifacts: await builtinModelArtifacts(spec.id),
        modelName: spec.id,
        node: spec.node ?? BUILTIN_BACKBONES[spec.id].defaultNode,
        inputSize: BUILTIN_BACKBONES[spec.id].inputSize,
        inputRange: BUILTIN_BACKBONES[spec.id].inputRange,
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
    case 'onnx': {
      if (typeof spec.model !== 'string' || spec.model === '' || typeof spec.node !== 'string' || spec.node === '') {
        throw new ModelError("an 'onnx' feature spec needs model (path or s3:// URL of a .onnx file) and node");
      }
      if (spec.model.length > MAX_MODEL_REF_CHARS) {
        throw new ModelError(
          `model ${quote(spec.model)} is longer than ${MAX_MODEL_REF_CHARS} characters: give an s3:// URL or a local path of the .onnx file`,
        );
      }
      checkNodeName(spec.node);
      return resolveOnnxBackbone(spec, deps);
    }
    default: {
      const kind = (spec as { kind?: unknown }).kind;
      throw new ModelError(`unknown feature spec kind "${String(kind)}"; expected raw-pixels, builtin, tfjs or onnx`);
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
 * ONNX Runtime (CUDA, else CPU) for graph and layers models that convert; TF.js when the model
 * uses an op or layer the converters do not cover, and on hosts where ONNX Runtime has no CUDA
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
  const notOnOnnx = (err: unknown): Promise<FeatureEngine> => {
    const reason = errorMessage(err);
    if (choice === 'onnx') {
      throw new ModelError(`${src.modelName} cannot run on ONNX Runtime: ${reason}; use DEEPFEAT_ENGINE=tfjs or auto`, {
        cause: err,
      });
    }
    // auto: a model the converters do not cover (or, should it happen, one ONNX Runtime rejects
    // after conversion) still runs, on TensorFlow.js, which executes the original model.
    deps.log?.('ONNX conversion not possible; using TensorFlow.js', { reason });
    return tfjsEngine();
  };
  // The cut, from the topology alone: an unknown node or layer fails here whatever the engine
  // (a ModelError); a layers topology the converter cannot read goes to TF.js, which loads it itself.
  let cut: { node: string; id: string; size: number };
  try {
    cut = planCut(src);
  } catch (err) {
    if (err instanceof UnsupportedGraphError) return notOnOnnx(err);
    throw err;
  }
  let onnx: FeatureEngine;
  try {
    onnx = await createOnnxEngine({
      artifacts: src.artifacts,
      id: cut.id,
      node: cut.node,
      size: cut.size,
      inputRange: src.inputRange,
      threads: deps.threads && deps.threads > 0 ? deps.threads : os.availableParallelism(),
      provider: deps.onnxProvider ?? 'auto',
      cacheDir: deps.cacheDir || undefined,
      log: deps.log,
    });
  } catch (err) {
    return notOnOnnx(err);
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

/**
 * Where the ONNX engine cuts `src`: a graph node's full name (graph-cut.ts) or a layer's name
 * (onnx/layers.ts), with the engine id the TF.js engine gives the same cut.
 */
function planCut(src: GraphModelSource): { node: string; id: string; size: number } {
  if (isLayersModel(src.artifacts)) {
    const c = planLayersCut(src.artifacts, src.node, src.modelName, src.inputSize);
    return { node: c.layer, id: c.id, size: c.size };
  }
  const c = planGraphCut(src.artifacts, src.node, src.modelName, src.inputSize);
  return { node: c.full, id: c.id, size: c.size };
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
