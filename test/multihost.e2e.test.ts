/**
 * Faults across hosts, on real network namespaces (test/helpers/netns.ts): Redis and the S3
 * server on their own hosts, workers on others, each host reaching the services only over its own
 * links. A worker host is cut off while it holds work — from everything, or from Redis only — and
 * healed after another worker has taken the work over; then it goes on, still running, holding
 * work it no longer owns. Nothing may be lost or doubled, and the published model must equal an
 * undisturbed run's.
 */
import anyTest, { type TestFn } from 'ava';
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { loadDemoImages } from '../cli/demo-data.js';
import { downloadModel, enqueueRun, fetchModel, getStatus } from '../cli/client.js';
import { shardKey, type ShardRow } from '../shared/dataset.js';
import { RAW_PIXELS } from '../shared/features.js';
import { getObjectBytes, getObjectText, listObjects } from '../shared/s3.js';
import type { RunStatus } from '../shared/run-state.js';
import { netnsUnavailable, startCluster, type Cluster } from './helpers/netns.js';
import type { WorkerProcess } from './helpers/pipeline.js';

const test = anyTest as TestFn;
const run = promisify(execFile);
const PER_CLASS = 40;
/** Short job locks keep the suite fast: a cut host loses its job after about LOCK_MS. */
const LOCK_MS = 3000;
const unavailable = netnsUnavailable();

let cluster: Cluster;
const workers: WorkerProcess[] = [];
let images: Awaited<ReturnType<typeof loadDemoImages>>;
/** The extractor on host 1 that every partition test cuts off (started by the first one). */
let stale: WorkerProcess;
/** Host 3's trainer and evaluator, replaced on host 1 by the trainer and evaluator tests. */
let trainer3: WorkerProcess;
let evaluator3: WorkerProcess;
const source = () => `s3://${cluster.dataBucket}/pets/`;
const dataPath = () => `/${cluster.dataBucket}/pets/`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (unavailable) {
  test.skip(`multi-host faults: skipped, network namespaces cannot be made here: ${unavailable}`, () => undefined);
} else {
  test.before(async () => {
    cluster = await startCluster({
      tag: 'mh',
      workerHosts: 3,
      env: {
        DEEPFEAT_JOB_LOCK_MS: String(LOCK_MS),
        DEEPFEAT_SHARD_SIZE: '8',
        DEEPFEAT_BATCH_SIZE: '4',
        // Every run here must really extract: a cached vector would finish a shard before the fault.
        DEEPFEAT_FEATURE_CACHE: 'off',
        LOG_LEVEL: 'info',
      },
    });
    images = await loadDemoImages({ perClass: PER_CLASS });
    await putImages((img) => img.png);
  });
  test.after.always(async () => {
    await Promise.all(workers.map((w) => w.stop('SIGKILL')));
    await cluster?.close();
  });
  registerTests();
}

/** Writes every image of the data set, with the bytes `body` gives. */
async function putImages(body: (img: (typeof images)[number]) => Uint8Array | string): Promise<void> {
  await Promise.all(images.map((img) => cluster.put(`pets/${img.label}/${img.name}`, body(img))));
}

/** How often `pattern` occurs in a worker's output. */
const count = (w: WorkerProcess, pattern: RegExp) =>
  w
    .output()
    .split('\n')
    .filter((l) => pattern.test(l)).length;

async function untilCount(w: WorkerProcess, pattern: RegExp, n: number, ms: number): Promise<void> {
  const t0 = Date.now();
  while (count(w, pattern) < n) {
    if (Date.now() - t0 > ms) throw new Error(`worker never logged ${pattern} ${n} times:\n${w.output().slice(-3000)}`);
    await sleep(100);
  }
}

const LEASE_LOST = /no longer holds the job's lock/;
const LOCK_REFUSED = /Missing lock for job/;

/**
 * The versions under models/NAME/ and what latest.json says: exactly one version, latest.json
 * naming it, and the version complete (model.json valid, classifier.onnx matching its sha256).
 */
