/**
 * The real parts the pipeline benchmarks run on: a spawned redis-server, the embedded S3 server,
 * worker processes started exactly as users start them (`deepfeat worker <kind>`), and helpers
 * that time a run from enqueue to its last feature shard, BullMQ's per-job overhead, and a real
 * trainer job on a large synthetic feature matrix. Peak memory is read from /proc (VmHWM).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { Queue, QueueEvents, Worker } from 'bullmq';
import { createClient, enqueueRun, getStatus, listWorkers, waitForRun, type Client } from '../cli/client.js';
import { enqueuePredict } from '../cli/predict-client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { EXIT_WITH_PARENT } from '../cli/local-pipeline.js';
import { startRedis, startS3Server, type LocalRedis, type LocalS3 } from '../cli/local-stack.js';
import { loadConfig } from '../shared/config.js';
import { shardKey } from '../shared/dataset.js';
import { DEFAULT_FEATURES } from '../shared/features.js';
import { encodeNpy } from '../shared/npy.js';
import { makeQueue } from '../shared/queues.js';
import { mulberry32 } from '../shared/random.js';
import { candidateKey } from '../shared/model-format.js';
import { getObjectBytes, getObjectText, putObject } from '../shared/s3.js';
import { mapLimit } from '../shared/concurrency.js';

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const DATA_BUCKET = 'bench-data';

/**
 * Width of the default features (DEFAULT_FEATURES: mobilenet_v2_mid's 816 at two scales, multi-scale
 * being the default): the synthetic trainer, retrieval and cache figures use it, so they are what a
 * run with the defaults costs. bench.ts takes it from the default engine it loads, when one loads.
 */
export const DEFAULT_FEATURE_DIM = 1632;

export interface Stack {
  env: Record<string, string>;
  client: Client;
  redis: LocalRedis;
  /** The S3 server (a child process): its CPU is the host's, not the pipeline's, on a real deployment. */
  s3: LocalS3;
  /** s3:// prefix holding the benchmark images (folder per class). */
  source: string;
  images: number;
  close(): Promise<void>;
}

export async function startStack(images: number): Promise<Stack> {
  const dir = await mkdtemp(path.join(tmpdir(), 'deepfeat-bench-'));
  let redis: LocalRedis | undefined;
  let s3: LocalS3 | undefined;
  let client: Client | undefined;
  try {
    redis = await startRedis();
    s3 = await startS3Server({ dir: path.join(dir, 's3') });
    const env: Record<string, string> = {
      ...(process.env as Record<string, string>),
      REDIS_URL: redis.url,
      S3_ENDPOINT: s3.endpoint,
      S3_ACCESS_KEY_ID: 'S3RVER',
      S3_SECRET_ACCESS_KEY: 'S3RVER',
      DEEPFEAT_QUEUE_PREFIX: 'bench',
      // Workers end with this process, however it ends (killed, Ctrl-C): cli/local-pipeline.ts.
      [EXIT_WITH_PARENT]: String(process.pid),
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      // The pipeline figures time extraction, run after run over the same images: the feature
      // cache would serve every run after the first. Its own section turns it on (bench.ts 3c).
      DEEPFEAT_FEATURE_CACHE: 'off',
      DEEPFEAT_CACHE_DIR: path.join(dir, 'cache'),
    };
    client = createClient(loadConfig(env));
    for (const b of [client.config.bucket, DATA_BUCKET]) await client.s3.send(new CreateBucketCommand({ Bucket: b }));
    const perClass = Math.ceil(images / 2);
    const demo = await loadDemoImages({ perClass });
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < demo.length) {
          const img = demo[next++]!;
          await putObject(client!.s3, DATA_BUCKET, `cifar/${img.label}/${img.name}`, img.png, 'image/png');
        }
      }),
    );
    const [c, r, s] = [client, redis, s3];
    return {
      env,
      client: c,
      redis: r,
      s3: s,
      source: `s3://${DATA_BUCKET}/cifar/`,
      images: demo.length,
      async close() {
        await c.close();
        await s.stop();
        await r.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await client?.close();
    await s3?.stop().catch(() => undefined);
    await redis?.stop().catch(() => undefined);
    throw err;
  }
}

