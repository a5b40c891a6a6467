/**
 * The job lease that fences a stale attempt's writes (shared/job-lease.ts), on real Redis, S3 and
 * BullMQ but without namespaces (so it runs everywhere): the pieces test/multihost.e2e.test.ts
 * shows end to end across hosts. An attempt that no longer holds its job's lock writes no shard
 * progress and no shard object; a shard write that cannot end within the lock is abandoned and
 * never reaches the bucket.
 */
import test from 'ava';
import { Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { shardKey } from '../shared/dataset.js';
import { readFeatures, writeShard } from '../shared/feature-store.js';
import { LeaseLostError, jobLease, type JobLease } from '../shared/job-lease.js';
import { RunStore } from '../shared/run-state.js';
import { getObjectText } from '../shared/s3.js';
import { NotFoundError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { type LatestPointer, latestKey } from '../shared/model-format.js';
import type { ServiceContext } from '../shared/worker-kit.js';
import { moveLatest } from '../services/evaluator/worker.js';
import { startFaultProxy } from './helpers/fault-proxy.js';
import { getRedis, getS3, makeS3Client, uniqueName, type TestRedis, type TestS3 } from './helpers/services.js';

let redisService: TestRedis;
let s3Service: TestS3;
let redis: Redis;
const bucket = uniqueName('lease');

test.before(async () => {
  [redisService, s3Service] = await Promise.all([getRedis(), getS3({ buckets: [bucket] })]);
  redis = new Redis(redisService.url, { maxRetriesPerRequest: null });
});
test.after.always(async () => {
  await redis?.quit();
  await Promise.all([redisService?.stop(), s3Service?.stop()]);
});

/** Runs `body` inside a real BullMQ job (lock 2 s), with that job and its lease. */
async function insideJob(body: (job: Job, lease: JobLease) => Promise<void>): Promise<void> {
  const prefix = uniqueName('t');
  const name = uniqueName('q');
  const connection = { host: new URL(redisService.url).hostname, port: Number(new URL(redisService.url).port) };
  const queue = new Queue(name, { connection, prefix });
  let failure: unknown;
  let ran = false;
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  const worker = new Worker(
    name,
    async (job) => {
      try {
        ran = true;
        await body(job, jobLease(job, 2000, `job ${job.id}`)!);
      } catch (err) {
        failure = err;
      } finally {
        finish();
      }
    },
    { connection, prefix, lockDuration: 2000 },
  );
  await queue.add('j', {});
  await done;
  await worker.close(true);
  await queue.close();
  if (!ran) throw new Error('the job never ran');
  if (failure) throw failure;
}

test('shard progress is written only while the attempt holds its job, and refused once another does', async (t) => {
  const prefix = uniqueName('p');
  const runs = new RunStore(redis, prefix);
  const runId = 'r20260101000000-abcdef';
  await insideJob(async (job, lease) => {
    t.is(lease.key, `${job.queueQualifiedName}:${job.id}:lock`);
    t.deepEqual(await runs.setShardProgress(runId, 0, { done: 4, failed: 0, complete: false }, undefined, lease), {
      runFailed: false,
    });
    // The run fails meanwhile (another shard, a Ctrl-C): the write still lands, and says so.
    await redis.hset(`${prefix}:run:${runId}`, 'stage', 'failed');
    t.deepEqual(
      await runs.setShardProgress(
        runId,
        0,
        { done: 8, failed: 1, complete: true },
        [{ key: 'a', reason: 'bad' }],
        lease,
      ),
      { runFailed: true },
    );
    // Another attempt owns the job now (the lock lapsed and a worker elsewhere took it).
    await redis.set(lease.key, 'another-attempt', 'PX', 10_000);
    await t.throwsAsync(
      () => runs.setShardProgress(runId, 0, { done: 2, failed: 0, complete: false }, undefined, lease),
      { instanceOf: LeaseLostError, message: /no longer holds the job's lock/ },
    );
    await t.throwsAsync(() => lease.renew(), { instanceOf: LeaseLostError });
    await redis.del(lease.key);
    await t.throwsAsync(() => runs.setShardProgress(runId, 0, { done: 8, failed: 0, complete: true }, [], lease), {
      instanceOf: LeaseLostError,
    });
  });
  const fields = await redis.hgetall(`${prefix}:run:${runId}`);
  t.deepEqual(JSON.parse(fields['shard:0']!), { done: 8, failed: 1, complete: true });
  const failures = await redis.hgetall(`${prefix}:run:${runId}:failures`);
  t.deepEqual(JSON.parse(failures['0']!), [{ key: 'a', reason: 'bad' }]);
});

test('a shard is written under the lease; an attempt that lost it writes neither file', async (t) => {
  const s3 = makeS3Client(s3Service.endpoint);
  const runId = 'r20260101000000-abcde0';
  const rows = [
    { key: 'a', label: 'cat', split: 'train' as const, row: 0 },
    { key: 'b', label: 'dog', split: 'train' as const, error: 'not an image' },
  ];
  await insideJob(async (_job, lease) => {
    await writeShard(s3, bucket, runId, 0, Float32Array.from([1, 2, 3]), 3, rows, lease);
    await redis.set(lease.key, 'another-attempt', 'PX', 10_000);
    // The stale attempt's other result (both images failed) must not replace the shard.
    const stale = rows.map(({ key, label, split }) => ({ key, label, split, error: 'timed out' }));
    await t.throwsAsync(() => writeShard(s3, bucket, runId, 0, new Float32Array(0), 3, stale, lease), {
      instanceOf: LeaseLostError,
    });
    await t.throwsAsync(() => writeShard(s3, bucket, runId, 1, new Float32Array(0), 3, stale, lease), {
      instanceOf: LeaseLostError,
    });
  });
  const read = await readFeatures(s3, bucket, runId, 1, ['train']);
  t.deepEqual(Array.from(read.X), [1, 2, 3]);
  t.deepEqual(read.keys, ['a']);
  await t.throwsAsync(() => getObjectText(s3, bucket, shardKey(runId, 1, 'npy')), { instanceOf: NotFoundError });
  s3.destroy();
});

/**
 * The lease as a host cut off from Redis holds it: the first renewal (before the write) answers,
 * later ones never do.
 */
function cutOffAfterFirstRenewal(lease: JobLease): JobLease {
  let calls = 0;
  return { ...lease, renew: () => (calls++ === 0 ? lease.renew() : new Promise<number>(() => undefined)) };
}

for (const [title, change, expected] of [
  [
    "a shard write that cannot be renewed within the job's lock (Redis cut off) is abandoned and never lands",
    (lease: JobLease) => cutOffAfterFirstRenewal(lease),
    { message: /did not end within the job's lock/ },
  ],
  [
    'a shard write whose job another attempt takes over meanwhile is abandoned and never lands',
    (lease: JobLease) => lease,
    { instanceOf: LeaseLostError },
  ],
] as const) {
  test.serial(title, async (t) => {
    const proxy = await startFaultProxy(s3Service.endpoint);
    const s3 = makeS3Client(proxy.endpoint);
    const runId = 'r20260101000000-abcde1';
    const hold = proxy.holdRequests((method, path) => method === 'PUT' && path.endsWith('.npy'));
    try {
      await insideJob(async (_job, lease) => {
        const write = writeShard(
          s3,
          bucket,
          runId,
          0,
          Float32Array.from([1]),
          1,
          [{ key: 'a', label: 'c', split: 'train', row: 0 }],
          change(lease),
        );
        if ('instanceOf' in expected) {
          // The PUT is held by the proxy; meanwhile another attempt owns the job.
          await new Promise((r) => setTimeout(r, 300));
          await redis.set(lease.key, 'another-attempt', 'PX', 10_000);
        }
        await t.throwsAsync(() => write, expected);
      });
      await new Promise((r) => setTimeout(r, 200));
      t.is(hold.dropped, 1, 'the held PUT was abandoned by its client');
      hold.release();
      await new Promise((r) => setTimeout(r, 200));
      for (const ext of ['npy', 'jsonl'] as const) {
        await t.throwsAsync(() => getObjectText(s3, bucket, shardKey(runId, 0, ext)), { instanceOf: NotFoundError });
      }
    } finally {
      s3.destroy();
      await proxy.close();
    }
  });
}

test.serial('latest.json never moves back to an older version, and moves forward through the lease', async (t) => {
  const s3 = makeS3Client(s3Service.endpoint);
  const ctx = { s3, config: { bucket, jobLockMs: 2000 } } as unknown as ServiceContext;
  const log = { warn: () => undefined } as unknown as Logger;
  const pointer = (version: string): LatestPointer => ({
    name: 'fence',
    version,
    key: `models/fence/${version}/model.json`,
    publishedAt: new Date().toISOString(),
  });
  const read = async () => JSON.parse(await getObjectText(s3, bucket, latestKey('fence'))).version;
  try {
    await insideJob(async (job) => {
      await moveLatest(ctx, job, pointer('r20260101000002-bbbbbb'), log);
    });
    t.is(await read(), 'r20260101000002-bbbbbb');
    // An older run's evaluator finishing late.
    await insideJob(async (job) => {
      await moveLatest(ctx, job, pointer('r20260101000001-aaaaaa'), log);
    });
    t.is(await read(), 'r20260101000002-bbbbbb');
    await insideJob(async (job) => {
      await moveLatest(ctx, job, pointer('r20260101000003-cccccc'), log);
    });
    t.is(await read(), 'r20260101000003-cccccc');
    // An attempt that lost its job writes nothing, even forward.
    await insideJob(async (job, lease) => {
      await redis.set(lease.key, 'another-attempt', 'PX', 10_000);
      await t.throwsAsync(() => moveLatest(ctx, job, pointer('r20260101000004-dddddd'), log), {
        instanceOf: LeaseLostError,
      });
      await redis.del(lease.key);
    });
    t.is(await read(), 'r20260101000003-cccccc');
  } finally {
    s3.destroy();
  }
});
