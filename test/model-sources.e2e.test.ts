/**
 * Hostile model references end to end, on real parts (redis-server, S3 server, worker processes):
 * a run request naming a host file (`--model /etc/passwd`, `/proc/self/environ`), a model.json
 * whose weight path climbs out of its folder, or a symlink out of the allowed folder fails at once
 * (one attempt, MODEL_INVALID) with a message that holds neither the file's content nor its size;
 * a real model inside a DEEPFEAT_MODEL_DIRS folder trains and publishes.
 */
import test from 'ava';
import { BadRequestError } from '../shared/errors.js';
import { randomUUID } from 'node:crypto';
import { statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import type { FeatureSpec } from '../shared/features.js';
import { makeQueue } from '../shared/queues.js';
import type { RunStatus } from '../shared/run-state.js';
import { deployment, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';
import { tinyLayersModel, withWeightPaths } from './helpers/tiny-models.js';

const PER_CLASS = 12;
/** In the extractor's environment only: /proc/self/environ must never show it. */
const SECRET_ENV = `deepfeat-secret-${randomUUID()}`;
/** A file outside the allowed folder, with a recognisable content and an unusual size. */
const SECRET_TEXT = `TOP-SECRET-${randomUUID()}`;
const SECRET_SIZE = 12_347;

let dep: Deployment;
let root: string;
let allowed: string;
let outside: string;
const workers: WorkerProcess[] = [];

test.before(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'deepfeat-model-sources-'));
  allowed = path.join(root, 'allowed');
  outside = path.join(root, 'outside');
  await Promise.all([mkdir(allowed), mkdir(outside)]);
  const secret = Buffer.alloc(SECRET_SIZE, `${SECRET_TEXT}\n`);
  await writeFile(path.join(outside, 'secret.bin'), secret);
  // Not JSON, but starting like it: a parser's message would quote what follows.
  await writeFile(path.join(outside, 'secret.json'), `{"modelTopology": ${SECRET_TEXT}`);

  const tiny = await tinyLayersModel();
  const put = async (dir: string, weightPath: string) => {
    await mkdir(path.join(allowed, dir), { recursive: true });
    await writeFile(path.join(allowed, dir, 'model.json'), withWeightPaths(tiny, [weightPath]));
  };
  await put('tiny', 'w.bin');
  await writeFile(path.join(allowed, 'tiny', 'w.bin'), tiny.weights);
  // Climbs to / and into /etc/shadow, or into the sibling folder with the secret.
  await put('escape-etc', `${'../'.repeat(12)}etc/shadow`);
  await put('escape-sibling', '../../outside/secret.bin');
  // Symlinks inside the allowed folder that point out of it.
  await mkdir(path.join(allowed, 'links'));
  await symlink(path.join(outside, 'secret.json'), path.join(allowed, 'links', 'model.json'));
  await put('link-weights', 'w.bin');
  await symlink(path.join(outside, 'secret.bin'), path.join(allowed, 'link-weights', 'w.bin'));

  dep = await deployment({ DEEPFEAT_MODEL_DIRS: allowed, DEEPFEAT_SHARD_SIZE: '32' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  workers.push(
    spawnWorker(dep.env, 'planner'),
    spawnWorker(dep.env, 'trainer'),
    spawnWorker(dep.env, 'evaluator'),
    spawnWorker({ ...dep.env, DEEPFEAT_E2E_SECRET: SECRET_ENV }, 'extractor'),
  );
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await dep?.close();
  if (root) await rm(root, { recursive: true, force: true });
});

const source = () => `s3://${dep.dataBucket}/pets/`;

/** How many times each of the run's extract jobs ran: a permanent error runs once. */
async function extractAttempts(runId: string): Promise<number[]> {
  const queue = makeQueue(dep.client.queues!, 'extract');
  try {
    const jobs = await queue.getJobs(['failed', 'completed', 'delayed', 'waiting', 'prioritized', 'active']);
    return jobs.filter((j) => j.data.runId === runId).map((j) => j.attemptsMade);
  } finally {
    await queue.close();
  }
}

/** What must never appear in a message about a hostile model: file content, sizes, environment. */
function assertRevealsNothing(t: import('ava').ExecutionContext, text: string): void {
  t.false(text.includes(SECRET_TEXT), 'content of a file outside the allowed folder');
  t.false(text.includes(SECRET_ENV), "the worker's environment");
  t.notRegex(text, /root:|:0:0:|daemon:|nologin/, 'content of /etc/passwd or /etc/shadow');
  t.notRegex(text, /\b\d+ bytes\b|\bhold \d+/, 'a byte count');
  t.false(new RegExp(`\\b${SECRET_SIZE}\\b`).test(text), 'the size of the secret file');
  try {
    const shadow = statSync('/etc/shadow').size;
    t.false(new RegExp(`\\b${shadow}\\b`).test(text), 'the size of /etc/shadow');
  } catch {
    // no /etc/shadow on this host
  }
  for (const name of ['REDIS_URL', 'S3_SECRET_ACCESS_KEY', 'PATH', 'HOME', 'DEEPFEAT_E2E_SECRET']) {
    t.false(text.includes(`${name}=`), `environment variable ${name}`);
  }
}

async function failedRun(t: import('ava').ExecutionContext, features: FeatureSpec): Promise<RunStatus> {
  const runId = await enqueueRun(dep.client, {
    source: source(),
    name: `hostile-${randomUUID().slice(0, 8)}`,
    features,
  });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'MODEL_INVALID', s.error?.message);
  t.is(s.model, null);
  const attempts = await extractAttempts(runId);
  t.true(
    attempts.length > 0 && attempts.every((a) => a <= 1),
    `extract attempts ${JSON.stringify(attempts)}: a permanent error is not retried`,
  );
  return s;
}