/** CPU seconds (user + system) a process has used so far, from /proc; 0 if it is gone. */
export async function processCpuSeconds(pid: number | undefined): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  // Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) / 100; // USER_HZ is 100 on Linux
}

/** Busy and total CPU seconds of the whole machine so far (all cores), from /proc/stat. */
export async function machineCpuSeconds(): Promise<{ busy: number; total: number }> {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!;
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line.split(/\s+/).slice(1).map(Number) as number[];
  const busy = user! + nice! + system! + irq! + softirq! + steal!;
  return { busy: busy / 100, total: (busy + idle! + iowait!) / 100 };
}

export interface WorkerProcs {
  procs: ChildProcess[];
  /** CPU seconds used so far by all the processes together. */
  cpuSeconds(): Promise<number>;
  /** Largest VmHWM (peak resident set, MiB) among the processes, read now. */
  peakRssMiB(): Promise<number>;
  stop(): Promise<void>;
}

/** Starts `count` worker processes of `kind` with extra env; resolves once all are registered with BullMQ. */
export async function startWorkers(
  stack: Stack,
  kind: string,
  count: number,
  extraEnv: Record<string, string> = {},
): Promise<WorkerProcs> {
  const before = (await listWorkers(stack.client)).length;
  const procs = Array.from({ length: count }, () =>
    spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), 'worker', kind], {
      cwd: ROOT,
      env: { ...stack.env, ...extraEnv },
      stdio: ['ignore', 'ignore', 'inherit'],
    }),
  );
  const deadline = Date.now() + 60_000;
  while ((await listWorkers(stack.client)).length < before + count) {
    if (Date.now() > deadline || procs.some((p) => p.exitCode !== null)) {
      for (const p of procs) p.kill('SIGKILL');
      throw new Error(`${kind} workers did not start (their stderr is above)`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    procs,
    async cpuSeconds() {
      let sum = 0;
      for (const p of procs) sum += await processCpuSeconds(p.pid);
      return sum;
    },
    async peakRssMiB() {
      let peak = 0;
      for (const p of procs) {
        const status = await readFile(`/proc/${p.pid}/status`, 'utf8').catch(() => '');
        const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
        peak = Math.max(peak, kb / 1024);
      }
      return peak;
    },
    async stop() {
      for (const p of procs) p.kill('SIGTERM');
      await Promise.all(procs.map((p) => (p.exitCode !== null ? undefined : new Promise((r) => p.once('exit', r)))));
      // Let BullMQ forget them before the next group registers.
      const deadline = Date.now() + 10_000;
      while ((await listWorkers(stack.client)).length > before && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
    },
  };
}

/**
 * One run of the default backbone over the stack's images: seconds from enqueue until the last
 * extract job finished (its shard written). Needs a planner and extractors running.
 */
export async function timeExtraction(
  stack: Stack,
  shardSize: number,
): Promise<{ seconds: number; images: number; shards: number; backend: string | null }> {
  const started = Date.now();
  const runId = await enqueueRun(stack.client, {
    source: stack.source,
    features: DEFAULT_FEATURES,
    shardSize,
    name: 'bench',
  });
  for (;;) {
    const s = await getStatus(stack.client, runId);
    if (s.stage === 'failed') throw new Error(`bench run ${runId} failed: ${s.error?.message}`);
    if (s.shards > 0 && s.shardsDone === s.shards) {
      const q = makeQueue(stack.client.queues!, 'extract');
      try {
        let last = 0;
        for (let i = 0; i < s.shards; i++)
          last = Math.max(last, (await q.getJob(`${runId}-extract-${i}`))?.finishedOn ?? 0);
        return { seconds: (last - started) / 1000, images: s.done, shards: s.shards, backend: s.backend };
      } finally {
        await q.close();
      }
    }
    // The end time comes from the jobs themselves, so polling slowly costs no accuracy (and
    // leaves the CPU to the pipeline).
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Trains and publishes a model on the stack's images with the default backbone (needs a planner,
 * extractors, a trainer and an evaluator running); returns its name.
 */
export async function publishModel(stack: Stack, name: string): Promise<string> {
  const runId = await enqueueRun(stack.client, { source: stack.source, features: DEFAULT_FEATURES, name });
  const s = await waitForRun(stack.client, runId, undefined, 250);
  if (s.stage !== 'published') throw new Error(`bench model run ${runId} failed: ${s.error?.message}`);
  return name;
}

/**
 * One batch prediction over the stack's images with the published `model`: seconds from enqueue
 * until the last predict job finished (its shard's predictions written; the same end point as
 * timeExtraction), and until the run is done (predictions.csv written). Needs a planner,
 * extractors and an evaluator running.
 */
export async function timePrediction(
  stack: Stack,
  model: string,
  shardSize: number,
): Promise<{ seconds: number; secondsToCsv: number; images: number; classified: number }> {
  const started = Date.now();
  const runId = await enqueuePredict(stack.client, { model, source: stack.source, shardSize });
  const s = await waitForRun(stack.client, runId, undefined, 250);
  if (s.stage !== 'done') throw new Error(`bench prediction ${runId} failed: ${s.error?.message}`);
  const q = makeQueue(stack.client.queues!, 'predict');
  try {
    let last = 0;
    for (let i = 0; i < s.shards; i++)
      last = Math.max(last, (await q.getJob(`${runId}-predict-${i}`))?.finishedOn ?? 0);
    const finished = Number(new Date(s.updatedAt));
    return {
      seconds: (last - started) / 1000,
      secondsToCsv: (finished - started) / 1000,
      images: s.total,
      classified: s.done,
    };
  } finally {
    await q.close();
  }
}

/**
 * About `count` of the stack's images, as many of each class, copied under another prefix of the
 * data bucket, where they have cache keys of their own (the feature cache keys by bucket, key and
 * ETag); returns the s3:// source of the copy.
 */
export async function copyImages(stack: Stack, prefix: string, count: number): Promise<string> {
  const all = await imageKeys(stack);
  const classes = [...new Set(all.map((k) => k.split('/')[1]!))];
  const perClass = Math.ceil(count / classes.length);
  const keys = classes.flatMap((c) => all.filter((k) => k.split('/')[1] === c).slice(0, perClass));
  await mapLimit(keys, 16, async (key) =>
    putObject(
      stack.client.s3,
      DATA_BUCKET,
      `${prefix}/${key.slice('cifar/'.length)}`,
      await getObjectBytes(stack.client.s3, DATA_BUCKET, key),
      'image/png',
    ),
  );
  return `s3://${DATA_BUCKET}/${prefix}/`;
}

/** Where a training run's time went, in seconds from enqueue: each stage ends when its last job finished. */
export interface RunTimes {
  /** Enqueue → published. */
  seconds: number;
  /** Enqueue → plan job done (queue wait, listing, manifest, flow added). */
  plan: number;
  /** Plan done → last extract job done (jobs' queue wait, lookups, extraction, shard writes). */
  extract: number;
  /** Last extract done → train job done; `trainWork` of it is the job itself (reading shards, fit). */
  train: number;
  trainWork: number;
  /** Train done → published; `evaluateWork` of it is the job (metrics, classifier.onnx, publish). */
  evaluate: number;
  evaluateWork: number;
  images: number;
  cache: { hits: number; misses: number } | null;
}

/**
 * One training run of the default backbone over `source`, enqueue → published, with each stage's
 * share read from its BullMQ jobs' timestamps and the run's own finishedAt. Needs a planner,
 * extractors, a trainer and an evaluator running.
 */
export async function timeWholeRun(stack: Stack, source: string, name: string, seed: number): Promise<RunTimes> {
  const started = Date.now();
  const runId = await enqueueRun(stack.client, { source, features: DEFAULT_FEATURES, name, seed });
  const s = await waitForRun(stack.client, runId, undefined, 100);
  if (s.stage !== 'published') throw new Error(`bench run ${runId} ${s.stage}: ${s.error?.message}`);
  const published = Number(
    await stack.client.redis!.hget(`${stack.client.config.queuePrefix}:run:${runId}`, 'finishedAt'),
  );
  const job = async (queue: 'plan' | 'extract' | 'train' | 'evaluate', id: string) => {
    const q = makeQueue(stack.client.queues!, queue);
    try {
      const j = await q.getJob(id);
      return { processedOn: j?.processedOn ?? 0, finishedOn: j?.finishedOn ?? 0 };
    } finally {
      await q.close();
    }
  };
  const plan = await job('plan', `${runId}-plan`);
  let extracted = 0;
  for (let i = 0; i < s.shards; i++)
    extracted = Math.max(extracted, (await job('extract', `${runId}-extract-${i}`)).finishedOn);
  const train = await job('train', `${runId}-train`);
  const evaluate = await job('evaluate', `${runId}-evaluate`);
  return {
    seconds: (published - started) / 1000,
    plan: (plan.finishedOn - started) / 1000,
    extract: (extracted - plan.finishedOn) / 1000,
    train: (train.finishedOn - extracted) / 1000,
    trainWork: (train.finishedOn - train.processedOn) / 1000,
    evaluate: (published - train.finishedOn) / 1000,
    evaluateWork: (evaluate.finishedOn - evaluate.processedOn) / 1000,
    images: s.total,
    cache: s.cache ?? null,
  };
}

/** Keys of the stack's images. */
async function imageKeys(stack: Stack): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await stack.client.s3.send(
      new ListObjectsV2Command({ Bucket: DATA_BUCKET, Prefix: 'cifar/', ContinuationToken: token }),
    );
    for (const o of page.Contents ?? []) keys.push(o.Key!);
    token = page.NextContinuationToken;
  } while (token);
  return keys;
}

/** The stack's images written as files into `dir` (for local prediction). */
export async function writeStackImages(stack: Stack, dir: string): Promise<void> {
  const keys = await imageKeys(stack);
  await mapLimit(keys, 16, async (key) =>
    writeFile(path.join(dir, key.replaceAll('/', '-')), await getObjectBytes(stack.client.s3, DATA_BUCKET, key)),
  );
}

/** Peak resident set (VmHWM, MiB) of a process, polled until it exits; and its wall seconds. */
export async function runMeasured(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; peakMiB: number; seconds: number; stderr: string }> {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), ...args], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d) => (stderr += d));
  let peak = 0;
  const timer = setInterval(async () => {
    const status = await readFile(`/proc/${child.pid}/status`, 'utf8').catch(() => '');
    peak = Math.max(peak, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024);
  }, 50);
  const code = await new Promise<number | null>((r) => child.once('close', r));
  clearInterval(timer);
  return { code, peakMiB: peak, seconds: (performance.now() - t0) / 1000, stderr };
}

