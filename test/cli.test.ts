/**
 * The CLI as users run it (a child process, stdout and stderr piped, so not a terminal) against
 * real Redis, S3 and the four workers (in this process): exit codes of `run --wait` and `status`
 * for bad datasets, missing buckets and bad models; progress as plain lines off a terminal; and
 * `deepfeat workers` naming workers by kind.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Worker } from 'bullmq';
import { createClient, enqueueRun, getQueueCounts, waitForRun } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { loadConfig } from '../shared/config.js';
import { RAW_PIXELS } from '../shared/features.js';
import type { RunStatus } from '../shared/run-state.js';
import { MODEL_FORMAT, modelKey } from '../shared/model-format.js';
import { putObject } from '../shared/s3.js';
import { closeContext, createContext, type ServiceContext } from '../shared/worker-kit.js';
import { startEvaluatorWorker } from '../services/evaluator/worker.js';
import { startExtractorWorker } from '../services/extractor/worker.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { startTrainerWorker } from '../services/trainer/worker.js';
import { ROOT, deployment, runCli, storedFinalStatus, type Deployment } from './helpers/pipeline.js';
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
  // The run queues behind the other tests' runs on this file's one extractor, with the --local
  // test's own Redis and workers on the same cores: 120 s was too little on a slow day (CI, 1 Dec).
  t.timeout(300_000);
  const r = await runCli(dep.env, ['run', pets(), '--name', 'cli-plain', '--features', 'raw-pixels', '--wait']);
  t.is(r.code, 0, r.stdout + r.stderr);
  t.notRegex(r.stderr, /\r/, 'no carriage returns in a log');
  t.notRegex(r.stderr, /\x1b/, 'no escape sequences in a log');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const progress = lines.filter((l) => PROGRESS_LINE.test(l));
  t.true(progress.length >= 2, r.stderr);
  t.regex(progress.at(-1)!, /^published 20\/20 images/);
  t.regex(r.stdout, /stage\s+published/);
  // What the evaluator published passes download's checks, by name and by NAME@VERSION.
  const dir = await mkdtemp(join(tmpdir(), 'deepfeat-dl-'));
  try {
    const latest = await runCli(dep.env, ['download', 'cli-plain', '-o', dir]);
    t.is(latest.code, 0, latest.stderr);
    const version = (JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as { version: string }).version;
    const byVersion = await runCli(dep.env, ['download', `cli-plain@${version}`, '-o', dir]);
    t.is(byVersion.code, 0, byVersion.stderr);
    t.regex(byVersion.stdout, new RegExp(`model\\.json: cli-plain@${version}, 2 classes`));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
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
  // A key S3 takes but the embedded server refuses (MinIO or AWS, via TEST_S3_ENDPOINT, store it).
  ...(process.env.TEST_S3_ENDPOINT
    ? []
    : [
        [
          'a --model URL the S3 server refuses',
          // A key the CLI accepts (no empty or dot segments) but the embedded server cannot store:
          // a last segment longer than its file names allow.
          ['run', 'PETS', '--model', `s3://DATA/${'m'.repeat(240)}.json`, '--node', 'x'],
          'BAD_REQUEST',
          /the S3 server refused the request for "s3:\/\/[^"]*" \(InvalidArgument: .*use MinIO or AWS S3/,
        ] as [string, string[], string, RegExp],
      ]),
];

for (const [what, args, code, message] of badRequests) {
  test(`\`run --wait\` with ${what} fails the run with ${code} and exits 2`, async (t) => {
    t.timeout(300_000); // queued behind the file's other runs (see the first test)
    const argv = args.map((a) => a.replace('PETS', pets()).replace('DATA', dep.dataBucket));
    const r = await runCli(dep.env, [...argv, '--name', uniqueName('cli'), '--wait', '--json']);
    t.is(r.code, 2, r.stdout + r.stderr);
    const s = JSON.parse(r.stdout) as { stage: string; error: { code: string; message: string } };
    t.is(s.stage, 'failed');
    t.is(s.error.code, code);
    t.regex(s.error.message, message);
    t.notRegex(s.error.message, /credentials/, 'only refused access says check credentials');
    // The same run, read back later, exits the same way.
    const again = await runCli(dep.env, ['status', (s as unknown as { runId: string }).runId]);
    t.is(again.code, 2);
  });
}

test('`status --watch` off a terminal prints progress lines, never screen-clearing escapes', async (t) => {
  t.timeout(300_000); // queued behind the file's other runs (see the first test)
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
    const exited = new Promise<number | null>((r) => child.once('close', r));
    // Until the watcher has printed its first line (or ended): starting the CLI under tsx took over
    // 30 s on a loaded CI host, and failing the run before it printed made this test flaky.
    let ended = false;
    void exited.then(() => (ended = true));
    const deadline = Date.now() + 150_000;
    while (!stdout.includes('queued') && !ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
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
  t.regex(table.stdout, /^kind\s+worker\s+queues\s+address\s+age$/m);
  t.regex(table.stdout, new RegExp(`^extractor\\s+extractor@${hostname()}:${process.pid}\\s+extract\\s`, 'm'));
});

test('a usage error (unknown option) exits 2', async (t) => {
  const r = await runCli(dep.env, ['run', pets(), '--no-such-option']);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /unknown option '--no-such-option'/);
});

test('a mistyped option or command holding control characters is echoed escaped, never raw', async (t) => {
  // Found by an attacker: Commander's own "unknown option '--x␛]0;T␇'" reached the terminal raw.
  const opt = await runCli(dep.env, ['run', pets(), '--x\x1b]0;T\x07']);
  t.is(opt.code, 2, opt.stderr);
  t.regex(opt.stderr, /unknown option '--x\\x1b\]0;T\\x07'/);
  const cmd = await runCli(dep.env, ['bogus\x1b[2J']);
  t.is(cmd.code, 2, cmd.stderr);
  for (const out of [opt.stderr, cmd.stderr]) {
    t.false(/[\x00-\x08\x0b-\x1f\x7f]/.test(out), JSON.stringify(out));
  }
});

// ---------- odd input refused by the CLI itself: flag, quoted value and fix; exit 2; nothing queued ----------

const oddRuns: Array<[string, string[], RegExp]> = [
  [
    '--seed above 2^32-1',
    ['--seed', '4294967296'],
    /^deepfeat: --seed "4294967296": expected a whole number from 0 to 4294967295/,
  ],
  ['--seed beyond float precision', ['--seed', '9007199254740993'], /^deepfeat: --seed "9007199254740993": expected/],
  [
    '--split in hex, binary and blanks',
    ['--split', ' 0x1,,0b1'],
    /^deepfeat: --split " 0x1,,0b1": expected three decimal fractions/,
  ],
  [
    '--node with raw pixels',
    ['--features', 'raw-pixels', '--node', 'x'],
    /^deepfeat: --node "x": raw pixels have no nodes/,
  ],
  [
    '--input-size with raw pixels',
    ['--features', 'raw-pixels', '--input-size', '64'],
    /^deepfeat: --input-size "64": this flag applies only to your own --model/,
  ],
  [
    '--input-size over the engine bound',
    ['--model', 's3://bkt/m.json', '--node', 'n', '--input-size', '4096'],
    /^deepfeat: --input-size "4096": expected a whole number from 8 to 2048/,
  ],
  [
    'a --name that is not one key segment',
    ['--name', '../../x'],
    /^deepfeat: --name "\.\.\/\.\.\/x": a model name is 1 to 100 letters, digits/,
  ],
  [
    '--shard-size over the bound',
    ['--shard-size', '1e9'],
    /^deepfeat: --shard-size "1e9": expected a whole number from 1 to 100000/,
  ],
];

test('odd `run` flags are refused with the flag, the value and the fix; exit 2; nothing is queued', async (t) => {
  t.timeout(300_000); // many CLI processes at once, beside the --local tests' workers
  const env = { ...dep.env, DEEPFEAT_QUEUE_PREFIX: uniqueName('odd') };
  const results = await Promise.all(oddRuns.map(([, args]) => runCli(env, ['run', pets(), ...args])));
  results.forEach((r, i) => {
    const [what, , message] = oddRuns[i]!;
    t.is(r.code, 2, `${what}: ${r.stderr}`);
    t.regex(r.stderr.trim(), message, what);
    t.is(r.stderr.trim().split('\n').length, 1, what);
    t.is(r.stdout, '', what);
  });
  const client = createClient(loadConfig(env));
  try {
    t.deepEqual(
      Object.values((await getQueueCounts(client)).plan).filter((n) => n > 0),
      [],
    );
  } finally {
    await client.close();
  }
});

test('`run --wait` with a bucket name S3 would refuse exits 2 naming the rule, before anything is queued', async (t) => {
  t.timeout(60_000);
  const env = { ...dep.env, DEEPFEAT_QUEUE_PREFIX: uniqueName('badbucket') };
  for (const bucket of ['BAD_Bucket', 'ab']) {
    const r = await runCli(env, ['run', `s3://${bucket}/x/`, '--wait']);
    t.is(r.code, 2, r.stderr);
    t.regex(
      r.stderr,
      new RegExp(`^deepfeat: invalid bucket name "${bucket}" in "s3://${bucket}/x/": bucket names are 3 to 63`),
    );
    t.notRegex(r.stderr, /credentials/);
  }
  const client = createClient(loadConfig(env));
  try {
    t.deepEqual(
      Object.values((await getQueueCounts(client)).plan).filter((n) => n > 0),
      [],
    );
  } finally {
    await client.close();
  }
});

test('`download NAME@VERSION` checks VERSION before it becomes part of a key', async (t) => {
  const r = await runCli(dep.env, ['download', 'evil@../../x', '-o', '/tmp/deepfeat-none']);
  t.is(r.code, 2, r.stderr);
  t.regex(
    r.stderr,
    /^deepfeat: invalid version "\.\.\/\.\.\/x" in "evil@\.\.\/\.\.\/x": a version is the id of the run/,
  );
});

const VERSION = 'r20261128093000-1a2b3c';
const artifactJson = (name: string) =>
  JSON.stringify({
    format: MODEL_FORMAT,
    name,
    version: VERSION,
    runId: VERSION,
    createdAt: '2026-11-28T09:30:00.000Z',
    source: 's3://data/pets/',
    features: { spec: RAW_PIXELS, engine: 'raw-pixels:32x32', dim: 1, input: { width: 32, height: 32 } },
    classes: ['cat', 'dog'],
    mean: [0],
    std: [1],
    weights: [[1], [-1]],
    bias: [0, 0],
    training: { lambda: 1, trainImages: 2, valImages: 0, validation: [] },
    metrics: { accuracy: 0.5 },
  });

test('`download` of a malformed model.json is MODEL_INVALID naming the field, exit 2', async (t) => {
  const name = uniqueName('broken');
  await putObject(
    dep.client.s3,
    dep.config.bucket,
    modelKey(name, VERSION),
    JSON.stringify({ format: MODEL_FORMAT, name }),
  );
  const r = await runCli(dep.env, ['download', `${name}@${VERSION}`, '-o', '/tmp/deepfeat-none']);
  t.is(r.code, 2, r.stderr);
  t.regex(
    r.stderr,
    /is not a valid deepfeat model \(.*\): publish it again with deepfeat run, or download another version/,
  );
  t.notRegex(r.stderr, /Cannot read properties/);
});

test('`download -o` a place that cannot be written names the folder and the fix, exit 2', async (t) => {
  const name = uniqueName('good');
  await putObject(dep.client.s3, dep.config.bucket, modelKey(name, VERSION), artifactJson(name));
  const r = await runCli(dep.env, ['download', `${name}@${VERSION}`, '-o', '/dev/full']);
  t.is(r.code, 2, r.stderr);
  t.regex(
    r.stderr,
    /^deepfeat: cannot write to "\/dev\/full": it, or a folder above it, is a file, not a folder; choose another folder/,
  );
  t.notRegex(r.stderr, /EEXIST/);
});

test("an error that quotes a newline (a failed run's key) stays on one line of stderr", async (t) => {
  const env = { ...dep.env, DEEPFEAT_QUEUE_PREFIX: uniqueName('newline') };
  const client = createClient(loadConfig(env));
  try {
    const runId = await enqueueRun(client, { source: pets(), name: 'cli-newline', features: RAW_PIXELS });
    await client.runs!.fail(runId, 'STORAGE_PERMANENT', 'extract failed: s3://d/cats/a\ndeepfeat: forged second error');
    const r = await runCli(env, ['download', runId, '-o', '/tmp/deepfeat-none']);
    t.is(r.code, 2, r.stderr);
    t.is(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    t.true(r.stderr.includes('cats/a\\x0adeepfeat: forged second error'), r.stderr);
  } finally {
    await client.close();
  }
});

test('`run --local` and `predict s3://… --local` with no REDIS_URL start Redis and the workers for the command, wait, and stop them', async (t) => {
  t.timeout(400_000);
  const { REDIS_URL: _none, ...env } = dep.env;
  // No REDIS_URL: without --local, the way out is named.
  const refused = await runCli(env, ['run', pets(), '--features', 'raw-pixels']);
  t.is(refused.code, 2, refused.stderr);
  t.regex(refused.stderr, /REDIS_URL is not set: .*; or add --local to run it on this machine/);

  const name = uniqueName('local');
  const run = await runCli(env, ['run', pets(), '--name', name, '--features', 'raw-pixels', '--local', '--json']);
  t.is(run.code, 0, run.stdout + run.stderr);
  const s = JSON.parse(run.stdout) as RunStatus;
  t.is(s.stage, 'published');
  t.is(s.done, 20);
  t.regex(run.stderr, /^redis +started redis-server at redis:\/\/127\.0\.0\.1:\d+ \(data in a temporary folder\)$/m);
  t.regex(run.stderr, /^workers +\d+ processes: planner, trainer, evaluator, \d+ extractor\(s\)$/m);

  const predicted = await runCli(env, ['predict', name, pets(), '--local']);
  t.is(predicted.code, 0, predicted.stdout + predicted.stderr);
  t.regex(predicted.stdout, /stage\s+done/);
  t.regex(predicted.stdout, /20 images: 20 classified, 0 failed/);
  t.regex(predicted.stderr, /waiting \(Ctrl-C fails the run and stops its workers\)/);

  // --local is for batch runs: with local files it is refused, before anything starts.
  const files = await runCli(env, ['predict', name, 'README.md', '--local']);
  t.is(files.code, 2);
  t.regex(files.stderr, /--local is for batch runs over s3:\/\/: drop it to classify local files/);
  t.notRegex(files.stderr, /redis-server/);
});

test('the workers of a `--local` command end with it, even when it is killed with SIGKILL', async (t) => {
  t.timeout(240_000);
  const { REDIS_URL: _none, ...env } = dep.env;
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), 'run', pets(), '--features', 'raw-pixels', '--local'],
    { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const closed = new Promise((r) => child.once('close', r));
  const deadline = Date.now() + 150_000;
  while (!/^workers +\d+ processes/m.test(stderr) && child.exitCode === null && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const kids = async (pid: number) => {
    const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
    const out: number[] = [];
    for (const task of tasks) {
      const text = await readFile(`/proc/${pid}/task/${task}/children`, 'utf8').catch(() => '');
      out.push(...text.split(/\s+/).filter(Boolean).map(Number));
    }
    return out;
  };
  const isWorker = async (pid: number) =>
    (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').includes('worker');
  const workerPids: number[] = [];
  for (const pid of await kids(child.pid!)) if (await isWorker(pid)) workerPids.push(pid);
  t.true(workerPids.length >= 4, `workers found: ${workerPids.length}; ${stderr}`);
  child.kill('SIGKILL');
  await closed;
  const alive = async () => (await Promise.all(workerPids.map(isWorker))).filter(Boolean).length;
  const end = Date.now() + 60_000;
  while ((await alive()) > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 200));
  t.is(await alive(), 0, 'every worker has exited');
});

test('`--local`: a bad source fails before any worker starts, with only JSON on stdout; REDIS_URL and --local together are refused', async (t) => {
  t.timeout(240_000);
  const { REDIS_URL: _none, ...env } = dep.env;
  const bad = await runCli(env, ['run', `s3://${dep.dataBucket}/nothing-here/`, '--local', '--json']);
  t.is(bad.code, 2, bad.stdout + bad.stderr);
  const s = JSON.parse(bad.stdout) as RunStatus; // stdout is the status alone: worker logs go to stderr
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'DATASET_INVALID');
  const refused = await runCli(env, ['run', 'S3://Bad_Bucket/x/', '--local']);
  t.is(refused.code, 2);
  t.notRegex(refused.stderr, /^workers /m, 'refused before any worker started');
  const shared = await runCli(dep.env, ['run', pets(), '--local']);
  t.is(shared.code, 2);
  t.regex(shared.stderr, /--local starts a Redis and workers of its own: unset REDIS_URL/);
});

test('Ctrl-C (SIGINT) on a `--local` run fails the run with that reason, in run.json too, and exits 130', async (t) => {
  t.timeout(300_000);
  const { REDIS_URL: _none, ...env } = dep.env;
  // The default backbone: slow enough here that the run is still going when the signal comes.
  const child = spawn(process.execPath, ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), 'run', pets(), '--local'], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.resume();
  const closed = new Promise<number | null>((r) => child.once('close', r));
  const deadline = Date.now() + 200_000;
  while (!/^run (r\S+) queued/m.test(stderr) && child.exitCode === null && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const runId = /^run (r\S+) queued/m.exec(stderr)?.[1];
  t.truthy(runId, stderr);
  child.kill('SIGINT');
  t.is(await closed, 130, stderr);
  t.regex(stderr, /failed: interrupted \(Ctrl-C\)/);
  const stored = await storedFinalStatus(dep, runId!);
  t.is(stored.stage, 'failed');
  t.regex(stored.error?.message ?? '', /the --local command was interrupted \(Ctrl-C\); start it again/);
});
