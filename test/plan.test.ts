import test from 'ava';
import { assignSplits, checkAndCount, labelsFromListing, labelsFromManifest, shardItems } from '../services/planner/plan.js';
import { DatasetError } from '../shared/errors.js';
import type { ManifestItem, Split } from '../shared/dataset.js';

const P = 'data/cats-dogs/';
const WHERE = 's3://b/data/cats-dogs/';
const FR = { train: 0.7, val: 0.1, test: 0.2 };

// ---------- labelsFromListing ----------

test('listing: folder-per-class gives one label per folder and no split', (t) => {
  const { items, ignored } = labelsFromListing([`${P}cat/1.jpg`, `${P}cat/2.jpg`, `${P}dog/a.png`], P, WHERE);
  t.deepEqual(items, [
    { key: `${P}cat/1.jpg`, label: 'cat' },
    { key: `${P}cat/2.jpg`, label: 'cat' },
    { key: `${P}dog/a.png`, label: 'dog' },
  ]);
  t.deepEqual(ignored, []);
});

test('listing: split folders train/val/validation/valid/test map to splits', (t) => {
  const keys = [`${P}train/cat/1.jpg`, `${P}val/cat/2.jpg`, `${P}validation/dog/3.jpg`, `${P}valid/dog/4.jpg`, `${P}test/dog/5.jpg`];
  const { items } = labelsFromListing(keys, P, WHERE);
  t.deepEqual(
    items.map((i) => [i.label, i.split]),
    [
      ['cat', 'train'],
      ['cat', 'val'],
      ['dog', 'val'],
      ['dog', 'val'],
      ['dog', 'test'],
    ],
  );
  t.deepEqual(
    items.map((i) => i.key),
    keys,
  );
});

test('listing: mixing split folders with plain label folders is a DatasetError', (t) => {
  const err = t.throws(() => labelsFromListing([`${P}train/cat/1.jpg`, `${P}dog/2.jpg`], P, WHERE), { instanceOf: DatasetError });
  t.is(err?.code, 'DATASET_INVALID');
  t.regex(err!.message, /mixes split folders/);
  t.true(err!.message.includes(WHERE));
});

