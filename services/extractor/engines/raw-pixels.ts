/**
 * The lesson's baseline: no network at all. The image is decoded at size × size and its pixels,
 * scaled to [0, 1], are the features (size × size × 3 values, HWC order; 3072 for 32 × 32).
 * Logistic regression on these reached about 48% on four CIFAR-10 classes in the lesson.
 */
import { DeepfeatError, ModelError } from '../../../shared/errors.js';
import { RAW_PIXELS_RANGE, RAW_PIXELS_SIZE, inputLut } from '../../../shared/features.js';
import type { FeatureEngine } from './engine.js';

export function createRawPixelsEngine(size: number = RAW_PIXELS_SIZE.default): FeatureEngine {
  const { min, max } = RAW_PIXELS_SIZE;
  if (!Number.isInteger(size) || size < min || size > max) {
    throw new ModelError(`raw-pixels size must be an integer from ${min} to ${max}, got ${size}`);
  }
  const dim = size * size * 3;
  const lut = inputLut(RAW_PIXELS_RANGE);
  return {
    id: `raw-pixels:${size}x${size}`,
    backend: 'js',
    input: { width: size, height: size },
    dim,
    preferredBatch: 64, // a copy per image: batches only amortise the thread round trip
    async embed(images: readonly Uint8Array[]): Promise<Float32Array> {
      const out = new Float32Array(images.length * dim);
      images.forEach((img, row) => {
        if (img.length !== dim) {
          // The caller decoded at the wrong size: a bug, not a bad image.
          throw new DeepfeatError(
            'INTERNAL',
            `raw-pixels:${size}x${size}: image ${row} has ${img.length} bytes, expected ${size}×${size}×3 = ${dim}`,
          );
        }
        const base = row * dim;
        for (let i = 0; i < dim; i++) out[base + i] = lut[img[i]!]!;
      });
      return out;
    },
    dispose() {},
  };
}