/**
 * What one image's download costs the extractor: all the stack's images fetched with the AWS SDK
 * `concurrency` at a time, as the extractor fetches them. Client CPU per GET (this process) and
 * wall time per GET (the server's share included, on the same cores here).
 */
export async function s3GetCost(
  stack: Stack,
  concurrency: number,
): Promise<{ cpuMsPerGet: number; wallMsPerGet: number; gets: number }> {
  const keys = await imageKeys(stack);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await mapLimit(keys, concurrency, (key) => getObjectBytes(stack.client.s3, DATA_BUCKET, key));
  const wall = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  return {
    cpuMsPerGet: (cpu.user + cpu.system) / 1000 / keys.length,
    wallMsPerGet: wall / keys.length,
    gets: keys.length,
  };
}

/**
 * BullMQ's own cost per job: `jobs` jobs with a shard-sized payload (256 image keys) through one
 * worker whose processor does nothing. Returns milliseconds per job end to end (add → completed)
 * and Redis's own CPU microseconds per job (INFO commandstats), which bounds how many jobs one
 * Redis can serve.
 */
export async function bullmqOverhead(
  stack: Stack,
  jobs: number,
): Promise<{ msPerJob: number; redisUsecPerJob: number; redisCallsPerJob: number }> {
  const connection = stack.client.queues!.connection;
  const name = `overhead-${Date.now()}`;
  // An extract payload as the planner makes it: a range of the run's manifest, not its 256 keys.
  const manifest = { key: 'runs/bench/manifest.jsonl', start: 0, end: 256 * 70, count: 256 };
  const queue = new Queue(name, { connection, prefix: 'benchoverhead' });
  const events = new QueueEvents(name, { connection, prefix: 'benchoverhead' });
  await events.waitUntilReady();
  const worker = new Worker(name, async () => ({ shard: 0, rows: 256 }), {
    connection,
    prefix: 'benchoverhead',
    concurrency: 1,
  });
  await worker.waitUntilReady();
  const redis = stack.client.redis!;
  const stats = async () => {
    const info = await redis.info('commandstats');
    let calls = 0;
    let usec = 0;
    for (const m of info.matchAll(/calls=(\d+),usec=(\d+)/g)) {
      calls += Number(m[1]);
      usec += Number(m[2]);
    }
    return { calls, usec };
  };
  try {
    const s0 = await stats();
    const t0 = performance.now();
    let done = 0;
    const all = new Promise<void>((resolve) =>
      worker.on('completed', () => {
        if (++done === jobs) resolve();
      }),
    );
    // Added one at a time, as the planner's flow adds shards (not one bulk call).
    for (let i = 0; i < jobs; i++)
      await queue.add(
        'extract',
        { runId: 'bench', shard: i, manifest, sourceBucket: DATA_BUCKET },
        { removeOnComplete: true },
      );
    await all;
    const ms = performance.now() - t0;
    const s1 = await stats();
    return {
      msPerJob: ms / jobs,
      redisUsecPerJob: (s1.usec - s0.usec) / jobs,
      redisCallsPerJob: (s1.calls - s0.calls) / jobs,
    };
  } finally {
    await worker.close();
    await events.close();
    await queue.obliterate({ force: true }).catch(() => undefined);
    await queue.close();
  }
}

