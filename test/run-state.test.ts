import test from 'ava';
import { Redis } from 'ioredis';
import {
  MAX_FAILURES_LISTED,
  MAX_SKIPPED_LISTED,
  RUN_ID_PATTERN,
  RunStore,
  STAGE_ORDER,
  newRunId,
  statusFromHash,
  type ActiveStage,
} from '../shared/run-state.js';
import { MAX_MESSAGE_CHARS } from '../shared/text.js';
import { getRedis, uniqueName, type TestRedis } from './helpers/services.js';
import { catsRequest } from './helpers/run-request.js';

const request = catsRequest;

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
    engine: 'raw',
    backend: 'cpu',
  };
}

const PAGE = [
  { key: 'a/1.jpg', reason: 'too large' },
  { key: 'm/5.jpg', reason: 'truncated' },
];

test('statusFromHash: sums per-shard progress, counts completed shards, keeps the page of failures', (t) => {
  const s = statusFromHash('r1', extractingHash(), NOW, PAGE);
  t.is(s.runId, 'r1');
  t.deepEqual(s.request, request);
  t.is(s.stage, 'extracting');
  t.is(s.total, 150);
  t.is(s.shards, 3);
  t.is(s.done, 77);
  t.is(s.failed, 3);
  t.is(s.shardsDone, 2);
  t.deepEqual(s.failures, PAGE);
  // Failures with reasons: those of the completed shards 0 and 2 (shard 1 is still running).
  t.is(s.failuresTotal, 3);
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
  const s = statusFromHash(
    'r2',
    { request: JSON.stringify(request), stage: 'queued', createdAt: 'c', updatedAt: 'u' },
    NOW,
  );
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
  t.is(s.failuresTotal, 0);
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
  const times = [
    '2023-12-31T23:59:59Z',
    '2024-01-01T00:00:00Z',
    '2024-01-01T00:00:01Z',
    '2024-10-01T00:00:00Z',
    '2025-02-01T00:00:00Z',
  ];
  const ids = times.map((s) => newRunId(new Date(s)));
  t.deepEqual([...ids].reverse().sort(), ids);
  const same = new Set(Array.from({ length: 50 }, () => newRunId(new Date('2024-01-01T00:00:00Z'))));
  t.true(same.size >= 49); // 24 random bits: a collision among 50 is ~1 in 10^5
});

test('RUN_ID_PATTERN rejects path-like and malformed ids', (t) => {
  for (const bad of [
    '',
    'r2024-abc',
    'r20240101000000-ABCDEF',
    '../r20240101000000-abcdef',
    'r20240101000000-abcdef/x',
    'r20240101000000-abcde',
  ]) {
    t.false(RUN_ID_PATTERN.test(bad), bad);
  }
});

test('statusFromHash: skipped objects and their total; absent on older runs', (t) => {
  const h = {
    ...extractingHash(),
    skipped: JSON.stringify([{ key: 'p/README.md', reason: 'at the top' }]),
    skippedTotal: '3',
  };
  const s = statusFromHash('r1', h, NOW);
  t.deepEqual(s.skipped, [{ key: 'p/README.md', reason: 'at the top' }]);
  t.is(s.skippedTotal, 3);
  const old = statusFromHash('r1', extractingHash(), NOW);
  t.deepEqual(old.skipped, []);
  t.is(old.skippedTotal, 0);
});

// ---------- RunStore against a real Redis ----------

let redis: Promise<TestRedis> | undefined; // started by the first test that needs it, once
const conns: Redis[] = [];
test.after.always(async () => {
  await Promise.all(conns.map((c) => c.quit()));
  await (await redis)?.stop();
});

/** Two stores on one prefix over separate connections, as two worker processes have. */
async function stores(): Promise<[RunStore, RunStore, Redis, string]> {
  redis ??= getRedis();
  const { url } = await redis;
  const prefix = uniqueName('stage');
  const a = new Redis(url);
  const b = new Redis(url);
  conns.push(a, b);
  return [new RunStore(a, prefix), new RunStore(b, prefix), a, prefix];
}

const plan = { total: 10, shards: 1, classes: ['cat', 'dog'], counts: {} };

test('setStage: moves only forward along queued < planning < extracting < training < evaluating < published', async (t) => {
  const [store] = await stores();
  await store.create('r1', request);
  const seen: string[] = [];
  const steps: Array<[ActiveStage, boolean]> = [
    ['extracting', true],
    ['planning', false], // a re-run plan job
    ['queued', false],
    ['extracting', false], // sideways: no write, updatedAt unchanged
    ['training', true],
    ['extracting', false],
    ['evaluating', true],
    ['training', false], // a stalled train job picked up again
    ['published', true],
    ['evaluating', false],
  ];
  for (const [stage, moves] of steps) {
    t.is(await store.setStage('r1', stage), moves, `to ${stage}`);
    seen.push((await store.get('r1'))!.stage);
  }
  t.deepEqual(seen, [
    'extracting',
    'extracting',
    'extracting',
    'extracting',
    'training',
    'training',
    'evaluating',
    'evaluating',
    'published',
    'published',
  ]);
  t.deepEqual([...STAGE_ORDER], ['queued', 'planning', 'extracting', 'training', 'evaluating', 'published']);
});

