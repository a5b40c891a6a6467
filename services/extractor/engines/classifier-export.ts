/**
 * classifier.onnx for a finished run: the run's backbone (read exactly as the extractors read it,
 * load-engine.ts resolveBackbone) and the trained head in one ONNX graph (onnx/classifier.ts),
 * then loaded and run once by ONNX Runtime before anyone can download it. The evaluator calls
 * this at publish time.
 *
 * A backbone the writer cannot express (a TF.js layers model, a graph op the converter does not
 * cover), a model the evaluator's host cannot read, or a graph ONNX Runtime refuses gives
 * `{ok: false, reason}`: the version is published without the file, and model.json and the run's
 * status say why. The reason is one line a user can act on.
 */
import { createHash } from 'node:crypto';
import { errorMessage } from '../../../shared/errors.js';
import { RAW_PIXELS_RANGE, inputLut, type FeatureSpec } from '../../../shared/features.js';
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
import {
  CLASSIFIER_FEATURES,
  CLASSIFIER_INPUT,
  CLASSIFIER_PROBABILITIES,
  buildClassifierOnnx,
  type ClassifierBackbone,
  type ClassifierHead,
} from './onnx/classifier.js';
import { CONVERTER_VERSION, OPSET, UnsupportedGraphError } from './onnx/convert.js';

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
  const d = o.head.mean.length;
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
    if (isLayersModel(backbone.artifacts)) {
      return unavailable(
        'the backbone is a TF.js layers model, which the ONNX writer does not convert yet; the head in model.json ' +
          'with the backbone on TensorFlow.js still classifies (deepfeat predict)',
      );
    }
    let cut: ReturnType<typeof planGraphCut>;
    try {
      cut = planGraphCut(backbone.artifacts, backbone.node, backbone.modelName, backbone.inputSize);
    } catch (err) {
      return unavailable(`the backbone's cut cannot be planned: ${errorMessage(err)}`);
    }
    size = cut.size;
    graph = { kind: 'graph', artifacts: backbone.artifacts, node: cut.full };
    lut = inputLut(backbone.inputRange);
    id = cut.id;
  }
  if (o.engineId !== undefined && o.engineId !== id) {
    return unavailable(`the run's features came from ${o.engineId}, but its spec now reads as ${id}`);
  }

  let bytes: Uint8Array;
  try {
    bytes = buildClassifierOnnx({
      backbone: graph,
      size,
      lut,
      head: o.head,
      producerVersion: String(CONVERTER_VERSION),
      docString: `deepfeat classifier: ${id}, pooled, standardised, linear softmax over ${o.head.classes.length} classes`,
    });
  } catch (err) {
    if (err instanceof UnsupportedGraphError) {
      return unavailable(`the backbone cannot be written as ONNX: ${errorMessage(err)}`);
    }
    throw err;
  }
  const problem = await tryRun(bytes, size, o.head.classes.length, d);
  if (problem) return unavailable(`ONNX Runtime cannot run the exported classifier: ${problem}`);

  const info: ClassifierInfo = {
    file: CLASSIFIER_FILE,
    sha256: createHash('sha256').update(bytes).digest('hex'),
    bytes: bytes.byteLength,
    format: 'onnx',
    opset: OPSET,
    input: {
      name: CLASSIFIER_INPUT,
      dtype: 'uint8',
      layout: 'NHWC',
      shape: ['N', size, size, 3],
      channels: 'RGB',
      normalisation: 'none: pass the 0-255 pixel bytes; the graph scales them as the backbone expects',
    },
    outputs: {
      probabilities: { name: CLASSIFIER_PROBABILITIES, shape: ['N', o.head.classes.length], order: 'classes' },
      features: {
        name: CLASSIFIER_FEATURES,
        shape: ['N', d],
        note: 'the pooled backbone vector before standardisation (for retrieval)',
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
