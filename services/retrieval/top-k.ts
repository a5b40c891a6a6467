/**
 * The maths of retrieval in plain JavaScript: rows scaled to unit length (so a dot product is the
 * cosine similarity), the exact top k of one query by a scalar scan, and the kNN majority vote.
 * The scan is the reference the ONNX Runtime scan (scan.ts) is tested against and the bench's
 * baseline; the search itself runs on ONNX Runtime, which is 4-5× faster at 100,000 rows (about 30 ms against 135).
 *
 * Order of neighbours, everywhere: higher similarity first; equal similarities by lower row
 * (matrix rows are in shard order, i.e. the run's manifest order), as ONNX's TopK orders them.
 */

/** Scales each of the n rows of X (n × d) to unit L2 length, in place; an all-zero row stays zero (similarity 0 to everything). */
export function normaliseRows(X: Float32Array, n: number, d: number): void {
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let sum = 0;
    for (let j = 0; j < d; j++) sum += X[o + j]! * X[o + j]!;
    if (sum === 0) continue;
    const inv = 1 / Math.sqrt(sum);
    for (let j = 0; j < d; j++) X[o + j]! *= inv;
  }
}

export interface Hit {
  /** Row in the matrix scanned. */
  readonly index: number;
  readonly score: number;
}

/** Neighbour order: higher score first, then lower row. */
export const compareHits = (a: Hit, b: Hit): number => b.score - a.score || a.index - b.index;

/**
 * The k rows of X (n × d) with the largest dot product with q (length d), in neighbour order;
 * fewer when n < k. Scores are summed in float64.
 */
export function exactTopK(X: Float32Array, n: number, d: number, q: Float32Array, k: number): Hit[] {
  const best: Hit[] = [];
  for (let r = 0; r < n; r++) {
    const o = r * d;
    let score = 0;
    for (let j = 0; j < d; j++) score += X[o + j]! * q[j]!;
    const hit = { index: r, score };
    if (best.length < k) {
      best.push(hit);
      best.sort(compareHits);
    } else if (k > 0 && compareHits(hit, best[k - 1]!) < 0) {
      best[k - 1] = hit;
      best.sort(compareHits);
    }
  }
  return best;
}

/**
 * The majority label among the first k of `neighbours` (class indices in neighbour order). A tie
 * between labels with the same number of votes goes to the one whose first vote comes earliest,
 * i.e. the tied label of the nearest neighbour: with k = 2 and one vote each, the nearest wins.
 * Deterministic, and never a label outside the neighbours. Returns -1 for no neighbours.
 */
export function knnVote(neighbours: ArrayLike<number>, k: number): number {
  const m = Math.min(k, neighbours.length);
  const votes = new Map<number, number>();
  let most = 0;
  for (let i = 0; i < m; i++) {
    const v = (votes.get(neighbours[i]!) ?? 0) + 1;
    votes.set(neighbours[i]!, v);
    if (v > most) most = v;
  }
  // The nearest neighbour whose label has the most votes: [A, B, B, A] is a tie, won by A.
  for (let i = 0; i < m; i++) if (votes.get(neighbours[i]!) === most) return neighbours[i]!;
  return -1;
}
