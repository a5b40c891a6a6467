/**
 * Stage workers crashing on real parts: the trainer SIGKILLed while it trains, and the evaluator
 * killed before its run reaches evaluation. New processes take over; each run completes, the
 * published model equals an undisturbed run's, and every run publishes exactly one version.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, fetchModel, getStatus, isTerminal } from '../cli/client.js';
import { RAW_PIXELS } from '../shared/features.js';
import { NotFoundError } from '../shared/errors.js';
import { getObjectJson, listObjects } from '../shared/s3.js';
import { candidateKey, latestKey, modelKey, type LatestPointer, type ModelArtifact } from '../shared/model-format.js';
import type { RunStatus } from '../shared/run-state.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const PER_CLASS = 150;
const SEED = 11;
/** A long grid so that fitting on raw pixels lasts a few seconds: time to kill the trainer mid-fit. */
const LAMBDAS = Array.from({ length: 24 }, (_, i) => 10 ** (-5 + i * 0.25));
let dep: Deployment;
const workers: WorkerProcess[] = [];
let evaluator: WorkerProcess;
const source = () => `s3://${dep.dataBucket}/pets/`;
const run = (name: string) => enqueueRun(dep.client, { source: source(), name, features: RAW_PIXELS, seed: SEED, lambdas: LAMBDAS });

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '64' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  evaluator = spawnWorker(dep.env, 'evaluator');
  workers.push(spawnWorker(dep.env, 'planner'), spawnWorker(dep.env, 'extractor'), evaluator);
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await dep?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function poll(runId: string, done: (s: RunStatus) => boolean, timeoutMs: number, intervalMs = 50): Promise<RunStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: RunStatus | undefined;
  while (Date.now() < deadline) {
    last = await getStatus(dep.client, runId);
    if (done(last)) return last;
    await sleep(intervalMs);
  }
  throw new Error(`run ${runId} timed out after ${timeoutMs} ms at stage ${last?.stage ?? '?'}`);
}

async function exists(key: string): Promise<boolean> {
  try {
    await getObjectJson(dep.client.s3, dep.config.bucket, key);
    return true;
  } catch (err) {
    if (err instanceof NotFoundError) return false;
    throw err;
  }
}

/** Keys under models/<name>/: exactly latest.json and one <version>/model.json, for `runId`. */
async function assertOneVersion(t: import('ava').ExecutionContext, name: string, runId: string): Promise<void> {
  const keys: string[] = [];
  for await (const o of listObjects(dep.client.s3, dep.config.bucket, `models/${name}/`)) keys.push(o.key);
  t.deepEqual(keys.sort(), [modelKey(name, runId), latestKey(name)].sort());
  const latest = await getObjectJson<LatestPointer>(dep.client.s3, dep.config.bucket, latestKey(name));
  t.is(latest.version, runId);
  t.is(latest.key, modelKey(name, runId));
  const model = await getObjectJson<ModelArtifact>(dep.client.s3, dep.config.bucket, latest.key);
  t.is(model.version, runId);
}

async function sameModel(t: import('ava').ExecutionContext, a: string, b: string): Promise<void> {
  const [m1, m2] = await Promise.all([fetchModel(dep.client, a), fetchModel(dep.client, b)]);
  t.deepEqual(m1.artifact.weights, m2.artifact.weights);
  t.deepEqual(m1.artifact.bias, m2.artifact.bias);
  t.deepEqual(m1.artifact.metrics, m2.artifact.metrics);
  t.deepEqual(m1.artifact.training, m2.artifact.training);
}

test.serial('trainer SIGKILLed while training: a new trainer completes the run with the undisturbed model', async (t) => {
  t.timeout(110_000);
  const t1 = spawnWorker(dep.env, 'trainer');
  workers.push(t1);
  const crashed = await run('crash-train');
  await poll(crashed, (s) => s.stage === 'training' || isTerminal(s), 60_000, 20);
  await sleep(300); // inside the fit (features are read in well under this)
  const atKill = await getStatus(dep.client, crashed);
  await t1.stop('SIGKILL');
  t.is(atKill.stage, 'training');
  t.false(await exists(candidateKey(crashed)), 'the trainer was killed before it wrote its candidate');

  const t0 = Date.now();
  const t2 = spawnWorker(dep.env, 'trainer');
  workers.push(t2);
  const s = await poll(crashed, isTerminal, 60_000);
  t.log(`run published ${Date.now() - t0} ms after the new trainer started (the killed job's lock must expire first)`);
  t.is(s.stage, 'published', s.error?.message ?? '');
  t.is(s.done + s.failed, 2 * PER_CLASS);
  const candidate = await getObjectJson<{ fitMs: number }>(dep.client.s3, dep.config.bucket, candidateKey(crashed));
  t.log(`fit took ${candidate.fitMs} ms`);

  const calm = await run('calm');
  const c = await poll(calm, isTerminal, 60_000);
  t.is(c.stage, 'published', c.error?.message ?? '');
  await sameModel(t, 'crash-train', 'calm');
  await assertOneVersion(t, 'crash-train', crashed);
  await assertOneVersion(t, 'calm', calm);
});

test.serial('evaluator killed before evaluation: a new evaluator publishes once, latest points at a complete version', async (t) => {
  t.timeout(110_000);
  const runId = await run('crash-eval');
  await poll(runId, (s) => s.stage === 'extracting' || isTerminal(s), 30_000, 20);
  await evaluator.stop('SIGKILL');
  // Training completes, but with no evaluator the run waits in 'training'.
  const deadline = Date.now() + 60_000;
  while (!(await exists(candidateKey(runId)))) {
    if (Date.now() > deadline) throw new Error('the trainer never wrote its candidate');
    await sleep(100);
  }
  await sleep(1500);
  const waiting = await getStatus(dep.client, runId);
  t.is(waiting.stage, 'training');
  t.false(await exists(latestKey('crash-eval')));

  const e2 = spawnWorker(dep.env, 'evaluator');
  workers.push(e2);
  const s = await poll(runId, isTerminal, 30_000);
  t.is(s.stage, 'published', s.error?.message ?? '');
  t.is(s.model?.version, runId);
  await assertOneVersion(t, 'crash-eval', runId);
  await sameModel(t, 'crash-eval', 'calm');
});
