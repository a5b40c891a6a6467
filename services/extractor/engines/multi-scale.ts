/**
 * Multi-scale features (a spec's `multiScale: true`): each image's feature vector is the pooled
 * vector of the image at the engine's input size followed by the pooled vector of the same image
 * at half that side. The half-size image is made from the decoded pixels, each 2×2 block averaged
 * and rounded to the nearest byte ((a + b + c + d + 2) >> 2), so it needs no second decode and
 * the published classifier computes exactly the same pixels in its graph (onnx/classifier.ts:
 * AveragePool 2×2, + 0.5, Floor). Measured by `npm run bench:accuracy` (README "Shipped
 * backbones and accuracy levers", 10 seeds): +3.4 ± 1.5 points of test accuracy on the demo, better
 * on every seed, for 1.28× the extraction time (`npx tsx bench/lever-costs.ts`).
 */
import type * as tf from '@tensorflow/tfjs';
import { ModelError } from '../../../shared/errors.js';
import { MULTI_SCALE_ID_SUFFIX } from '../../../shared/features.js';
import { quote } from '../../../shared/text.js';
import type { FeatureEngine } from './engine.js';
import { isLayersModel } from './graph-cut.js';

/** Side of the half-scale view of an input `side` pixels wide: an odd side drops its last row/column. */
export function halfSide(side: number): number {
  return Math.floor(side / 2);
}

/** The half-scale view of an RGB uint8 HWC image: each 2×2 block averaged, rounded half up. */
export function halveImage(image: Uint8Array, width: number, height: number): Uint8Array {
  const w = halfSide(width);
  const h = halfSide(height);
  const out = new Uint8Array(w * h * 3);
  const row = width * 3;
  for (let y = 0; y < h; y++) {
    let from = 2 * y * row;
    let to = y * w * 3;
    for (let x = 0; x < w; x++, from += 6, to += 3) {
      for (let c = 0; c < 3; c++) {
        const i = from + c;
        out[to + c] = (image[i]! + image[i + 3]! + image[i + row]! + image[i + row + 3]! + 2) >> 2;
      }
    }
  }
  return out;
}

/**
 * `full` (at the input size) and `half` (the same backbone and cut at halfSide of it) as one
 * engine: rows are full ‖ half, dim is the sum, id gains MULTI_SCALE_ID_SUFFIX (the feature cache
 * keys on it). Both engines are disposed with it.
 */
export function withHalfScale(full: FeatureEngine, half: FeatureEngine): FeatureEngine {
  const { width, height } = full.input;
  if (half.input.width !== halfSide(width) || half.input.height !== halfSide(height)) {
    throw new RangeError(
      `withHalfScale: the half engine takes ${half.input.width}×${half.input.height}, not ${halfSide(width)}×${halfSide(height)}`,
    );
  }
  const dFull = full.dim;
  const dHalf = half.dim;
  const d = dFull + dHalf;
  return {
    id: `${full.id}${MULTI_SCALE_ID_SUFFIX}`,
    backend: full.backend === half.backend ? full.backend : `${full.backend} + ${half.backend}`,
    input: full.input,
    preferredBatch: full.preferredBatch,
    dim: d,
    async embed(images) {
      const n = images.length;
      if (n === 0) return new Float32Array(0);
      const a = await full.embed(images);
      const b = await half.embed(images.map((img) => halveImage(img, width, height)));
      const out = new Float32Array(n * d);
      for (let i = 0; i < n; i++) {
        out.set(a.subarray(i * dFull, (i + 1) * dFull), i * d);
        out.set(b.subarray(i * dHalf, (i + 1) * dHalf), i * d + dFull);
      }
      return out;
    },
    dispose() {
      full.dispose();
      half.dispose();
    },
  };
}

type Json = Record<string, unknown>;
const isRecord = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * `artifacts` with its input declared side × side (the weights are shared, not copied): a graph
 * model's 4-D Placeholders, a layers model's input layers (batch_input_shape, batch_shape or
 * input_shape, whichever the topology uses). Convolutional networks run at any size; the files
 * only declare the one they were trained at, and both engines check inputs against it.
 * @throws ModelError when the topology declares no 4-D input to change.
 */
export function atInputSide(artifacts: tf.io.ModelArtifacts, side: number, modelName: string): tf.io.ModelArtifacts {
  const topo = structuredClone(artifacts.modelTopology) as unknown;
  let changed = 0;
  const setShape = (cfg: unknown) => {
    if (!isRecord(cfg)) return;
    for (const key of ['batch_input_shape', 'batch_shape']) {
      const shape = cfg[key];
      if (Array.isArray(shape) && shape.length === 4) {
        cfg[key] = [shape[0], side, side, shape[3]];
        changed++;
      }
    }
    const shape = cfg.input_shape;
    if (Array.isArray(shape) && shape.length === 3) {
      cfg.input_shape = [side, side, shape[2]];
      changed++;
    }
  };
  if (isLayersModel(artifacts) && isRecord(topo)) {
    const model = isRecord(topo.model_config) ? topo.model_config : topo;
    const config = model.config;
    const layers = Array.isArray(config) ? config : isRecord(config) ? config.layers : undefined;
    if (Array.isArray(layers)) {
      if (model.class_name === 'Sequential') setShape(isRecord(layers[0]) ? layers[0].config : undefined);
      else for (const l of layers) if (isRecord(l) && l.class_name === 'InputLayer') setShape(l.config);
    }
  } else if (isRecord(topo) && Array.isArray(topo.node)) {
    for (const n of topo.node) {
      if (!isRecord(n) || n.op !== 'Placeholder' || !isRecord(n.attr) || !isRecord(n.attr.shape)) continue;
      const dims = isRecord(n.attr.shape.shape) ? n.attr.shape.shape.dim : undefined;
      if (Array.isArray(dims) && dims.length === 4) {
        dims[1] = { size: String(side) };
        dims[2] = { size: String(side) };
        changed++;
      }
    }
  }
  if (changed === 0) {
    throw new ModelError(
      `model ${quote(modelName)} declares no image input [N, H, W, C] whose size could be set to ${side}×${side}`,
    );
  }
  return { ...artifacts, modelTopology: topo as tf.io.ModelArtifacts['modelTopology'] };
}
