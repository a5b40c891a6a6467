/**
 * A published model, ready to classify decoded images in this process (`deepfeat predict` on
 * local files). The model's own classifier.onnx runs on ONNX Runtime when the version has one:
 * the same file a user downloads, so deepfeat classifies exactly as that file does and needs no
 * access to the backbone. A version without it (a TF.js layers backbone) runs its backbone on a
 * feature engine, read as the extractors read it, and the head from model.json.
 */
import { availableParallelism } from 'node:os';
import type * as Ort from 'onnxruntime-node';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { loadOrt } from '../services/extractor/engines/onnx.js';
import { CLASSIFIER_INPUT, CLASSIFIER_PROBABILITIES } from '../services/extractor/engines/onnx/classifier.js';
import { createModelSource } from '../services/extractor/model-source.js';
import { ModelError, errorMessage } from '../shared/errors.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { predictProba } from '../shared/softmax-model.js';
import { quote } from '../shared/text.js';
import type { Client } from './client.js';
import { classifierBytes, classifierOf } from './model-files.js';

export interface LocalClassifier {
  /** Images must be decoded to size × size RGB (decodeImage). */
  readonly size: number;
  /** What runs it, for messages: 'classifier.onnx on onnxruntime (CPU)' or the engine's backend. */
  readonly runs: string;
  /** Probabilities, images.length × classes, row-major in model.json's `classes` order. */
  classify(images: readonly Uint8Array[]): Promise<Float32Array>;
  close(): Promise<void>;
}

export async function openClassifier(client: Client, artifact: ModelArtifact, uri: string): Promise<LocalClassifier> {
  const info = classifierOf(artifact);
  if (info) return onnxClassifier(await loadOrt(), await classifierBytes(client, artifact, uri), info.input.shape[1]);
  return engineClassifier(client, artifact);
}

async function onnxClassifier(ort: typeof Ort, bytes: Uint8Array, size: number): Promise<LocalClassifier> {
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
  return {
    size,
    runs: 'classifier.onnx on onnxruntime (CPU)',
    async classify(images) {
      const batch = new Uint8Array(images.length * plane);
      for (const [i, img] of images.entries()) batch.set(img, i * plane);
      const out = await session.run({
        [CLASSIFIER_INPUT]: new ort.Tensor('uint8', batch, [images.length, size, size, 3]),
      });
      return out[CLASSIFIER_PROBABILITIES]!.data as Float32Array;
    },
    close: () => session.release(),
  };
}

async function engineClassifier(client: Client, artifact: ModelArtifact): Promise<LocalClassifier> {
  const { extractor: cfg } = client.config;
  const engine = await loadEngine(artifact.features.spec, {
    readObject: createModelSource({ s3: client.s3, modelDirs: cfg.modelDirs, maxModelBytes: cfg.maxModelBytes }),
    maxModelBytes: cfg.maxModelBytes,
    backend: cfg.tfjsBackend,
    engine: cfg.engine,
    threads: cfg.engineThreads,
    onnxProvider: cfg.onnxProvider,
    cacheDir: cfg.cacheDir || undefined,
  });
  if (engine.dim !== artifact.mean.length) {
    engine.dispose();
    throw new ModelError(
      `the backbone ${quote(engine.id)} gives ${engine.dim} features, but the model was trained on ${artifact.mean.length}`,
    );
  }
  const k = artifact.classes.length;
  return {
    size: engine.input.width,
    runs: `${engine.id} on ${engine.backend} with the head from model.json`,
    async classify(images) {
      const features = await engine.embed(images);
      const out = new Float32Array(images.length * k);
      for (let i = 0; i < images.length; i++) {
        out.set(predictProba(artifact, features.subarray(i * engine.dim, (i + 1) * engine.dim)), i * k);
      }
      return out;
    },
    async close() {
      engine.dispose();
    },
  };
}
