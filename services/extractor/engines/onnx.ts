/**
 * ONNX Runtime feature engine. TF.js graph models (the builtin backbone included) and layers
 * models are converted to ONNX in-process by ./onnx/convert.ts and ./onnx/layers.ts — never
 * downloaded — once per model and node, and the result is cached on disk (DEEPFEAT_CACHE_DIR),
 * keyed by CONVERTER_VERSION, the node and the model's bytes, so later processes skip the conversion.
 *
 * Execution providers: CUDA where onnxruntime-node was installed with its CUDA binaries (GPU
 * hosts), else CPU. The CPU provider runs `threads` intra-op threads per process.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import type * as Ort from 'onnxruntime-node';
import type { OnnxProviderChoice } from '../../../shared/config.js';
import { DeepfeatError, ModelError, errorMessage } from '../../../shared/errors.js';
import { type InputRange, inputLut } from '../../../shared/features.js';
import type { FeatureEngine } from './engine.js';
import {
  CONVERTER_VERSION,
  ONNX_INPUT,
  ONNX_OUTPUT,
  UnsupportedGraphError,
  convertGraphToOnnx,
} from './onnx/convert.js';

type Log = (msg: string, extra?: object) => void;

export interface OnnxEngineOptions {
  artifacts: tf.io.ModelArtifacts;
  /** Engine id (shared with the TF.js engine for the same model and node: same features). */
  id: string;
  /** Full graph node name (graph-cut.ts planGraphCut) or layer name (onnx/layers.ts planLayersCut) to cut at. */
  node: string;
  size: number;
  inputRange: InputRange;
  /** Intra-op threads for the CPU provider. */
  threads: number;
  provider: OnnxProviderChoice;
  /** Folder for converted models; undefined disables the cache. */
  cacheDir?: string;
  log?: Log;
}

let ortModule: Promise<typeof Ort> | undefined;
/** onnxruntime-node, loaded on first use (its native library is ~20 MB; raw-pixel runs never need it). */
export function loadOrt(): Promise<typeof Ort> {
  ortModule ??= import('onnxruntime-node').then(
    (m) => ((m as unknown as { default?: typeof Ort }).default ?? m) as typeof Ort,
  );
  ortModule.catch(() => (ortModule = undefined));
  return ortModule;
}

/** The converted ONNX bytes for this model and node: from the cache, or converted now and cached. */
export async function onnxModelBytes(
  artifacts: tf.io.ModelArtifacts,
  node: string,
  cacheDir: string | undefined,
  log?: Log,
): Promise<Uint8Array> {
  const hash = createHash('sha256');
  hash.update(`deepfeat-onnx-converter:${CONVERTER_VERSION}\0${node}\0`);
  hash.update(JSON.stringify(artifacts.modelTopology ?? null));
  hash.update(JSON.stringify(artifacts.weightSpecs ?? null));
  const weights = artifacts.weightData;
  for (const buf of Array.isArray(weights) ? weights : weights ? [weights] : []) hash.update(new Uint8Array(buf));
  const file = cacheDir ? path.join(cacheDir, `onnx-${hash.digest('hex').slice(0, 32)}.onnx`) : undefined;
  if (file) {
    try {
      const bytes = new Uint8Array(await readFile(file));
      log?.('ONNX model read from cache', { file });
      return bytes;
    } catch {
      // not cached yet (or unreadable): convert
    }
  }
  const started = performance.now();
  const { bytes, nodes } = convertGraphToOnnx(artifacts, node, String(CONVERTER_VERSION));
  log?.('TF.js graph converted to ONNX', { nodes, bytes: bytes.length, ms: Math.round(performance.now() - started) });
  if (file) {
    try {
      await mkdir(path.dirname(file), { recursive: true });
      // Write then rename: a reader never sees half a file, and concurrent writers are harmless.
      const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
      await writeFile(tmp, bytes);
      await rename(tmp, file);
    } catch (err) {
      log?.('could not cache the converted ONNX model; converting again next time', {
        file,
        reason: errorMessage(err),
      });
    }
  }
  return bytes;
}

/**
 * Build an ONNX Runtime engine for a TF.js graph or layers model.
 * @throws UnsupportedGraphError when the graph cannot be converted (the caller may fall back to
 *   TF.js); ModelError when ONNX Runtime cannot load or run it.
 */
export async function createOnnxEngine(o: OnnxEngineOptions): Promise<FeatureEngine> {
  let ort: typeof Ort;
  try {
    ort = await loadOrt();
  } catch (err) {
    throw new UnsupportedGraphError(`onnxruntime-node cannot be loaded here: ${errorMessage(err).split('\n')[0]}`);
  }
  const bytes = await onnxModelBytes(o.artifacts, o.node, o.cacheDir, o.log);
  const { session, backend } = await createSession(ort, bytes, o);
  const engine = new OnnxEngine(ort, session, o, backend);
  try {
    await engine.warmUp();
  } catch (err) {
    await session.release().catch(() => undefined);
    throw new ModelError(`ONNX Runtime fails a test run of ${o.id}: ${errorMessage(err)}`, { cause: err });
  }
  return engine;
}

/**
 * An ONNX Runtime session on the provider `o.provider` asks for (CUDA where installed, else CPU).
 * Shared with onnx-user.ts, which runs a user's own ONNX model.
 */