test.serial('deepfeat run --model /etc/passwd: refused at once, nothing of the file in the output', async (t) => {
  t.timeout(90_000);
  const r = await runCli(dep.env, ['run', source(), '--model', '/etc/passwd', '--node', 'x', '--wait']);
  const out = r.stdout + r.stderr;
  t.not(r.code, 0, out);
  t.regex(
    out,
    /model file "\/etc\/passwd" is not in a folder this worker allows \(DEEPFEAT_MODEL_DIRS\) or does not exist/,
    out,
  );
  t.log(out.split('\n').find((l) => l.startsWith('error')));
  assertRevealsNothing(t, out);
  const json = await runCli(dep.env, ['run', source(), '--model', '/etc/passwd', '--node', 'x', '--wait', '--json']);
  const s = JSON.parse(json.stdout) as RunStatus;
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'MODEL_INVALID');
  assertRevealsNothing(t, json.stdout + json.stderr);
});

test.serial('/proc/self/environ: refused at once, the environment is not shown', async (t) => {
  t.timeout(60_000);
  const s = await failedRun(t, { kind: 'tfjs', model: '/proc/self/environ', node: 'x' });
  t.regex(s.error!.message, /DEEPFEAT_MODEL_DIRS/);
  assertRevealsNothing(t, JSON.stringify(s));
});

test.serial('a weight path climbing out of the model folder is refused without reading it', async (t) => {
  t.timeout(60_000);
  for (const dir of ['escape-etc', 'escape-sibling']) {
    const s = await failedRun(t, { kind: 'tfjs', model: path.join(allowed, dir, 'model.json'), node: 'gap' });
    t.regex(s.error!.message, /weight path .* must name a file in the folder of model\.json/, s.error!.message);
    assertRevealsNothing(t, JSON.stringify(s));
  }
});

test.serial('symlinks inside the allowed folder that point out of it are refused like any outside path', async (t) => {
  t.timeout(60_000);
  const json = await failedRun(t, { kind: 'tfjs', model: path.join(allowed, 'links', 'model.json'), node: 'gap' });
  const weights = await failedRun(t, {
    kind: 'tfjs',
    model: path.join(allowed, 'link-weights', 'model.json'),
    node: 'gap',
  });
  const missing = await failedRun(t, { kind: 'tfjs', model: path.join(outside, 'no-such-model.json'), node: 'gap' });
  for (const s of [json, weights, missing]) {
    t.regex(
      s.error!.message,
      /not in a folder this worker allows \(DEEPFEAT_MODEL_DIRS\) or does not exist/,
      s.error!.message,
    );
    assertRevealsNothing(t, JSON.stringify(s));
  }
  // Outside the allowed folders, a file that exists and one that does not get the same words.
  const strip = (m: string) => m.replace(/"[^"]*"/g, '"…"');
  t.is(strip(json.error!.message), strip(missing.error!.message));
});

test.serial(
  'an unknown --node and a missing model file inside the allowed folder fail at once as MODEL_INVALID',
  async (t) => {
    t.timeout(60_000);
    const node = await failedRun(t, {
      kind: 'tfjs',
      model: path.join(allowed, 'tiny', 'model.json'),
      node: 'no_such_layer',
    });
    t.regex(node.error!.message, /layer "no_such_layer" not found/);
    const missing = await failedRun(t, { kind: 'tfjs', model: path.join(allowed, 'tiny', 'nope.json'), node: 'gap' });
    t.regex(missing.error!.message, /does not exist/);
  },
);

test.serial('a malformed s3:// model URL fails at once as MODEL_INVALID, naming the form expected', async (t) => {
  t.timeout(60_000);
  const s = await failedRun(t, { kind: 'tfjs', model: 's3://Not_A_Bucket/model.json', node: 'gap' });
  t.regex(s.error!.message, /does not name an S3 object: expected s3:\/\/bucket\/path\/model\.json/);
  // A URL with no key is refused before anything is queued (enqueueRun, as for the HTTP API).
  await t.throwsAsync(
    () =>
      enqueueRun(dep.client, {
        source: source(),
        features: { kind: 'tfjs', model: `s3://${'b'.repeat(3)}/`, node: 'gap' },
      }),
    { instanceOf: BadRequestError, message: /give s3:\/\/bucket\/key of the model file/ },
  );
});

test.serial('a real model inside an allowed DEEPFEAT_MODEL_DIRS folder trains and publishes', async (t) => {
  t.timeout(120_000);
  const model = path.join(allowed, 'tiny', 'model.json');
  const runId = await enqueueRun(dep.client, {
    source: source(),
    name: 'tiny',
    features: { kind: 'tfjs', model, node: 'conv' },
  });
  const s = await waitForRun(dep.client, runId, undefined, 200);
  if (s.stage !== 'published') t.log(workers.map((w) => w.output()).join('\n'));
  t.is(s.stage, 'published', s.error?.message);
  t.is(s.done, 2 * PER_CLASS);
  t.is(s.engine, `${model}@conv`);
  t.is(s.engineInput, '16x16');
});
