/**
 * The feature cache's pure parts: what a cache key covers, the index's bucket, field and value
 * encoding, the spec id, the reading plan for segment rows, the listing's ETag and size carried
 * through planning (and an etag a user wrote in a manifest never read), the status's cache
 * counts, the configuration switch, and the CLI's duration and table formats. The cache on real
 * Redis, the S3 server and worker processes: test/feature-cache.e2e.test.ts.
 */
import test from 'ava';
import { formatBytes, formatCacheStats, parseDuration } from '../cli/cache.js';
import { formatStatus } from '../cli/format.js';
import {
  CACHE_FORMAT,
  FIELD_BYTES,
  INDEX_BUCKETS,
  MAX_SEGMENT_ROWS,
  SEGMENT_NAME_PATTERN,
  cacheKey,
  entryValue,
  indexBucket,
  indexField,
  newSegmentName,
  parseEntry,
  segmentObjectKey,
  specHash,
  type ImageIdentity,
} from '../services/extractor/feature-cache/keys.js';
import { checkPruneOptions } from '../services/extractor/feature-cache/maintenance.js';
import { rowRuns } from '../services/extractor/feature-cache/segments.js';
import { BUILTIN_INPUT_RANGES, cacheSpecId } from '../services/extractor/feature-cache/spec-id.js';
import { BUILTIN_INPUT_RANGE, BUILTIN_MODEL_ID } from '../services/extractor/engines/builtin-model.js';
import { PREPROCESSING_VERSION } from '../services/extractor/image.js';
import { labelsFromManifest } from '../services/planner/manifest.js';
import { assignSplits, labelsFromListing } from '../services/planner/plan.js';
import { imagesFromListing } from '../services/planner/predict-plan.js';
import { ENV_DOC, FEATURE_CACHE_CHOICES, loadConfig } from '../shared/config.js';
import { BadRequestError, ConfigError } from '../shared/errors.js';
import { itemSchema, predictItemSchema, type RunRequest } from '../shared/queues.js';
import { statusFromHash } from '../shared/run-state.js';
import { normalizeEtag } from '../shared/s3.js';

const SPEC = 'mobilenet_v2_mid@expanded_conv_13/expand/Relu6 input=224x224 range=0,1 preprocessing=1';
const version = (over: Partial<Extract<ImageIdentity, { kind: 'version' }>> = {}): ImageIdentity => ({
  kind: 'version',
  bucket: 'data',
  key: 'cat/1.png',
  etag: '9b2cf535f27731c974343645a3985328',
  size: 1234,
  ...over,
});

test('a cache key covers the spec, bucket, key, ETag and size: changing any one changes the key', (t) => {
  const base = cacheKey(SPEC, version());
  t.is(base.length, 32);
  t.true(base.equals(cacheKey(SPEC, version())), 'deterministic');
  const variants = [
    cacheKey(`${SPEC}x`, version()),
    cacheKey(SPEC, version({ bucket: 'data2' })),
    cacheKey(SPEC, version({ key: 'cat/2.png' })),
    cacheKey(SPEC, version({ etag: '9b2cf535f27731c974343645a3985329' })),
    cacheKey(SPEC, version({ size: 1235 })),
    cacheKey(SPEC, { kind: 'content', sha256: 'ab'.repeat(32) }),
  ];
  const hex = new Set([base, ...variants].map((k) => k.toString('hex')));
  t.is(hex.size, variants.length + 1);
  // Parts are JSON-quoted: moving a separator between key and ETag cannot alias two identities.
  t.false(
    cacheKey(SPEC, version({ key: 'a","b', etag: 'c' })).equals(cacheKey(SPEC, version({ key: 'a', etag: 'b","c' }))),
  );
  // Content identities are the bytes' hash alone: the same image under two keys is one entry.
  t.true(cacheKey(SPEC, { kind: 'content', sha256: '00' }).equals(cacheKey(SPEC, { kind: 'content', sha256: '00' })));
});

