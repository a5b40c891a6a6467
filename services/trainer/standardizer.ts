/**
 * Standardisation of features: each feature shifted by its training mean and divided by its
 * standard deviation, so one L2 strength suits every feature whatever its scale. The trainer fits
 * it on the training rows, and the published model carries it to prediction.
 */
import { InternalError } from '../../shared/errors.js';

/** Per-feature mean and standard deviation of the training matrix. */
export interface Standardizer {
  mean: Float64Array;
  std: Float64Array;
}

/**
 * Fits per-feature mean and population standard deviation over n rows of X (n×d).
 * A (near-)constant feature gets std 1 so standardising maps it to 0 instead of
 * dividing by zero. Two passes in Float64 for accuracy on float32 input.
 */
export function fitStandardizer(X: Float32Array, n: number, d: number): Standardizer {
  if (X.length !== n * d) throw new InternalError(`standardizer: X has ${X.length} values, expected ${n}*${d}`);
  const mean = new Float64Array(d);
  const std = new Float64Array(d);
  if (n === 0) {
    std.fill(1);
    return { mean, std };
  }
  for (let i = 0; i < n; i++) {
    const off = i * d;
    for (let j = 0; j < d; j++) mean[j] += X[off + j];
  }
  for (let j = 0; j < d; j++) mean[j] /= n;
  for (let i = 0; i < n; i++) {
    const off = i * d;
    for (let j = 0; j < d; j++) {
      const v = X[off + j] - mean[j];
      std[j] += v * v;
    }
  }
  for (let j = 0; j < d; j++) {
    const s = Math.sqrt(std[j] / n);
    // Relative threshold: float32 rounding leaves tiny non-zero spread on constant columns.
    std[j] = s > 1e-7 * Math.max(1, Math.abs(mean[j])) ? s : 1;
  }
  return { mean, std };
}

/** Returns (X - mean) / std as a new n×d Float32Array, or writes it into `out` (which may be X itself). */
export function applyStandardizer(
  X: Float32Array,
  n: number,
  d: number,
  s: Standardizer,
  out: Float32Array = new Float32Array(n * d),
): Float32Array {
  if (X.length !== n * d) throw new InternalError(`standardizer: X has ${X.length} values, expected ${n}*${d}`);
  if (s.mean.length !== d || s.std.length !== d)
    throw new InternalError(`standardizer: fitted for ${s.mean.length} features, data has ${d}`);
  if (out.length !== n * d)
    throw new InternalError(`standardizer: output has ${out.length} values, expected ${n}*${d}`);
  const inv = new Float64Array(d);
  for (let j = 0; j < d; j++) inv[j] = 1 / s.std[j];
  for (let i = 0; i < n; i++) {
    const off = i * d;
    for (let j = 0; j < d; j++) out[off + j] = (X[off + j] - s.mean[j]) * inv[j];
  }
  return out;
}
