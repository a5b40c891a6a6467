/**
 * The exact top-k scan on ONNX Runtime (services/retrieval/scan.ts) against the scalar reference
 * (top-k.ts exactTopK): the same rows in the same order, ties by lower row, a split's rows as a
 * subarray, more queries than one batch; and the kNN metrics against a brute-force vote,
 * including the seeded query sample above its cap. Loads ONNX Runtime, so it is listed in SLOW.
 */
import test from 'ava';
import { KNN_MAX_QUERIES, knnMetrics } from '../services/retrieval/knn.js';
import { QUERY_BATCH, openScanner, type Scanner } from '../services/retrieval/scan.js';
import { sampleIndices } from '../services/retrieval/sample.js';
import { exactTopK, knnVote, normaliseRows } from '../services/retrieval/top-k.js';
import { mulberry32 } from '../shared/random.js';

let scanner: Scanner;
test.before(async () => {
  scanner = await openScanner(1);
});
test.after.always(async () => {
  await scanner?.close();
});

function unitRows(n: number, d: number, seed: number): Float32Array {
  const rand = mulberry32(seed);
  const X = Float32Array.from({ length: n * d }, () => rand() * 2 - 1);
  normaliseRows(X, n, d);
  return X;
}

test('the ONNX scan finds the same neighbours in the same order as the scalar scan', async (t) => {
  const n = 2000;
  const d = 24;
  const q = QUERY_BATCH + 9; // two batches
  const X = unitRows(n, d, 1);
  const Q = unitRows(q, d, 2);
  const hits = await scanner.topK(X, n, d, Q, q, 10);
  t.is(hits.length, q);
  let worst = 0;
  for (let i = 0; i < q; i++) {
    const ref = exactTopK(X, n, d, Q.subarray(i * d, (i + 1) * d), 10);
    t.deepEqual(
      hits[i]!.map((h) => h.index),
      ref.map((h) => h.index),
      `query ${i}`,
    );
    for (const [r, h] of hits[i]!.entries()) worst = Math.max(worst, Math.abs(h.score - ref[r]!.score));
  }
  t.true(worst < 1e-5, `scores differ by ${worst}`);
});

test('equal similarities come in row order; k above the row count gives every row', async (t) => {
  const d = 3;
  // Rows 1, 2 and 4 equal the query; row 3 is its opposite.
  const X = Float32Array.from([0, 1, 0, 1, 0, 0, 1, 0, 0, -1, 0, 0, 1, 0, 0]);
  const q = Float32Array.from([1, 0, 0]);
  const [hits] = await scanner.topK(X, 5, d, q, 1, 3);
  t.deepEqual(
    hits!.map((h) => h.index),
    [1, 2, 4],
  );
  const [every] = await scanner.topK(X, 5, d, q, 1, 50);
  t.deepEqual(
    every!.map((h) => h.index),
    [1, 2, 4, 0, 3],
  );
  // A split's rows are a subarray: indices are relative to it.
  const [tail] = await scanner.topK(X.subarray(2 * d), 3, d, q, 1, 2);
  t.deepEqual(
    tail!.map((h) => h.index),
    [0, 2],
  );
  t.deepEqual(await scanner.topK(X, 0, d, q, 1, 5), [[]]);
});

/** Labelled clusters: class c's rows lean towards axis c, so neighbours mostly share a label. */
function clusters(n: number, d: number, classes: number, seed: number) {
  const rand = mulberry32(seed);
  const X = new Float32Array(n * d);
  const labels: string[] = [];
  for (let i = 0; i < n; i++) {
    const c = Math.floor(rand() * classes);
    labels.push(`class-${c}`);
    for (let j = 0; j < d; j++) X[i * d + j] = rand() - 0.5 + (j === c ? 1.2 : 0);
  }
  return { X, labels, n, d };
}

/** kNN accuracy by brute force in float64: every query's neighbours sorted, the vote of top-k.ts. */
function bruteForce(
  db: { X: Float32Array; labels: string[]; n: number; d: number },
  queries: { X: Float32Array; labels: string[] },
  picked: number[],
  k: number,
): number {
  const d = db.d;
  const unitDb = db.X.slice();
  normaliseRows(unitDb, db.n, d);
  let correct = 0;
  for (const r of picked) {
    const q = queries.X.slice(r * d, (r + 1) * d);
    normaliseRows(q, 1, d);
    const hits = exactTopK(unitDb, db.n, d, q, k);
    const names = [...new Set(db.labels)];
    const vote = knnVote(
      hits.map((h) => names.indexOf(db.labels[h.index]!)),
      k,
    );
    if (names[vote] === queries.labels[r]) correct++;
  }
  return correct / picked.length;
}

test('kNN metrics equal a brute-force vote; above the cap the queries are the seeded sample', async (t) => {
  t.timeout(120_000);
  const d = 12;
  const db = clusters(3000, d, 4, 3);
  const test = clusters(KNN_MAX_QUERIES + 500, d, 4, 4);
  const keys = test.labels.map((l, i) => `${l}/img-${i}.png`);
  const m = await knnMetrics({
    database: { X: db.X.slice(), n: db.n, d, labels: db.labels },
    databaseOf: 5000,
    test: { X: test.X, n: test.n, d, labels: test.labels, keys },
    scanner,
  });
  t.is(m.queries, KNN_MAX_QUERIES);
  t.is(m.testImages, test.n);
  t.is(m.database, db.n);
  t.is(m.databaseOf, 5000);
  t.is(m.similarity, 'cosine');
  const picked = sampleIndices(keys, KNN_MAX_QUERIES, m.seed);
  for (const { k, accuracy } of m.accuracy) {
    t.true(accuracy > 0.5 && accuracy <= 1, `${k}-NN ${accuracy}`);
    t.is(accuracy, bruteForce(db, { X: test.X, labels: test.labels }, picked, k), `${k}-NN`);
  }
  t.deepEqual(
    m.accuracy.map((a) => a.k),
    [1, 5],
  );
});