test('setStage: never out of failed', async (t) => {
  const [store] = await stores();
  await store.create('r1', request);
  await store.setStage('r1', 'extracting');
  await store.fail('r1', 'DATASET_INVALID', 'bad');
  for (const stage of STAGE_ORDER) t.false(await store.setStage('r1', stage), stage);
  const s = await store.get('r1');
  t.is(s?.stage, 'failed');
  t.deepEqual(s?.error, { code: 'DATASET_INVALID', message: 'bad' });
});

test('setStage racing fail() from another connection: the run stays failed', async (t) => {
  const [worker, other] = await stores();
  for (let i = 0; i < 40; i++) {
    const runId = `r${i}`;
    await worker.create(runId, request);
    await worker.setStage(runId, 'extracting');
    const move = () => worker.setStage(runId, i % 2 === 0 ? 'training' : 'evaluating');
    const fail = () => other.fail(runId, 'STORAGE_PERMANENT', 'extract failed');
    await (i % 4 < 2 ? Promise.all([move(), fail()]) : Promise.all([fail(), move()]));
    t.is((await other.get(runId))?.stage, 'failed', `run ${i}`);
  }
});

test('setStage racing a late backward move from another connection: the run ends at the furthest stage', async (t) => {
  const [evaluator, planner] = await stores();
  for (let i = 0; i < 40; i++) {
    const runId = `r${i}`;
    await evaluator.create(runId, request);
    await evaluator.setStage(runId, 'training');
    await Promise.all([
      evaluator.setStage(runId, 'evaluating'),
      planner.setStage(runId, 'planning'),
      planner.setStage(runId, 'extracting'),
    ]);
    t.is((await planner.get(runId))?.stage, 'evaluating', `run ${i}`);
  }
});

test('setPlan: moves a planning run to extracting; a second setPlan keeps the first extractStartedAt and the stage', async (t) => {
  const [store, , conn, prefix] = await stores();
  await store.create('r1', request);
  await store.setStage('r1', 'planning');
  await store.setPlan('r1', plan);
  t.is((await store.get('r1'))?.stage, 'extracting');
  const key = `${prefix}:run:r1`;
  const first = await conn.hget(key, 'extractStartedAt');
  t.truthy(first);
  await new Promise((r) => setTimeout(r, 20));
  await store.setStage('r1', 'training');
  await store.setPlan('r1', plan); // a re-run plan job
  t.is(await conn.hget(key, 'extractStartedAt'), first);
  t.is((await store.get('r1'))?.stage, 'training');
});

test('setPlan: skipped objects are listed up to MAX_SKIPPED_LISTED (first by key) and counted in full', async (t) => {
  const [store] = await stores();
  await store.create('r1', request);
  const n = MAX_SKIPPED_LISTED + 2500;
  const skipped = Array.from({ length: n }, (_, i) => ({
    key: `p/${String(n - i).padStart(6, '0')}.txt`,
    reason: 'r'.repeat(i === n - 1 ? 1 << 20 : 3),
  }));
  await store.setPlan('r1', { ...plan, skipped });
  const s = await store.get('r1');
  t.is(s?.skippedTotal, n);
  t.is(s?.skipped.length, MAX_SKIPPED_LISTED);
  t.is(s!.skipped[0]!.key, 'p/000001.txt');
  t.is(s!.skipped.at(-1)!.key, `p/${String(MAX_SKIPPED_LISTED).padStart(6, '0')}.txt`);
  // The 1 MB reason belonged to p/000001.txt: capped.
  t.true(s!.skipped[0]!.reason.length <= MAX_MESSAGE_CHARS + 40);
});

test('fail and setShardProgress cap what they store: a 1 MB message or reason stays small in Redis', async (t) => {
  const [store] = await stores();
  const huge = 'y'.repeat(1 << 20);
  await store.create('r1', request);
  await store.setShardProgress('r1', 0, { done: 0, failed: 1, complete: true }, [{ key: 'a.jpg', reason: huge }]);
  await store.fail('r1', 'DATASET_INVALID', huge);
  const s = await store.get('r1');
  t.true(s!.error!.message.length <= MAX_MESSAGE_CHARS + 40, `${s!.error!.message.length}`);
  t.regex(s!.error!.message, /more characters\)$/);
  t.is(s!.failures[0]!.key, 'a.jpg');
  t.true(s!.failures[0]!.reason.length <= MAX_MESSAGE_CHARS + 40);
});

test('statusFromHash: failuresTotal counts only completed shards; the page is never longer than MAX_FAILURES_LISTED', (t) => {
  const h = extractingHash();
  h['shard:1'] = JSON.stringify({ done: 0, failed: 20, complete: false });
  const many = Array.from({ length: MAX_FAILURES_LISTED + 5 }, (_, i) => ({ key: `k${i}`, reason: 'r' }));
  const s = statusFromHash('r1', h, NOW, many);
  t.is(s.failed, 23);
  t.is(s.failuresTotal, 3);
  t.is(s.failures.length, MAX_FAILURES_LISTED);
});

