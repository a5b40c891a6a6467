/**
 * npm run bench -- --scale [--images N]: the control plane at a million images. Not part of
 * `npm test` (it takes minutes and gigabytes) and nothing here is asserted; it prints what it
 * measured and writes bench/scale-results.json.
 *
 * The dataset is a CSV manifest of N keys (default 1,000,000) whose objects do not exist: the
 * point is planning, queues and status, not pixels. Keys are as long as real ones (~70 bytes,
 * e.g. customer-data/photos/site-07/2026/11/class3/IMG_0000123_9e3779b1.jpg). Each missing
 * object is recorded as that image's failure by the extractor, which also exercises the
 * failure bookkeeping at scale.
 *
 * Measured, on real parts (spawned redis-server, the embedded S3 server, a planner process and
 * one extractor process started as users start them):
 * - planning time (enqueue → flow added) and the planner's peak RSS (VmHWM);
 * - Redis memory taken by the run (used_memory after planning minus before), and its key count;
 * - `status` and `deepfeat workers` latency (median and worst of repeated calls, in-process
 *   through the same client library the CLI uses) right after planning and while the extractor
 *   works through shards; the size of a status (it lists the first failures and counts them
 *   all) and the time to stream every recorded failure (`getFailures`);
 * - the trainer's feature matrix for N × 1,632 (the default features' width) float32 and the memory its fit needs, against the
 *   budget a trainer on this host would have (DEEPFEAT_TRAINER_MEMORY unset).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { freemem, tmpdir, totalmem } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import {
  createClient,
  enqueueRun,
  getFailures,
  getQueueCounts,
  getStatus,
  listWorkers,
  type Client,
} from '../cli/client.js';
import { EXIT_WITH_PARENT } from '../cli/local-pipeline.js';
import { startRedis, startS3Server } from '../cli/local-stack.js';
import { loadConfig } from '../shared/config.js';
import { putObject } from '../shared/s3.js';
import { trainerMemoryBudget, trainerMemoryNeed } from '../services/trainer/memory.js';
import { DEFAULT_FEATURE_DIM } from './stack.js';

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const DATA_BUCKET = 'scale-data';
const DIM = DEFAULT_FEATURE_DIM;

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};

async function peakRssMiB(pid: number | undefined): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
}

async function latency(n: number, fn: () => Promise<unknown>): Promise<{ medianMs: number; worstMs: number }> {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return { medianMs: round(ms[Math.floor(ms.length / 2)]!), worstMs: round(ms[ms.length - 1]!) };
}

const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits;

function spawnWorker(kind: string, env: Record<string, string>): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), 'worker', kind], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'ignore', 'inherit'],
  });
}

async function waitForWorkers(client: Client, n: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  while ((await listWorkers(client)).length < n) {
    if (Date.now() > deadline) throw new Error('workers did not register within 60 s');
    await new Promise((r) => setTimeout(r, 200));
  }
}

export async function runScaleBench(): Promise<void> {
  const images = Number(arg('--images') ?? 1_000_000);
  const shardSize = loadConfig({}).extractor.shardSize;
  const dir = await mkdtemp(path.join(tmpdir(), 'deepfeat-scale-'));
  const redis = await startRedis();
  const s3 = await startS3Server({ dir: path.join(dir, 's3') });
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    REDIS_URL: redis.url,
    S3_ENDPOINT: s3.endpoint,
    S3_ACCESS_KEY_ID: 'S3RVER',
    S3_SECRET_ACCESS_KEY: 'S3RVER',
    DEEPFEAT_QUEUE_PREFIX: 'scale',
    // Workers end with this process, however it ends (killed, Ctrl-C): cli/local-pipeline.ts.
    [EXIT_WITH_PARENT]: String(process.pid),
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
    DEEPFEAT_CACHE_DIR: path.join(dir, 'cache'),
  };
  const client = createClient(loadConfig(env));
  const procs: ChildProcess[] = [];
  const out: Record<string, unknown> = { images, shardSize, date: new Date().toISOString() };
  try {
    for (const b of [client.config.bucket, DATA_BUCKET]) await client.s3.send(new CreateBucketCommand({ Bucket: b }));
    const lines = ['key,label'];
    for (let i = 0; i < images; i++) {
      const label = `class${i % 10}`;
      const site = String(i % 50).padStart(2, '0');
      const hash = (Math.imul(i, 2654435761) >>> 0).toString(16).padStart(8, '0');
      lines.push(
        `customer-data/photos/site-${site}/2026/11/${label}/IMG_${String(i).padStart(7, '0')}_${hash}.jpg,${label}`,
      );
    }
    const manifest = `${lines.join('\n')}\n`;
    lines.length = 0;
    await putObject(client.s3, DATA_BUCKET, 'manifest.csv', manifest, 'text/csv');
    out.manifestMiB = round(Buffer.byteLength(manifest) / 2 ** 20);
    console.error(`manifest of ${images} keys (${out.manifestMiB} MiB) uploaded`);

    const probe = new Redis(redis.url);
    const memBefore = Number(/used_memory:(\d+)/.exec(await probe.info('memory'))?.[1] ?? 0);

    const planner = spawnWorker('planner', env);
    procs.push(planner);
    await waitForWorkers(client, 1);

    const t0 = performance.now();
    const runId = await enqueueRun(client, { source: `s3://${DATA_BUCKET}/manifest.csv`, name: 'scale', shardSize });
    let planned = false;
    let peakPlanner = 0;
    while (!planned) {
      peakPlanner = Math.max(peakPlanner, await peakRssMiB(planner.pid));
      const s = await getStatus(client, runId);
      if (s.stage === 'failed') throw new Error(`scale run failed: ${s.error?.message}`);
      if (s.shards > 0) {
        const counts = await getQueueCounts(client);
        planned = (counts.extract.waiting ?? 0) + (counts.extract.active ?? 0) >= s.shards;
      }
      if (!planned) await new Promise((r) => setTimeout(r, 200));
    }
    out.planningSeconds = round((performance.now() - t0) / 1000, 2);
    out.plannerPeakRssMiB = round(Math.max(peakPlanner, await peakRssMiB(planner.pid)));
    console.error(`planned in ${out.planningSeconds} s; planner peak RSS ${out.plannerPeakRssMiB} MiB`);

    const memAfter = Number(/used_memory:(\d+)/.exec(await probe.info('memory'))?.[1] ?? 0);
    out.redisRunMiB = round((memAfter - memBefore) / 2 ** 20);
    out.redisKeys = await probe.dbsize();
    console.error(`Redis memory for the run: ${out.redisRunMiB} MiB (${out.redisKeys} keys)`);

    out.statusAfterPlanning = await latency(20, () => getStatus(client, runId));
    out.workersAfterPlanning = await latency(20, () => Promise.all([listWorkers(client), getQueueCounts(client)]));
    console.error(
      `status ${JSON.stringify(out.statusAfterPlanning)}; workers ${JSON.stringify(out.workersAfterPlanning)}`,
    );

    // One extractor works through shards (every object is missing, so each image becomes a
    // recorded failure): status must stay fast while failures accumulate.
    const extractor = spawnWorker('extractor', env);
    procs.push(extractor);
    const seconds = Number(arg('--extract-seconds') ?? 60);
    const until = Date.now() + seconds * 1000;
    const during: number[] = [];
    const workersDuring: number[] = [];
    while (Date.now() < until) {
      let t = performance.now();
      await getStatus(client, runId);
      during.push(performance.now() - t);
      t = performance.now();
      await Promise.all([listWorkers(client), getQueueCounts(client)]);
      workersDuring.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 1000));
    }
    const s = await getStatus(client, runId);
    // Every failure recorded so far, shard by shard (what `status --all-failures` prints).
    const f0 = performance.now();
    let streamed = 0;
    for await (const _ of getFailures(client, runId)) streamed++;
    const streamMs = performance.now() - f0;
    during.sort((a, b) => a - b);
    workersDuring.sort((a, b) => a - b);
    out.duringExtraction = {
      seconds,
      imagesProcessed: s.done + s.failed,
      shardsDone: s.shardsDone,
      statusMedianMs: round(during[Math.floor(during.length / 2)]!),
      statusWorstMs: round(during[during.length - 1]!),
      workersMedianMs: round(workersDuring[Math.floor(workersDuring.length / 2)]!),
      workersWorstMs: round(workersDuring[workersDuring.length - 1]!),
      failed: s.failed,
      failuresTotal: s.failuresTotal,
      failuresListed: s.failures.length,
      statusJsonKiB: round(Buffer.byteLength(JSON.stringify(s)) / 1024),
      allFailuresStreamed: streamed,
      allFailuresMs: round(streamMs),
    };
    console.error(`during extraction: ${JSON.stringify(out.duringExtraction)}`);
    await probe.quit();

    // Train + val: 80% of the images at the default 0.7/0.1/0.2 split.
    const fitRows = Math.round(images * 0.8);
    const need = trainerMemoryNeed({ rows: fitRows, dim: DIM, classes: 10 });
    const budget = trainerMemoryBudget(0);
    out.trainer = {
      fitRows,
      matrixGiB: round((fitRows * DIM * 4) / 2 ** 30, 2),
      needGiB: round(need / 2 ** 30, 2),
      budgetGiB: round(budget.bytes / 2 ** 30, 1),
      fits: need <= budget.bytes,
      hostTotalGiB: round(totalmem() / 2 ** 30, 1),
      hostFreeGiB: round(freemem() / 2 ** 30, 1),
    };
    console.error(`trainer matrix ${JSON.stringify(out.trainer)}`);
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await client.close();
    await s3.stop();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  }
  const file = fileURLToPath(new URL('./scale-results.json', import.meta.url));
  await writeFile(file, `${JSON.stringify(out, null, 2)}\n`);
  console.log(JSON.stringify(out, null, 2));
}
