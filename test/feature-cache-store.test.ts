/**
 * The feature cache's storage on a real redis-server and S3 server, without workers: segments
 * read whole or by ranges give back exactly the rows written, and a row whose stored key is not
 * the one looked up is a miss; the index finds entries, the last writer of a key wins, and a
 * segment's removal leaves entries a newer segment took over; prune by age (including segments
 * whose .keys object is gone, and objects no record names) and by spec; the index stays
 * listpack-encoded and small per entry.
 */
import { randomBytes } from 'node:crypto';
import test from 'ava';
import { Redis } from 'ioredis';
import { CacheIndex, type SegmentRecord } from '../services/extractor/feature-cache/cache-index.js';
import {
  INDEX_BUCKETS,
  KEY_BYTES,
  indexBucket,
  newSegmentName,
  redisKeys,
  segmentObjectKey,
  specHash,
} from '../services/extractor/feature-cache/keys.js';
import { cacheStats, pruneCache } from '../services/extractor/feature-cache/maintenance.js';
import { readSegmentRows, writeSegment } from '../services/extractor/feature-cache/segments.js';
import { NotFoundError } from '../shared/errors.js';
import { deleteObject, listObjects, putObject } from '../shared/s3.js';
import { deployment, type Deployment } from './helpers/pipeline.js';
import { uniqueName } from './helpers/services.js';

let dep: Deployment;
let redis: Redis;
const DIM = 816;
/** Where a test's segments go: the deployment's bucket, under the test's own prefix. */
const storeOf = (prefix: string) => ({ s3: dep.client.s3, bucket: dep.config.bucket, prefix });

test.before(async () => {
  dep = await deployment();
  redis = new Redis(dep.redis.url);
});

test.after.always(async () => {
  await redis?.quit();
  await dep?.close();
});

/** A segment of `rows` random rows under spec `spec`, written and filed like the extractor does. */
async function addSegment(index: CacheIndex, prefix: string, spec: string, rows: number, createdAt = Date.now()) {
  const hash = specHash(spec);
  const keys = Array.from({ length: rows }, () => randomBytes(KEY_BYTES));
  const vectors = Float32Array.from({ length: rows * DIM }, () => Math.random());
  const name = newSegmentName();
  const written = await writeSegment(storeOf(prefix), hash, name, Buffer.concat(keys), vectors, DIM);
  const segment = await index.nextSegment(hash);
  const record: SegmentRecord = { name, rows, dim: DIM, ...written, createdAt };
  await index.addSegment({ hash, spec, dim: DIM }, segment, record, keys);
  return { hash, keys, vectors, name, segment, record };
}

const row = (vectors: Float32Array, r: number) => vectors.subarray(r * DIM, (r + 1) * DIM);

test('segment rows read back exactly, whole or by ranges; a row holding another key is a miss', async (t) => {
  const prefix = uniqueName('p');
  const store = storeOf(prefix);
  const index = new CacheIndex(redis, prefix);
  const seg = await addSegment(index, prefix, 'spec-a', 64);
  // Few rows: ranged reads. Many: one GET of the whole object. Both give the bytes written.
  for (const rows of [[5], [0, 1, 2, 40], [63, 3, 30, 50, 10, 20], Array.from({ length: 40 }, (_, i) => i + 10)]) {
    const got = await readSegmentRows(
      store,
      seg.hash,
      seg.record,
      rows.map((r) => ({ row: r, key: seg.keys[r]! })),
    );
    rows.forEach((r, i) => {
      t.deepEqual(got[i], row(seg.vectors, r).slice(), `row ${r} of ${rows.length}`);
    });
  }
  const wrong = await readSegmentRows(store, seg.hash, seg.record, [
    { row: 7, key: seg.keys[8]! },
    { row: 8, key: seg.keys[8]! },
    { row: 99, key: seg.keys[8]! },
  ]);
  t.is(wrong[0], undefined, 'row 7 holds another key');
  t.deepEqual(wrong[1], row(seg.vectors, 8).slice());
  t.is(wrong[2], undefined, 'no such row');
  // A segment whose vectors are gone: the reader is told, and counts its rows as misses.
  await deleteObject(dep.client.s3, dep.config.bucket, segmentObjectKey(prefix, seg.hash, seg.name, 'npy'));
  await t.throwsAsync(readSegmentRows(store, seg.hash, seg.record, [{ row: 1, key: seg.keys[1]! }]), {
    instanceOf: NotFoundError,
  });
});

