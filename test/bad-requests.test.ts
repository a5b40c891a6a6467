/**
 * Bad requests against real Redis and S3 with a real planner worker: each fails the run with one
 * clear message naming the problem and the fix, and nothing is published.
 */
import { createServer, type AddressInfo } from 'node:net';
import test from 'ava';
import type { Worker } from 'bullmq';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { BadRequestError } from '../shared/errors.js';
import { RAW_PIXELS } from '../shared/features.js';
import { makeQueue, type RunRequest } from '../shared/queues.js';
import { newRunId } from '../shared/run-state.js';
import { jobOptions } from '../shared/worker-kit.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { createContext, closeContext, type ServiceContext } from '../shared/worker-kit.js';
import { MAX_MESSAGE_CHARS } from '../shared/text.js';
import { deployment, runCli, type Deployment } from './helpers/pipeline.js';

let dep: Deployment;
let ctx: ServiceContext;
let planner: Worker;

test.before(async () => {
  dep = await deployment({ DEEPFEAT_JOB_ATTEMPTS: '1', LOG_LEVEL: 'silent' });
  ctx = createContext(dep.config, 'planner-test');
  planner = startPlannerWorker(ctx);
  const put = (k: string) => dep.put(k, 'x');
  await Promise.all([
    put('one-class/cat/a.png'),
    put('one-class/cat/b.png'),
    put('split/train/cat/a.png'),
    put('split/train/dog/a.png'),
    put('split/test/cat/b.png'),
    dep.put('bad.csv', 'key,split\nx.png,train\n'),
    dep.put('badsplit.csv', 'key,label,split\nx.png,cat,holdout\n'),
    dep.put('dup.jsonl', '{"key":"a.png","label":"cat"}\n{"key":"a.png","label":"dog"}\n'),
    dep.put('outside.csv', 'key,label\ns3://other-bucket/a.png,cat\nb.png,dog\n'),
    dep.put('header-only.csv', 'key,label,split\r\n'),
    dep.put('comma.csv', 'key,label\na.png,cat\nb.png,big, dog\nc.png,dog\n'),
    dep.put('one-label.jsonl', '{"key":"a.png","label":"cat"}\n{"key":"b.png","label":"cat"}\n'),
    dep.put('junk-header.csv', `${'\u001b[2J'.repeat(1 << 18)},label\na.png,cat\n`),
  ]);
});

test.after.always(async () => {
  await planner?.close();
  if (ctx) await closeContext(ctx);
  await dep?.close();
});

const cases: Array<[string, (bucket: string) => string, RegExp]> = [
  [
    'missing bucket',
    () => 's3://no-such-bucket-deepfeat/x/',
    /no such bucket.*no-such-bucket-deepfeat.*create it or fix the bucket name/,
  ],
  [
    'empty prefix',
    (b) => `s3://${b}/nothing-here/`,
    /no images under s3:\/\/.*nothing-here\/: expected <label>\/<file> folders/,
  ],
  ['one class', (b) => `s3://${b}/one-class/`, /only one class \(cat\).*at least two labels/],
  ['class missing from test', (b) => `s3://${b}/split/`, /class "dog" has no test images/],
  ['manifest without label column', (b) => `s3://${b}/bad.csv`, /no "label" column/],
  ['manifest with unknown split', (b) => `s3://${b}/badsplit.csv`, /unknown split "holdout"; use train, val or test/],
  ['manifest with duplicate key', (b) => `s3://${b}/dup.jsonl`, /duplicate key "a.png"/],
  ['manifest key outside the bucket', (b) => `s3://${b}/outside.csv`, /outside the bucket/],
  [
    'manifest with only a header',
    (b) => `s3://${b}/header-only.csv`,
    /manifest s3:\/\/.*\/header-only\.csv has a header but no rows/,
  ],
  ['manifest row with an unquoted comma', (b) => `s3://${b}/comma.csv`, /comma\.csv line 3: 3 values, expected 2/],
  [
    'manifest with one label',
    (b) => `s3://${b}/one-label.jsonl`,
    /only one class \(cat\).*give the images at least two different labels/,
  ],
];