async function publishedVersions(name: string): Promise<{ versions: string[]; latest: string; complete: boolean }> {
  const versions = new Set<string>();
  for await (const o of listObjects(cluster.client.s3, cluster.config.bucket, `models/${name}/`)) {
    const rest = o.key.slice(`models/${name}/`.length);
    if (rest.includes('/')) versions.add(rest.split('/')[0]!);
  }
  const latest = JSON.parse(
    await getObjectText(cluster.client.s3, cluster.config.bucket, `models/${name}/latest.json`),
  ) as { version: string };
  const dir = await mkdtemp(path.join(os.tmpdir(), 'deepfeat-mh-'));
  try {
    const { files } = await downloadModel(cluster.client, name, dir);
    return { versions: [...versions], latest: latest.version, complete: files.length === 2 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The extractor on host 1 (the one cut off), and planner, trainer and evaluator on host 3; started once. */
function baseWorkers(): WorkerProcess {
  if (!stale) {
    stale = spawn(1, 'extractor');
    spawn(3, 'planner');
    trainer3 = spawn(3, 'trainer');
    evaluator3 = spawn(3, 'evaluator');
  }
  return stale;
}

/**
 * A second extractor on host 2, started at once but with its image fetches parked until `go()`:
 * it is ready when host 1 is cut, so the cut lasts little longer than the lock. (The longer a cut,
 * the longer the cut host's TCP takes to retransmit after the heal: its backoff doubles.)
 */
async function standby(): Promise<{ worker: WorkerProcess; go(): Promise<void> }> {
  const hold = await cluster.hosts[1]!.hold(dataPath(), 'GET');
  const worker = spawn(2, 'extractor');
  return {
    worker,
    async go() {
      await hold.release();
    },
  };
}

/** Waits until every image of the run is accounted for in its progress (extraction is over). */
async function extracted(runId: string, ms = 60_000): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const s = await getStatus(cluster.client, runId);
    if (s.total > 0 && s.done + s.failed === s.total) return;
    if (s.stage === 'failed') throw new Error(`run ${runId} failed: ${s.error?.message}`);
    if (Date.now() - t0 > ms) throw new Error(`run ${runId}: ${s.done}+${s.failed}/${s.total} after ${ms} ms`);
    await sleep(100);
  }
}

function spawn(host: number, kind: string): WorkerProcess {
  const w = cluster.hosts[host - 1]!.spawnWorker(kind);
  workers.push(w);
  return w;
}

/** Samples a run's progress until stopped; every sample is kept. */
function sampleProgress(runId: string): { stop(): Promise<RunStatus[]> } {
  const samples: RunStatus[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      samples.push(await getStatus(cluster.client, runId));
      await sleep(100);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return samples;
    },
  };
}

async function shardRows(runId: string, shards: number): Promise<ShardRow[]> {
  const rows: ShardRow[] = [];
  for (let s = 0; s < shards; s++) {
    const text = await getObjectText(cluster.client.s3, cluster.config.bucket, shardKey(runId, s, 'jsonl'));
    rows.push(
      ...text
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as ShardRow),
    );
  }
  return rows;
}

async function manifestKeys(runId: string): Promise<string[]> {
  return (await getObjectText(cluster.client.s3, cluster.config.bucket, `runs/${runId}/manifest.jsonl`))
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l).key as string);
}

/** sha256 of every object of a run's shards, by key. */
async function shardDigests(runId: string, shards: number): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    for (const ext of ['npy', 'jsonl'] as const) {
      const key = shardKey(runId, s, ext);
      const bytes = await getObjectBytes(cluster.client.s3, cluster.config.bucket, key);
      out[`${s}.${ext}`] = createHash('sha256').update(bytes).digest('hex');
    }
  }
  return out;
}

async function untilOutput(w: WorkerProcess, pattern: RegExp, ms: number): Promise<void> {
  const t0 = Date.now();
  while (!pattern.test(w.output())) {
    if (Date.now() - t0 > ms) throw new Error(`worker never logged ${pattern}:\n${w.output().slice(-3000)}`);
    await sleep(100);
  }
}

let calmDigests: Record<string, string> | undefined;

