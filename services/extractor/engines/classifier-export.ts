/**
 * classifier.onnx for a finished run: the run's backbone (read exactly as the extractors read it,
 * load-engine.ts resolveBackbone) and the trained head in one ONNX graph (onnx/classifier.ts),
 * then loaded and run once by ONNX Runtime before anyone can download it. The evaluator calls
 * this at publish time.
 *
 * A backbone the writer cannot express (a graph op or a layer the converters do not cover), a
 * model the evaluator's host cannot read, or a graph ONNX Runtime refuses gives
 * `{ok: false, reason}`: the version is published without the file, and model.json and the run's
 * status say why. The reason is one line a user can act on.
 */
import { createHash } from 'node:crypto';
import { errorMessage } from '../../../shared/errors.js';
import {
  FLIP_ID_SUFFIX,
  RAW_PIXELS_RANGE,
  channelLuts,
  flipsFeatures,
  multiScaleFeatures,
  MULTI_SCALE_ID_SUFFIX,
  inputLut,
  type FeatureSpec,
} from '../../../shared/features.js';
import {
  CLASSIFIER_FILE,
  classifierPreprocessing,
  type ClassifierInfo,
  type ClassifierUnavailable,
} from '../../../shared/model-format.js';
import type { EngineDeps } from './engine.js';
import { isLayersModel, planGraphCut } from './graph-cut.js';
import { resolveBackbone } from './load-engine.js';
import { loadOrt } from './onnx.js';
import { type OnnxBackbone, pooledRank } from './onnx-user.js';
import { buildUserClassifierOnnx } from './onnx/user-classifier.js';
import {
  CLASSIFIER_FEATURES,
  CLASSIFIER_INPUT,
  CLASSIFIER_PROBABILITIES,
  buildClassifierOnnx,
  type ClassifierBackbone,
  type ClassifierHead,
} from './onnx/classifier.js';
import { CONVERTER_VERSION, OPSET, UnsupportedGraphError } from './onnx/convert.js';
import { planLayersCut } from './onnx/layers.js';

export type ClassifierExport =
  | { ok: true; bytes: Uint8Array; info: ClassifierInfo }
  | ({ ok: false } & ClassifierUnavailable);

export interface ExportOptions {
  spec: FeatureSpec;
  head: ClassifierHead;
  /** The engine id the run's features came from (backbone@node, raw-pixels:NxN), when known: the export must match it. */
  engineId?: string;
  deps: Pick<EngineDeps, 'readObject' | 'maxModelBytes'>;
}

export async function exportClassifier(o: ExportOptions): Promise<ClassifierExport> {
  const unavailable = (reason: string): ClassifierExport => ({ ok: false, file: null, reason });
  let backbone: Awaited<ReturnType<typeof resolveBackbone>>;
  try {
    backbone = await resolveBackbone(o.spec, o.deps);
  } catch (err) {
    return unavailable(
      `the evaluator could not read the backbone (${errorMessage(err)}); run evaluators where the extractors can read the model`,
    );
  }
  const flip = flipsFeatures(o.spec);
  const halfScale = multiScaleFeatures(o.spec) && backbone.kind === 'graph';
  if (backbone.kind === 'onnx') {
    if (multiScaleFeatures(o.spec))
      return unavailable('an ONNX backbone runs at one input size: its runs have no multi-scale features to reproduce');
    return exportOnnxUserClassifier(backbone, o, flip);
  }
  let graph: ClassifierBackbone;
  let size: number;
  let lut: Float32Array;
  let id: string;
  if (backbone.kind === 'raw-pixels') {
    size = backbone.size;
    graph = { kind: 'raw-pixels' };
    lut = inputLut(RAW_PIXELS_RANGE);
    id = `raw-pixels:${size}x${size}`;
  } else {
    // The cut the extractors made: a graph node's full name, or a layer's name (which emitBackbone
    // hands to the layers converter).
    let cut: { node: string; id: string; size: number };
    try {
      if (isLayersModel(backbone.artifacts)) {
        const c = planLayersCut(backbone.artifacts, backbone.node, backbone.modelName, backbone.inputSize);
        cut = { node: c.layer, id: c.id, size: c.size };
      } else {
        const c = planGraphCut(backbone.artifacts, backbone.node, backbone.modelName, backbone.inputSize);
        cut = { node: c.full, id: c.id, size: c.size };
      }
    } catch (err) {
      if (err instanceof UnsupportedGraphError) {
        return unavailable(
          `the backbone cannot be written as ONNX: ${errorMessage(err)}; the head in model.json with the backbone ` +
            'on TensorFlow.js still classifies (deepfeat predict)',
        );
      }
      return unavailable(`the backbone's cut cannot be planned: ${errorMessage(err)}`);
    }
    size = cut.size;
    graph = { kind: 'graph', artifacts: backbone.artifacts, node: cut.node };
    lut = inputLut(backbone.inputRange);
    id = cut.id;
  }
  if (halfScale) id += MULTI_SCALE_ID_SUFFIX;
  if (flip) id += FLIP_ID_SUFFIX;
  if (o.engineId !== undefined && o.engineId !== id) {
    return unavailable(`the run's features came from ${o.engineId}, but its spec now reads as ${id}`);
  }

  let bytes: Uint8Array;
  try {
    bytes = buildClassifierOnnx({
      flip,
      halfScale,
      backbone: graph,
      size,
      lut,
      head: o.head,
      producerVersion: String(CONVERTER_VERSION),
      docString: `deepfeat classifier: ${id}, pooled${halfScale ? ' at the input size and at half of it, concatenated' : ''}${flip ? ', averaged with the mirror image' : ''}, standardised, linear softmax over ${o.head.classes.length} classes`,
    });
  } catch (err) {
    if (err instanceof UnsupportedGraphError) {
      return unavailable(
        `the backbone cannot be written as ONNX: ${errorMessage(err)}; the head in model.json with the backbone ` +
          'on TensorFlow.js still classifies (deepfeat predict)',
      );
    }
    throw err;
  }
  return checked(bytes, size, OPSET, o.head, flip, halfScale);
}

