/**
 * A run's failures at scale: `status` lists the first page and counts them all; every failure is
 * read shard by shard — from Redis while it holds the run, else from the shards' metadata in the
 * bucket — through the client library and `deepfeat status RUN --all-failures`.
 */
import test from 'ava';
import { formatStatus } from '../cli/format.js';
import { getFailures, getStatus } from '../cli/client.js';
import { shardKey } from '../shared/dataset.js';
import type { RunRequest } from '../shared/queues.js';
import { MAX_FAILURES_LISTED, statusFromHash, type ImageFailure } from '../shared/run-state.js';
import { putJson, putObject } from '../shared/s3.js';
import { deployment, runCli, type Deployment } from './helpers/pipeline.js';

const request: RunRequest = {
  source: 's3://data/pets/',
  name: 'pets',
  features: { kind: 'raw-pixels', size: 32 },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 4,
};

let dep: Deployment;
test.before(async () => {
  dep = await deployment({ LOG_LEVEL: 'silent' });
});
test.after.always(async () => {
  await dep?.close();
});

const failuresOf = (shard: number, n: number): ImageFailure[] =>
  Array.from({ length: n }, (_, i) => ({ key: `pets/${shard}/${i}\u001b[2J.png`, reason: `not an image (${i})` }));

async function collect(runId: string): Promise<ImageFailure[]> {
  const out: ImageFailure[] = [];
  for await (const f of getFailures(dep.client, runId)) out.push(f);
  return out;
}

test('formatStatus: the first failures, the total, and how to list every one', (t) => {
  const base = statusFromHash('r20260101000000-f00001', { request: JSON.stringify(request), stage: 'extracting' }, 0);
  const page = failuresOf(0, MAX_FAILURES_LISTED);
  const out = formatStatus({ ...base, failures: page, failuresTotal: 300_000 }, 10);
  t.true(out.includes('failures  (300000)'), out);
  t.true(out.includes('... 299990 more (deepfeat status r20260101000000-f00001 --all-failures lists every one)'));
  t.true(out.includes('pets/0/0\\x1b[2J.png: not an image (0)'));
  // A run.json from before failuresTotal existed listed every failure and had no count.
  const old = formatStatus({ ...base, failures: failuresOf(0, 3), failuresTotal: undefined as unknown as number });
  t.true(old.includes('failures  (3)'), old);
  t.false(old.includes('more'));
});

test('getFailures reads every failure from Redis while it holds the run; status lists the first page', async (t) => {
  const runs = dep.client.runs!;
  const runId = 'r20260101000000-f00002';
  await runs.create(runId, request);
  await runs.setPlan(runId, { total: 12 * 80, shards: 12, classes: ['cat', 'dog'], counts: {} });
  for (let s = 0; s < 12; s++) {
    await runs.setShardProgress(runId, s, { done: 50, failed: s % 3 === 0 ? 0 : 30, complete: true }, [
      ...(s % 3 === 0 ? [] : failuresOf(s, 30)),
    ]);
  }
  const status = await getStatus(dep.client, runId);
  t.is(status.failuresTotal, 8 * 30);
  t.deepEqual(status.failures, [
    ...failuresOf(1, 30),
    ...failuresOf(2, 30),
    ...failuresOf(4, 30),
    ...failuresOf(5, 10),
  ]);
  const all = await collect(runId);
  t.deepEqual(
    all,
    [1, 2, 4, 5, 7, 8, 10, 11].flatMap((s) => failuresOf(s, 30)),
  );

  // The CLI: every failure, escaped on a terminal, exact as JSON lines.
  const human = await runCli(dep.env, ['status', runId, '--all-failures']);
  t.is(human.code, 0, human.stderr);
  const lines = human.stdout.trimEnd().split('\n');
  t.is(lines.length, 240);
  t.is(lines[0], 'pets/1/0\\x1b[2J.png: not an image (0)');
  const json = await runCli(dep.env, ['status', runId, '--all-failures', '--json']);
  t.is(json.code, 0, json.stderr);
  t.deepEqual(
    json.stdout
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l) as ImageFailure),
    all,
  );
});

test('getFailures reads the shards metadata in the bucket once Redis no longer has the run', async (t) => {
  const runId = 'r20260101000000-f00003';
  const bucket = dep.config.bucket;
  // Shard 1 never completed (the run failed): it has no metadata and no recorded failures.
  const rows = (shard: number) =>
    [
      { key: `pets/${shard}/ok.png`, label: 'cat', split: 'train', row: 0 },
      ...failuresOf(shard, 2).map((f) => ({ key: f.key, label: 'dog', split: 'test', error: f.reason })),
    ]
      .map((r) => JSON.stringify(r))
      .join('\n');
  await putObject(dep.client.s3, bucket, shardKey(runId, 0, 'jsonl'), `${rows(0)}\n`);
  await putObject(dep.client.s3, bucket, shardKey(runId, 2, 'jsonl'), `${rows(2)}\n`);
  const stored = {
    ...statusFromHash(runId, { request: JSON.stringify(request), stage: 'failed', shards: '3' }, 0),
    failures: failuresOf(0, 1),
    failuresTotal: 4,
  };
  await putJson(dep.client.s3, bucket, `runs/${runId}/run.json`, stored);
  t.deepEqual(await collect(runId), [...failuresOf(0, 2), ...failuresOf(2, 2)]);
  t.is((await getStatus(dep.client, runId)).failuresTotal, 4);
});

test('getFailures of an unknown run names the fix', async (t) => {
  await t.throwsAsync(() => collect('r20260101000000-f0000f'), { message: /unknown run id r20260101000000-f0000f/ });
  await t.throwsAsync(() => collect('../etc'), { message: /run ids look like/ });
});
