/**
 * The feature-engine contract: a backbone cut at one node, turning a batch of decoded images
 * into rows of a feature matrix. Every implementation (TensorFlow.js on any backend, ONNX
 * Runtime, raw pixels) meets this one interface, so the extract job does not know which it runs.
 */
import type { EngineChoice, OnnxProviderChoice, TfjsBackendChoice } from '../../../shared/config.js';

export interface FeatureEngine {
  /**
   * Stable name of backbone + node (+ size), recorded with the features and the published model,
   * e.g. 'mobilenet_v2_mid@expanded_conv_13/expand/Relu6' or 'raw-pixels:32x32'.
   * Features with the same id are comparable; features with different ids are not. The id does
   * not name the engine: ONNX Runtime and TF.js give the same features for the same model and
   * node (checked to 1e-3 relative error by test/onnx.test.ts), so extractors on different
   * engines can share a run.
   */
  readonly id: string;
  /**
   * What runs the maths, for logs and status: 'onnxruntime (CPU, 2 threads)', 'onnxruntime (CUDA)',
   * 'tfjs tensorflow (GPU)', 'tfjs tensorflow (CPU)', 'tfjs wasm', 'tfjs cpu', 'js'.
   */
  readonly backend: string;
  /** The size images must be decoded to before `embed` (see `decodeImage`). */
  readonly input: { width: number; height: number };
  /**
   * Images per forward pass this engine runs best at, used when DEEPFEAT_BATCH_SIZE is 0 (auto).
   * Measured with npm run bench: on CPU, batch 8 is as fast per image as 16 or 32 and needs far
   * less memory (ONNX Runtime's arena grows with the batch: ~330 MiB RSS at 8, ~530 at 16, ~940
   * at 32); GPUs want larger batches to fill the device.
   */
  readonly preferredBatch: number;
  /** Length of one feature row. */
  readonly dim: number;
  /**
   * images: RGB uint8 HWC at `input` size (width × height × 3 bytes each).
   * Returns images.length × dim floats, row-major, row i for images[i].
   */
  embed(images: readonly Uint8Array[]): Promise<Float32Array>;
  /** Frees the model's memory; the engine cannot be used afterwards. */
  dispose(): void;
}

/** Which engine to build; declared in shared/ because job payloads carry it. */
export type { FeatureSpec } from '../../../shared/features.js';

/** What `loadEngine` needs from its caller. */
export interface EngineDeps {
  /**
   * Reads a whole model file: a local path or an s3:// URL. The engines never touch storage
   * themselves. A file over `maxBytes` is refused (ModelError) without being read whole.
   */
  readObject(url: string, maxBytes?: number): Promise<Uint8Array>;
  /** Most bytes a user's model may hold: each file, and its weight files together; default 1 GiB. */
  maxModelBytes?: number;
  /** Structured log line (pino-style message + fields). */
  log?: (msg: string, extra?: object) => void;
  /** TensorFlow.js backend; default 'auto'. Process-wide: TensorFlow.js has one active backend. */
  backend?: TfjsBackendChoice;
  /** Engine for graph backbones; default 'auto' (ONNX Runtime where the graph converts). */
  engine?: EngineChoice;
  /** ONNX Runtime intra-op threads; default: one per core. */
  threads?: number;
  /** ONNX Runtime execution provider; default 'auto' (CUDA where installed, else CPU). */
  onnxProvider?: OnnxProviderChoice;
  /** Cache folder for converted ONNX models; undefined = no cache. */
  cacheDir?: string;
}
