import test from 'ava';
import { RUN_ID_PATTERN, newRunId, statusFromHash } from '../shared/run-state.js';
import type { RunRequest } from '../shared/queues.js';

const request: RunRequest = {
  source: 's3://b/data/',
  name: 'cats',
  features: { kind: 'raw-pixels', size: 32 },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 50,
};

const NOW = 1_700_000_100_000;

function extractingHash(stage = 'extracting'): Record<string, string> {
  return {
    request: JSON.stringify(request),
    stage,
    createdAt: '2023-11-14T22:13:00.000Z',
    updatedAt: '2023-11-14T22:14:00.000Z',
    total: '150',
    shards: '3',
    classes: JSON.stringify(['cat', 'dog']),
    counts: JSON.stringify({ cat: { train: 70, val: 10, test: 20 }, dog: { train: 35, val: 5, test: 10 } }),
    extractStartedAt: String(NOW - 10_000),
    'shard:0': JSON.stringify({ done: 48, failed: 2, complete: true, engine: 'raw', backend: 'cpu' }),
    'shard:1': JSON.stringify({ done: 20, failed: 0, complete: false }),
    'shard:2': JSON.stringify({ done: 9, failed: 1, complete: true }),
    'failures:0': JSON.stringify([
      { key: 'z/9.jpg', reason: 'not an image' },
      { key: 'a/1.jpg', reason: 'too large' },
    ]),
    'failures:2': JSON.stringify([{ key: 'm/5.jpg', reason: 'truncated' }]),
    engine: 'raw',
    backend: 'cpu',
  };
}

test('statusFromHash: sums per-shard progress, counts completed shards, sorts failures', (t) => {
  const s = statusFromHash('r1', extractingHash(), NOW);
  t.is(s.runId, 'r1');
  t.deepEqual(s.request, request);
  t.is(s.stage, 'extracting');
  t.is(s.total, 150);
  t.is(s.shards, 3);
  t.is(s.done, 77);
  t.is(s.failed, 3);
  t.is(s.shardsDone, 2);
  t.deepEqual(
    s.failures.map((f) => f.key),
    ['a/1.jpg', 'm/5.jpg', 'z/9.jpg'],
  );
  t.is(s.failures[0]!.reason, 'too large');
  t.deepEqual(s.classes, ['cat', 'dog']);
  t.deepEqual(s.counts.dog, { train: 35, val: 5, test: 10 });
  t.is(s.engine, 'raw');
  t.is(s.backend, 'cpu');
  t.is(s.metrics, null);
  t.is(s.model, null);
  t.is(s.error, null);
});

test('statusFromHash: rate and ETA while extracting', (t) => {
  const s = statusFromHash('r1', extractingHash(), NOW);
  // 80 processed (77 done + 3 failed) in 10 s.
  t.is(s.imagesPerSecond, 8);
  // 70 left at 8/s.
  t.is(s.etaSeconds, 70 / 8);
});

test('statusFromHash: ETA never negative (retried shard counted past total)', (t) => {
  const h = extractingHash();
  h.total = '10';
  const s = statusFromHash('r1', h, NOW);
  t.is(s.etaSeconds, 0);
});

test('statusFromHash: no ETA outside the extracting stage', (t) => {
  for (const stage of ['training', 'evaluating', 'published', 'failed']) {
    const s = statusFromHash('r1', extractingHash(stage), NOW);
    t.is(s.etaSeconds, null, stage);
    t.is(s.stage, stage as typeof s.stage);
  }
});

test('statusFromHash: a finished run reports the rate up to finishedAt, not up to now', (t) => {
  const h = { ...extractingHash('published'), finishedAt: String(NOW - 5_000) };
  const early = statusFromHash('r1', h, NOW);
  const later = statusFromHash('r1', h, NOW + 1_000_000);
  // 80 images between extractStartedAt and finishedAt (5 s).
  t.is(early.imagesPerSecond, 16);
  t.is(later.imagesPerSecond, 16);
  t.is(early.etaSeconds, null);
});

test('statusFromHash: no rate before anything is processed', (t) => {
  const h = extractingHash();
  for (const k of Object.keys(h)) if (k.startsWith('shard:')) delete h[k];
  const s = statusFromHash('r1', h, NOW);
  t.is(s.done, 0);
  t.is(s.imagesPerSecond, null);
  t.is(s.etaSeconds, null);
});

test('statusFromHash: a fresh run with no shards', (t) => {
  const s = statusFromHash('r2', { request: JSON.stringify(request), stage: 'queued', createdAt: 'c', updatedAt: 'u' }, NOW);
  t.like(s, {
    runId: 'r2',
    stage: 'queued',
    createdAt: 'c',
    updatedAt: 'u',
    total: 0,
    shards: 0,
    shardsDone: 0,
    done: 0,
    failed: 0,
    imagesPerSecond: null,
    etaSeconds: null,
    engine: null,
    backend: null,
    metrics: null,
    model: null,
    error: null,
  });
  t.deepEqual(s.failures, []);
  t.deepEqual(s.classes, []);
  t.deepEqual(s.counts, {});
});

test('statusFromHash: missing stage reads as queued; error, metrics and model are parsed', (t) => {
  const model = { name: 'cats', version: 'v1', uri: 's3://b/models/cats/v1/' };
  const s = statusFromHash(
    'r3',
    {
      request: JSON.stringify(request),
      error: JSON.stringify({ code: 'DATASET_INVALID', message: 'only one class' }),
      model: JSON.stringify(model),
      metrics: JSON.stringify({ accuracy: 0.9 }),
    },
    NOW,
  );
  t.is(s.stage, 'queued');
  t.deepEqual(s.error, { code: 'DATASET_INVALID', message: 'only one class' });
  t.deepEqual(s.model, model);
  t.is(s.metrics?.accuracy, 0.9);
});

test('newRunId matches RUN_ID_PATTERN and encodes the UTC time', (t) => {
  const id = newRunId(new Date('2024-03-05T07:08:09.123Z'));
  t.regex(id, RUN_ID_PATTERN);
  t.true(id.startsWith('r20240305070809-'));
  t.regex(newRunId(), RUN_ID_PATTERN);
});

test('newRunId: ids sort by time and are unique within a second', (t) => {
  const times = ['2023-12-31T23:59:59Z', '2024-01-01T00:00:00Z', '2024-01-01T00:00:01Z', '2024-10-01T00:00:00Z', '2025-02-01T00:00:00Z'];
  const ids = times.map((s) => newRunId(new Date(s)));
  t.deepEqual([...ids].reverse().sort(), ids);
  const same = new Set(Array.from({ length: 50 }, () => newRunId(new Date('2024-01-01T00:00:00Z'))));
  t.true(same.size >= 49); // 24 random bits: a collision among 50 is ~1 in 10^5
});

test('RUN_ID_PATTERN rejects path-like and malformed ids', (t) => {
  for (const bad of ['', 'r2024-abc', 'r20240101000000-ABCDEF', '../r20240101000000-abcdef', 'r20240101000000-abcdef/x', 'r20240101000000-abcde']) {
    t.false(RUN_ID_PATTERN.test(bad), bad);
  }
});
