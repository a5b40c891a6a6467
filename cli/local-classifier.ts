/**
 * A published model, ready to classify decoded images in this process (`deepfeat predict` on
 * local files) and to give their pooled features (`deepfeat similar`), both from one forward pass.
 * The model's own classifier.onnx runs on ONNX Runtime when the version has one: the same file a
 * user downloads, so deepfeat classifies exactly as that file does and needs no access to the
 * backbone; its `features` output is the pooled vector before standardisation, exactly a stored
 * feature row. A version without it (a TF.js layers backbone) runs its backbone on a feature
 * engine, read as the extractors read it, and the head from model.json. A run with features and
 * no model yet (`openFeatureEngine`) runs the engine of its feature spec.
 */
import { availableParallelism } from 'node:os';
import type * as Ort from 'onnxruntime-node';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { loadOrt } from '../services/extractor/engines/onnx.js';
import {
  CLASSIFIER_FEATURES,
  CLASSIFIER_INPUT,
  CLASSIFIER_PROBABILITIES,
} from '../services/extractor/engines/onnx/classifier.js';
import type { FeatureEngine } from '../services/extractor/engines/engine.js';
import { createModelSource } from '../services/extractor/model-source.js';
import { ModelError, errorMessage } from '../shared/errors.js';
import type { FeatureSpec } from '../shared/features.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { predictProba } from '../shared/softmax-model.js';
import { quote } from '../shared/text.js';
import type { Client } from './client.js';
import { classifierBytes, classifierOf } from './model-files.js';

/** Pooled features of decoded images, as the run's extractors made its stored rows. */
export interface LocalFeatures {
  /** Images must be decoded to size × size RGB (decodeImage). */
  readonly size: number;
  /** What runs it, for messages: 'classifier.onnx on onnxruntime (CPU)' or the engine's backend. */
  readonly runs: string;
  /** Features per image. */
  readonly dim: number;
  /** images.length × dim, row-major: the pooled vectors before standardisation. */
  features(images: readonly Uint8Array[]): Promise<Float32Array>;
  close(): Promise<void>;
}

export interface LocalClassifier extends LocalFeatures {
  /** Probabilities, images.length × classes, row-major in model.json's `classes` order. */
  classify(images: readonly Uint8Array[]): Promise<Float32Array>;
  /** Both from one forward pass: probabilities (as classify) and features (as features). */
  infer(images: readonly Uint8Array[]): Promise<{ probabilities: Float32Array; features: Float32Array }>;
}

export async function openClassifier(client: Client, artifact: ModelArtifact, uri: string): Promise<LocalClassifier> {
  const info = classifierOf(artifact);
  if (info) {
    const bytes = await classifierBytes(client, artifact, uri);
    return onnxClassifier(await loadOrt(), bytes, info.input.shape[1], artifact.mean.length);
  }
  return engineClassifier(client, artifact);
}

async function onnxClassifier(ort: typeof Ort, bytes: Uint8Array, size: number, dim: number): Promise<LocalClassifier> {
  let session: Ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(bytes, {
      intraOpNumThreads: availableParallelism(),
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
    });
  } catch (err) {
    throw new ModelError(`ONNX Runtime cannot load classifier.onnx: ${errorMessage(err).split('\n')[0]}`, {
      cause: err,
    });
  }
  const plane = size * size * 3;
  const run = async (images: readonly Uint8Array[]) => {
    const batch = new Uint8Array(images.length * plane);
    for (const [i, img] of images.entries()) batch.set(img, i * plane);
    try {
      return await session.run({
        [CLASSIFIER_INPUT]: new ort.Tensor('uint8', batch, [images.length, size, size, 3]),
      });
    } catch (err) {
      // The graph and model.json disagree (the sha256 covers the graph, not model.json's words):
      // the model must change, not the images.
      throw new ModelError(
        `classifier.onnx does not run on the ${size}x${size} input model.json describes ` +
          `(${errorMessage(err).split('\n')[0]}): publish the model again`,
        { cause: err },
      );
    }
  };
  // One grey image first: a model.json that misdescribes its graph fails here, before any image
  // is decoded at its size.
  try {
    await run([new Uint8Array(plane).fill(128)]);
  } catch (err) {
    await session.release().catch(() => undefined);
    throw err;
  }
  const infer = async (images: readonly Uint8Array[]) => {
    const out = await run(images);
    const features = out[CLASSIFIER_FEATURES]?.data as Float32Array | undefined;
    if (!features) {
      throw new ModelError(
        `classifier.onnx has no "${CLASSIFIER_FEATURES}" output: publish the model again with this deepfeat`,
      );
    }
    return { probabilities: out[CLASSIFIER_PROBABILITIES]!.data as Float32Array, features };
  };
  return {
    size,
    dim,
    runs: 'classifier.onnx on onnxruntime (CPU)',
    infer,
    classify: async (images) => (await run(images))[CLASSIFIER_PROBABILITIES]!.data as Float32Array,
    features: async (images) => (await infer(images)).features,
    close: () => session.release(),
  };
}

async function engineClassifier(client: Client, artifact: ModelArtifact): Promise<LocalClassifier> {
  const engine = await loadFeatureEngine(client, artifact.features.spec);
  if (engine.dim !== artifact.mean.length) {
    engine.dispose();
    throw new ModelError(
      `the backbone ${quote(engine.id)} gives ${engine.dim} features, but the model was trained on ${artifact.mean.length}`,
    );
  }
  const k = artifact.classes.length;
  const infer = async (images: readonly Uint8Array[]) => {
    const features = await engine.embed(images);
    const probabilities = new Float32Array(images.length * k);
    for (let i = 0; i < images.length; i++) {
      probabilities.set(predictProba(artifact, features.subarray(i * engine.dim, (i + 1) * engine.dim)), i * k);
    }
    return { probabilities, features };
  };
  return {
    size: engine.input.width,
    dim: engine.dim,
    runs: `${engine.id} on ${engine.backend} with the head from model.json`,
    infer,
    classify: async (images) => (await infer(images)).probabilities,
    features: (images) => engine.embed(images),
    async close() {
      engine.dispose();
    },
  };
}

/**
 * The feature engine of `spec` in this process, for a run that has features but no published
 * model (still training, or failed after extraction): the backbone read as the extractors read it.
 */
export async function openFeatureEngine(client: Client, spec: FeatureSpec): Promise<LocalFeatures> {
  const engine = await loadFeatureEngine(client, spec);
  return {
    size: engine.input.width,
    dim: engine.dim,
    runs: `${engine.id} on ${engine.backend}`,
    features: (images) => engine.embed(images),
    async close() {
      engine.dispose();
    },
  };
}

function loadFeatureEngine(client: Client, spec: FeatureSpec): Promise<FeatureEngine> {
  const { extractor: cfg } = client.config;
  return loadEngine(spec, {
    readObject: createModelSource({ s3: client.s3, modelDirs: cfg.modelDirs, maxModelBytes: cfg.maxModelBytes }),
    maxModelBytes: cfg.maxModelBytes,
    backend: cfg.tfjsBackend,
    engine: cfg.engine,
    threads: cfg.engineThreads,
    onnxProvider: cfg.onnxProvider,
    cacheDir: cfg.cacheDir || undefined,
  });
}
