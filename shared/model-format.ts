/**
 * The published artifact, models/<name>/<version>/model.json: everything another program needs
 * to turn an image into a prediction — how features were made (backbone, node, input size and
 * pixel range), the standardisation, the weights, the classes and the test metrics.
 */
import type { FeatureSpec } from './features.js';
import type { LinearSoftmaxModel } from './softmax-model.js';
import type { RunMetrics } from './run-state.js';

export const MODEL_FORMAT = 'deepfeat.model/v1';

/** The trainer's output, read by the evaluator: the classifier plus how it was chosen. */
export interface Candidate extends LinearSoftmaxModel {
  runId: string;
  dim: number;
  lambda: number;
  validation: Array<{ lambda: number; accuracy: number; logLoss: number }>;
  trainImages: number;
  valImages: number;
  fitMs: number;
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
