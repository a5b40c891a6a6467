/**
 * The published model.json, built only from what travelled with the run: the evaluate job's
 * payload (name, the request's source and feature spec) and the trainer's candidate.json (the
 * classifier, and the engine that made its features, from the extract jobs' results). Nothing
 * here reads the run's status in Redis, which may have been changed, expired or lost meanwhile.
 */
import { BUILTIN_BACKBONES } from '../../shared/backbones.js';
import type { FeatureSpec } from '../../shared/features.js';
import {
  MODEL_FORMAT,
  type Candidate,
  type ClassifierInfo,
  type ClassifierUnavailable,
  type ModelArtifact,
} from '../../shared/model-format.js';
import type { RunMetrics } from '../../shared/run-state.js';

export interface ArtifactInputs {
  readonly runId: string;
  readonly name: string;
  readonly source: string;
  readonly spec: FeatureSpec;
  readonly candidate: Candidate;
  readonly metrics: RunMetrics;
  /** classifier.onnx as published beside model.json, or why there is none. */
  readonly classifier?: ClassifierInfo | ClassifierUnavailable;
  readonly createdAt: string;
}

export function buildModelArtifact(a: ArtifactInputs): ModelArtifact {
  const { candidate } = a;
  return {
    format: MODEL_FORMAT,
    name: a.name,
    // The version is the run id: sortable by time, and a retried evaluate rewrites the same keys.
    version: a.runId,
    runId: a.runId,
    createdAt: a.createdAt,
    source: a.source,
    features: {
      spec: a.spec,
      engine: candidate.features?.engine ?? 'unknown',
      dim: candidate.dim,
      input: candidate.features?.input ?? specInputSize(a.spec),
    },
    classes: candidate.classes,
    ...(candidate.featureTransform ? { featureTransform: candidate.featureTransform } : {}),
    mean: candidate.mean,
    std: candidate.std,
    weights: candidate.weights,
    bias: candidate.bias,
    training: {
      lambda: candidate.lambda,
      trainImages: candidate.trainImages,
      valImages: candidate.valImages,
      validation: candidate.validation,
    },
    metrics: a.metrics,
    ...(a.classifier ? { classifier: a.classifier } : {}),
  };
}

/** The input size a spec asks for, when no extract job reported the size it decoded to. */
function specInputSize(spec: FeatureSpec): { width: number; height: number } {
  switch (spec.kind) {
    case 'raw-pixels':
      return { width: spec.size, height: spec.size };
    case 'builtin': {
      const side = BUILTIN_BACKBONES[spec.id]?.inputSize ?? 224;
      return { width: side, height: side };
    }
    case 'tfjs':
    case 'onnx':
      return { width: spec.inputSize ?? 224, height: spec.inputSize ?? 224 };
  }
}