export async function createSession(
  ort: typeof Ort,
  bytes: Uint8Array,
  o: Pick<OnnxEngineOptions, 'id' | 'threads' | 'provider' | 'log'>,
): Promise<{ session: Ort.InferenceSession; backend: string }> {
  const base: Ort.InferenceSession.SessionOptions = {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: o.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // Idle intra-op threads sleep instead of spinning, leaving the cores to sharp's decoding in
    // the same process (measured: no cost to the forward pass itself).
    extra: { session: { intra_op: { allow_spinning: '0' } } },
  };
  // 'auto' tries CUDA only where its provider library was installed: trying it elsewhere works
  // but makes ONNX Runtime print a loud native error on every start.
  if (o.provider === 'cuda' || (o.provider === 'auto' && cudaProviderInstalled())) {
    try {
      const session = await ort.InferenceSession.create(bytes, { ...base, executionProviders: ['cuda'] });
      return { session, backend: 'onnxruntime (CUDA)' };
    } catch (err) {
      if (o.provider === 'cuda') {
        throw new ModelError(
          `ONNX Runtime's CUDA provider could not start: ${errorMessage(err).split('\n')[0]}; install onnxruntime-node ` +
            'with its CUDA binaries (npm install with onnxruntime-node-install=cuda12 on a GPU host) or set DEEPFEAT_ONNX_PROVIDER=auto',
          { cause: err },
        );
      }
      o.log?.('ONNX Runtime CUDA provider not available; using CPU', { reason: errorMessage(err).split('\n')[0] });
    }
  }
  try {
    const session = await ort.InferenceSession.create(bytes, { ...base, executionProviders: ['cpu'] });
    return { session, backend: `onnxruntime (CPU, ${o.threads} thread${o.threads === 1 ? '' : 's'})` };
  } catch (err) {
    throw new ModelError(`ONNX Runtime cannot load the model for ${o.id}: ${errorMessage(err)}`, { cause: err });
  }
}

/** Whether onnxruntime-node's folder holds the CUDA execution provider (GPU installs only). */
function cudaProviderInstalled(): boolean {
  try {
    const root = path.dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
    const bin = path.join(root, 'bin');
    return readdirSync(bin).some((napi) =>
      existsSync(path.join(bin, napi, process.platform, process.arch, 'libonnxruntime_providers_cuda.so')),
    );
  } catch {
    return false;
  }
}

class OnnxEngine implements FeatureEngine {
  readonly id: string;
  readonly backend: string;
  readonly input: { width: number; height: number };
  readonly preferredBatch: number;
  #dim = 0;
  #disposed = false;
  /** Input value of each pixel byte, in the model's range (shared/features.ts). */
  readonly #lut: Float32Array;
  /** The input batch buffer, kept between batches (a fresh 5 MB array per batch cost ~0.5 ms/image). */
  #input: Float32Array | undefined;
  #inputInUse = false;

  constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    o: OnnxEngineOptions,
    backend: string,
  ) {
    this.id = o.id;
    this.backend = backend;
    this.input = { width: o.size, height: o.size };
    this.preferredBatch = backend.includes('CUDA') ? 32 : 8;
    this.#lut = inputLut(o.inputRange);
  }

  get dim(): number {
    return this.#dim;
  }

  async warmUp(): Promise<void> {
    const out = await this.#run([new Uint8Array(this.input.width * this.input.height * 3)]);
    this.#dim = out.length;
  }

  async embed(images: readonly Uint8Array[]): Promise<Float32Array> {
    if (this.#disposed) throw new DeepfeatError('INTERNAL', `feature engine ${this.id} used after dispose()`);
    if (images.length === 0) return new Float32Array(0);
    const out = await this.#run(images);
    if (out.length !== images.length * this.#dim) {
      throw new DeepfeatError(
        'INTERNAL',
        `${this.id}: ONNX Runtime returned ${out.length} values for ${images.length} images of ${this.#dim}`,
      );
    }
    return out;
  }

  /**
   * uint8 HWC images → float32 NCHW scaled to the model's range → pooled rows.
   *
   * This conversion runs on the engine's thread between forward passes, so it is kept tight
   * (measured, batch 8: 1.2 ms/image with a new array and a closure per image, 0.25 ms/image now):
   * a plain loop, a lookup table instead of a multiply-add, and one input buffer reused while no
   * other batch is using it (calls can overlap when the engine is used in-process).
   */
  async #run(images: readonly Uint8Array[]): Promise<Float32Array> {
    const { width: w, height: h } = this.input;
    const plane = w * h;
    const len = images.length * 3 * plane;
    const reuse = !this.#inputInUse;
    if (reuse && (this.#input?.length ?? 0) < len) this.#input = new Float32Array(len);
    const x = reuse ? this.#input!.subarray(0, len) : new Float32Array(len);
    this.#inputInUse = true;
    try {
      const lut = this.#lut;
      for (let n = 0; n < images.length; n++) {
        const img = images[n]!;
        if (img.length !== plane * 3) {
          throw new DeepfeatError(
            'INTERNAL',
            `${this.id}: image ${n} has ${img.length} bytes, expected ${w}×${h}×3 = ${plane * 3}`,
          );
        }
        const r = n * 3 * plane;
        const g = r + plane;
        const b = g + plane;
        for (let p = 0, q = 0; p < plane; p++, q += 3) {
          x[r + p] = lut[img[q]!]!;
          x[g + p] = lut[img[q + 1]!]!;
          x[b + p] = lut[img[q + 2]!]!;
        }
      }
      const feeds = { [ONNX_INPUT]: new this.ort.Tensor('float32', x, [images.length, 3, h, w]) };
      const result = await this.session.run(feeds);
      const y = result[ONNX_OUTPUT]!;
      const data = y.data as Float32Array;
      this.#dim = this.#dim || (y.dims[1] as number);
      return data;
    } finally {
      if (reuse) this.#inputInUse = false;
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    void this.session.release().catch(() => undefined);
  }
}