for (const [title, source, message] of cases) {
  test(`${title}: the run fails with a clear message and publishes nothing`, async (t) => {
    const runId = await enqueueRun(dep.client, {
      source: source(dep.dataBucket),
      name: `m-${title.replace(/\W+/g, '-')}`,
    });
    const s = await waitForRun(dep.client, runId, undefined, 100);
    t.is(s.stage, 'failed');
    t.regex(s.error?.message ?? '', message);
    t.is(s.model, null);
    const models = await dep.client.s3.send(new ListObjectsV2Command({ Bucket: dep.config.bucket, Prefix: 'models/' }));
    t.is(models.KeyCount ?? 0, 0);
  });
}

test('CLI: `run --wait` on a bad dataset exits 2 with the message', async (t) => {
  const r = await runCli(dep.env, ['run', `s3://${dep.dataBucket}/one-class/`, '--wait']);
  t.is(r.code, 2, r.stdout + r.stderr);
  t.regex(r.stdout, /only one class/);
});

test('a 1 MB junk manifest header gives a short error in Redis, `run --wait` and `status`, with no escape byte on the terminal', async (t) => {
  const r = await runCli(dep.env, ['run', `s3://${dep.dataBucket}/junk-header.csv`, '--wait']);
  t.is(r.code, 2, r.stderr.slice(0, 500));
  t.regex(r.stdout, /junk-header\.csv line 1 is longer than 64 KiB/);
  t.true(r.stdout.length + r.stderr.length < 4 * MAX_MESSAGE_CHARS, `${r.stdout.length + r.stderr.length} characters`);
  t.false(r.stdout.includes('\u001b'));
  const runId = /run\s+(r\d{14}-[0-9a-f]{6})/.exec(r.stdout)![1]!;
  const s = await dep.client.runs!.get(runId);
  t.true(s!.error!.message.length <= MAX_MESSAGE_CHARS, `${s!.error!.message.length} characters`);
  const status = await runCli(dep.env, ['status', runId]);
  t.true(status.stdout.length < 4 * MAX_MESSAGE_CHARS);
  t.false(status.stdout.includes('\u001b'));
});

test('CLI: a malformed source URL fails before anything is queued', async (t) => {
  const r = await runCli(dep.env, ['run', 'bucket/prefix']);
  t.is(r.code, 2);
  t.regex(r.stderr, /not an S3 URL: "bucket\/prefix": expected s3:\/\/bucket\/prefix\//);
});

test('CLI: every configuration problem is reported at once, exit 2', async (t) => {
  const r = await runCli({ ...dep.env, REDIS_URL: 'http://x', DEEPFEAT_SHARD_SIZE: 'many', S3_ENDPOINT: 'not a url' }, [
    'run',
    's3://bucket/p/',
  ]);
  t.is(r.code, 2);
  t.regex(r.stderr, /REDIS_URL/);
  t.regex(r.stderr, /DEEPFEAT_SHARD_SIZE/);
  t.regex(r.stderr, /S3_ENDPOINT/);
});

test('CLI: an unreachable Redis is named with its reason and the fix, without its password or a stack', async (t) => {
  // A port nothing listens on: bound, then closed.
  const port = await new Promise<number>((done) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as AddressInfo).port;
      srv.close(() => done(p));
    });
  });
  for (const args of [['run', 's3://bucket/p/', '--name', 'x'], ['workers']]) {
    const r = await runCli({ ...dep.env, REDIS_URL: `redis://user:s3cret@127.0.0.1:${port}` }, args);
    t.is(r.code, 1, args.join(' '));
    t.regex(
      r.stderr,
      new RegExp(
        `cannot reach Redis at "redis://127\\.0\\.0\\.1:${port}" \\("ECONNREFUSED"\\): start redis-server there, or set REDIS_URL to one that runs; or, with no deployment, \`run\` and \`predict\` take --local`,
      ),
    );
    t.false(r.stderr.includes('s3cret'));
    t.false(r.stderr.includes('Unhandled error event'));
    t.false(r.stderr.includes('max retries'));
  }
});

test('CLI: download of an unknown model name is a clear error', async (t) => {
  const r = await runCli(dep.env, ['download', 'no-such-model', '-o', '/tmp/deepfeat-none']);
  t.is(r.code, 2);
  t.regex(r.stderr, /no model named no-such-model/);
});