/** Waits for a run to end; past `ms`, fails with its status and the tail of every worker's log. */
async function finished(runId: string, ms = 60_000): Promise<RunStatus> {
  const t0 = Date.now();
  for (;;) {
    const s = await getStatus(cluster.client, runId);
    if (s.stage === 'published' || s.stage === 'failed') return s;
    if (Date.now() - t0 > ms) {
      const logs = workers.map((w, i) => `--- worker ${i} (exit ${w.child.exitCode}):\n${w.output().slice(-1500)}`);
      throw new Error(
        `run ${runId} still ${s.stage} (${s.done}+${s.failed}/${s.total}) after ${ms} ms\n${logs.join('\n')}`,
      );
    }
    await sleep(100);
  }
}

function registerTests(): void {
  test.serial('the harness: worker hosts have no default route, and a cut is a cut', async (t) => {
    const host = cluster.hosts[0]!;
    const routes = (await run('ip', ['-n', host.ns, 'route'])).stdout;
    t.false(/default/.test(routes), routes);
    t.regex(routes, /10\.77\.1\.0\/24 dev r0/);
    t.regex(routes, /10\.78\.1\.0\/24 dev s0/);
    const probe = (addr: string) =>
      run('ip', [
        'netns',
        'exec',
        host.ns,
        process.execPath,
        '-e',
        `const s=require('net').connect(${addr.split(':')[1]},'${addr.split(':')[0]}');` +
          `s.on('connect',()=>{console.log('connected');process.exit(0)});` +
          `s.on('error',e=>{console.log(e.code);process.exit(0)});setTimeout(()=>{console.log('timeout');process.exit(0)},2000)`,
      ]).then((r) => r.stdout.trim());
    t.is(await probe('10.77.1.1:6379'), 'connected');
    t.is(await probe('10.78.1.1:9000'), 'connected');
    await host.cut('redis');
    t.is(await probe('10.77.1.1:6379'), 'ENETUNREACH');
    t.is(await probe('10.78.1.1:9000'), 'connected');
    t.is(await probe('192.0.2.1:80'), 'ENETUNREACH', 'nothing leaves by a default route');
    await host.heal('redis');
    t.is(await probe('10.77.1.1:6379'), 'connected');
  });

  test.serial(
    'partitioned extractor: cut off past its lock while it holds a shard; another redoes it; the late completion is refused',
    async (t) => {
      t.timeout(120_000);
      const t0 = Date.now();
      const phase = (what: string) => t.log(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);
      const a = baseWorkers();
      // A's first image fetches are parked at its host's gateway: it holds its shard, mid-way.
      const hold = await cluster.hosts[0]!.hold(dataPath(), 'GET');
      const b = await standby();
      const disturbed = await enqueueRun(cluster.client, {
        source: source(),
        name: 'cut',
        features: RAW_PIXELS,
        seed: 7,
      });
      const sampler = sampleProgress(disturbed);
      await hold.hit;
      await cluster.hosts[0]!.cut();
      phase('extractor A holds a shard; host 1 cut off');
      await b.go();
      await extracted(disturbed);
      phase("B extracted every shard, A's too");
      // Heal A, and let its parked fetches go: it finishes the shard it no longer owns.
      await cluster.hosts[0]!.heal();
      await hold.release();
      await untilOutput(a, LEASE_LOST, 60_000);
      phase("host 1 healed; A's late attempt refused");
      const d = await finished(disturbed);
      phase('run published');
      t.is(d.stage, 'published', d.error?.message ?? '');
      const samples = await sampler.stop();

      t.is(d.done + d.failed, 2 * PER_CLASS);
      for (const s of samples) t.true(s.done + s.failed <= s.total, `progress ${s.done}+${s.failed} of ${s.total}`);
      t.true(samples.length > 10, `${samples.length} samples`);
      const after = await getStatus(cluster.client, disturbed);
      t.is(after.done + after.failed, 2 * PER_CLASS, 'the late attempt changed no progress');
      const keys = (await shardRows(disturbed, d.shards)).map((r) => r.key);
      t.deepEqual([...keys].sort(), (await manifestKeys(disturbed)).sort());
      t.is(new Set(keys).size, keys.length);
      t.true(a.child.exitCode === null, 'the stale extractor is still running');

      // The undisturbed run, with A alone: A went back to work.
      await b.worker.stop('SIGTERM');
      const calm = await enqueueRun(cluster.client, { source: source(), name: 'calm', features: RAW_PIXELS, seed: 7 });
      const c = await finished(calm);
      t.is(c.stage, 'published', c.error?.message ?? '');
      const [m1, m2] = await Promise.all([fetchModel(cluster.client, 'cut'), fetchModel(cluster.client, 'calm')]);
      t.deepEqual(m1.artifact.weights, m2.artifact.weights);
      t.deepEqual(m1.artifact.bias, m2.artifact.bias);
      t.deepEqual(m1.artifact.metrics, m2.artifact.metrics);
      t.deepEqual(await shardDigests(disturbed, d.shards), await shardDigests(calm, c.shards));
      calmDigests = await shardDigests(calm, c.shards);
    },
  );

  test.serial(
    'half-partitioned extractor (keeps S3, loses Redis): its late attempt, with other results, writes nothing',
    async (t) => {
      t.timeout(120_000);
      t.truthy(calmDigests, 'needs the undisturbed run of the test before');
      const h1 = cluster.hosts[0]!;
      const lost = count(stale, LEASE_LOST);
      const hold = await h1.hold(dataPath(), 'GET');
      const b = await standby();
      const runId = await enqueueRun(cluster.client, { source: source(), name: 'half', features: RAW_PIXELS, seed: 7 });
      await hold.hit;
      await h1.cut('redis');
      await b.go();
      const d = await finished(runId);
      t.is(d.stage, 'published', d.error?.message ?? '');
      const before = await shardDigests(runId, d.shards);
      t.deepEqual(before, calmDigests);
      // What the stale attempt reads now differs: every image is junk, so its shard would be all
      // failures (an empty .npy, a .jsonl of errors) if it were written.
      await putImages(() => 'not an image');
      try {
        await h1.heal('redis');
        await hold.release();
        await untilCount(stale, LEASE_LOST, lost + 1, 60_000);
      } finally {
        await putImages((img) => img.png);
      }
      t.deepEqual(await shardDigests(runId, d.shards), before, 'no shard object changed');
      const after = await getStatus(cluster.client, runId);
      t.is(after.done, 2 * PER_CLASS);
      t.is(after.failed, 0);
      t.is(after.stage, 'published');
      await b.worker.stop('SIGTERM');
    },
  );

  test.serial(
    "half-partitioned extractor: a shard write held up past the job's lock is abandoned and never lands",
    async (t) => {
      t.timeout(120_000);
      const h1 = cluster.hosts[0]!;
      const hold = await h1.hold('/features/', 'PUT');
      const b = await standby();
      const runId = await enqueueRun(cluster.client, { source: source(), name: 'late', features: RAW_PIXELS, seed: 7 });
      await hold.hit;
      await h1.cut('redis');
      await b.go();
      const d = await finished(runId);
      t.is(d.stage, 'published', d.error?.message ?? '');
      await h1.heal('redis');
      await untilOutput(stale, /did not end within the job's lock/, 30_000);
      const released = await hold.release();
      t.is(released.parked, 0, 'the held write was abandoned by its client');
      t.deepEqual(await shardDigests(runId, d.shards), calmDigests);
      const keys = (await shardRows(runId, d.shards)).map((r) => r.key);
      t.deepEqual([...keys].sort(), (await manifestKeys(runId)).sort());
      await b.worker.stop('SIGTERM');
    },
  );

  test.serial(
    'partitioned trainer: cut off mid-job, another redoes it; one version, latest.json complete',
    async (t) => {
      t.timeout(120_000);
      const h1 = cluster.hosts[0]!;
      await trainer3.stop('SIGTERM');
      const t1 = spawn(1, 'trainer');
      const b = spawn(2, 'extractor');
      const hold = await h1.hold('/features/', 'GET');
      const runId = await enqueueRun(cluster.client, {
        source: source(),
        name: 'train-cut',
        features: RAW_PIXELS,
        seed: 7,
      });
      await hold.hit;
      await h1.cut();
      const cutAt = Date.now();
      trainer3 = spawn(3, 'trainer');
      const d = await finished(runId);
      t.is(d.stage, 'published', d.error?.message ?? '');
      t.log(`cut → published by the other trainer: ${((Date.now() - cutAt) / 1000).toFixed(1)} s`);
      await h1.heal();
      const healAt = Date.now();
      await hold.release();
      await untilOutput(t1, LOCK_REFUSED, 60_000);
      t.log(`heal → the stale trainer's completion refused: ${((Date.now() - healAt) / 1000).toFixed(1)} s`);
      t.true(t1.child.exitCode === null, 'the stale trainer is still running');
      const p = await publishedVersions('train-cut');
      t.deepEqual(p.versions, [runId]);
      t.is(p.latest, runId);
      t.true(p.complete);
      const [m1, m2] = await Promise.all([fetchModel(cluster.client, 'train-cut'), fetchModel(cluster.client, 'calm')]);
      t.deepEqual(m1.artifact.weights, m2.artifact.weights);
      await Promise.all([t1.stop('SIGTERM'), b.stop('SIGTERM')]);
    },
  );

  test.serial(
    'partitioned evaluator: cut off while publishing, another redoes it; one version, latest.json complete',
    async (t) => {
      t.timeout(120_000);
      const h1 = cluster.hosts[0]!;
      await evaluator3.stop('SIGTERM');
      const e1 = spawn(1, 'evaluator');
      const b = spawn(2, 'extractor');
      const hold = await h1.hold('latest.json', 'PUT');
      const runId = await enqueueRun(cluster.client, {
        source: source(),
        name: 'eval-cut',
        features: RAW_PIXELS,
        seed: 7,
      });
      await hold.hit;
      await h1.cut();
      const cutAt = Date.now();
      evaluator3 = spawn(3, 'evaluator');
      const d = await finished(runId);
      t.is(d.stage, 'published', d.error?.message ?? '');
      t.log(`cut → published by the other evaluator: ${((Date.now() - cutAt) / 1000).toFixed(1)} s`);
      const p0 = await publishedVersions('eval-cut');
      await h1.heal();
      const healAt = Date.now();
      // The stale evaluator's held PUT of latest.json now lands, late.
      await hold.release();
      await untilOutput(e1, LOCK_REFUSED, 60_000);
      t.log(`heal → the stale evaluator's completion refused: ${((Date.now() - healAt) / 1000).toFixed(1)} s`);
      t.true(e1.child.exitCode === null, 'the stale evaluator is still running');
      const p = await publishedVersions('eval-cut');
      t.deepEqual(p0, p);
      t.deepEqual(p.versions, [runId]);
      t.is(p.latest, runId);
      t.true(p.complete);
      await Promise.all([e1.stop('SIGTERM'), b.stop('SIGTERM')]);
    },
  );

  test.serial('slow and lossy network between workers and S3 (200 ms, 5% resets): every image, once', async (t) => {
    t.timeout(150_000);
    baseWorkers();
    const b = spawn(2, 'extractor');
    const timed = async (name: string) => {
      const t0 = Date.now();
      const runId = await enqueueRun(cluster.client, { source: source(), name, features: RAW_PIXELS, seed: 7 });
      const s = await finished(runId);
      return { runId, s, seconds: (Date.now() - t0) / 1000 };
    };
    const clean = await timed('clean');
    for (const h of cluster.hosts) await h.slow({ latencyMs: 200, resetRate: 0.05 });
    let slow: Awaited<ReturnType<typeof timed>>;
    let resets = 0;
    try {
      slow = await timed('slow');
      for (const h of cluster.hosts) resets += (await h.gatewayStats()).reset;
    } finally {
      for (const h of cluster.hosts) await h.slow({});
    }
    t.is(slow.s.stage, 'published', slow.s.error?.message ?? '');
    t.is(slow.s.done + slow.s.failed, 2 * PER_CLASS);
    t.is(slow.s.failed, 0);
    const keys = (await shardRows(slow.runId, slow.s.shards)).map((r) => r.key);
    t.deepEqual([...keys].sort(), (await manifestKeys(slow.runId)).sort());
    if (calmDigests) t.deepEqual(await shardDigests(slow.runId, slow.s.shards), calmDigests);
    t.true(resets > 0, 'connections were reset');
    t.log(`clean run ${clean.seconds.toFixed(1)} s; slow and lossy run ${slow.seconds.toFixed(1)} s; ${resets} resets`);
    await b.stop('SIGTERM');
  });
}
