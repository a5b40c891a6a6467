/**
 * The plan job against real Redis and S3 with a real planner worker: re-runs never move a run
 * back or restart its throughput clock, objects it does not use are recorded with why, and a
 * manifest over the size limit is refused before it is read.
 */
import test from 'ava';
import type { Job, Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { shardItems } from '../services/extractor/shard-items.js';
import { makeQueue, type JobData, type RunRequest } from '../shared/queues.js';
import type { RunStatus, Stage } from '../shared/run-state.js';
import { getObjectJson, getObjectText } from '../shared/s3.js';
import { createContext, closeContext, type ServiceContext } from '../shared/worker-kit.js';
import { deployment, type Deployment } from './helpers/pipeline.js';

const MAX_MANIFEST_BYTES = 4096;

let dep: Deployment;
let ctx: ServiceContext;
let planner: Worker;
let planQueue: Queue<JobData<'plan'>>;
let evaluateQueue: Queue<JobData<'evaluate'>>;
let redis: Redis;

test.before(async () => {
  dep = await deployment({
    DEEPFEAT_JOB_ATTEMPTS: '1',
    LOG_LEVEL: 'silent',
    DEEPFEAT_MAX_MANIFEST_BYTES: String(MAX_MANIFEST_BYTES),
  });
  ctx = createContext(dep.config, 'planner-test');
  planner = startPlannerWorker(ctx);
  planQueue = makeQueue(ctx.queues, 'plan');
  evaluateQueue = makeQueue(ctx.queues, 'evaluate');
  redis = new Redis(dep.redis.url);
  const put = (k: string) => dep.put(k, 'x');
  await Promise.all(
    ['cat/1.png', 'cat/2.png', 'cat/3.png', 'dog/1.png', 'dog/2.png', 'dog/3.png'].map((k) => put(`pets/${k}`)),
  );
});

test.after.always(async () => {
  await planQueue?.close();
  await evaluateQueue?.close();
  await redis?.quit();
  await planner?.close();
  if (ctx) await closeContext(ctx);
  await dep?.close();
});

async function waitForStage(runId: string, stages: Stage[]): Promise<RunStatus> {
  for (let i = 0; i < 200; i++) {
    const s = await dep.client.runs!.get(runId);
    if (s && stages.includes(s.stage)) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`run ${runId} did not reach ${stages.join('/')}`);
}

async function finished(job: Job): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const state = await job.getState();
    if (state === 'completed' || state === 'failed') return state;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`job ${job.id} did not finish`);
}

const runHash = (runId: string) => `${dep.config.queuePrefix}:run:${runId}`;

test('a re-run of the plan job on a run already past planning moves nothing back and keeps its clock', async (t) => {
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/pets/` });
  await waitForStage(runId, ['extracting']);
  const startedAt = await redis.hget(runHash(runId), 'extractStartedAt');
  t.truthy(startedAt);
  // As if its shards were done: a re-run plan job must not drag it back to planning/extracting.
  await ctx.runs.setStage(runId, 'training');
  const request = (await dep.client.runs!.get(runId))!.request;
  const again = await planQueue.add('plan', { runId, request }, { jobId: `${runId}-plan-again` });
  t.is(await finished(again), 'completed', again.failedReason);
  const s = await dep.client.runs!.get(runId);
  t.is(s?.stage, 'training');
  t.is(await redis.hget(runHash(runId), 'extractStartedAt'), startedAt);
  t.is(s?.total, 6);
});

test('a plan job whose earlier attempt recorded the plan but died before adding the flow adds it, keeping the clock', async (t) => {
  const runId = 'r20260101000000-00aa01';
  const request = {
    source: `s3://${dep.dataBucket}/pets/`,
    name: 'pets',
    features: { kind: 'raw-pixels' as const, size: 32 },
    seed: 42,
    split: { train: 0.7, val: 0.1, test: 0.2 },
    shardSize: 4,
  };
  await dep.client.runs!.create(runId, request);
  await ctx.runs.setPlan(runId, { total: 6, shards: 2, classes: ['cat', 'dog'], counts: {} });
  const startedAt = await redis.hget(runHash(runId), 'extractStartedAt');
  await new Promise((r) => setTimeout(r, 20));
  const job = await planQueue.add('plan', { runId, request }, { jobId: `${runId}-plan` });
  t.is(await finished(job), 'completed', job.failedReason);
  t.truthy(await evaluateQueue.getJob(`${runId}-evaluate`));
  t.is((await dep.client.runs!.get(runId))?.stage, 'extracting');
  t.is(await redis.hget(runHash(runId), 'extractStartedAt'), startedAt);
});

