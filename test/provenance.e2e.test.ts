/**
 * The published model is built from data that travelled with the run (issue 10): the evaluate
 * job's payload (source, feature spec) and the trainer's candidate.json (engine, backends, input
 * size, from the extract jobs' results) — never from the run's status in Redis. Real planner,
 * extractor, trainer and evaluator (in this process), real Redis and S3, real images.
 */
import test from 'ava';
import type { Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { enqueueRun, getStatus } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { startEvaluatorWorker } from '../services/evaluator/worker.js';
import { startExtractorWorker } from '../services/extractor/worker.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { startTrainerWorker } from '../services/trainer/worker.js';
import { RAW_PIXELS } from '../shared/features.js';
import { candidateKey, modelKey, type Candidate, type ModelArtifact } from '../shared/model-format.js';
import type { RunRequest } from '../shared/queues.js';
import { getObjectJson } from '../shared/s3.js';
import { closeContext, createContext, type ServiceContext } from '../shared/worker-kit.js';
import { deployment, storedFinalStatus, type Deployment } from './helpers/pipeline.js';

let dep: Deployment;
let ctx: ServiceContext;
let redis: Redis;
let workers: Worker[] = [];
let evaluator: Worker | undefined;

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '8', DEEPFEAT_JOB_ATTEMPTS: '1', LOG_LEVEL: 'silent' });
  const images = await loadDemoImages({ perClass: 12 });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  ctx = createContext(dep.config, 'provenance-test');
  redis = new Redis(dep.redis.url);
  // No evaluator yet: each test changes the run's status in Redis before the evaluate job runs.
  workers = [startPlannerWorker(ctx), startExtractorWorker(ctx), startTrainerWorker(ctx)];
});

test.after.always(async () => {
  await evaluator?.close();
  await Promise.all(workers.map((w) => w.close()));
  await redis?.quit();
  if (ctx) await closeContext(ctx);
  await dep?.close();
});

const runHash = (runId: string) => `${dep.config.queuePrefix}:run:${runId}`;

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 120_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs a raw-pixels run up to its candidate (the evaluate job waits for an evaluator). */
async function trainedRun(name: string): Promise<{ runId: string; candidate: Candidate }> {
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/pets/`, name, features: RAW_PIXELS });
  const candidate = await until('the candidate', () =>
    getObjectJson<Candidate>(dep.client.s3, dep.config.bucket, candidateKey(runId)),
  );
  return { runId, candidate };
}

async function published(name: string, runId: string): Promise<ModelArtifact> {
  evaluator ??= startEvaluatorWorker(ctx);
  return until('the published model', () =>
    getObjectJson<ModelArtifact>(dep.client.s3, dep.config.bucket, modelKey(name, runId)),
  );
}

function checkModel(t: import('ava').ExecutionContext, model: ModelArtifact, runId: string): void {
  t.is(model.runId, runId);
  t.is(model.source, `s3://${dep.dataBucket}/pets/`);
  t.deepEqual(model.features.spec, RAW_PIXELS);
  t.is(model.features.engine, 'raw-pixels:32x32');
  t.deepEqual(model.features.input, { width: 32, height: 32 });
  t.is(model.features.dim, 32 * 32 * 3);
}

test.serial('the candidate records the engine as the extract jobs reported it', async (t) => {
  t.timeout(180_000);
  const { candidate } = await trainedRun('prov-candidate');
  t.deepEqual(candidate.features?.input, { width: 32, height: 32 });
  t.is(candidate.features?.engine, 'raw-pixels:32x32');
  t.true((candidate.features?.backends.length ?? 0) >= 1);
});

test.serial(
  'a run whose status in Redis was changed before evaluation still publishes the right model.json',
  async (t) => {
    t.timeout(180_000);
    const { runId } = await trainedRun('prov-altered');
    const wrong: RunRequest = {
      source: 's3://elsewhere/other/',
      name: 'prov-altered',
      features: { kind: 'builtin', id: 'mobilenet_v2_mid' },
      seed: 1,
      split: { train: 0.7, val: 0.1, test: 0.2 },
      shardSize: 8,
    };
    await redis.hset(runHash(runId), { request: JSON.stringify(wrong), engine: 'bogus@node', engineInput: '7x7' });
    await redis.hdel(runHash(runId), 'backend');
    const model = await published('prov-altered', runId);
    checkModel(t, model, runId);
    // The status is the run's own record: it says what Redis said, and run.json copies it.
    const s = await until('the published status', async () => {
      const st = await getStatus(dep.client, runId);
      return st.stage === 'published' ? st : undefined;
    });
    t.is(s.model?.uri, `s3://${dep.config.bucket}/${modelKey('prov-altered', runId)}`);
    // run.json is that status, bounded like it: the first failures and their count.
    const runJson = await storedFinalStatus(dep, runId);
    t.is(runJson.failuresTotal, 0);
    t.deepEqual(runJson.failures, []);
  },
);

test.serial('a run whose status Redis lost entirely still publishes the right model.json', async (t) => {
  t.timeout(180_000);
  const { runId } = await trainedRun('prov-lost');
  await redis.del(runHash(runId), `${runHash(runId)}:failures`);
  const model = await published('prov-lost', runId);
  checkModel(t, model, runId);
  t.is(model.metrics.testImages > 0, true);
});
