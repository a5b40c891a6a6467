/** Comparisons of feature matrices shared by the engine tests. */

/** Largest per-image ‖a − b‖ / ‖b‖ over the rows of two feature matrices. */
export function maxRowRelErr(a: Float32Array, b: Float32Array, dim: number): number {
  let worst = 0;
  for (let r = 0; r < a.length / dim; r++) {
    let d = 0;
    let n = 0;
    for (let j = r * dim; j < (r + 1) * dim; j++) {
      d += (a[j]! - b[j]!) ** 2;
      n += b[j]! ** 2;
    }
    worst = Math.max(worst, Math.sqrt(d / n));
  }
  return worst;
}
