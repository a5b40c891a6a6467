/**
 * The published artifact, models/<name>/<version>/model.json: everything another program needs
 * to turn an image into a prediction — how features were made (backbone, node, input size and
 * pixel range), the standardisation, the weights, the classes and the test metrics.
 */
import { ModelError } from './errors.js';
import type { FeatureSpec } from './features.js';
import { assertLinearSoftmaxModel, type LinearSoftmaxModel } from './softmax-model.js';
import { RUN_ID_PATTERN, type RunMetrics } from './run-state.js';
import { quote } from './text.js';

export const MODEL_FORMAT = 'deepfeat.model/v1';

/**
 * Largest model.json read: its weights are classes × features numbers as JSON text (~20 bytes
 * each), so 128 MiB holds about 6 million weights (2,000 classes × 3,072 raw pixels). A reader
 * refuses a larger one before reading its body: parsed, it would take several times its size.
 */
export const MAX_PUBLISHED_MODEL_BYTES = 128 * 1024 * 1024;

/** A model name is one segment of its keys (models/<name>/...): no '/', and short. */
export const MODEL_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
export const MODEL_NAME_RULE =
  'a model name is 1 to 100 letters, digits, ".", "_" or "-", starting with a letter or digit';
/** A version is the id of the run that published it (the evaluator sets it so). */
export const MODEL_VERSION_RULE =
  'a version is the id of the run that published it, like r20261128093000-1a2b3c (deepfeat status RUN shows it)';

export const isModelName = (s: string): boolean => MODEL_NAME_PATTERN.test(s);
export const isModelVersion = (s: string): boolean => RUN_ID_PATTERN.test(s);

/** The trainer's output, read by the evaluator: the classifier plus how it was chosen. */
export interface Candidate extends LinearSoftmaxModel {
  runId: string;
  dim: number;
  lambda: number;
  validation: Array<{ lambda: number; accuracy: number; logLoss: number }>;
  trainImages: number;
  valImages: number;
  fitMs: number;
  /**
   * What made the features, as the extract jobs reported it (their results): the engine id
   * (backbone@node or raw-pixels:NxN), the backends that ran it, the input size images were
   * decoded to. Absent when the train job had no extract jobs to ask.
   */
  features?: { engine: string; backends: string[]; input: { width: number; height: number } };
}

/** Largest input side a classifier may declare: the engines' own bound on a model's input (RUN_LIMITS). */
const MAX_CLASSIFIER_SIDE = 2048;

/** The portable classifier's file name, beside model.json in the version's folder. */
export const CLASSIFIER_FILE = 'classifier.onnx';

/**
 * What a caller must do to an image before classifier.onnx, in order: exactly what the pipeline
 * did to every training image (services/extractor/image.ts). Written into model.json.
 */
export function classifierPreprocessing(size: number): string[] {
  return [
    'decode the file (the first frame of an animation, the first page of a multi-page file)',
    'apply its EXIF orientation',
    'flatten transparency onto white (255, 255, 255)',
    'convert to 8-bit sRGB with 3 channels (no alpha)',
    `resize to cover ${size}x${size} keeping the aspect ratio (Lanczos-3, as sharp's fit 'cover' does), then crop the centre ${size}x${size}`,
    `lay the pixels out as uint8 [N, ${size}, ${size}, 3] (rows, columns, RGB): no scaling or normalisation, the graph does that`,
  ];
}

/** model.json's description of classifier.onnx: image (uint8 NHWC) → probabilities and features. */
export interface ClassifierInfo {
  file: typeof CLASSIFIER_FILE;
  sha256: string;
  bytes: number;
  format: 'onnx';
  opset: number;
  input: {
    name: string;
    dtype: 'uint8';
    layout: 'NHWC';
    shape: [string, number, number, 3];
    channels: 'RGB';
    normalisation: string;
  };
  outputs: {
    probabilities: { name: string; shape: [string, number]; order: string };
    features: { name: string; shape: [string, number]; note: string };
  };
  preprocessing: string[];
}

/** Why a version has no classifier.onnx (a backbone the ONNX writer cannot express). */
export interface ClassifierUnavailable {
  file: null;
  reason: string;
}

