/**
 * Worker faults on real parts: an extractor SIGKILLed while it holds a shard, and an extractor
 * stopped with SIGTERM mid-run. The run still completes, every image is accounted for exactly
 * once, and the published model equals the one from an undisturbed run of the same data.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, fetchModel, getStatus, waitForRun } from '../cli/client.js';
import { DEFAULT_FEATURES } from '../shared/features.js';
import { getObjectText } from '../shared/s3.js';
import { shardKey, type ShardRow } from '../shared/dataset.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const PER_CLASS = 40;
let dep: Deployment;
const workers: WorkerProcess[] = [];
const source = () => `s3://${dep.dataBucket}/pets/`;

test.before(async () => {
  dep = await deployment({
    DEEPFEAT_SHARD_SIZE: '16',
    DEEPFEAT_BATCH_SIZE: '4',
    // Every run here must really extract: a cached vector would finish a shard before the fault.
    DEEPFEAT_FEATURE_CACHE: 'off',
  });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  workers.push(spawnWorker(dep.env, 'planner'), spawnWorker(dep.env, 'trainer'), spawnWorker(dep.env, 'evaluator'));
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await dep?.close();
});

/** Polls until some shard of the run is in progress (an extractor holds it). */
async function untilExtracting(runId: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const s = await getStatus(dep.client, runId);
    if (s.stage === 'extracting' && s.done > 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`run ${runId} never started extracting`);
}

async function rowsOf(runId: string, shards: number): Promise<ShardRow[]> {
  const rows: ShardRow[] = [];
  for (let s = 0; s < shards; s++) {
    const text = await getObjectText(dep.client.s3, dep.config.bucket, shardKey(runId, s, 'jsonl'));
    rows.push(
      ...text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as ShardRow),
    );
  }
  return rows;
}

test.serial(
  'SIGKILL of an extractor mid-shard and SIGTERM of another: the run completes with the same model',
  async (t) => {
    t.timeout(240_000);
    // Disturbed run: extractor A is killed while it holds a shard.
    const a = spawnWorker(dep.env, 'extractor');
    workers.push(a);
    const disturbed = await enqueueRun(dep.client, {
      source: source(),
      name: 'disturbed',
      features: DEFAULT_FEATURES,
      seed: 7,
    });
    await untilExtracting(disturbed);
    await a.stop('SIGKILL');
    // Extractor B takes over (the killed shard's lock expires and it is moved back to the queue);
    // extractor C joins and is then asked to stop with SIGTERM while the run goes on.
    const b = spawnWorker(dep.env, 'extractor');
    const c = spawnWorker(dep.env, 'extractor');
    workers.push(b, c);
    await new Promise((r) => setTimeout(r, 8000));
    const t0 = Date.now();
    const code = await c.stop('SIGTERM');
    t.is(code, 0, c.output());
    t.true(Date.now() - t0 < 35_000, 'SIGTERM exits within the bounded shutdown time');

    const d = await waitForRun(dep.client, disturbed);
    t.is(d.stage, 'published', d.error?.message ?? '');
    t.is(d.done + d.failed, 2 * PER_CLASS);

    // Every manifest image exactly once across the shards.
    const manifest = (await getObjectText(dep.client.s3, dep.config.bucket, `runs/${disturbed}/manifest.jsonl`))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l).key as string);
    const keys = (await rowsOf(disturbed, d.shards)).map((r) => r.key);
    t.deepEqual([...keys].sort(), [...manifest].sort());
    t.is(new Set(keys).size, keys.length);

    // Undisturbed run of the same data and seed, with B alone.
    const calm = await enqueueRun(dep.client, { source: source(), name: 'calm', features: DEFAULT_FEATURES, seed: 7 });
    const s = await waitForRun(dep.client, calm);
    t.is(s.stage, 'published', s.error?.message ?? '');
    const [m1, m2] = await Promise.all([fetchModel(dep.client, 'disturbed'), fetchModel(dep.client, 'calm')]);
    t.deepEqual(m1.artifact.weights, m2.artifact.weights);
    t.deepEqual(m1.artifact.bias, m2.artifact.bias);
    t.deepEqual(m1.artifact.metrics, m2.artifact.metrics);
  },
);
