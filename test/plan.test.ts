import test from 'ava';
import { assignSplits, checkAndCount, labelsFromListing, shardItems, splitNamed } from '../services/planner/plan.js';
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
  const keys = [
    `${P}train/cat/1.jpg`,
    `${P}val/cat/2.jpg`,
    `${P}validation/dog/3.jpg`,
    `${P}valid/dog/4.jpg`,
    `${P}test/dog/5.jpg`,
  ];
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
  const err = t.throws(() => labelsFromListing([`${P}train/cat/1.jpg`, `${P}dog/2.jpg`], P, WHERE), {
    instanceOf: DatasetError,
  });
  t.is(err?.code, 'DATASET_INVALID');
  t.regex(err!.message, /mixes split folders/);
  t.true(err!.message.includes(WHERE));
});

test('listing: files at the prefix root and too-deep files are ignored with a reason', (t) => {
  const { items, ignored } = labelsFromListing(
    [`${P}README.md`, `${P}cat/1.jpg`, `${P}dog/2.jpg`, `${P}cat/sub/3.jpg`],
    P,
    WHERE,
  );
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
  const { items, ignored } = labelsFromListing(
    [P, `${P}cat/`, `${P}cat/1.jpg`, `${P}dog/`, `${P}dog/x/`, `${P}dog/2.jpg`],
    P,
    WHERE,
  );
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

// ---------- assignSplits ----------

function dataset(sizes: Record<string, number>): Array<{ key: string; label: string }> {
  const out: Array<{ key: string; label: string }> = [];
  for (const [label, n] of Object.entries(sizes))
    for (let i = 0; i < n; i++) out.push({ key: `img/${label}/${String(i).padStart(4, '0')}.jpg`, label });
  return out;
}

function countBy(items: readonly ManifestItem[]): Record<string, Record<Split, number>> {
  const c: Record<string, Record<Split, number>> = {};
  for (const i of items) {
    c[i.label] ??= { train: 0, val: 0, test: 0 };
    c[i.label]![i.split]++;
  }
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
  t.throws(
    () =>
      assignSplits(
        [
          { key: 'a', label: 'x', split: 'train' },
          { key: 'b', label: 'y' },
        ],
        FR,
        1,
      ),
    {
      instanceOf: DatasetError,
      message: /some images have a split and some do not/,
    },
  );
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
  const { items, ignored } = labelsFromListing(
    ['p/train/README.md', 'p/train/cat/1.png', 'p/test/dog/2.png'],
    'p/',
    's3://b/p/',
  );
  t.deepEqual(
    items.map((i) => i.key),
    ['p/train/cat/1.png', 'p/test/dog/2.png'],
  );
  t.deepEqual(ignored, [{ key: 'p/train/README.md', reason: 'directly in a split folder, not in <split>/<label>/' }]);
  // Without split folders, a class may be called "test".
  const plain = labelsFromListing(['p/test/1.png', 'p/cat/2.png'], 'p/', 's3://b/p/');
  t.deepEqual(plain.items.map((i) => i.label).sort(), ['cat', 'test']);
});

test('listing: a folder with an empty name (// or a leading /) is not a class folder: ignored with a reason', (t) => {
  const { items, ignored } = labelsFromListing(
    [`${P}cat/1.jpg`, `${P}cat//2.jpg`, `${P}/3.jpg`, `${P}dog/4.jpg`, `${P}//5.jpg`],
    P,
    WHERE,
  );
  t.deepEqual(
    items.map((i) => i.key),
    [`${P}cat/1.jpg`, `${P}dog/4.jpg`],
  );
  t.deepEqual(
    ignored.map((i) => i.key),
    [`${P}cat//2.jpg`, `${P}/3.jpg`, `${P}//5.jpg`],
  );
  for (const i of ignored) t.regex(i.reason, /empty name/);
});

test('listing: every object not used is in ignored with a reason that says which rule it broke', (t) => {
  const { ignored } = labelsFromListing(
    [`${P}notes.txt`, `${P}cat/1.jpg`, `${P}cat/raw/2.jpg`, `${P}cat/a/b/3.jpg`, `${P}dog/4.jpg`],
    P,
    WHERE,
  );
  t.deepEqual(ignored, [
    { key: `${P}notes.txt`, reason: 'at the top of the prefix, not in a <label>/ folder' },
    {
      key: `${P}cat/raw/2.jpg`,
      reason: 'in a subfolder 1 deep; only files directly in <label>/ or <split>/<label>/ are used',
    },
    {
      key: `${P}cat/a/b/3.jpg`,
      reason: 'in a subfolder 2 deep; only files directly in <label>/ or <split>/<label>/ are used',
    },
  ]);
});

test('split names are looked up exactly: Object.prototype members are neither split folders nor splits', (t) => {
  for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty'])
    t.is(splitNamed(name), undefined, name);
  t.is(splitNamed('validation'), 'val');
  // A class folder called "constructor" under a split layout is a class, not a split.
  const { items } = labelsFromListing(
    ['p/train/constructor/1.png', 'p/test/constructor/2.png', 'p/constructor/x/3.png'],
    'p/',
    's3://b/p/',
  );
  t.deepEqual(
    items.map((i) => [i.label, i.split]),
    [
      ['constructor', 'train'],
      ['constructor', 'test'],
    ],
  );
});

test('checkAndCount: labels named like Object.prototype members count like any other', (t) => {
  const labels = ['__proto__', 'constructor', 'toString'];
  const items: ManifestItem[] = labels.flatMap((label) => [
    { key: `${label}/1`, label, split: 'train' as Split },
    { key: `${label}/2`, label, split: 'test' as Split },
  ]);
  const r = checkAndCount(items, 'w');
  t.deepEqual(r.classes, [...labels].sort());
  for (const l of labels) t.deepEqual(r.counts[l], { train: 1, val: 0, test: 1 }, l);
  t.is((Object.prototype as Record<string, unknown>).train, undefined);
  t.is((Object as unknown as Record<string, unknown>).train, undefined);
  // And they survive a JSON round trip (run state, run.json).
  t.deepEqual(Object.keys(JSON.parse(JSON.stringify(r.counts))).sort(), [...labels].sort());
});

test('checkAndCount: the fix for one class fits the layout (folders or a manifest)', (t) => {
  const one: ManifestItem[] = [
    { key: '1', label: 'cat', split: 'train' },
    { key: '2', label: 'cat', split: 'test' },
  ];
  t.throws(() => checkAndCount(one, 'w'), { message: /add a folder per class/ });
  const err = t.throws(() => checkAndCount(one, 's3://b/m.csv', 'manifest'), {
    message: /give the images at least two different labels/,
  });
  t.notRegex(err!.message, /folder/);
});

test('messages quoting a label stay small', (t) => {
  const label = 'x'.repeat(1 << 20);
  const items: ManifestItem[] = [
    { key: '1', label, split: 'train' },
    { key: '2', label: 'b', split: 'train' },
    { key: '3', label: 'b', split: 'test' },
  ];
  const err = t.throws(() => checkAndCount(items, 'w'), { instanceOf: DatasetError });
  t.true(err!.message.length < 1000, `${err!.message.length} characters`);
  const one = t.throws(() => checkAndCount([{ key: '1', label, split: 'train' }], 'w'), { instanceOf: DatasetError });
  t.true(one!.message.length < 1000, `${one!.message.length} characters`);
});

// ---------- Scale ----------

test('planning 200,000 images (2 classes x 100,000): every image once, stratified, sharded', (t) => {
  const n = 100_000;
  const keys: string[] = [];
  for (const label of ['cat', 'dog'])
    for (let i = 0; i < n; i++) keys.push(`${P}${label}/${String(i).padStart(6, '0')}.jpg`);
  keys.push(`${P}README.md`);
  const t0 = performance.now();
  const { items: labelled, ignored } = labelsFromListing(keys, P, WHERE);
  const items = assignSplits(labelled, FR, 42);
  const { classes, counts } = checkAndCount(items, WHERE);
  const shards = shardItems(items, 256);
  const ms = performance.now() - t0;
  t.log(`planned ${items.length} images in ${ms.toFixed(0)} ms`);
  t.is(items.length, 2 * n);
  t.deepEqual(
    ignored.map((i) => i.key),
    [`${P}README.md`],
  );
  t.deepEqual(classes, ['cat', 'dog']);
  for (const c of classes) t.deepEqual(counts[c], { train: 70_000, val: 10_000, test: 20_000 }, c);
  t.is(shards.length, Math.ceil((2 * n) / 256));
  t.is(
    shards.reduce((a, s) => a + s.length, 0),
    2 * n,
  );
  // Every key exactly once, sorted, with the label of its folder.
  t.is(new Set(items.map((i) => i.key)).size, 2 * n);
  for (let i = 1; i < items.length; i++) if (!(items[i - 1]!.key < items[i]!.key)) return t.fail(`not sorted at ${i}`);
  for (const it of items) if (!it.key.startsWith(`${P}${it.label}/`)) return t.fail(`${it.key} labelled ${it.label}`);
});

test('planning 200,000 images in classes named like split folders (train/, test/ without a split layout)', (t) => {
  // These land in the "directly in a split folder" list first; moving 200,000 of them into the
  // items with push(...list) overflowed the call stack.
  const keys: string[] = [];
  for (const label of ['test', 'train']) for (let i = 0; i < 100_000; i++) keys.push(`p/${label}/${i}.jpg`);
  const { items, ignored } = labelsFromListing(keys, 'p/', 's3://b/p/');
  t.is(items.length, 200_000);
  t.deepEqual(ignored, []);
  t.deepEqual(checkAndCount(assignSplits(items, FR, 1), 'w').classes, ['test', 'train']);
});