/** `n` failures of one shard, keys in manifest (key) order across shards. */
function shardFailures(shard: number, n: number) {
  return Array.from({ length: n }, (_, i) => ({
    key: `img/${String(shard).padStart(5, '0')}/${String(i).padStart(3, '0')}.png`,
    reason: `object not found (shard ${shard})`,
  }));
}

test('a run with 300,000 failures across 1,200 shards: status lists the first page and counts them all; failures() streams every one in order', async (t) => {
  const [store, , conn, prefix] = await stores();
  await store.create('r1', request);
  await store.setPlan('r1', { ...plan, total: 1200 * 256, shards: 1200 });
  const shards = 1200;
  const perShard = 250;
  for (let start = 0; start < shards; start += 100) {
    await Promise.all(
      Array.from({ length: 100 }, (_, i) => {
        const shard = start + i;
        const failures = shardFailures(shard, perShard);
        return store.setShardProgress('r1', shard, { done: 6, failed: perShard, complete: true }, failures);
      }),
    );
  }
  const s = await store.get('r1');
  t.is(s?.failed, shards * perShard);
  t.is(s?.failuresTotal, 300_000);
  t.is(s?.done, shards * 6);
  t.is(s?.shardsDone, shards);
  t.is(s?.failures.length, MAX_FAILURES_LISTED);
  t.deepEqual(s?.failures, shardFailures(0, perShard).slice(0, MAX_FAILURES_LISTED));
  // Small whatever the number of failures: the page, the plan and the counts.
  const bytes = Buffer.byteLength(JSON.stringify(s));
  t.true(bytes < 20_000, `${bytes} bytes`);
  // The run hash holds counts only; the reasons live beside it.
  t.false(Object.keys(await conn.hgetall(`${prefix}:run:r1`)).some((f) => f.startsWith('failures')));
  t.is(await conn.hlen(`${prefix}:run:r1:failures`), shards);

  let n = 0;
  let previous = '';
  let ordered = true;
  for await (const f of store.failures('r1', shards)) {
    if (f.key <= previous) ordered = false;
    previous = f.key;
    n++;
  }
  t.is(n, 300_000);
  t.true(ordered, 'manifest (key) order, shard by shard');
  t.is(previous, shardFailures(shards - 1, perShard).at(-1)!.key);
});

test('a retried shard replaces its own failures: counts and reasons never double, and a clean retry clears them', async (t) => {
  const [store] = await stores();
  await store.create('r1', request);
  await store.setPlan('r1', { ...plan, total: 20, shards: 2 });
  await store.setShardProgress('r1', 0, { done: 7, failed: 3, complete: true }, shardFailures(0, 3));
  await store.setShardProgress('r1', 1, { done: 8, failed: 2, complete: true }, shardFailures(1, 2));
  // Shard 0 again (a stalled job run twice): in progress, then complete with other failures.
  await store.setShardProgress('r1', 0, { done: 2, failed: 1, complete: false });
  let s = await store.get('r1');
  t.is(s?.failed, 3);
  t.is(s?.failuresTotal, 2, 'only completed shards count towards the recorded failures');
  await store.setShardProgress('r1', 0, { done: 8, failed: 2, complete: true }, shardFailures(0, 2));
  s = await store.get('r1');
  t.is(s?.failed, 4);
  t.is(s?.failuresTotal, 4);
  t.deepEqual(s?.failures, [...shardFailures(0, 2), ...shardFailures(1, 2)]);
  await store.setShardProgress('r1', 1, { done: 10, failed: 0, complete: true }, []);
  s = await store.get('r1');
  t.is(s?.failed, 2);
  t.deepEqual(s?.failures, shardFailures(0, 2));
  const all = [];
  for await (const f of store.failures('r1', 2)) all.push(f);
  t.deepEqual(all, shardFailures(0, 2));
});

test('status lists failures from the first shards that hold any, skipping clean and unfinished shards', async (t) => {
  const [store] = await stores();
  await store.create('r1', request);
  await store.setShardProgress('r1', 0, { done: 10, failed: 0, complete: true }, []);
  await store.setShardProgress('r1', 1, { done: 0, failed: 5, complete: false });
  await store.setShardProgress('r1', 2, { done: 0, failed: 60, complete: true }, shardFailures(2, 60));
  await store.setShardProgress('r1', 3, { done: 0, failed: 60, complete: true }, shardFailures(3, 60));
  await store.setShardProgress('r1', 4, { done: 0, failed: 60, complete: true }, shardFailures(4, 60));
  const s = await store.get('r1');
  t.is(s?.failuresTotal, 180);
  t.is(s?.failed, 185);
  t.deepEqual(s?.failures, [...shardFailures(2, 60), ...shardFailures(3, 40)]);
});
