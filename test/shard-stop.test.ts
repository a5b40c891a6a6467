/**
 * A shard of a run that has failed stops at its next batch (shard-loop.ts): the real loop on a
 * real Redis and S3 server, the raw-pixels engine in its thread, decoding as an extractor does.
 * Before, an extractor went on through its whole shard (tens of seconds with inception_v3) for a
 * run a --local command's Ctrl-C had already failed, and its shutdown waited for it.
 */
import test from 'ava';
import { Redis } from 'ioredis';
import sharp from 'sharp';
import type { S3Client } from '@aws-sdk/client-s3';
import { loadConfig } from '../shared/config.js';
import { InternalError } from '../shared/errors.js';
import type { RunRequest } from '../shared/queues.js';
import { RunStore } from '../shared/run-state.js';
import { putObject } from '../shared/s3.js';
import { DecoderPool } from '../services/extractor/decoder-pool.js';
import { loadEngineInThread } from '../services/extractor/engines/thread.js';
import { embedShard } from '../services/extractor/shard-loop.js';
import { getRedis, getS3, makeS3Client, uniqueName, type TestRedis, type TestS3 } from './helpers/services.js';

const BUCKET = uniqueName('shardstop');
const IMAGES = 24;
const request: RunRequest = {
  source: `s3://${BUCKET}/`,
  name: 'stop',
  features: { kind: 'raw-pixels', size: 8 },
  seed: 1,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: IMAGES,
};

let redis: TestRedis;
let s3: TestS3;
let client: S3Client;
let conn: Redis;
test.before(async () => {
  [redis, s3] = await Promise.all([getRedis(), getS3({ buckets: [BUCKET] })]);
  client = makeS3Client(s3.endpoint);
  conn = new Redis(redis.url);
  for (let i = 0; i < IMAGES; i++) {
    const png = await sharp({ create: { width: 16, height: 16, channels: 3, background: { r: i * 10, g: 40, b: 90 } } })
      .png()
      .toBuffer();
    await putObject(client, BUCKET, `cat/${i}.png`, png, 'image/png');
  }
});
test.after.always(async () => {
  await conn?.quit();
  client?.destroy();
  await Promise.all([redis?.stop(), s3?.stop()]);
});

async function runShard(failAfterBatches: number | undefined) {
  const runs = new RunStore(conn, uniqueName('stop'));
  const runId = uniqueName('r');
  await runs.create(runId, request);
  const config = loadConfig({ DEEPFEAT_BATCH_SIZE: '4' });
  const decoders = new DecoderPool({ processes: 1, timeoutSeconds: 20, memoryLimitMiB: 512 });
  const engine = await loadEngineInThread(request.features, {
    readObject: () => Promise.reject(new Error('no reads')),
  });
  const items = Array.from({ length: IMAGES }, (_, i) => ({ key: `cat/${i}.png` }));
  let batches = 0;
  try {
    const outcome = await embedShard(
      { s3: client, runs, config, decoders },
      { runId, shard: 0, sourceBucket: BUCKET },
      engine,
      items,
      async () => {
        batches++;
        if (batches === failAfterBatches) await runs.fail(runId, 'BAD_REQUEST', 'another shard found the bucket gone');
      },
    );
    return { outcome, batches, status: await runs.get(runId) };
  } catch (err) {
    return { err, batches, status: await runs.get(runId) };
  } finally {
    await engine.dispose();
    await decoders.close();
  }
}

test('a live run: every batch of the shard runs', async (t) => {
  const r = await runShard(undefined);
  t.is(r.err, undefined);
  t.is(r.batches, IMAGES / 4);
  t.is(r.outcome?.done, IMAGES);
});

test('a run that fails during the shard: the shard stops at its next batch, permanently, and the run keeps its reason', async (t) => {
  const r = await runShard(2);
  t.true(r.err instanceof InternalError, String(r.err));
  const err = r.err as InternalError;
  t.true(err.permanent, 'not retried');
  t.regex(err.message, /run .* has failed; shard 0 stopped after 8 images/);
  t.is(r.batches, 2, 'no batch after the one that saw the failure');
  t.is(r.status?.stage, 'failed');
  t.deepEqual(r.status?.error, { code: 'BAD_REQUEST', message: 'another shard found the bucket gone' });
});