export interface ModelArtifact extends LinearSoftmaxModel {
  format: typeof MODEL_FORMAT;
  name: string;
  version: string;
  runId: string;
  createdAt: string;
  source: string;
  features: {
    spec: FeatureSpec;
    /** Engine id that made the features (backbone@node or raw-pixels:NxN). */
    engine: string;
    dim: number;
    /** Images are decoded with EXIF rotation, alpha flattened on white, sRGB, resized 'cover' to this size. */
    input: { width: number; height: number };
  };
  training: { lambda: number; trainImages: number; valImages: number; validation: Candidate['validation'] };
  metrics: RunMetrics;
  /** The whole classifier as ONNX, or why there is none. Absent in versions published before it existed. */
  classifier?: ClassifierInfo | ClassifierUnavailable;
}

export interface LatestPointer {
  name: string;
  version: string;
  key: string;
  publishedAt: string;
}

export const candidateKey = (runId: string) => `runs/${runId}/candidate.json`;
export const modelKey = (name: string, version: string) => `models/${name}/${version}/model.json`;
export const latestKey = (name: string) => `models/${name}/latest.json`;
/** A version's folder: model.json and every file beside it (classifier.onnx). */
export const versionPrefix = (name: string, version: string) => `models/${name}/${version}/`;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isPositiveInt = (v: unknown): boolean => Number.isInteger(v) && (v as number) > 0;

/**
 * `value` (a parsed models/<name>/<version>/model.json read from `uri`) checked to be a whole
 * deepfeat model, so a reader never trips over a missing field. Throws ModelError naming the
 * first bad field and the way out.
 */
export function assertModelArtifact(value: unknown, uri: string): ModelArtifact {
  const bad = (detail: string, cause?: unknown) =>
    new ModelError(
      `${quote(uri)} is not a valid deepfeat model (${detail}): publish it again with deepfeat run, ` +
        'or download another version',
      cause === undefined ? {} : { cause },
    );
  if (!isObject(value)) throw bad('expected a JSON object');
  if (value.format !== MODEL_FORMAT) throw bad(`"format" is not ${JSON.stringify(MODEL_FORMAT)}`);
  if (typeof value.name !== 'string' || !isModelName(value.name)) throw bad(`"name" is not a model name`);
  if (typeof value.version !== 'string' || !isModelVersion(value.version)) throw bad(`"version" is not a run id`);
  try {
    assertLinearSoftmaxModel(value);
  } catch (err) {
    throw bad(err instanceof Error ? err.message : String(err), err);
  }
  const { features, metrics } = value;
  const d = (value.mean as number[]).length;
  if (!isObject(features) || !isObject(features.spec) || typeof features.engine !== 'string')
    throw bad('"features" must say how features were made: spec, engine, dim, input');
  if (features.dim !== d) throw bad(`"features.dim" is not ${d}, the length of "mean"`);
  const input = features.input;
  if (!isObject(input) || !isPositiveInt(input.width) || !isPositiveInt(input.height))
    throw bad('"features.input" must give a whole width and height');
  const accuracy = isObject(metrics) ? metrics.accuracy : undefined;
  if (typeof accuracy !== 'number' || !(accuracy >= 0 && accuracy <= 1))
    throw bad('"metrics.accuracy" must be a number from 0 to 1');
  const c = value.classifier;
  if (c !== undefined) {
    const ok =
      isObject(c) &&
      (c.file === null
        ? typeof c.reason === 'string'
        : c.file === CLASSIFIER_FILE &&
          typeof c.sha256 === 'string' &&
          /^[0-9a-f]{64}$/.test(c.sha256) &&
          isPositiveInt(c.bytes) &&
          isObject(c.input) &&
          Array.isArray(c.input.shape) &&
          isPositiveInt(c.input.shape[1]) &&
          (c.input.shape[1] as number) <= MAX_CLASSIFIER_SIDE &&
          c.input.shape[1] === c.input.shape[2]);
    if (!ok) throw bad(`"classifier" must name ${CLASSIFIER_FILE} with its sha256, size and input, or give a reason`);
  }
  return value as unknown as ModelArtifact;
}

/** `value` (models/<name>/latest.json, read from `uri`) checked to point at a version of `name`. */
export function assertLatestPointer(value: unknown, name: string, uri: string): LatestPointer {
  if (
    !isObject(value) ||
    typeof value.version !== 'string' ||
    !isModelVersion(value.version) ||
    value.key !== modelKey(name, value.version)
  ) {
    throw new ModelError(
      `${quote(uri)} does not point at a published version of ${quote(name)} (expected {"version": RUN, "key": ` +
        `"${modelKey(name, 'RUN')}"}): download NAME@VERSION, or publish the model again`,
    );
  }
  return value as unknown as LatestPointer;
}
