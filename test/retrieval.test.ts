/**
 * Retrieval's pure logic (issue 13): unit rows, the exact top k and its order, the kNN vote and
 * its tie-break, seeded samples by key, the index's memory budget and the human output. The ONNX
 * Runtime scan is checked against the scalar top k in test/retrieval-scan.test.ts; the whole
 * command on real parts in test/retrieval.e2e.test.ts.
 */
import test from 'ava';
import { formatKnn } from '../cli/format.js';
import { formatSimilar } from '../cli/similar.js';
import { KNN_MAX_DATABASE_VALUES, knnDatabaseCap } from '../services/retrieval/knn.js';
import { type RunIndex, indexMemoryBudget, indexMemoryNeed, splitRange } from '../services/retrieval/run-index.js';
import { BoundedSample, keyHash, sampleIndices } from '../services/retrieval/sample.js';
import { compareHits, exactTopK, knnVote, normaliseRows } from '../services/retrieval/top-k.js';
import { BadRequestError } from '../shared/errors.js';
import { mulberry32 } from '../shared/random.js';

test('normaliseRows scales every row to unit length and leaves an all-zero row at zero', (t) => {
  const X = Float32Array.from([3, 4, 0, 0, 0, 0, -1, 1, 1]);
  normaliseRows(X, 3, 3);
  t.deepEqual(Array.from(X.subarray(0, 3)), [0.6000000238418579, 0.800000011920929, 0]);
  t.deepEqual(Array.from(X.subarray(3, 6)), [0, 0, 0]);
  const third = Array.from(X.subarray(6));
  t.true(Math.abs(third.reduce((a, x) => a + x * x, 0) - 1) < 1e-6);
});

test('exactTopK: highest score first, equal scores by lower row, fewer than k when the matrix is smaller', (t) => {
  // Rows 1, 3 and 4 tie with the query; row 2 is the best.
  const X = Float32Array.from([0, 1, 1, 0, 2, 0, 1, 0, 1, 0, -1, 0]);
  const q = Float32Array.from([1, 0]);
  t.deepEqual(
    exactTopK(X, 6, 2, q, 4).map((h) => h.index),
    [2, 1, 3, 4],
  );
  t.deepEqual(
    exactTopK(X, 6, 2, q, 10).map((h) => h.index),
    [2, 1, 3, 4, 0, 5],
  );
  t.deepEqual(exactTopK(X, 6, 2, q, 0), []);
  t.deepEqual(exactTopK(X, 0, 2, q, 3), []);
});

test('exactTopK agrees with sorting every score (random data)', (t) => {
  const rand = mulberry32(7);
  const n = 300;
  const d = 16;
  const X = Float32Array.from({ length: n * d }, () => rand() - 0.5);
  const q = Float32Array.from({ length: d }, () => rand() - 0.5);
  const all = Array.from({ length: n }, (_, r) => {
    let score = 0;
    for (let j = 0; j < d; j++) score += X[r * d + j]! * q[j]!;
    return { index: r, score };
  }).sort(compareHits);
  t.deepEqual(exactTopK(X, n, d, q, 25), all.slice(0, 25));
});

test('knnVote: the majority of the first k; a tie goes to the tied label of the nearest neighbour', (t) => {
  t.is(knnVote([2, 1, 1, 0, 0], 5), 1); // 1 and 0 tie at 2 votes: 1's first vote (rank 2) comes before 0's
  t.is(knnVote([0, 1, 1, 1, 0], 5), 1); // a plain majority beats the nearest
  t.is(knnVote([0, 1, 1, 0], 4), 0); // 2-2: the nearest neighbour's label
  t.is(knnVote([3, 1, 2, 4, 5], 5), 3); // all different: the nearest
  t.is(knnVote([3, 1, 1], 1), 3); // k = 1 is the nearest neighbour
  t.is(knnVote([4, 2], 5), 4); // fewer neighbours than k: a vote over those there are
  t.is(knnVote([], 5), -1);
});

test('keyHash is a fixed function of seed and key', (t) => {
  t.is(keyHash(0, 'cat/0001.png'), keyHash(0, 'cat/0001.png'));
  t.not(keyHash(0, 'cat/0001.png'), keyHash(1, 'cat/0001.png'));
  t.not(keyHash(0, 'cat/0001.png'), keyHash(0, 'cat/0002.png'));
  // Spread: 10,000 keys fall about evenly in 16 buckets of the top bits.
  const buckets = new Array<number>(16).fill(0);
  for (let i = 0; i < 10_000; i++) buckets[keyHash(0, `dog/${i}.png`) >>> 28]!++;
  t.true(Math.min(...buckets) > 500 && Math.max(...buckets) < 750, String(buckets));
});

