/**
 * A fit larger than the trainer's memory budget (DEEPFEAT_TRAINER_MEMORY) fails its run at once,
 * before any shard is read, with the numbers and the ways out; a real trainer, Redis and S3.
 */
import test from 'ava';
import type { Queue, Worker } from 'bullmq';
import { getStatus } from '../cli/client.js';
import { startTrainerWorker } from '../services/trainer/worker.js';
import { shardKey } from '../shared/dataset.js';
import { encodeNpy } from '../shared/npy.js';
import { makeQueue, type JobData, type RunRequest } from '../shared/queues.js';
import type { RunStatus } from '../shared/run-state.js';
import { putObject } from '../shared/s3.js';
import { closeContext, createContext, type ServiceContext } from '../shared/worker-kit.js';
import { deployment, type Deployment } from './helpers/pipeline.js';

let dep: Deployment;
let ctx: ServiceContext;
let trainer: Worker;
let queue: Queue<JobData<'train'>>;

const request: RunRequest = {
  source: 's3://data/pets/',
  name: 'pets',
  features: { kind: 'raw-pixels', size: 32 },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 4,
};

test.before(async () => {
  // 64 MiB: less than any fit needs (Node and the fit's threads alone take more).
  dep = await deployment({ DEEPFEAT_TRAINER_MEMORY: '64', DEEPFEAT_JOB_ATTEMPTS: '3', LOG_LEVEL: 'silent' });
  ctx = createContext(dep.config, 'trainer-memory-test');
  trainer = startTrainerWorker(ctx);
  queue = makeQueue(ctx.queues, 'train');
});

test.after.always(async () => {
  await queue?.close();
  await trainer?.close();
  if (ctx) await closeContext(ctx);
  await dep?.close();
});

async function failedRun(runId: string): Promise<RunStatus> {
  for (let i = 0; i < 300; i++) {
    const s = await getStatus(dep.client, runId);
    if (s.stage === 'failed') return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`run ${runId} did not fail`);
}

const npy = (rows: number, dim: number) => encodeNpy(new Float32Array(rows * dim).fill(0.5), [rows, dim]);

test('refused before any shard is read: the plan says how many images, shard 0 says how wide', async (t) => {
  const runId = 'r20260101000000-3e3001';
  await dep.client.runs!.create(runId, request);
  // Only shard 0's features exist, and no shard's metadata: reading any shard would fail otherwise.
  await putObject(ctx.s3, dep.config.bucket, shardKey(runId, 0, 'npy'), npy(4, 3072));
  const job = await queue.add(
    'train',
    { runId, shards: 250, classes: ['cat', 'dog'], fitImages: 800 },
    { attempts: 3 },
  );
  const s = await failedRun(runId);
  t.is(s.error?.code, 'DATASET_INVALID');
  t.regex(
    s.error?.message ?? '',
    /run r20260101000000-3e3001 is too large for this trainer: 800 train\+val images × 3072 features/,
  );
  t.regex(s.error?.message ?? '', /over its budget of 64 MiB \(DEEPFEAT_TRAINER_MEMORY=64\)/);
  t.regex(s.error?.message ?? '', /more memory.*fewer images/);
  // Permanent: the same on every attempt, so it is not retried.
  t.is((await queue.getJob(job.id!))?.attemptsMade, 1);
});

test('a train job that carries no image count is refused once the shards metadata is read, before the matrix is', async (t) => {
  const runId = 'r20260101000000-3e3002';
  await dep.client.runs!.create(runId, request);
  for (let s = 0; s < 2; s++) {
    await putObject(ctx.s3, dep.config.bucket, shardKey(runId, s, 'npy'), npy(4, 3072));
    const rows = Array.from({ length: 4 }, (_, i) => ({
      key: `k${s}${i}`,
      label: i % 2 ? 'cat' : 'dog',
      split: 'train',
      row: i,
    }));
    await putObject(
      ctx.s3,
      dep.config.bucket,
      shardKey(runId, s, 'jsonl'),
      `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`,
    );
  }
  await queue.add('train', { runId, shards: 2, classes: ['cat', 'dog'] }, { attempts: 3 });
  const s = await failedRun(runId);
  t.is(s.error?.code, 'DATASET_INVALID');
  t.regex(s.error?.message ?? '', /too large for this trainer: 8 train\+val images × 3072 features/);
});