test('the index finds entries; the last writer of a key wins; removing a segment keeps what others took', async (t) => {
  const prefix = uniqueName('p');
  const index = new CacheIndex(redis, prefix);
  const first = await addSegment(index, prefix, 'spec-b', 10);
  const refs = await index.lookup(first.hash, first.keys);
  t.deepEqual(
    refs,
    first.keys.map((_, r) => ({ segment: first.segment, row: r })),
  );
  t.deepEqual(await index.lookup(first.hash, [randomBytes(KEY_BYTES)]), [undefined]);
  // A second segment stores keys 0..4 again (a concurrent run): their entries now name it.
  const hash = first.hash;
  const name = newSegmentName();
  const again = first.keys.slice(0, 5);
  const written = await writeSegment(
    storeOf(prefix),
    hash,
    name,
    Buffer.concat(again),
    first.vectors.slice(0, 5 * DIM),
    DIM,
  );
  const second = await index.nextSegment(hash);
  t.true(second > first.segment);
  await index.addSegment(
    { hash, spec: 'spec-b', dim: DIM },
    second,
    { name, rows: 5, dim: DIM, ...written, createdAt: Date.now() },
    again,
  );
  t.deepEqual(
    (await index.lookup(hash, first.keys.slice(0, 6))).map((r) => r?.segment),
    [second, second, second, second, second, first.segment],
  );
  t.is(await index.countEntries(hash), 10);
  // Removing the first segment's entries removes only those still naming it.
  t.is(await index.removeEntries(hash, first.segment, first.keys), 5);
  t.is(await index.countEntries(hash), 5);
  t.is((await index.lookup(hash, first.keys.slice(0, 1)))[0]?.segment, second);
});

test('prune by age: old segments, their entries (found by scanning when .keys is gone) and unnamed objects', async (t) => {
  const prefix = uniqueName('p');
  const index = new CacheIndex(redis, prefix);
  const deps = { redis, prefix, s3: dep.client.s3, bucket: dep.config.bucket };
  const hour = 3_600_000;
  const old = await addSegment(index, prefix, 'spec-c', 20, Date.now() - 2 * hour);
  const keyless = await addSegment(index, prefix, 'spec-c', 7, Date.now() - 2 * hour);
  const young = await addSegment(index, prefix, 'spec-c', 3);
  await deleteObject(dep.client.s3, dep.config.bucket, segmentObjectKey(prefix, keyless.hash, keyless.name, 'keys'));
  // An object no record names (a writer that died before filing its segment).
  const orphan = segmentObjectKey(prefix, old.hash, newSegmentName(), 'npy');
  await putObject(dep.client.s3, dep.config.bucket, orphan, 'x');

  const before = await cacheStats(deps);
  t.like(before.specs[0], { spec: 'spec-c', entries: 30, segments: 3, rows: 30 });
  // Nothing is two hours old yet but the two old segments; the orphan is too young to go.
  const r = await pruneCache(deps, { olderThanMs: hour });
  t.deepEqual(r, { specs: ['spec-c'], segments: 2, entries: 27, objects: 4 });
  const after = await cacheStats(deps);
  t.like(after.specs[0], { entries: 3, segments: 1, rows: 3 });
  t.deepEqual(
    await index.lookup(young.hash, young.keys),
    young.keys.map((_, i) => ({ segment: young.segment, row: i })),
  );
  // A day later the orphan is old: it goes, and so does the young segment.
  const later = await pruneCache(deps, { olderThanMs: hour }, Date.now() + 24 * hour);
  t.deepEqual(later, { specs: ['spec-c'], segments: 1, entries: 3, objects: 3 });
  t.deepEqual((await cacheStats(deps)).specs, [], 'an empty spec is no longer listed');
  const left: string[] = [];
  for await (const o of listObjects(dep.client.s3, dep.config.bucket, `cache/${prefix}/`)) left.push(o.key);
  t.deepEqual(left, []);
});