test('index: 2^14 buckets from the first bits, a 16-byte field, an integer value naming segment and row', (t) => {
  t.is(INDEX_BUCKETS, 16384);
  const buckets = new Set<number>();
  for (let i = 0; i < 2000; i++) {
    const key = cacheKey(SPEC, version({ key: `k/${i}.png` }));
    const b = indexBucket(key);
    t.true(b >= 0 && b < INDEX_BUCKETS);
    buckets.add(b);
    t.is(indexField(key).length, FIELD_BYTES);
    t.true(indexField(key).equals(key.subarray(0, FIELD_BYTES)));
  }
  t.true(buckets.size > 1800, `${buckets.size} buckets for 2000 keys: spread evenly`);
  t.is(indexBucket(Buffer.from([0xff, 0xff, 0, 0])), INDEX_BUCKETS - 1);
  t.is(indexBucket(Buffer.from([0, 3, 0, 0])), 0);
  t.is(indexBucket(Buffer.from([0, 4, 0, 0])), 1);

  for (const ref of [
    { segment: 1, row: 0 },
    { segment: 7, row: 255 },
    { segment: 2 ** 30, row: MAX_SEGMENT_ROWS - 1 },
  ]) {
    const v = entryValue(ref);
    t.regex(v, /^\d+$/, 'an integer, which Redis stores compactly');
    t.deepEqual(parseEntry(v), ref);
  }
  t.throws(() => entryValue({ segment: 1, row: MAX_SEGMENT_ROWS }), { instanceOf: RangeError });
  t.throws(() => entryValue({ segment: 0, row: 0 }), { instanceOf: RangeError });
  for (const junk of [null, undefined, '', 'x', '-1', '12.5', '5', '9'.repeat(20)]) {
    t.is(parseEntry(junk), undefined, String(junk));
  }
});

test('segments: unique names under cache/<prefix>/<specHash>/; spec hashes are short and distinct', (t) => {
  const a = newSegmentName(new Date('2026-12-01T10:20:30Z'));
  t.regex(a, SEGMENT_NAME_PATTERN);
  t.true(a.startsWith('20261201102030-'));
  t.not(a, newSegmentName(new Date('2026-12-01T10:20:30Z')));
  const h = specHash(SPEC);
  t.regex(h, /^[0-9a-f]{16}$/);
  t.not(h, specHash(SPEC.replace('preprocessing=1', 'preprocessing=2')));
  t.is(segmentObjectKey('deepfeat', h, a, 'npy'), `cache/deepfeat/${h}/${a}.npy`);
  t.is(segmentObjectKey('deepfeat', h, a, 'keys'), `cache/deepfeat/${h}/${a}.keys`);
  t.is(CACHE_FORMAT, 1);
});

test('the spec id names engine, input size, range and preprocessing version; user models are not cached', (t) => {
  const engine = { id: 'mobilenet_v2_mid@expanded_conv_13/expand/Relu6', input: { width: 224, height: 224 } };
  t.is(
    cacheSpecId({ kind: 'builtin', id: 'mobilenet_v2_mid' }, engine),
    `mobilenet_v2_mid@expanded_conv_13/expand/Relu6 input=224x224 range=0,1 preprocessing=${PREPROCESSING_VERSION}`,
  );
  t.is(
    cacheSpecId({ kind: 'raw-pixels', size: 32 }, { id: 'raw-pixels:32x32', input: { width: 32, height: 32 } }),
    `raw-pixels:32x32 input=32x32 range=0,1 preprocessing=${PREPROCESSING_VERSION}`,
  );
  t.is(cacheSpecId({ kind: 'tfjs', model: 's3://b/m/model.json', node: 'pool' }, engine), undefined);
  // The table the extractor's main thread uses matches the backbone's own declaration.
  t.is(BUILTIN_INPUT_RANGES[BUILTIN_MODEL_ID], BUILTIN_INPUT_RANGE);
});

test('segment rows are read in runs of neighbours, gaps of up to 8 rows shared', (t) => {
  t.deepEqual(rowRuns([]), []);
  t.deepEqual(rowRuns([3]), [[3, 3]]);
  t.deepEqual(rowRuns([0, 1, 2, 10, 11, 30]), [
    [0, 11],
    [30, 30],
  ]);
  t.deepEqual(rowRuns([0, 9, 18]), [
    [0, 0],
    [9, 9],
    [18, 18],
  ]);
});

