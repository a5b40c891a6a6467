/**
 * publishRunRecord against a real Redis and S3 server: runs/<id>/run.json is written before Redis
 * says the run is final (a client that sees 'published' or 'done' finds it), and it holds what
 * Redis holds after the move; a run that cannot move (failed) gets Redis's own status.
 */
import test from 'ava';
import { Redis } from 'ioredis';
import type { S3Client } from '@aws-sdk/client-s3';
import { createLogger } from '../shared/logger.js';
import { RunStore, type RunEnd, type RunStatus } from '../shared/run-state.js';
import { getObjectJson, putJson } from '../shared/s3.js';
import type { ServiceContext } from '../shared/worker-kit.js';
import { publishRunRecord } from '../services/evaluator/run-record.js';
import { getRedis, getS3, makeS3Client, uniqueName, type TestRedis, type TestS3 } from './helpers/services.js';
import { catsRequest } from './helpers/run-request.js';

const BUCKET = uniqueName('runrecord');
const request = catsRequest;
const log = createLogger('test', 'silent');

let redis: TestRedis;
let s3: TestS3;
let client: S3Client;
const conns: Redis[] = [];
test.before(async () => {
  [redis, s3] = await Promise.all([getRedis(), getS3({ buckets: [BUCKET] })]);
  client = makeS3Client(s3.endpoint);
});
test.after.always(async () => {
  await Promise.all(conns.map((c) => c.quit()));
  client?.destroy();
  await Promise.all([redis?.stop(), s3?.stop()]);
});

/** A RunStore that notes, at the moment a run moves to its final stage, whether run.json was there. */
class WatchedStore extends RunStore {
  runJsonAtMove: RunStatus | 'missing' | undefined;
  override async finish(runId: string, end: RunEnd, at?: Date): Promise<boolean> {
    this.runJsonAtMove = await getObjectJson<RunStatus>(client, BUCKET, `runs/${runId}/run.json`).catch(
      () => 'missing' as const,
    );
    return super.finish(runId, end, at);
  }
}

function context(): { ctx: ServiceContext; runs: WatchedStore } {
  const conn = new Redis(redis.url);
  conns.push(conn);
  const runs = new WatchedStore(conn, uniqueName('rr'));
  return { ctx: { s3: client, runs } as unknown as ServiceContext, runs };
}

async function evaluatingRun(runs: RunStore, runId: string): Promise<void> {
  await runs.create(runId, request);
  await runs.setPlan(runId, { total: 4, shards: 1, classes: ['cat', 'dog'], counts: {} });
  await runs.setShardProgress(runId, 0, { done: 3, failed: 1, complete: true, engine: 'onnx', backend: 'cpu' }, [
    { key: 'data/cat/1.jpg', reason: 'not an image' },
  ]);
  await runs.setStage(runId, 'training');
  await runs.setStage(runId, 'evaluating');
}

const published: RunEnd = {
  stage: 'published',
  metrics: { accuracy: 0.75 } as never,
  model: { name: 'cats', version: 'r1', uri: 's3://b/models/cats/r1/model.json' },
};

test('run.json is in place before Redis says published, and holds what Redis holds after', async (t) => {
  const { ctx, runs } = context();
  await evaluatingRun(runs, 'r1');
  await publishRunRecord(ctx, BUCKET, 'r1', published, log);
  t.not(runs.runJsonAtMove, 'missing');
  t.is((runs.runJsonAtMove as RunStatus).stage, 'published');
  const inRedis = await runs.get('r1');
  t.is(inRedis?.stage, 'published');
  t.deepEqual(await getObjectJson<RunStatus>(client, BUCKET, 'runs/r1/run.json'), JSON.parse(JSON.stringify(inRedis)));
  t.deepEqual(runs.runJsonAtMove, JSON.parse(JSON.stringify(inRedis)), 'the early run.json is the final status');
  t.deepEqual(inRedis?.failures, [{ key: 'data/cat/1.jpg', reason: 'not an image' }]);
});

test('a prediction run: run.json says done before Redis does', async (t) => {
  const { ctx, runs } = context();
  await runs.create('p1', { ...request, kind: 'predict' } as never);
  const end: RunEnd = {
    stage: 'done',
    predictions: { uri: 's3://b/runs/p1/predictions.csv', images: 4, predicted: 4, failed: 0 },
  };
  await publishRunRecord(ctx, BUCKET, 'p1', end, log);
  const inRedis = await runs.get('p1');
  t.is(inRedis?.stage, 'done');
  t.is((runs.runJsonAtMove as RunStatus).stage, 'done');
  t.deepEqual(inRedis?.predictions, end.predictions);
  t.deepEqual(await getObjectJson<RunStatus>(client, BUCKET, 'runs/p1/run.json'), JSON.parse(JSON.stringify(inRedis)));
});

test('a run that failed meanwhile stays failed, in Redis and in run.json', async (t) => {
  const { ctx, runs } = context();
  await evaluatingRun(runs, 'r2');
  await runs.fail('r2', 'INTERNAL', 'the train job failed');
  await publishRunRecord(ctx, BUCKET, 'r2', published, log);
  const inRedis = await runs.get('r2');
  t.is(inRedis?.stage, 'failed');
  const record = await getObjectJson<RunStatus>(client, BUCKET, 'runs/r2/run.json');
  t.is(record.stage, 'failed');
  t.deepEqual(record, JSON.parse(JSON.stringify(inRedis)));
});

test('a move Redis does not take: run.json is removed again and the error goes to the job', async (t) => {
  const { ctx, runs } = context();
  await evaluatingRun(runs, 'r3');
  const failing = Object.create(runs) as WatchedStore;
  failing.finish = async () => {
    throw new Error('Connection is closed.');
  };
  await t.throwsAsync(publishRunRecord({ ...ctx, runs: failing }, BUCKET, 'r3', published, log), {
    message: 'Connection is closed.',
  });
  await t.throwsAsync(getObjectJson(client, BUCKET, 'runs/r3/run.json'));
  t.is((await runs.get('r3'))?.stage, 'evaluating');
});

test("a move Redis does not take: the planner's run.json is put back as it was", async (t) => {
  const { ctx, runs } = context();
  await evaluatingRun(runs, 'r4');
  const planned = { runId: 'r4', request, stage: 'extracting', images: 4, shards: 1 };
  await putJson(client, BUCKET, 'runs/r4/run.json', planned);
  const failing = Object.create(runs) as WatchedStore;
  failing.finish = async () => {
    throw new Error('Connection is closed.');
  };
  await t.throwsAsync(publishRunRecord({ ...ctx, runs: failing }, BUCKET, 'r4', published, log));
  t.deepEqual(await getObjectJson(client, BUCKET, 'runs/r4/run.json'), planned);
});

test('a run Redis does not have: nothing is written', async (t) => {
  const { ctx } = context();
  await publishRunRecord(ctx, BUCKET, 'gone', published, log);
  await t.throwsAsync(getObjectJson(client, BUCKET, 'runs/gone/run.json'));
});
