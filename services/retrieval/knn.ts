/**
 * The evaluator's retrieval metric: k-nearest-neighbour test accuracy for k = 1 and 5, on the
 * same pooled features the regression uses, L2-normalised (cosine similarity), with the run's
 * train+val images as the database. Each query's label is the majority of its k nearest (a tie
 * goes to the tied label of the nearest neighbour, top-k.ts knnVote); neighbours are in the exact
 * top-k order (similarity, then lower row, i.e. shard order).
 *
 * Cost is bounded whatever the run's size: at most KNN_MAX_QUERIES test images are queries and
 * the database holds at most KNN_MAX_DATABASE_VALUES floats (256 MiB: 82,241 rows of 816
 * features, 21,845 of 3,072 raw pixels), each a seeded sample by key (sample.ts) when the run has
 * more. At both caps the scan is 1,000 × 82,241 × 816 multiply-adds: about 2 s on one core of
 * this machine when it is quiet (bench/bench.ts, "retrieval"). Smaller runs use every image, and
 * the metric is then exact.
 */
import type { KnnMetrics } from '../../shared/run-state.js';
import { sampleIndices } from './sample.js';
import type { Scanner } from './scan.js';
import { knnVote, normaliseRows } from './top-k.js';

export const KNN_KS = [1, 5] as const;
/**
 * Test images used as queries at most: the accuracy's standard error is then at most 1.6 points.
 * Queries rather than database rows are what the cap cuts first: a smaller database changes what
 * is measured (kNN gains from more neighbours to choose from), fewer queries only its precision.
 */
export const KNN_MAX_QUERIES = 1000;
/** Floats of the database at most: 256 MiB of float32. */
export const KNN_MAX_DATABASE_VALUES = 2 ** 26;
/** Seed of both samples: fixed, so every evaluation of a run samples the same images. */
export const KNN_SEED = 0;

/** Database rows kept at most for features of width `dim`. */
export const knnDatabaseCap = (dim: number): number =>
  Math.max(Math.max(...KNN_KS), Math.floor(KNN_MAX_DATABASE_VALUES / Math.max(1, dim)));

export interface LabelledRows {
  /** n × d, row-major. */
  readonly X: Float32Array;
  readonly n: number;
  readonly d: number;
  readonly labels: readonly string[];
}

export interface KnnInputs {
  /** Train+val rows (already sampled to knnDatabaseCap); normalised in place here. */
  readonly database: LabelledRows;
  /** Train+val rows in the run, sampled or not. */
  readonly databaseOf: number;
  /** Every test row, with keys (the queries are sampled from them); left unchanged. */
  readonly test: LabelledRows & { readonly keys: readonly string[] };
  readonly scanner: Scanner;
}

export async function knnMetrics(i: KnnInputs): Promise<KnnMetrics> {
  const { database: db, test, scanner } = i;
  const d = test.d;
  const picked = sampleIndices(test.keys, KNN_MAX_QUERIES, KNN_SEED);
  const queries = new Float32Array(picked.length * d);
  for (const [j, r] of picked.entries()) queries.set(test.X.subarray(r * d, (r + 1) * d), j * d);
  normaliseRows(queries, picked.length, d);
  normaliseRows(db.X, db.n, db.d);

  // Labels as numbers; one that only the test split has can never be voted for.
  const ids = new Map<string, number>();
  const id = (label: string) => {
    const known = ids.get(label);
    if (known !== undefined) return known;
    ids.set(label, ids.size);
    return ids.size - 1;
  };
  const dbIds = Int32Array.from(db.labels, id);
  const kMax = Math.max(...KNN_KS);
  const hits = db.n > 0 && picked.length > 0 ? await scanner.topK(db.X, db.n, d, queries, picked.length, kMax) : [];
  const correct = KNN_KS.map(() => 0);
  hits.forEach((list, j) => {
    const neighbours = list.map((h) => dbIds[h.index]!);
    const truth = id(test.labels[picked[j]!]!);
    KNN_KS.forEach((k, c) => {
      if (knnVote(neighbours, k) === truth) correct[c]!++;
    });
  });
  return {
    accuracy: KNN_KS.map((k, c) => ({ k, accuracy: picked.length === 0 ? 0 : correct[c]! / picked.length })),
    similarity: 'cosine',
    queries: picked.length,
    testImages: test.n,
    database: db.n,
    databaseOf: i.databaseOf,
    seed: KNN_SEED,
  };
}