test('listing: files at the prefix root and too-deep files are ignored with a reason', (t) => {
  const { items, ignored } = labelsFromListing([`${P}README.md`, `${P}cat/1.jpg`, `${P}dog/2.jpg`, `${P}cat/sub/3.jpg`], P, WHERE);
  t.deepEqual(
    items.map((i) => i.key),
    [`${P}cat/1.jpg`, `${P}dog/2.jpg`],
  );
  t.deepEqual(
    ignored.map((i) => i.key),
    [`${P}README.md`, `${P}cat/sub/3.jpg`],
  );
  for (const i of ignored) t.regex(i.reason, /<label>\//);
});

test('listing: folder-marker keys ending in / are skipped (neither items nor ignored)', (t) => {
  const { items, ignored } = labelsFromListing([P, `${P}cat/`, `${P}cat/1.jpg`, `${P}dog/`, `${P}dog/x/`, `${P}dog/2.jpg`], P, WHERE);
  t.deepEqual(
    items.map((i) => i.label),
    ['cat', 'dog'],
  );
  t.deepEqual(ignored, []);
});

test('listing: nothing usable is a DatasetError that says which layout is expected', (t) => {
  for (const keys of [[], [`${P}cat/`], [`${P}only-root.jpg`]]) {
    const err = t.throws(() => labelsFromListing(keys, P, WHERE), { instanceOf: DatasetError });
    t.true(err!.message.includes(WHERE));
    t.true(err!.message.includes('<label>/<file>'));
    t.regex(err!.message, /train\|val\|test/);
    t.regex(err!.message, /manifest/);
  }
});

// ---------- labelsFromManifest: CSV ----------

test('csv: quoted fields with commas and "" escapes; split optional and case-insensitive', (t) => {
  const csv = ['key,label,split', '"imgs/a,b.jpg","big, cat",TRAIN', 'imgs/c.jpg,"say ""hi""",', 'imgs/d.jpg,dog,validation', ''].join('\r\n');
  const items = labelsFromManifest(csv, 'csv', 's3://b/labels.csv', 'b');
  t.deepEqual(items, [
    { key: 'imgs/a,b.jpg', label: 'big, cat', split: 'train' },
    { key: 'imgs/c.jpg', label: 'say "hi"' },
    { key: 'imgs/d.jpg', label: 'dog', split: 'val' },
  ]);
});

test('csv: header columns in any order, s3:// URLs in the same bucket and leading / become plain keys', (t) => {
  const csv = 'Label , Key\ncat,s3://b/x/1.jpg\ndog,/x/2.jpg\n';
  t.deepEqual(labelsFromManifest(csv, 'csv', 'm', 'b'), [
    { key: 'x/1.jpg', label: 'cat' },
    { key: 'x/2.jpg', label: 'dog' },
  ]);
});

test('csv: missing label column is an error naming the column', (t) => {
  const err = t.throws(() => labelsFromManifest('key,class\na.jpg,cat\n', 'csv', 's3://b/m.csv', 'b'), { instanceOf: DatasetError });
  t.regex(err!.message, /"label" column/);
  t.regex(err!.message, /found: key, class/);
  const err2 = t.throws(() => labelsFromManifest('path,label\na.jpg,cat\n', 'csv', 's3://b/m.csv', 'b'), { instanceOf: DatasetError });
  t.regex(err2!.message, /"key" column/);
});

test('csv: unknown split is an error naming the line and the value', (t) => {
  const err = t.throws(() => labelsFromManifest('key,label,split\na.jpg,cat,train\nb.jpg,dog,holdout\n', 'csv', 's3://b/m.csv', 'b'), {
    instanceOf: DatasetError,
  });
  t.regex(err!.message, /line 3/);
  t.regex(err!.message, /unknown split "holdout"/);
});

test('csv: duplicate key (also via its s3:// form) is an error', (t) => {
  const err = t.throws(() => labelsFromManifest('key,label\na.jpg,cat\na.jpg,dog\n', 'csv', 'm', 'b'), { instanceOf: DatasetError });
  t.regex(err!.message, /line 3: duplicate key "a.jpg"/);
  const err2 = t.throws(() => labelsFromManifest('key,label\na.jpg,cat\ns3://b/a.jpg,dog\n', 'csv', 'm', 'b'), { instanceOf: DatasetError });
  t.regex(err2!.message, /duplicate key/);
});

test('csv: a key in another bucket is an error naming both', (t) => {
  const err = t.throws(() => labelsFromManifest('key,label\ns3://other/a.jpg,cat\n', 'csv', 'm', 'b'), { instanceOf: DatasetError });
  t.regex(err!.message, /s3:\/\/other\/a\.jpg/);
  t.regex(err!.message, /outside the bucket b/);
});

test('csv: keys with .. or . segments are errors', (t) => {
  for (const k of ['../secret.jpg', 'imgs/../../x.jpg', 's3://b/a/../b.jpg', './a.jpg']) {
    const err = t.throws(() => labelsFromManifest(`key,label\n${k},cat\n`, 'csv', 'm', 'b'), { instanceOf: DatasetError }, k);
    t.regex(err!.message, /'\.' or '\.\.' segments/, k);
  }
  // A dot inside a name is fine.
  t.is(labelsFromManifest('key,label\na..b/c.d.jpg,cat\n', 'csv', 'm', 'b')[0]!.key, 'a..b/c.d.jpg');
});

test('csv: missing key or label cell is an error naming the line', (t) => {
  t.throws(() => labelsFromManifest('key,label\na.jpg,\n', 'csv', 'm', 'b'), { instanceOf: DatasetError, message: /line 2: missing label/ });
  t.throws(() => labelsFromManifest('key,label\n  ,cat\n', 'csv', 'm', 'b'), { instanceOf: DatasetError, message: /line 2: missing key/ });
});

// ---------- labelsFromManifest: JSON lines ----------

test('jsonl: parses objects, skips blank lines, maps split names', (t) => {
  const text = ['{"key":"a.jpg","label":"cat","split":"test"}', '', '{"key":"b.jpg","label":"dog"}', '{"key":"c.jpg","label":"dog","split":"valid"}'].join('\n');
  t.deepEqual(labelsFromManifest(text, 'jsonl', 'm', 'b'), [
    { key: 'a.jpg', label: 'cat', split: 'test' },
    { key: 'b.jpg', label: 'dog' },
    { key: 'c.jpg', label: 'dog', split: 'val' },
  ]);
});

test('jsonl: a bad JSON line is an error naming the line', (t) => {
  const text = '{"key":"a.jpg","label":"cat"}\n{"key": "b.jpg", label: dog}\n';
  const err = t.throws(() => labelsFromManifest(text, 'jsonl', 's3://b/m.jsonl', 'b'), { instanceOf: DatasetError });
  t.regex(err!.message, /s3:\/\/b\/m\.jsonl line 2: not valid JSON/);
});

test('jsonl: a non-object line and a non-string label are errors naming the line', (t) => {
  t.throws(() => labelsFromManifest('{"key":"a","label":"c"}\n42\n', 'jsonl', 'm', 'b'), { instanceOf: DatasetError, message: /line 2: expected a JSON object/ });
  t.throws(() => labelsFromManifest('{"key":"a","label":7}\n', 'jsonl', 'm', 'b'), { instanceOf: DatasetError, message: /line 1: missing label/ });
});

// ---------- assignSplits ----------

function dataset(sizes: Record<string, number>): Array<{ key: string; label: string }> {
  const out: Array<{ key: string; label: string }> = [];
  for (const [label, n] of Object.entries(sizes)) for (let i = 0; i < n; i++) out.push({ key: `img/${label}/${String(i).padStart(4, '0')}.jpg`, label });
  return out;
}

function countBy(items: readonly ManifestItem[]): Record<string, Record<Split, number>> {
  const c: Record<string, Record<Split, number>> = {};
  for (const i of items) (c[i.label] ??= { train: 0, val: 0, test: 0 })[i.split]++;
  return c;
}

test('assignSplits: deterministic for a seed, different for another seed, independent of input order', (t) => {
  const items = dataset({ cat: 100, dog: 80 });
  const a = assignSplits(items, FR, 42);
  const b = assignSplits(items, FR, 42);
  const reversed = assignSplits([...items].reverse(), FR, 42);
  const c = assignSplits(items, FR, 43);
  t.deepEqual(a, b);
  t.deepEqual(a, reversed);
  t.notDeepEqual(a, c);
  // Same counts per class regardless of seed: only which images go where changes.
  t.deepEqual(countBy(a), countBy(c));
  // Every input key appears exactly once, sorted by key.
  t.deepEqual(
    a.map((i) => i.key),
    items.map((i) => i.key).sort(),
  );
});

test('assignSplits: stratified, each class close to 0.7/0.1/0.2', (t) => {
  const sizes = { a: 1000, b: 333, c: 57, d: 20 };
  const counts = countBy(assignSplits(dataset(sizes), FR, 7));
  for (const [label, n] of Object.entries(sizes)) {
    const c = counts[label]!;
    t.is(c.train + c.val + c.test, n, label);
    // Rounding to whole images: within one image of the exact share.
    t.true(Math.abs(c.test - 0.2 * n) <= 1, `${label} test ${c.test}/${n}`);
    t.true(Math.abs(c.val - 0.1 * n) <= 1, `${label} val ${c.val}/${n}`);
    t.true(Math.abs(c.train - 0.7 * n) <= 2, `${label} train ${c.train}/${n}`);
  }
});

test('assignSplits: fractions need not sum to 1 (they are normalised)', (t) => {
  const counts = countBy(assignSplits(dataset({ a: 100, b: 100 }), { train: 7, val: 1, test: 2 }, 1));
  t.deepEqual(counts.a, { train: 70, val: 10, test: 20 });
  t.deepEqual(counts.b, { train: 70, val: 10, test: 20 });
});

test('assignSplits: every class with >=2 images gets a test image and keeps a train image; >=3 gets val', (t) => {
  const counts = countBy(assignSplits(dataset({ one: 1, two: 2, three: 3, four: 4, five: 5 }), FR, 3));
  t.deepEqual(counts.one, { train: 1, val: 0, test: 0 });
  t.deepEqual(counts.two, { train: 1, val: 0, test: 1 });
  t.deepEqual(counts.three, { train: 1, val: 1, test: 1 });
  for (const l of ['four', 'five']) {
    t.true(counts[l]!.test >= 1, l);
    t.true(counts[l]!.val >= 1, l);
    t.true(counts[l]!.train >= 1, l);
  }
  // Even with a huge test fraction a 2-image class keeps one for training.
  const skewed = countBy(assignSplits(dataset({ x: 2, y: 3 }), { train: 0.05, val: 0.05, test: 0.9 }, 3));
  t.is(skewed.x!.train, 1);
  t.is(skewed.y!.train, 1);
});

test('assignSplits: val=0 gives no val split', (t) => {
  const counts = countBy(assignSplits(dataset({ a: 50, b: 50 }), { train: 0.8, val: 0, test: 0.2 }, 5));
  t.is(counts.a!.val + counts.b!.val, 0);
  t.is(counts.a!.test, 10);
});

test('assignSplits: all items have splits but no val → val carved from train only', (t) => {
  const items = [
    ...dataset({ cat: 40, dog: 20 }).map((i, n) => ({ ...i, split: (n % 5 === 0 ? 'test' : 'train') as Split })),
  ];
  const out = assignSplits(items, FR, 42);
  const before = new Map(items.map((i) => [i.key, i.split]));
  let carved = 0;
  for (const o of out) {
    const was = before.get(o.key);
    if (was === 'test') t.is(o.split, 'test', o.key);
    if (o.split === 'val') {
      t.is(was, 'train', o.key);
      carved++;
    }
  }
  t.true(carved > 0);
  // cat: 32 train → round(32 × 0.1/0.8) = 4 val; dog: 16 train → 2 val.
  const counts = countBy(out);
  t.deepEqual(counts.cat, { train: 28, val: 4, test: 8 });
  t.deepEqual(counts.dog, { train: 14, val: 2, test: 4 });
});

test('assignSplits: given splits including val are kept as they are', (t) => {
  const items: Array<{ key: string; label: string; split: Split }> = [
    { key: 'a1', label: 'a', split: 'train' },
    { key: 'a2', label: 'a', split: 'val' },
    { key: 'a3', label: 'a', split: 'test' },
    { key: 'b1', label: 'b', split: 'train' },
    { key: 'b2', label: 'b', split: 'train' },
    { key: 'b3', label: 'b', split: 'test' },
  ];
  t.deepEqual(assignSplits(items, FR, 9), items);
});

test('assignSplits: some with and some without a split is a DatasetError', (t) => {
  t.throws(() => assignSplits([{ key: 'a', label: 'x', split: 'train' }, { key: 'b', label: 'y' }], FR, 1), {
    instanceOf: DatasetError,
    message: /some images have a split and some do not/,
  });
});

test('assignSplits: labels like ../../etc stay labels and keys are unchanged', (t) => {
  const items = [
    { key: 'k/1.jpg', label: '../../etc' },
    { key: 'k/2.jpg', label: '../../etc' },
    { key: 'k/3.jpg', label: 'a/b' },
    { key: 'k/4.jpg', label: 'a/b' },
  ];
  const out = assignSplits(items, FR, 42);
  t.deepEqual(
    out.map((o) => [o.key, o.label]),
    items.map((i) => [i.key, i.label]),
  );
});

// ---------- checkAndCount ----------

test('checkAndCount: counts per class and split, classes sorted', (t) => {
  const items: ManifestItem[] = [
    { key: '1', label: 'dog', split: 'train' },
    { key: '2', label: 'dog', split: 'test' },
    { key: '3', label: 'cat', split: 'train' },
    { key: '4', label: 'cat', split: 'val' },
    { key: '5', label: 'cat', split: 'test' },
    { key: '6', label: 'cat', split: 'train' },
  ];
  const r = checkAndCount(items, 'w');
  t.deepEqual(r.classes, ['cat', 'dog']);
  t.deepEqual(r.counts, { cat: { train: 2, val: 1, test: 1 }, dog: { train: 1, val: 0, test: 1 } });
});

test('checkAndCount: one class is an error naming it', (t) => {
  const err = t.throws(
    () =>
      checkAndCount(
        [
          { key: '1', label: 'cat', split: 'train' },
          { key: '2', label: 'cat', split: 'test' },
        ],
        's3://b/p/',
      ),
    { instanceOf: DatasetError },
  );
  t.regex(err!.message, /only one class \(cat\) under s3:\/\/b\/p\//);
  t.throws(() => checkAndCount([], 'w'), { instanceOf: DatasetError, message: /only one class \(none\)/ });
});

test('checkAndCount: a class without test images is an error naming the class', (t) => {
  const err = t.throws(
    () =>
      checkAndCount(
        [
          { key: '1', label: 'cat', split: 'train' },
          { key: '2', label: 'cat', split: 'test' },
          { key: '3', label: 'dog', split: 'train' },
          { key: '4', label: 'dog', split: 'val' },
        ],
        'w',
      ),
    { instanceOf: DatasetError },
  );
  t.regex(err!.message, /class "dog" has no test images/);
});

test('checkAndCount: a class without training images is an error naming the class', (t) => {
  t.throws(
    () =>
      checkAndCount(
        [
          { key: '1', label: 'cat', split: 'train' },
          { key: '2', label: 'cat', split: 'test' },
          { key: '3', label: 'dog', split: 'test' },
        ],
        'w',
      ),
    { instanceOf: DatasetError, message: /class "dog" has no training images/ },
  );
});

// ---------- shardItems ----------

test('shardItems: splits in order into shards of at most shardSize', (t) => {
  const xs = Array.from({ length: 10 }, (_, i) => i);
  t.deepEqual(shardItems(xs, 4), [
    [0, 1, 2, 3],
    [4, 5, 6, 7],
    [8, 9],
  ]);
  t.deepEqual(shardItems(xs, 5), [
    [0, 1, 2, 3, 4],
    [5, 6, 7, 8, 9],
  ]);
  t.deepEqual(shardItems(xs, 100), [xs]);
  t.deepEqual(shardItems(xs, 1).length, 10);
  t.deepEqual(shardItems([], 3), []);
  t.deepEqual(shardItems(xs, 3).flat(), xs);
});

test('labelsFromListing: a stray file directly in a split folder is ignored, not a mixed layout', (t) => {
  const { items, ignored } = labelsFromListing(['p/train/README.md', 'p/train/cat/1.png', 'p/test/dog/2.png'], 'p/', 's3://b/p/');
  t.deepEqual(items.map((i) => i.key), ['p/train/cat/1.png', 'p/test/dog/2.png']);
  t.deepEqual(ignored, [{ key: 'p/train/README.md', reason: 'directly in a split folder, not in <split>/<label>/' }]);
  // Without split folders, a class may be called "test".
  const plain = labelsFromListing(['p/test/1.png', 'p/cat/2.png'], 'p/', 's3://b/p/');
  t.deepEqual(plain.items.map((i) => i.label).sort(), ['cat', 'test']);
});