test('ETags are compared without quotes or a weak mark', (t) => {
  t.is(normalizeEtag('"abc-2"'), 'abc-2');
  t.is(normalizeEtag('W/"abc"'), 'abc');
  t.is(normalizeEtag('abc'), 'abc');
  t.is(normalizeEtag('""'), undefined);
  t.is(normalizeEtag(undefined), undefined);
});

test('planning carries a listing’s ETag and size into the manifest items; a bare key has none', (t) => {
  const listed = [
    { key: 'p/cat/1.png', etag: 'e1', size: 10 },
    'p/cat/2.png',
    { key: 'p/dog/1.png', etag: 'e3', size: 30 },
    { key: 'p/dog/2.png', etag: 'e4', size: 40 },
  ];
  const { items } = labelsFromListing(listed, 'p/', 's3://b/p/');
  const planned = assignSplits(items, { train: 1, val: 0, test: 1 }, 1);
  const byKey = new Map(planned.map((it) => [it.key, it]));
  t.like(byKey.get('p/cat/1.png'), { label: 'cat', etag: 'e1', size: 10 });
  t.false('etag' in byKey.get('p/cat/2.png')! || 'size' in byKey.get('p/cat/2.png')!);
  for (const it of planned) t.true(itemSchema.safeParse(JSON.parse(JSON.stringify(it))).success);
  // Prediction runs too.
  const found = imagesFromListing([{ key: 'x/a.jpg', etag: 'e', size: 5 }, 'x/b.jpg']);
  t.deepEqual(found.items, [{ key: 'x/a.jpg', etag: 'e', size: 5 }, { key: 'x/b.jpg' }]);
  for (const it of found.items) t.true(predictItemSchema.safeParse(it).success);
});

test('an etag or size column a user wrote in a manifest is never read', async (t) => {
  const csv = 'key,label,etag,size\ncat/1.png,cat,"""forged""",1\ndog/1.png,dog,forged,2\n';
  const items = await labelsFromManifest(csv, 'csv', 's3://b/m.csv', 'b');
  t.deepEqual(items, [
    { key: 'cat/1.png', label: 'cat' },
    { key: 'dog/1.png', label: 'dog' },
  ]);
  const jsonl = '{"key":"cat/1.png","label":"cat","etag":"forged","size":1}\n';
  t.deepEqual(await labelsFromManifest(jsonl, 'jsonl', 's3://b/m.jsonl', 'b'), [{ key: 'cat/1.png', label: 'cat' }]);
});

test('manifest lines without a version (written before the cache) stay valid', (t) => {
  t.true(itemSchema.safeParse({ key: 'a', label: 'cat', split: 'train' }).success);
  t.true(itemSchema.safeParse({ key: 'a', label: 'cat', split: 'train', etag: 'e', size: 3 }).success);
  t.false(itemSchema.safeParse({ key: 'a', label: 'cat', split: 'train', etag: '', size: 3 }).success);
  t.false(itemSchema.safeParse({ key: 'a', label: 'cat', split: 'train', etag: 'e', size: -1 }).success);
  t.true(predictItemSchema.safeParse({ key: 'a' }).success);
  t.false(predictItemSchema.safeParse({ key: 'a', other: 1 }).success, 'still strict');
});

const request: RunRequest = {
  source: 's3://b/data/',
  name: 'cats',
  features: { kind: 'builtin', id: 'mobilenet_v2_mid' },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 8,
};

test('status sums the shards’ cache hits and misses; none recorded is null, and no line', (t) => {
  const hash = (shards: Record<string, object>) => ({
    request: JSON.stringify(request),
    stage: 'extracting',
    total: '20',
    shards: '3',
    ...Object.fromEntries(Object.entries(shards).map(([k, v]) => [k, JSON.stringify(v)])),
  });
  const s = statusFromHash(
    'r1',
    hash({
      'shard:0': { done: 8, failed: 0, complete: true, cache: { hits: 8, misses: 0 } },
      'shard:1': { done: 7, failed: 1, complete: true, cache: { hits: 3, misses: 5 } },
      'shard:2': { done: 2, failed: 0, complete: false, cache: { hits: 2, misses: 0 } },
    }),
    0,
  );
  t.deepEqual(s.cache, { hits: 13, misses: 5 });
  t.regex(formatStatus(s), /\ncache {5}13\/18 hits\n/);
  const off = statusFromHash('r1', hash({ 'shard:0': { done: 8, failed: 0, complete: true } }), 0);
  t.is(off.cache, null);
  t.notRegex(formatStatus(off), /cache/);
  // A run.json written before the cache has no field at all.
  const { cache: _, ...old } = off;
  t.notRegex(formatStatus(old), /cache/);
});