test('good layouts are planned: a CSV manifest and split folders reach extraction with every image', async (t) => {
  const manifest = [
    'key,label,split',
    ...['a', 'b', 'c'].flatMap((x) => [`imgs/${x}-1.png,"cat, tabby",`, `s3://${dep.dataBucket}/imgs/${x}-2.png,dog,`]),
  ].join('\n');
  await dep.put('good.csv', `${manifest}\n`);
  // A byte order mark, CRLF, numeric labels; and a CSV value spanning two lines.
  await dep.put(
    'good.jsonl',
    '\uFEFF{"key":"n/1.png","label":1}\r\n{"key":"n/2.png","label":1}\r\n{"key":"n/3.png","label":2}\r\n{"key":"n/4.png","label":2}\r\n',
  );
  await dep.put('multiline.csv', 'key,label\n"m/1.png","two\nlines"\nm/2.png,"two\nlines"\nm/3.png,one\nm/4.png,one\n');
  await Promise.all(
    ['train/cat/1.png', 'train/dog/1.png', 'test/cat/2.png', 'test/dog/2.png', 'train/cat/3.png'].map((k) =>
      dep.put(`good-split/${k}`, 'x'),
    ),
  );
  const sources = [
    [`s3://${dep.dataBucket}/good.csv`, 6],
    [`s3://${dep.dataBucket}/good-split/`, 5],
    [`s3://${dep.dataBucket}/good.jsonl`, 4],
    [`s3://${dep.dataBucket}/multiline.csv`, 4],
  ] as const;
  for (const [source, total] of sources) {
    const runId = await enqueueRun(dep.client, { source });
    let s = await dep.client.runs!.get(runId);
    for (let i = 0; i < 100 && (s?.stage === 'queued' || s?.stage === 'planning'); i++) {
      await new Promise((r) => setTimeout(r, 100));
      s = await dep.client.runs!.get(runId);
    }
    // No extractor runs in this test, so a planned run waits in 'extracting'.
    t.is(s?.stage, 'extracting', s?.error?.message);
    t.is(s?.total, total);
    t.true((s?.classes.length ?? 0) === 2);
  }
});

test('the planner refuses a source bucket name S3 would refuse, from any producer: BAD_REQUEST, exit 2', async (t) => {
  // Another producer (not enqueueRun, which refuses it first) adds the plan job directly.
  const request: RunRequest = {
    source: 's3://BAD_Bucket/x/',
    name: 'bad-bucket',
    features: RAW_PIXELS,
    seed: 1,
    split: { train: 0.7, val: 0.1, test: 0.2 },
    shardSize: 8,
  };
  const runId = newRunId();
  await dep.client.runs!.create(runId, request);
  const plan = makeQueue(dep.client.queues!, 'plan');
  try {
    await plan.add('plan', { runId, request }, jobOptions(dep.config, `${runId}-plan`));
  } finally {
    await plan.close();
  }
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'BAD_REQUEST');
  t.regex(
    s.error?.message ?? '',
    /^plan failed: invalid bucket name "BAD_Bucket" in "s3:\/\/BAD_Bucket\/x\/": bucket names are/,
  );
  t.notRegex(s.error?.message ?? '', /credentials/);
  const status = await runCli(dep.env, ['status', runId]);
  t.is(status.code, 2, status.stdout + status.stderr);
});

test('a manifest URL the S3 server refuses fails the run with its reason, not "check credentials"; exit 2', async (t) => {
  // MinIO or AWS S3 (TEST_S3_ENDPOINT) take the key, and would answer "does not exist".
  if (process.env.TEST_S3_ENDPOINT) return t.pass();
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/lists//pets.csv`, name: 'm-refused' });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'BAD_REQUEST');
  t.regex(
    s.error?.message ?? '',
    /^plan failed: the S3 server refused the request for "s3:\/\/.*\/lists\/\/pets\.csv" \(InvalidArgument: .*empty path segment.*use MinIO or AWS S3/,
  );
  t.notRegex(s.error?.message ?? '', /credentials/);
  const status = await runCli(dep.env, ['status', runId]);
  t.is(status.code, 2, status.stdout + status.stderr);
});

test('enqueueRun (any library caller) names each bad field with its value quoted and the allowed form', async (t) => {
  const err = await t.throwsAsync(
    () => enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/x/`, name: '../../x', seed: 2 ** 32 }),
    { instanceOf: BadRequestError },
  );
  t.regex(err!.message, /^invalid run request: name "\.\.\/\.\.\/x": a model name is 1 to 100 letters, digits/);
  t.regex(err!.message, /; seed 4294967296: Number must be less than or equal to 4294967295/);
  await t.throwsAsync(() => enqueueRun(dep.client, { source: 's3://BAD_Bucket/x/' }), {
    instanceOf: BadRequestError,
    message: /^invalid bucket name "BAD_Bucket"/,
  });
});