/**
 * A backbone that is a user's ONNX model: their graph with our pixel tables in front and the
 * pooling and head behind (onnx/user-classifier.ts).
 */
async function exportOnnxUserClassifier(b: OnnxBackbone, o: ExportOptions, flip: boolean): Promise<ClassifierExport> {
  const unavailable = (reason: string): ClassifierExport => ({ ok: false, file: null, reason });
  const id = `${b.modelName}@${b.node}${flip ? FLIP_ID_SUFFIX : ''}`;
  if (o.engineId !== undefined && o.engineId !== id) {
    return unavailable(`the run's features came from ${o.engineId}, but its spec now reads as ${id}`);
  }
  let bytes: Uint8Array;
  try {
    const rank = await pooledRank(b);
    bytes = buildUserClassifierOnnx(b, rank, channelLuts(b.inputRange, b.mean, b.std), o.head, flip);
  } catch (err) {
    return unavailable(`the classifier cannot be written around your ONNX model: ${errorMessage(err)}`);
  }
  return checked(bytes, b.size, b.info.opset, o.head, flip);
}

/** The classifier once ONNX Runtime has run it, with its description for model.json; or why not. */
async function checked(
  bytes: Uint8Array,
  size: number,
  opset: number,
  head: ClassifierHead,
  flip: boolean,
  halfScale = false,
): Promise<ClassifierExport> {
  const d = head.mean.length;
  const problem = await tryRun(bytes, size, head.classes.length, d);
  if (problem) {
    return { ok: false, file: null, reason: `ONNX Runtime cannot run the exported classifier: ${problem}` };
  }
  const info: ClassifierInfo = {
    file: CLASSIFIER_FILE,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    bytes: bytes.byteLength,
    format: 'onnx',
    opset,
    input: {
      name: CLASSIFIER_INPUT,
      dtype: 'uint8',
      layout: 'NHWC',
      shape: ['N', size, size, 3],
      channels: 'RGB',
      normalisation: 'none: pass the 0-255 pixel bytes; the graph scales them as the backbone expects',
    },
    outputs: {
      probabilities: { name: CLASSIFIER_PROBABILITIES, shape: ['N', head.classes.length], order: 'classes' },
      features: {
        name: CLASSIFIER_FEATURES,
        shape: ['N', d],
        note:
          'the pooled backbone vector before standardisation (for retrieval)' +
          (halfScale
            ? ', at the input size followed by at half of it (each 2×2 block of pixels averaged, in the graph)'
            : '') +
          (flip ? ", averaged with the mirror image's: the graph mirrors each image itself" : ''),
      },
    },
    preprocessing: classifierPreprocessing(size),
  };
  return { ok: true, bytes, info };
}

/**
 * Loads the graph in ONNX Runtime and runs one grey image: undefined when the outputs have the
 * promised shapes and the probabilities are a distribution, else what is wrong.
 */
async function tryRun(bytes: Uint8Array, size: number, k: number, d: number): Promise<string | undefined> {
  let session: import('onnxruntime-node').InferenceSession | undefined;
  try {
    const ort = await loadOrt();
    session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1, interOpNumThreads: 1 });
    const image = new ort.Tensor('uint8', new Uint8Array(size * size * 3).fill(128), [1, size, size, 3]);
    const out = await session.run({ [CLASSIFIER_INPUT]: image });
    const p = out[CLASSIFIER_PROBABILITIES];
    const f = out[CLASSIFIER_FEATURES];
    if (p?.dims.join() !== `1,${k}`) return `probabilities have shape [${p?.dims.join(', ')}], expected [1, ${k}]`;
    if (f?.dims.join() !== `1,${d}`) return `features have shape [${f?.dims.join(', ')}], expected [1, ${d}]`;
    const probs = Array.from(p.data as Float32Array);
    const sum = probs.reduce((a, b) => a + b, 0);
    if (!probs.every(Number.isFinite) || Math.abs(sum - 1) > 1e-3) return `probabilities sum to ${sum}`;
    return undefined;
  } catch (err) {
    return errorMessage(err).split('\n')[0];
  } finally {
    await session?.release().catch(() => undefined);
  }
}