/**
 * A real train job (the trainer process reading shards from S3, choosing L2 on validation, and
 * refitting) on synthetic features: n rows × d, k classes, written as 256-row shards. Returns the
 * job's wall time, the fit time the trainer itself reports, and the trainer's peak RSS.
 */
export async function trainerJob(
  stack: Stack,
  n: number,
  d: number,
  k: number,
): Promise<{ seconds: number; fitSeconds: number; peakRssMiB: number; matrixMiB: number }> {
  const runId = `bench-train-${Date.now()}`;
  const rand = mulberry32(7);
  const classes = Array.from({ length: k }, (_, c) => `class${c}`);
  // Class centres in feature space; rows are non-negative like ReLU activations.
  const centres = Array.from({ length: k }, () => Float32Array.from({ length: d }, () => rand() * 2));
  const shardRows = 256;
  const shards = Math.ceil(n / shardRows);
  for (let s = 0; s < shards; s++) {
    const rows = Math.min(shardRows, n - s * shardRows);
    const X = new Float32Array(rows * d);
    const meta: string[] = [];
    for (let r = 0; r < rows; r++) {
      const i = s * shardRows + r;
      const c = i % k;
      for (let j = 0; j < d; j++) X[r * d + j] = Math.max(0, centres[c]![j]! + (rand() - 0.5) * 6);
      const split = Math.floor(i / k) % 10 < 8 ? 'train' : 'val'; // 80/20 within every class
      meta.push(JSON.stringify({ key: `img-${i}.png`, label: classes[c], split, row: r }));
    }
    await putObject(
      stack.client.s3,
      stack.client.config.bucket,
      shardKey(runId, s, 'npy'),
      encodeNpy(X, [rows, d]),
      'application/octet-stream',
    );
    await putObject(
      stack.client.s3,
      stack.client.config.bucket,
      shardKey(runId, s, 'jsonl'),
      `${meta.join('\n')}\n`,
      'application/x-ndjson',
    );
  }
  const queue = makeQueue(stack.client.queues!, 'train');
  // The pipeline figures leave their runs' train jobs waiting (no trainer ran): drop them, or
  // this trainer would work through them first.
  await queue.drain(true);
  const trainer = await startWorkers(stack, 'trainer', 1);
  const events = new QueueEvents('train', {
    connection: stack.client.queues!.connection,
    prefix: stack.client.config.queuePrefix,
  });
  try {
    await events.waitUntilReady();
    const t0 = performance.now();
    const job = await queue.add('train', { runId, shards, classes }, { jobId: runId });
    await job.waitUntilFinished(events, 600_000);
    const seconds = (performance.now() - t0) / 1000;
    const candidate = JSON.parse(
      await getObjectText(stack.client.s3, stack.client.config.bucket, candidateKey(runId)),
    ) as { fitMs: number };
    return {
      seconds,
      fitSeconds: candidate.fitMs / 1000,
      peakRssMiB: await trainer.peakRssMiB(),
      matrixMiB: (n * d * 4) / 2 ** 20,
    };
  } finally {
    await events.close();
    await queue.close();
    await trainer.stop();
  }
}