test('DEEPFEAT_FEATURE_CACHE: on by default, on|off, anything else refused with the list', (t) => {
  t.is(loadConfig({}).featureCache, 'on');
  for (const v of FEATURE_CACHE_CHOICES) t.is(loadConfig({ DEEPFEAT_FEATURE_CACHE: v }).featureCache, v);
  const err = t.throws(() => loadConfig({ DEEPFEAT_FEATURE_CACHE: 'maybe' }), { instanceOf: ConfigError });
  t.deepEqual(err!.problems, ['DEEPFEAT_FEATURE_CACHE="maybe": expected one of on, off']);
  t.true(ENV_DOC.DEEPFEAT_FEATURE_CACHE!.includes('on|off'));
});

test('cache prune: durations with units; an empty or contradictory selection is refused', (t) => {
  t.is(parseDuration('--older-than', '30d'), 30 * 86_400_000);
  t.is(parseDuration('--older-than', '12h'), 12 * 3_600_000);
  t.is(parseDuration('--older-than', ' 90m '), 90 * 60_000);
  t.is(parseDuration('--older-than', '2w'), 14 * 86_400_000);
  t.is(parseDuration('--older-than', '0s'), 0);
  for (const bad of ['30', 'd', '1.5h', '-1d', '3x', '10 d', '']) {
    const err = t.throws(() => parseDuration('--older-than', bad), { instanceOf: BadRequestError }, bad);
    t.regex(err!.message, /--older-than .*expected a whole number and a unit, e\.g\. 30d/);
  }
  t.throws(() => checkPruneOptions({}), { instanceOf: BadRequestError, message: /say what to prune/ });
  t.throws(() => checkPruneOptions({ all: true, spec: 'x' }), { instanceOf: BadRequestError, message: /--all/ });
  t.notThrows(() => checkPruneOptions({ all: true }));
  t.notThrows(() => checkPruneOptions({ spec: 'x', olderThanMs: 1 }));
});

test('cache stats for people: one row per spec, sizes in binary units, spec ids escaped', (t) => {
  t.is(formatBytes(512), '512 B');
  t.is(formatBytes(3 * 1024 * 1024 + 200 * 1024), '3.2 MiB');
  t.is(
    formatCacheStats({ specs: [], total: { entries: 0, segments: 0, rows: 0, bytes: 0 } }),
    'the feature cache is empty',
  );
  const spec = (id: string, entries: number) => ({
    spec: id,
    hash: specHash(id),
    dim: 816,
    entries,
    segments: 2,
    rows: entries,
    bytes: 2 * 1024 * 1024,
    oldest: '2026-12-01T10:00:00.000Z',
    newest: '2026-12-01T11:00:00.000Z',
  });
  const out = formatCacheStats({
    specs: [spec(SPEC, 300), spec('evil\x1b[2J', 5)],
    total: { entries: 305, segments: 4, rows: 305, bytes: 4 * 1024 * 1024 },
  });
  const lines = out.split('\n');
  t.regex(lines[0]!, /^spec\s+hash\s+entries\s+segments\s+rows\s+size\s+oldest\s+newest$/);
  t.regex(
    out,
    /mobilenet_v2_mid@expanded_conv_13\/expand\/Relu6 input=224x224 .* 300 +2 +300 +2\.0 MiB +2026-12-01 10:00:00/,
  );
  t.regex(lines[3]!, /^total +305 +4 +305 +4\.0 MiB$/);
  t.false(out.includes('\x1b'));
  t.true(out.includes('evil\\x1b[2J'));
});