test('objects the plan does not use are in status and run.json with why', async (t) => {
  // (s3rver refuses keys with '//', so the empty-folder-name case is a unit test in plan.test.ts.)
  const strays = ['mixed/notes.txt', 'mixed/cat/raw/4.png', 'mixed/dog/a/b/5.png'];
  await Promise.all(
    [...['cat/1.png', 'cat/2.png', 'dog/1.png', 'dog/2.png'].map((k) => `mixed/${k}`), ...strays].map((k) =>
      dep.put(k, 'x'),
    ),
  );
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/mixed/` });
  const s = await waitForStage(runId, ['extracting', 'failed']);
  t.is(s.stage, 'extracting', s.error?.message);
  t.is(s.total, 4);
  t.is(s.skippedTotal, 3);
  t.deepEqual(
    s.skipped.map((o) => o.key),
    [...strays].sort(),
  );
  const byKey = Object.fromEntries(s.skipped.map((o) => [o.key, o.reason]));
  t.regex(byKey['mixed/notes.txt']!, /top of the prefix/);
  t.regex(byKey['mixed/cat/raw/4.png']!, /subfolder/);
  t.regex(byKey['mixed/dog/a/b/5.png']!, /subfolder 2 deep/);
  const runJson = await getObjectJson<{ skipped: unknown; skippedTotal: number }>(
    ctx.s3,
    dep.config.bucket,
    `runs/${runId}/run.json`,
  );
  t.deepEqual(runJson.skipped, s.skipped);
  t.is(runJson.skippedTotal, 3);
});

test('a manifest over DEEPFEAT_MAX_MANIFEST_BYTES fails the run, naming the limit, without reading it', async (t) => {
  const rows = Array.from({ length: 400 }, (_, i) => `img/${i}.png,${i % 2 ? 'cat' : 'dog'}`);
  await dep.put('big.csv', ['key,label', ...rows].join('\n'));
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/big.csv` });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'DATASET_INVALID');
  t.regex(
    s.error?.message ?? '',
    new RegExp(
      `manifest s3://.*/big\\.csv is \\d+ bytes, over the limit of ${MAX_MANIFEST_BYTES} \\(DEEPFEAT_MAX_MANIFEST_BYTES\\)`,
    ),
  );
});

test('a CSV manifest planned by the worker: manifest.jsonl lists every image; the jobs carry what later stages need', async (t) => {
  const rows = ['pets/cat/1.png,cat', '"pets/cat/\r\n2.png",cat', 'pets/cat/3.png,cat', 'pets/dog/1.png,dog'];
  rows.push('pets/dog/2.png,dog', 'pets/dog/3.png,dog');
  await dep.put('lists/pets.csv', `key,label\r\n${rows.join('\r\n')}\r\n`);
  const source = `s3://${dep.dataBucket}/lists/pets.csv`;
  const runId = await enqueueRun(dep.client, { source, name: 'pets-csv', shardSize: 4 });
  const s = await waitForStage(runId, ['extracting', 'failed']);
  t.is(s.stage, 'extracting', s.error?.message);
  const text = await getObjectText(ctx.s3, dep.config.bucket, `runs/${runId}/manifest.jsonl`);
  const items = text
    .trimEnd()
    .split('\n')
    .map((l) => JSON.parse(l) as { key: string; label: string; split: string });
  t.deepEqual(
    items.map((i) => i.key),
    ['pets/cat/\r\n2.png', 'pets/cat/1.png', 'pets/cat/3.png', 'pets/dog/1.png', 'pets/dog/2.png', 'pets/dog/3.png'],
  );
  const trainQueue = makeQueue(ctx.queues, 'train');
  const train = (await trainQueue.getJob(`${runId}-train`))!.data;
  await trainQueue.close();
  t.is(train.fitImages, items.filter((i) => i.split !== 'test').length);
  // Extract jobs carry a range of manifest.jsonl (issue 10), and it reads back as the shard's items.
  const extractQueue = makeQueue(ctx.queues, 'extract');
  for (const shard of [0, 1]) {
    const { manifest } = (await extractQueue.getJob(`${runId}-extract-${shard}`))!.data;
    t.is(manifest.key, `runs/${runId}/manifest.jsonl`);
    t.deepEqual(await shardItems(ctx, runId, shard, manifest), items.slice(shard * 4, shard * 4 + 4));
  }
  await extractQueue.close();
  const evaluate = (await evaluateQueue.getJob(`${runId}-evaluate`))!.data;
  t.is(evaluate.source, source);
  t.deepEqual(evaluate.features, (s.request as RunRequest).features);
  t.is(evaluate.name, 'pets-csv');
});

test('a bad row after a quoted value holding a CRLF is reported on its true line', async (t) => {
  const text =
    'key,label\r\n"pets/cat/0.png",cat\r\n"pets/dog/\r\n0.png",dog\r\npets/cat/1.png,cat\r\npets/dog/1.png,dog,extra\r\n';
  await dep.put('lists/crlf.csv', text);
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/lists/crlf.csv` });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'DATASET_INVALID');
  t.regex(s.error?.message ?? '', /lists\/crlf\.csv line 6: 3 values, expected 2/);
});