test('a bounded sample keeps the m keys of smallest hash, in the order offered, whatever the order offered in', (t) => {
  const keys = Array.from({ length: 1000 }, (_, i) => `k${i}`);
  const m = 37;
  const expected = [...keys].sort((a, b) => keyHash(5, a) - keyHash(5, b)).slice(0, m);
  const picked = sampleIndices(keys, m, 5).map((i) => keys[i]!);
  t.is(picked.length, m);
  t.deepEqual([...picked].sort(), [...expected].sort());
  // Indices ascend (shard order is kept).
  const idx = sampleIndices(keys, m, 5);
  t.deepEqual(
    idx,
    [...idx].sort((a, b) => a - b),
  );
  // The same keys offered reversed: the same set.
  const reversed = new BoundedSample<string>(m, 5);
  for (const k of [...keys].reverse()) reversed.offer(k, k);
  t.deepEqual([...reversed.values()].sort(), [...expected].sort());
  t.is(reversed.offered, keys.length);
  // Fewer keys than the cap: every one, in order.
  t.deepEqual(sampleIndices(keys.slice(0, 5), m, 5), [0, 1, 2, 3, 4]);
  t.deepEqual(new BoundedSample<string>(0, 1).values(), []);
});

test('the kNN database cap is 256 MiB of float32, never fewer rows than the largest k', (t) => {
  t.is(knnDatabaseCap(816), 82_241);
  t.is(knnDatabaseCap(3072), 21_845);
  t.true(knnDatabaseCap(816) * 816 <= KNN_MAX_DATABASE_VALUES);
  t.is(knnDatabaseCap(2 ** 30), 5);
});

test('the index budget: given MiB, else half of the host or of a smaller container limit', (t) => {
  t.deepEqual(indexMemoryBudget(300, '--memory'), { bytes: 300 * 2 ** 20, source: '--memory 300' });
  const host = indexMemoryBudget(undefined, '--memory', { total: 8 * 2 ** 30 });
  t.is(host.bytes, 4 * 2 ** 30);
  t.regex(host.source, /50% of this host's memory, 8\.0 GiB; --memory sets it/);
  const box = indexMemoryBudget(undefined, '--memory', { total: 8 * 2 ** 30, constrained: 2 ** 30 });
  t.is(box.bytes, 2 ** 29);
  t.regex(box.source, /container's memory limit/);
  // 100,000 rows of 816 features: the 326 MB matrix plus keys.
  const need = indexMemoryNeed(100_000, 816, 100_000 * 40);
  t.is(need, 100_000 * (816 * 4 + 64) + 2 * 100_000 * 40);
});

function fakeIndex(train: number, val: number, test: number): RunIndex {
  return {
    runId: 'r20261130000000-abcdef',
    X: new Float32Array(0),
    rows: train + val + test,
    d: 2,
    keys: [],
    labels: [],
    splits: {
      train: { start: 0, end: train },
      val: { start: train, end: train + val },
      test: { start: train + val, end: train + val + test },
    },
    bytes: 0,
  };
}

test('a split with no images is refused, naming those that have some', (t) => {
  const index = fakeIndex(5, 0, 2);
  t.deepEqual(splitRange(index, 'all'), { start: 0, end: 7 });
  t.deepEqual(splitRange(index, 'test'), { start: 5, end: 7 });
  const err = t.throws(() => splitRange(index, 'val'), { instanceOf: BadRequestError });
  t.regex(err.message, /has no val images with features to search: choose --split train, test, all/);
});

test('the status line of the kNN metrics, with the samples when either side was sampled', (t) => {
  const base = {
    accuracy: [
      { k: 1, accuracy: 0.712 },
      { k: 5, accuracy: 0.74 },
    ],
    similarity: 'cosine' as const,
    queries: 400,
    testImages: 400,
    database: 1600,
    databaseOf: 1600,
    seed: 0,
  };
  t.is(formatKnn(base), '1-NN 71.2%, 5-NN 74.0% (train+val as the database)');
  t.is(
    formatKnn({ ...base, queries: 1000, testImages: 200_000, database: 82_241, databaseOf: 800_000 }),
    '1-NN 71.2%, 5-NN 74.0% (train+val as the database; seeded samples: 82,241 of 800,000 train+val images, ' +
      '1,000 of 200,000 test images as queries)',
  );
});

test('the similar table escapes keys, labels and reasons, names each query once, and puts a reason in its own last column', (t) => {
  const text = formatSimilar([
    {
      query: 'dog.png',
      neighbours: [
        { rank: 1, key: 'dog/\x1b[2Ja.png', label: 'dog', split: 'train', similarity: 0.91234 },
        { rank: 2, key: 'cat/b.png', label: 'c\u202eat', split: 'val', similarity: 0.5 },
      ],
    },
    { query: 'bad\x07.png', error: 'not an image\x1b]0;T' },
  ]);
  const lines = text.split('\n');
  t.regex(lines[0]!, /^query +rank +key +label +split +similarity +error$/);
  t.regex(lines[1]!, /^dog\.png +1 +dog\/\\x1b\[2Ja\.png +dog +train +0\.9123$/);
  t.regex(lines[2]!, /^ +2 +cat\/b\.png +c\\u202eat +val +0\.5000$/);
  t.regex(lines[3]!, /^bad\\x07\.png +- +- +- +- +- +not an image\\x1b\]0;T$/);
  t.false(text.includes('\x1b'));
  // The reason is longer than any rank: the rank column stays as wide as its header.
  t.is(lines[0]!.indexOf('key') - lines[0]!.indexOf('rank'), 'rank  '.length);
  // With no failures there is no error column.
  t.regex(formatSimilar([{ query: 'a.png', neighbours: [] }]), /^query +rank +key +label +split +similarity$/);
});
