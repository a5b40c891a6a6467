/**
 * Stage workers crashing on real parts: the trainer SIGKILLed while it trains, the evaluator
 * killed before its run reaches evaluation, and the evaluator SIGKILLed while it publishes
 * (held by the fault proxy between writing model.json and moving latest.json). New processes take
 * over; each run completes, the published model equals an undisturbed run's, and every run
 * publishes exactly one version.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, fetchModel, getStatus, isTerminal } from '../cli/client.js';
import { RAW_PIXELS } from '../shared/features.js';
import { NotFoundError } from '../shared/errors.js';
import { getObjectJson, listObjects } from '../shared/s3.js';
import {
  candidateKey,
  latestKey,
  modelKey,
  type LatestPointer,
  type ModelArtifact,
  CLASSIFIER_FILE,
  versionPrefix,
} from '../shared/model-format.js';
import type { RunStatus } from '../shared/run-state.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.js';

const PER_CLASS = 150;
const SEED = 11;
/** A long grid so that fitting on raw pixels lasts a few seconds: time to kill the trainer mid-fit. */
const LAMBDAS = Array.from({ length: 24 }, (_, i) => 10 ** (-5 + i * 0.25));
let dep: Deployment;
const workers: WorkerProcess[] = [];
/** The evaluator currently running. */
let evaluator: WorkerProcess;
/** In front of the test S3 server, for the evaluators that must be caught mid-publish. */
let proxy: FaultProxy;
const source = () => `s3://${dep.dataBucket}/pets/`;
const run = (name: string) =>
  enqueueRun(dep.client, { source: source(), name, features: RAW_PIXELS, seed: SEED, lambdas: LAMBDAS });

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '64' });
  proxy = await startFaultProxy(dep.s3.endpoint);
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  evaluator = spawnWorker(dep.env, 'evaluator');
  workers.push(spawnWorker(dep.env, 'planner'), spawnWorker(dep.env, 'extractor'), evaluator);
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await proxy?.close();
  await dep?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function poll(
  runId: string,
  done: (s: RunStatus) => boolean,
  timeoutMs: number,
  intervalMs = 50,
): Promise<RunStatus> {
  const deadline = Date.now() + timeoutMs;
  let last: RunStatus | undefined;
  while (Date.now() < deadline) {
    last = await getStatus(dep.client, runId);
    if (done(last)) return last;
    await sleep(intervalMs);
  }
  throw new Error(`run ${runId} timed out after ${timeoutMs} ms at stage ${last?.stage ?? '?'}`);
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>(
    (_, reject) => (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)),
  );
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
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

/** Keys under models/<name>/: exactly latest.json and one version (model.json, classifier.onnx), for `runId`. */
async function assertOneVersion(t: import('ava').ExecutionContext, name: string, runId: string): Promise<void> {
  const keys: string[] = [];
  for await (const o of listObjects(dep.client.s3, dep.config.bucket, `models/${name}/`)) keys.push(o.key);
  const classifier = `${versionPrefix(name, runId)}${CLASSIFIER_FILE}`;
  t.deepEqual(keys.sort(), [modelKey(name, runId), classifier, latestKey(name)].sort());
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

test.serial(
  'trainer SIGKILLed while training: a new trainer completes the run with the undisturbed model',
  async (t) => {
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
    t.log(
      `run published ${Date.now() - t0} ms after the new trainer started (the killed job's lock must expire first)`,
    );
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
  },
);

test.serial(
  'evaluator killed before evaluation: a new evaluator publishes once, latest points at a complete version',
  async (t) => {
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

    evaluator = spawnWorker(dep.env, 'evaluator');
    workers.push(evaluator);
    const s = await poll(runId, isTerminal, 30_000);
    t.is(s.stage, 'published', s.error?.message ?? '');
    t.is(s.model?.version, runId);
    await assertOneVersion(t, 'crash-eval', runId);
    await sameModel(t, 'crash-eval', 'calm');
  },
);

test.serial(
  'evaluator SIGKILLed mid-evaluation (while publishing): model.json written, latest.json not; a new evaluator publishes once',
  async (t) => {
    t.timeout(110_000);
    const name = 'crash-publish';
    const latestPath = `/${dep.config.bucket}/${latestKey(name)}`;
    // The evaluator reaches S3 through the proxy, which parks its PUT of latest.json: the job is
    // then inside the publish step, model.json written (the evaluator writes it first), latest not.
    const hold = proxy.holdRequests((method, path) => method === 'PUT' && path === latestPath);
    const viaProxy = { ...dep.env, S3_ENDPOINT: proxy.endpoint };
    await evaluator.stop('SIGTERM'); // idle: the previous runs are published
    const e1 = spawnWorker(viaProxy, 'evaluator');
    workers.push(e1);
    const runId = await run(name);
    await within(hold.hit, 90_000, `the evaluator's PUT ${latestPath}`);

    const atHold = await getStatus(dep.client, runId);
    t.is(atHold.stage, 'evaluating');
    t.is(hold.parked, 1);
    const written = await getObjectJson<ModelArtifact>(dep.client.s3, dep.config.bucket, modelKey(name, runId));
    t.is(written.version, runId, 'model.json for this version is in S3 before latest.json is put');
    t.true(written.weights.length > 0);
    t.false(await exists(latestKey(name)), 'latest.json does not exist yet');

    await e1.stop('SIGKILL');
    // The proxy sees the dead process's connection close: the parked PUT is dropped, never sent.
    const deadline = Date.now() + 10_000;
    while (hold.parked > 0) {
      if (Date.now() > deadline) throw new Error('the parked PUT outlived the killed evaluator');
      await sleep(20);
    }
    t.is(hold.dropped, 1);
    hold.release();
    const heldBefore = proxy.stats.held;
    t.false(await exists(latestKey(name)), 'the killed evaluator never moved latest.json');
    t.is((await getStatus(dep.client, runId)).stage, 'evaluating');

    const t0 = Date.now();
    evaluator = spawnWorker(viaProxy, 'evaluator');
    workers.push(evaluator);
    const s = await poll(runId, isTerminal, 60_000);
    t.log(
      `run published ${Date.now() - t0} ms after the new evaluator started (the killed job's lock must expire first)`,
    );
    t.is(s.stage, 'published', s.error?.message ?? '');
    t.is(s.model?.version, runId);
    t.is(proxy.stats.held, heldBefore, 'nothing held after release: the new evaluator ran undisturbed');
    await assertOneVersion(t, name, runId);
    await sameModel(t, name, 'calm');
  },
);