test('prune by spec and --all: index keys and objects go; other specs, and other deployments in the bucket, stay', async (t) => {
  const prefix = uniqueName('p');
  const index = new CacheIndex(redis, prefix);
  const deps = { redis, prefix, s3: dep.client.s3, bucket: dep.config.bucket };
  const d = await addSegment(index, prefix, 'spec-d', 12);
  const e = await addSegment(index, prefix, 'spec-e', 4);
  // Another deployment's segment in the same bucket: not this deployment's to prune.
  const otherPrefix = uniqueName('p');
  const other = await addSegment(new CacheIndex(redis, otherPrefix), otherPrefix, 'spec-d', 2);
  t.deepEqual((await pruneCache(deps, { spec: 'spec-d' })).specs, ['spec-d']);
  t.deepEqual(
    (await cacheStats(deps)).specs.map((s) => s.spec),
    ['spec-e'],
  );
  t.deepEqual(await redis.keys(`${redisKeys(prefix, d.hash).bucketPattern}`), []);
  t.deepEqual(await index.lookup(e.hash, e.keys.slice(0, 1)), [{ segment: e.segment, row: 0 }]);
  const all = await pruneCache(deps, { all: true });
  t.like(all, { segments: 1, entries: 4 });
  t.deepEqual((await cacheStats(deps)).specs, []);
  t.deepEqual(await redis.keys(`${prefix}:fcache:${e.hash}:b:*`), []);
  const kept: string[] = [];
  for await (const o of listObjects(dep.client.s3, dep.config.bucket, 'cache/')) kept.push(o.key);
  t.deepEqual(
    kept.filter((k) => k.startsWith(`cache/${prefix}/`)),
    [],
  );
  t.true(kept.includes(segmentObjectKey(otherPrefix, other.hash, other.name, 'npy')));
  t.deepEqual(
    (await cacheStats({ redis, prefix: otherPrefix })).specs.map((s) => s.entries),
    [2],
  );
});

test('the index stays listpack-encoded: bytes per entry near what an entry holds', async (t) => {
  t.timeout(120_000);
  const prefix = uniqueName('p');
  const index = new CacheIndex(redis, prefix);
  const hash = specHash('spec-mem');
  const entries = 100_000;
  const record: SegmentRecord = { name: newSegmentName(), rows: 256, dim: DIM, offset: 128, bytes: 1, createdAt: 0 };
  let last = randomBytes(KEY_BYTES);
  for (let added = 0; added < entries; added += 256) {
    const keys = Array.from({ length: 256 }, () => randomBytes(KEY_BYTES));
    last = keys[0]!;
    await index.addSegment({ hash, spec: 'spec-mem', dim: DIM }, await index.nextSegment(hash), record, keys);
  }
  // The index's own keys, measured one by one: the server's total would also count whatever the
  // other tests of this file write meanwhile.
  const keys = redisKeys(prefix, hash);
  const sizes = redis.pipeline();
  for (let b = 0; b < INDEX_BUCKETS; b++) sizes.memory('USAGE', keys.bucket(b), 'SAMPLES', '0');
  const used = ((await sizes.exec()) ?? []).reduce((sum, [, v]) => sum + Number(v ?? 0), 0);
  const perEntry = used / entries;
  t.log(`${perEntry.toFixed(1)} bytes of Redis memory per entry at ${entries} entries (${INDEX_BUCKETS} buckets)`);
  t.true(perEntry < 80, `${perEntry} bytes per entry`);
  const bucket = keys.bucket(indexBucket(last)); // a bucket that holds an entry
  t.is(await redis.object('ENCODING', bucket), 'listpack');
});
