/**
 * The CLI as users run it (a child process, stdout and stderr piped, so not a terminal) against
 * real Redis, S3 and the four workers (in this process): exit codes of `run --wait` and `status`
 * for bad datasets, missing buckets and bad models; progress as plain lines off a terminal; and
 * `deepfeat workers` naming workers by kind.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import type { Worker } from 'bullmq';
import { createClient, enqueueRun, waitForRun } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { loadConfig } from '../shared/config.js';
import { RAW_PIXELS } from '../shared/features.js';
import { closeContext, createContext, type ServiceContext } from '../shared/worker-kit.js';
import { startEvaluatorWorker } from '../services/evaluator/worker.js';
import { startExtractorWorker } from '../services/extractor/worker.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { startTrainerWorker } from '../services/trainer/worker.js';
import { ROOT, deployment, runCli, type Deployment } from './helpers/pipeline.js';
import { uniqueName } from './helpers/services.js';

let dep: Deployment;
let ctx: ServiceContext;
let workers: Worker[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_JOB_ATTEMPTS: '1', LOG_LEVEL: 'silent', DEEPFEAT_SHARD_SIZE: '8' });
  ctx = createContext(dep.config, 'cli-test');
  workers = [startPlannerWorker(ctx), startExtractorWorker(ctx), startTrainerWorker(ctx), startEvaluatorWorker(ctx)];
  const images = await loadDemoImages({ perClass: 10 });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  await Promise.all(['a', 'b', 'c'].map((x) => dep.put(`one-class/cat/${x}.png`, images[0]!.png)));
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.close()));
  if (ctx) await closeContext(ctx);
  await dep?.close();
});

const pets = () => `s3://${dep.dataBucket}/pets/`;
const PROGRESS_LINE = /^(queued|planning|extracting|training|evaluating|published|failed) \d+\/\d+ images(, .*)?$/;

test('`run --wait` off a terminal writes progress as plain lines, then the status; exit 0', async (t) => {
  t.timeout(120_000);
  const r = await runCli(dep.env, ['run', pets(), '--name', 'cli-plain', '--features', 'raw-pixels', '--wait']);
  t.is(r.code, 0, r.stdout + r.stderr);
  t.notRegex(r.stderr, /\r/, 'no carriage returns in a log');
  t.notRegex(r.stderr, /\x1b/, 'no escape sequences in a log');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const progress = lines.filter((l) => PROGRESS_LINE.test(l));
  t.true(progress.length >= 2, r.stderr);
  t.regex(progress.at(-1)!, /^published 20\/20 images/);
  t.regex(r.stdout, /stage\s+published/);
});

test('`status` of a run that failed on a bad dataset exits 2, like `run --wait`', async (t) => {
  const runId = await enqueueRun(dep.client, {
    source: `s3://${dep.dataBucket}/one-class/`,
    name: 'cli-one-class',
    features: RAW_PIXELS,
  });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.error?.code, 'DATASET_INVALID');
  const r = await runCli(dep.env, ['status', runId]);
  t.is(r.code, 2, r.stdout + r.stderr);
  t.regex(r.stdout, /only one class/);
});

const badRequests: Array<[string, string[], string, RegExp]> = [
  ['a missing bucket', ['run', 's3://no-such-bucket-deepfeat-cli/x/'], 'BUCKET_NOT_FOUND', /no such bucket/],
  [
    'a --model file that does not exist',
    ['run', 'PETS', '--model', 's3://DATA/no/model.json', '--node', 'x'],
    'MODEL_INVALID',
    /model\.json/,
  ],
  [
    'an unknown --node of the shipped backbone',
    ['run', 'PETS', '--node', 'no/such/node'],
    'MODEL_INVALID',
    /node "no\/such\/node" not found/,
  ],
];

for (const [what, args, code, message] of badRequests) {
  test(`\`run --wait\` with ${what} fails the run with ${code} and exits 2`, async (t) => {
    t.timeout(120_000);
    const argv = args.map((a) => a.replace('PETS', pets()).replace('DATA', dep.dataBucket));
    const r = await runCli(dep.env, [...argv, '--name', uniqueName('cli'), '--wait', '--json']);
    t.is(r.code, 2, r.stdout + r.stderr);
    const s = JSON.parse(r.stdout) as { stage: string; error: { code: string; message: string } };
    t.is(s.stage, 'failed');
    t.is(s.error.code, code);
    t.regex(s.error.message, message);
    // The same run, read back later, exits the same way.
    const again = await runCli(dep.env, ['status', (s as unknown as { runId: string }).runId]);
    t.is(again.code, 2);
  });
}

test('`status --watch` off a terminal prints progress lines, never screen-clearing escapes', async (t) => {
  t.timeout(60_000);
  // A deployment prefix with no workers: the run stays queued until the test fails it.
  const env = { ...dep.env, DEEPFEAT_QUEUE_PREFIX: uniqueName('watch') };
  const client = createClient(loadConfig(env));
  try {
    const runId = await enqueueRun(client, { source: pets(), name: 'cli-watch', features: RAW_PIXELS });
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), 'status', runId, '--watch'],
      {
        cwd: ROOT,
        env: { ...process.env, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.once('exit', r));
    for (let i = 0; i < 600 && !stdout.includes('queued'); i++) await new Promise((r) => setTimeout(r, 50));
    await client.runs!.fail(runId, 'DATASET_INVALID', 'ended by the test');
    const code = await exited;
    t.is(code, 2, stdout + stderr);
    t.notRegex(stdout, /\x1b/);
    t.regex(stdout, /^queued 0\/0 images$/m);
    t.regex(stdout, /error\s+ended by the test/);
  } finally {
    await client.close();
  }
});

test('`deepfeat workers` names workers kind@host:pid and shows their kind', async (t) => {
  const r = await runCli(dep.env, ['workers', '--json']);
  t.is(r.code, 0, r.stderr);
  const { workers: live } = JSON.parse(r.stdout) as { workers: Array<{ kind: string; queue: string; name: string }> };
  const mine = live.filter((w) => w.name.endsWith(`@${hostname()}:${process.pid}`));
  t.deepEqual(mine.map((w) => [w.kind, w.queue, w.name]).sort(), [
    ['evaluator', 'evaluate', `evaluator@${hostname()}:${process.pid}`],
    ['extractor', 'extract', `extractor@${hostname()}:${process.pid}`],
    ['planner', 'plan', `planner@${hostname()}:${process.pid}`],
    ['trainer', 'train', `trainer@${hostname()}:${process.pid}`],
  ]);
  const table = await runCli(dep.env, ['workers']);
  t.regex(table.stdout, /^kind\s+worker\s+queue\s+address\s+age$/m);
  t.regex(table.stdout, new RegExp(`^extractor\\s+extractor@${hostname()}:${process.pid}\\s+extract\\s`, 'm'));
});

test('a usage error (unknown option) exits 2', async (t) => {
  const r = await runCli(dep.env, ['run', pets(), '--no-such-option']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /unknown option '--no-such-option'/);
});
