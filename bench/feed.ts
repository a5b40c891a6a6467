/**
 * The feed benchmark (issue 14): how many images per second an extractor can hand to an engine
 * that costs nothing — its ceiling on any accelerator — and where its CPU goes per image.
 *
 * Real parts: a spawned redis-server, the embedded S3 server, a planner process and extractor
 * processes that are `deepfeat worker extractor` with a zero-cost engine swapped in by code
 * (zero-engine-extractor.ts). For the demo's 32×32 CIFAR PNGs and for 640×480 JPEGs (made here
 * with sharp), with 1 and 2 extractor processes and with 1 and all decode threads in one process:
 * - images/s from the first extract job's start to the last one's end (planning excluded),
 * - CPU per image of the extractor processes and of their decoder processes (/proc, as the
 *   pipeline figures of bench.ts read it: utime + stime, children included),
 * - where the main thread's CPU goes, by stage, from V8's sampling profiler over the timed runs
 *   (fetch, decode hand-off, decode in the extractor's own process, engine hand-off, write,
 *   bookkeeping, GC, other);
 * - the CPU the benchmark's own S3 server, Redis and planner use per image on the same cores, and
 *   so the most those cores can feed;
 * - the decoder pool alone with 1 process and one per core (decode parallelism, nothing else), in
 *   a process of its own (decoder-pool-rate.ts), for the JPEGs and for 1280×960 photos;
 * - the real extractor (ONNX Runtime, 1 thread) on CIFAR: its CPU per image ÷ the engine's own.
 *
 * `npx tsx bench/feed.ts [--quick] [--only cifar,jpeg,photo,real,1p,1p_1t,1p_sharp,1p_1t_sharp,2p] [--reps N]
 * [--keep-profiles DIR] [--baseline TREE]` alone (TREE: a copy of the code before a change, with
 * the two zero-engine files and their hooks, run right before the current code in every
 * configuration), or the "feed" section of `npm run bench`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { enqueueRun, getStatus, listWorkers } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { mapLimit } from '../shared/concurrency.js';
import { DEFAULT_FEATURES } from '../shared/features.js';
import { makeQueue } from '../shared/queues.js';
import { putObject } from '../shared/s3.js';
import { nativeJpeg } from '../services/extractor/jpeg-native.js';
import type { PoolRates } from './decoder-pool-rate.js';
import { processCpuSeconds, startStack, startWorkers, type Stack } from './stack.js';
import { median } from './stats.js';

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const DATA_BUCKET = 'bench-data'; // stack.ts's

export type RecordFn = (key: string, stage: string, figure: number, unit: string, detail: string) => void;

/** Prints a row as bench.ts does (used when this file runs alone). */
const printRow: RecordFn = (_key, stage, figure, unit, detail) => {
  const shown = Number.isNaN(figure) ? '-' : figure >= 100 ? figure.toFixed(0) : figure.toFixed(figure >= 10 ? 1 : 2);
  console.log(`${stage.padEnd(62)} ${shown.padStart(9)} ${unit.padEnd(9)} ${detail}`);
};

/**
 * Warm-up of each configuration before it is measured (runFeedBench): at least WARM_UP_IMAGES,
 * then more runs while V8 is still compiling, up to MAX_WARM_UP_IMAGES. Compiling shows as the
 * extractor's threads other than its main thread: with the zero engine, its engine thread and the
 * GC helpers take a few per cent of the main thread's CPU once the code is optimised, while V8's
 * optimising compiler went on at 20-40% of it for some 5,000 JPEGs (traced with --trace-opt:
 * 20-30 functions a second, the S3 client's and Node's HTTP and stream code, falling to 1-4 a
 * second after 8,000). A worker feeding a GPU for hours runs with that code long compiled.
 */
const WARM_UP_IMAGES = 1500;
const MAX_WARM_UP_IMAGES = 12_000;
/** Warm once a warm-up run's other threads take at most this share of the main thread's CPU. */
const WARM_OTHER_THREADS = 0.15;

/** CPU seconds of a process's live children (the extractor's decoder processes), from /proc. */
async function childrenCpuSeconds(pid: number): Promise<number> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  let sum = 0;
  for (const t of tasks) {
    const kids = (await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '')).trim();
    for (const k of kids.split(/\s+/).filter(Boolean)) sum += await processCpuSeconds(Number(k));
  }
  return sum;
}

/** CPU seconds of one thread of a process (the main thread's id is the process id), from /proc. */
async function threadCpuSeconds(pid: number, tid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11] ?? 0) + Number(fields[12] ?? 0)) / 100;
}

/** CPU seconds of a process's V8 profiler thread ("v8:ProfEvntProc", while profiling), from /proc. */
async function profilerThreadCpuSeconds(pid: number): Promise<number> {
  let sum = 0;
  for (const t of await readdir(`/proc/${pid}/task`).catch(() => [] as string[])) {
    const comm = (await readFile(`/proc/${pid}/task/${t}/comm`, 'utf8').catch(() => '')).trim();
    if (comm === 'v8:ProfEvntProc') sum += await threadCpuSeconds(pid, Number(t));
  }
  return sum;
}

/** CPU seconds of children that have ended and been waited for (cutime + cstime), from /proc. */
async function reapedChildrenCpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[13] ?? 0) + Number(fields[14] ?? 0)) / 100;
}

interface Extractors {
  procs: ChildProcess[];
  /** CPU seconds so far: the extractor processes, their main threads alone, their profiler threads, and their decoder processes. */
  cpu(): Promise<{ extractor: number; main: number; profiler: number; decoders: number }>;
  /** Starts V8's profiler in every process (needs `profileDir`). */
  startProfile(): void;
  /** Stops it and returns each process's profile. */
  stopProfile(): Promise<CpuProfile[]>;
  stop(): Promise<void>;
}

/** `count` zero-engine extractor processes; resolves once they serve the queues. */
async function startZeroExtractors(
  stack: Stack,
  count: number,
  env: Record<string, string>,
  profileDir?: string,
  root = ROOT,
): Promise<Extractors> {
  const before = (await listWorkers(stack.client)).length;
  const procs = Array.from({ length: count }, () =>
    spawn(process.execPath, ['--import', 'tsx', path.join(root, 'bench/zero-engine-extractor.ts')], {
      cwd: root,
      env: { ...stack.env, ...env, ...(profileDir ? { FEED_PROFILE_DIR: profileDir } : {}) },
      stdio: ['ignore', 'ignore', 'inherit'],
    }),
  );
  const deadline = Date.now() + 60_000;
  while ((await listWorkers(stack.client)).length < before + count) {
    if (Date.now() > deadline || procs.some((p) => p.exitCode !== null)) {
      for (const p of procs) p.kill('SIGKILL');
      throw new Error('zero-engine extractors did not start (their stderr is above)');
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  let profiles = 0;
  return {
    procs,
    async cpu() {
      let extractor = 0;
      let main = 0;
      let profiler = 0;
      let decoders = 0;
      for (const p of procs) {
        extractor += await processCpuSeconds(p.pid);
        main += await threadCpuSeconds(p.pid!, p.pid!);
        profiler += await profilerThreadCpuSeconds(p.pid!);
        decoders += (await childrenCpuSeconds(p.pid!)) + (await reapedChildrenCpuSeconds(p.pid!));
      }
      return { extractor, main, profiler, decoders };
    },
    startProfile() {
      for (const p of procs) p.kill('SIGUSR2');
    },
    async stopProfile() {
      if (!profileDir) throw new Error('stopProfile: started without a profile folder');
      for (const p of procs) p.kill('SIGUSR2');
      const want = procs.length * ++profiles;
      const until = Date.now() + 30_000;
      for (;;) {
        const files = (await readdir(profileDir)).filter((f) => f.endsWith('.cpuprofile'));
        if (files.length >= want) {
          const out: CpuProfile[] = [];
          for (const f of files) out.push(JSON.parse(await readFile(path.join(profileDir, f), 'utf8')) as CpuProfile);
          await Promise.all(files.map((f) => rm(path.join(profileDir, f))));
          return out;
        }
        if (Date.now() > until) throw new Error('extractor profiles were not written within 30 s');
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async stop() {
      for (const p of procs) p.kill('SIGTERM');
      await Promise.all(procs.map((p) => (p.exitCode !== null ? undefined : new Promise((r) => p.once('exit', r)))));
      const until = Date.now() + 10_000;
      while ((await listWorkers(stack.client)).length > before && Date.now() < until)
        await new Promise((r) => setTimeout(r, 100));
    },
  };
}

/**
 * One extraction run over `source`: seconds from the first extract job's start to the last one's
 * end (the feed rate; planning excluded), and from enqueue to the last shard written.
 */
async function timeFeed(
  stack: Stack,
  source: string,
  shardSize: number,
): Promise<{ seconds: number; total: number; images: number; failed: number }> {
  const started = Date.now();
  const runId = await enqueueRun(stack.client, { source, features: DEFAULT_FEATURES, shardSize, name: 'feed' });
  for (;;) {
    const s = await getStatus(stack.client, runId);
    if (s.stage === 'failed') throw new Error(`feed run ${runId} failed: ${s.error?.message}`);
    if (s.shards > 0 && s.shardsDone === s.shards) {
      const q = makeQueue(stack.client.queues!, 'extract');
      try {
        let first = Number.POSITIVE_INFINITY;
        let last = 0;
        for (let i = 0; i < s.shards; i++) {
          const job = await q.getJob(`${runId}-extract-${i}`);
          first = Math.min(first, job?.processedOn ?? first);
          last = Math.max(last, job?.finishedOn ?? 0);
        }
        return { seconds: (last - first) / 1000, total: (last - started) / 1000, images: s.done, failed: s.failed };
      } finally {
        await q.close();
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** JPEGs (640×480 unless told) made from the demo's CIFAR images (scaled up, with grain so they compress like photos). */
async function makeJpegs(count: number, width = 640, height = 480): Promise<Array<{ key: string; bytes: Buffer }>> {
  const demo = await loadDemoImages({ perClass: Math.ceil(count / 2) });
  let seed = 1;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  return mapLimit(demo.slice(0, count), 2, async (img) => {
    const raw = await sharp(img.png).resize(width, height, { fit: 'fill', kernel: 'cubic' }).raw().toBuffer();
    for (let i = 0; i < raw.length; i++) raw[i] = Math.max(0, Math.min(255, raw[i]! + Math.round((rand() - 0.5) * 24)));
    const bytes = await sharp(raw, { raw: { width, height, channels: 3 } })
      .jpeg({ quality: 90 })
      .toBuffer();
    return { key: `jpeg/${img.label}/${img.name.replace(/\.png$/, '.jpg')}`, bytes };
  });
}

// ───────────── where the main thread's CPU goes ─────────────

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}
export interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Stages of the extractor's main thread, each recognised by the code a sample is in. */
const STAGES = [
  'fetch (S3 client, HTTP: GETs, manifest, shard PUTs)',
  'decode hand-off (IPC with decoder processes)',
  'decode in this process (small plain PNGs: png-simple, zlib, upscale)',
  'engine hand-off (batch buffer, engine thread)',
  'write (encoding the shard; its 2 PUTs count as fetch)',
  'bookkeeping (BullMQ, Redis, run state, logs)',
  'loop (batching, order, cache checks)',
  'garbage collection',
  'other (V8, Node internals)',
  'profiler (this measurement)',
] as const;
type Stage = (typeof STAGES)[number];

/** Frame → stage, first match walking from the sample's leaf to the root. */
const RULES: Array<[RegExp, Stage]> = [
  [/zero-engine-extractor\.ts|node:inspector/, 'profiler (this measurement)'],
  [/feature-store\.ts|\/npy\.ts/, 'write (encoding the shard; its 2 PUTs count as fetch)'],
  [
    /@aws-sdk|@smithy|node:_http|node:http|node:https|node:_tls|shared\/s3(-fast-get)?\.ts/,
    'fetch (S3 client, HTTP: GETs, manifest, shard PUTs)',
  ],
  [
    /png-simple\.ts|upscale\.ts|node:zlib|wasm-function/,
    'decode in this process (small plain PNGs: png-simple, zlib, upscale)',
  ],
  [/decoder-pool\.ts|child_process|node:v8|serialization/, 'decode hand-off (IPC with decoder processes)'],
  [
    /engines\/thread\.ts|thread-call\.ts|worker_threads|internal\/worker/,
    'engine hand-off (batch buffer, engine thread)',
  ],
  [
    /ioredis|bullmq|run-state\.ts|worker-kit\.ts|pino|redis-errors|cluster-key-slot/,
    'bookkeeping (BullMQ, Redis, run state, logs)',
  ],
  [
    /shard-loop\.ts|extractor\/worker\.ts|shard-items\.ts|concurrency\.ts|feature-cache/,
    'loop (batching, order, cache checks)',
  ],
];

/** Milliseconds of main-thread CPU per stage in `profiles` (idle samples left out). */
export function stageMilliseconds(profiles: CpuProfile[]): Record<Stage, number> {
  const out = Object.fromEntries(STAGES.map((s) => [s, 0])) as Record<Stage, number>;
  for (const p of profiles) {
    const byId = new Map(p.nodes.map((n) => [n.id, n]));
    const parent = new Map<number, number>();
    for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
    const stageOf = new Map<number, Stage | 'idle'>();
    const classify = (id: number): Stage | 'idle' => {
      const known = stageOf.get(id);
      if (known) return known;
      const leaf = byId.get(id)!.callFrame;
      let stage: Stage | 'idle' | undefined =
        leaf.functionName === '(idle)'
          ? 'idle'
          : leaf.functionName === '(garbage collector)'
            ? 'garbage collection'
            : undefined;
      for (let at: number | undefined = id; !stage && at !== undefined; at = parent.get(at)) {
        const f = byId.get(at)!.callFrame;
        const where = `${f.url} ${f.functionName}`;
        stage = RULES.find(([re]) => re.test(where))?.[1];
      }
      stage ??= 'other (V8, Node internals)';
      stageOf.set(id, stage);
      return stage;
    };
    p.samples.forEach((id, i) => {
      const s = classify(id);
      if (s !== 'idle') out[s] += (p.timeDeltas[i] ?? 0) / 1000;
    });
  }
  return out;
}

// ───────────── with the real engine ─────────────

/**
 * The real extractor (`deepfeat worker extractor`, ONNX Runtime on 1 thread) on the CIFAR set:
 * its CPU per image, decoder processes included, as a multiple of the engine's own CPU per image
 * (the same backbone in this process, batches of 8 decoded CIFAR images, 1 thread).
 */
async function realEngineRatio(stack: Stack, reps: number, put: RecordFn, baseline?: string): Promise<void> {
  console.log(`\nfeed: ${stack.images} CIFAR PNGs, the real engine (ONNX Runtime, 1 thread), batch 8`);
  const { loadEngine } = await import('../services/extractor/engines/load-engine.js');
  const { decodeImage } = await import('../services/extractor/image.js');
  const engine = await loadEngine(DEFAULT_FEATURES, {
    engine: 'onnx',
    threads: 1,
    cacheDir: stack.env.DEEPFEAT_CACHE_DIR,
    readObject: async () => new Uint8Array(),
  });
  let engineMs: number;
  try {
    const demo = await loadDemoImages({ perClass: 4 });
    const size = { width: 224, height: 224, maxPixels: 1e8 };
    const images = await Promise.all(demo.map((d) => decodeImage(d.png, size)));
    for (let i = 0; i < 3; i++) await engine.embed(images); // ONNX Runtime's arena settles
    const c0 = process.cpuUsage();
    const rounds = 12;
    for (let i = 0; i < rounds; i++) await engine.embed(images);
    const c = process.cpuUsage(c0);
    engineMs = (c.user + c.system) / 1000 / (rounds * images.length);
  } finally {
    engine.dispose();
  }
  put(
    'real_engine_cpu_ms',
    '  the engine alone: CPU per image',
    engineMs,
    'ms',
    'ONNX Runtime, 1 thread, in this process',
  );
  for (const root of baseline ? [baseline, ROOT] : [ROOT]) {
    const suffix = root === ROOT ? '' : '_before';
    const shard = Math.ceil(stack.images / 4);
    const ex = await startRealExtractor(stack, root);
    try {
      await timeFeed(stack, stack.source, shard); // warm-up: the engine loads
      const cpu0 = await ex.cpu();
      const runs = [];
      for (let i = 0; i < reps; i++) runs.push(await timeFeed(stack, stack.source, shard));
      const cpu1 = await ex.cpu();
      const n = reps * stack.images;
      const totalMs = ((cpu1.extractor - cpu0.extractor + cpu1.decoders - cpu0.decoders) * 1000) / n;
      const rate = stack.images / median(runs.map((r) => r.seconds));
      const tag = suffix ? ', BEFORE' : '';
      put(
        `real_1p${suffix}`,
        `real engine: 1 extractor, 1 engine thread${tag}`,
        rate,
        'images/s',
        `shards of ${shard}`,
      );
      put(
        `real_1p_cpu_ms${suffix}`,
        '  CPU per image: extractor + its decoder processes',
        totalMs,
        'ms',
        suffix
          ? "the baseline tree's engine may differ from this tree's"
          : `outside inference ${(totalMs - engineMs).toFixed(2)} ms`,
      );
      // The engine alone was measured with this tree's engine code: a ratio only for this tree.
      if (!suffix) {
        put('real_1p_cpu_vs_engine', "  extractor CPU / the engine's own", totalMs / engineMs, 'x', 'goal <= 1.4');
      }
    } finally {
      await ex.stop();
    }
  }
}

/** One real extractor process (`deepfeat worker extractor`, 1 engine thread) from `root`. */
async function startRealExtractor(stack: Stack, root: string): Promise<Extractors> {
  const before = (await listWorkers(stack.client)).length;
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'cli/main.ts'), 'worker', 'extractor'], {
    cwd: root,
    env: { ...stack.env, DEEPFEAT_ENGINE_THREADS: '1' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const until = Date.now() + 60_000;
  while ((await listWorkers(stack.client)).length < before + 1) {
    if (Date.now() > until || proc.exitCode !== null) {
      proc.kill('SIGKILL');
      throw new Error('the extractor did not start (its stderr is above)');
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    procs: [proc],
    async cpu() {
      return {
        extractor: await processCpuSeconds(proc.pid),
        main: await threadCpuSeconds(proc.pid!, proc.pid!),
        profiler: await profilerThreadCpuSeconds(proc.pid!),
        decoders: (await childrenCpuSeconds(proc.pid!)) + (await reapedChildrenCpuSeconds(proc.pid!)),
      };
    },
    startProfile() {},
    async stopProfile() {
      return [];
    },
    async stop() {
      proc.kill('SIGTERM');
      if (proc.exitCode === null) await new Promise((r) => proc.once('exit', r));
      const deadline = Date.now() + 10_000;
      while ((await listWorkers(stack.client)).length > before && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
    },
  };
}

// ───────────── the benchmark ─────────────

export interface FeedOptions {
  quick?: boolean;
  record?: RecordFn;
  /** Timed runs per configuration (median taken); default 3, 1 with quick. */
  reps?: number;
  /** Only these datasets ('cifar', 'jpeg', 'photo': 1280×960 JPEGs through the decoder pool alone, 'real': the real engine) and configurations ('1p', '1p_1t', '1p_sharp' and '1p_1t_sharp': JPEGs through sharp, '2p'); default all. */
  only?: readonly string[];
  /** Folder to keep the main-thread CPU profiles in (open them in Chrome DevTools). */
  keepProfiles?: string;
  /**
   * A copy of the tree before a change (with zero-engine-extractor.ts and its two hooks): every
   * configuration also runs its extractors from there, right before the current ones, so before
   * and after are measured in one run on the same host load.
   */
  baseline?: string;
}

interface Dataset {
  name: string;
  label: string;
  source: string;
  images: number;
  /** The same images' bytes, for the decoder pool alone. */
  bytes: readonly Uint8Array[];
}

/**
 * Decode parallelism alone (decoder-pool-rate.ts, in a process of its own, as an extractor's
 * main thread is): the images through the DecoderPool with 1 process and with one per core.
 */
async function decoderPoolRates(
  bytes: readonly Uint8Array[],
  rounds: number,
  quick: boolean,
  scratch: string,
): Promise<PoolRates> {
  const dir = await mkdtemp(path.join(scratch, 'pool-'));
  try {
    await Promise.all(bytes.map((b, i) => writeFile(path.join(dir, `${String(i).padStart(6, '0')}`), b)));
    const args = ['--import', 'tsx', path.join(ROOT, 'bench/decoder-pool-rate.ts'), dir, String(rounds)];
    const child = spawn(process.execPath, quick ? [...args, '--quick'] : args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      out += s;
    });
    const code = await new Promise<number | null>((r) => child.once('exit', r));
    if (code !== 0) throw new Error(`bench/decoder-pool-rate.ts ended with ${code} (its stderr is above)`);
    return JSON.parse(out) as PoolRates;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Runs the feed benchmark on its own stack; figures go to `record` (bench.ts's table, or stdout). */
export async function runFeedBench(opts: FeedOptions = {}): Promise<Record<string, number>> {
  const quick = opts.quick ?? false;
  const record = opts.record ?? printRow;
  const reps = opts.reps ?? (quick ? 1 : 3);
  const cores = availableParallelism();
  const fig: Record<string, number> = {};
  const put: RecordFn = (key, ...rest) => {
    fig[key] = rest[1];
    record(`feed_${key}`, ...rest);
  };
  const pngCount = quick ? 64 : 1024;
  const jpegCount = quick ? 32 : 384;
  const stack = await startStack(pngCount);
  const profileDir = await mkdtemp(path.join(tmpdir(), 'deepfeat-feed-'));
  const stopLater: Array<() => Promise<void>> = [];
  try {
    const jpegs = await makeJpegs(jpegCount);
    await mapLimit(jpegs, 8, (j) => putObject(stack.client.s3, DATA_BUCKET, j.key, j.bytes, 'image/jpeg'));
    const jpegKiB = jpegs.reduce((a, j) => a + j.bytes.length, 0) / jpegs.length / 1024;
    const datasets: Dataset[] = [
      {
        name: 'cifar',
        label: '32x32 CIFAR PNG',
        source: stack.source,
        images: stack.images,
        bytes: (await loadDemoImages({ perClass: Math.ceil(stack.images / 2) })).map((i) => i.png),
      },
      {
        name: 'jpeg',
        label: `640x480 JPEG (${jpegKiB.toFixed(0)} KiB avg)`,
        source: `s3://${DATA_BUCKET}/jpeg/`,
        images: jpegs.length,
        bytes: jpegs.map((j) => j.bytes),
      },
    ];
    const putPool = (name: string, pool: PoolRates) => {
      const caller = (ms: number) => `the calling process ${ms.toFixed(2)} ms of CPU per image`;
      put(
        `${name}_pool_1`,
        `${name}: decoder pool alone, 1 process`,
        pool.one,
        'images/s',
        pool.inline
          ? 'no S3, Redis or extractor; decoded in the calling process, no decoder process used'
          : `no S3, Redis or extractor; ${caller(pool.callerMsOne)}`,
      );
      put(
        `${name}_pool_all`,
        `${name}: decoder pool alone, ${pool.processes} processes (the default)`,
        pool.all,
        'images/s',
        pool.inline ? 'all decoded in the calling process' : caller(pool.callerMsAll),
      );
      put(
        `${name}_pool_scaling`,
        `${name}: decoder pool alone, ${pool.processes} processes / 1`,
        pool.ratio,
        'x',
        pool.inline
          ? 'no decoder process used'
          : 'median of alternating rounds; goal >= 1.8 on 2 cores (decode threads follow the cores)',
      );
    };
    const planner = await startWorkers(stack, 'planner', 1);
    stopLater.push(() => planner.stop());
    // The benchmark's own services run on the same cores as the extractors here; on a GPU host
    // the object store and Redis are elsewhere. Their CPU is read to say what the host allows.
    const servicesCpu = async () =>
      (await processCpuSeconds(stack.s3.pid)) +
      (await processCpuSeconds(stack.redis.pid)) +
      (await planner.cpuSeconds());

    type Config = { key: string; label: string; procs: number; env: Record<string, string>; root?: string };
    const current: Config[] = [
      { key: '1p', label: `1 extractor, ${cores} decode threads (default)`, procs: 1, env: {} },
      { key: '1p_1t', label: '1 extractor, 1 decode thread', procs: 1, env: { DEEPFEAT_DECODE_THREADS: '1' } },
      ...(cores > 1 ? [{ key: '2p', label: `2 extractors, ${cores} decode threads each`, procs: 2, env: {} }] : []),
      // JPEGs without deepfeat's libjpeg-turbo addon (jpeg-native.ts), as where it is not built.
      ...(nativeJpeg()
        ? [
            {
              key: '1p_sharp',
              label: `1 extractor, ${cores} decode threads, JPEG through sharp`,
              procs: 1,
              env: { DEEPFEAT_JPEG_DECODER: 'sharp' },
            },
            // Decode threads where decoding is the work: the addon's cheaper decode leaves the
            // extractor, the S3 server and Redis a larger share of a small host's cores.
            ...(cores > 1
              ? [
                  {
                    key: '1p_1t_sharp',
                    label: '1 extractor, 1 decode thread, JPEG through sharp',
                    procs: 1,
                    env: { DEEPFEAT_JPEG_DECODER: 'sharp', DEEPFEAT_DECODE_THREADS: '1' },
                  },
                ]
              : []),
          ]
        : []),
    ];
    // Before issue 14 the decoder processes were min(fetch concurrency, cores): one decoder means one fetch too.
    const before = (c: Config): Config => ({
      ...c,
      key: `${c.key}_before`,
      label: `${c.label}, BEFORE`,
      env: c.key === '1p_1t' ? { DEEPFEAT_FETCH_CONCURRENCY: '1' } : c.env,
      root: opts.baseline,
    });
    const configs = current.flatMap((c) => (opts.baseline && !c.key.includes('sharp') ? [before(c), c] : [c]));
    const wanted = (name: string) => !opts.only || opts.only.includes(name);
    for (const d of datasets.filter((x) => wanted(x.name))) {
      console.log(`\nfeed: ${d.images} ${d.label} in S3, zero-cost engine, batch 8`);
      if (d.name === 'jpeg')
        console.log(
          nativeJpeg()
            ? 'JPEG decoder: libjpeg-turbo addon (native/jpeg), sharp where it steps aside'
            : 'JPEG decoder: sharp (the libjpeg-turbo addon is not built here: npm run build:native)',
        );
      const forData = (c: Config) => d.name === 'jpeg' || !c.key.includes('sharp');
      for (const c of configs.filter((x) => wanted(x.key.replace(/_before$/, '')) && forData(x))) {
        // Shards small enough that every extractor has work: 4 per process.
        const shard = Math.max(8, Math.ceil(d.images / (4 * c.procs)));
        const profiled = c.key === '1p' || c.key === '1p_before';
        const ex = await startZeroExtractors(stack, c.procs, c.env, profiled ? profileDir : undefined, c.root);
        try {
          // Warm-up: decoder processes start and V8 optimises the hot code (WARM_UP_IMAGES).
          // Each run's reading is the next run's start, and the last one the timed runs' start.
          let warmUp = 0;
          let cpu0 = await ex.cpu();
          let services0 = 0;
          for (let settled = false; !settled; ) {
            await timeFeed(stack, d.source, shard);
            warmUp += d.images;
            const now = await ex.cpu();
            services0 = await servicesCpu();
            const main = now.main - cpu0.main;
            const others = now.extractor - cpu0.extractor - main - (now.profiler - cpu0.profiler);
            cpu0 = now;
            settled =
              quick ||
              warmUp >= MAX_WARM_UP_IMAGES ||
              (warmUp >= WARM_UP_IMAGES && others <= WARM_OTHER_THREADS * main);
          }
          if (profiled) ex.startProfile();
          const runs = [];
          for (let i = 0; i < reps; i++) runs.push(await timeFeed(stack, d.source, shard));
          // Read before the profiler stops: its thread is still there to be read and subtracted,
          // and the profile's serialisation afterwards is not counted.
          const cpu1 = await ex.cpu();
          const services1 = await servicesCpu();
          const profiles = profiled ? await ex.stopProfile() : [];
          if (opts.keepProfiles) {
            for (const [i, p] of profiles.entries())
              await writeFile(path.join(opts.keepProfiles, `${d.name}-${c.key}-${i}.cpuprofile`), JSON.stringify(p));
          }
          const n = reps * d.images;
          const failed = runs.reduce((a, r) => a + r.failed, 0);
          if (failed > 0) throw new Error(`${failed} images failed in the feed runs of ${d.name}`);
          const rate = d.images / median(runs.map((r) => r.seconds));
          // The measurement's own cost is not the extractor's: the profiler's thread, and the
          // main thread's samples that the profile itself attributes to profiling.
          const stages = profiled ? stageMilliseconds(profiles) : undefined;
          const sampled = stages ? Object.values(stages).reduce((a, b) => a + b, 0) : 0;
          const mainMs = ((cpu1.main - cpu0.main) * 1000) / n;
          const profilingMs =
            ((cpu1.profiler - cpu0.profiler) * 1000) / n +
            (stages && sampled > 0 ? (stages['profiler (this measurement)'] / sampled) * mainMs : 0);
          const extractorMs = ((cpu1.extractor - cpu0.extractor) * 1000) / n - profilingMs;
          const decoderMs = ((cpu1.decoders - cpu0.decoders) * 1000) / n;
          const totalMs = extractorMs + decoderMs;
          const servicesMs = ((services1 - services0) * 1000) / n;
          const k = `${d.name}_${c.key}`;
          put(
            k,
            `${d.name}: ${c.label}`,
            rate,
            'images/s',
            `${(rate / c.procs).toFixed(0)} per process; shards of ${shard}; after ${warmUp} images of warm-up`,
          );
          put(
            `${k}_cpu_ms`,
            '  CPU per image: extractor + its decoder processes',
            totalMs,
            'ms',
            `extractor ${extractorMs.toFixed(2)} + decoders ${decoderMs.toFixed(2)}; one busy core feeds ${(1000 / totalMs).toFixed(0)} images/s` +
              (profiled ? `; profiling's own ${profilingMs.toFixed(2)} ms not counted` : ''),
          );
          put(
            `${k}_services_ms`,
            "  CPU per image: the bench's S3 server, Redis and planner",
            servicesMs,
            'ms',
            `on these cores too: the host spends ${(totalMs + servicesMs).toFixed(2)} ms per image, ` +
              `so its ${cores} cores feed at most ${((cores * 1000) / (totalMs + servicesMs)).toFixed(0)} images/s`,
          );
          if (stages) {
            // The profiler's samples say where the main thread was; /proc says how much CPU it
            // had (samples on a busy host also count time the thread waited for a core).
            put(`${k}_decode_ms`, '    decode (decoder processes: IPC, sniff, header, sharp)', decoderMs, 'ms', '');
            for (const s of STAGES) {
              const slug = s.split(' ')[0]!.replace(/[^a-z]/g, '');
              const share = stages[s] / sampled;
              put(
                `${k}_main_${slug}_ms`,
                `    main thread: ${s}`,
                share * mainMs,
                'ms',
                `${(100 * share).toFixed(0)}% of samples`,
              );
            }
            put(
              `${k}_threads_ms`,
              '    other threads of the extractor (engine thread, libuv, GC helpers)',
              ((cpu1.extractor - cpu0.extractor - (cpu1.profiler - cpu0.profiler)) * 1000) / n - mainMs,
              'ms',
              `main thread ${mainMs.toFixed(2)} ms (/proc), split by V8's sampling profiler over the timed runs`,
            );
          }
        } finally {
          await ex.stop();
        }
      }
      if (cores > 1 && wanted('1p_1t')) {
        putPool(d.name, await decoderPoolRates(d.bytes, quick ? 2 : Math.max(6, 2 * reps), quick, profileDir));
      }
      // The most that all decode threads can give over one where everything shares the cores:
      // the cores' feed at the host's whole CPU per image (extractor, decoders, S3 server, Redis,
      // planner), over what one decode thread fed.
      const hostAllows = (key: string, oneThread: number) => {
        const hostMs = fig[`${key}_cpu_ms`]! + fig[`${key}_services_ms`]!;
        return `the host's ${hostMs.toFixed(2)} ms per image let ${cores} cores give at most ${((cores * 1000) / hostMs / oneThread).toFixed(2)}x`;
      };
      for (const suffix of opts.baseline ? ['_before', ''] : ['']) {
        const one = fig[`${d.name}_1p${suffix}`]!;
        const t1 = fig[`${d.name}_1p_1t${suffix}`];
        if (one && t1) {
          put(
            `${d.name}_decode_threads_scaling${suffix}`,
            `${d.name}: 1 extractor, ${cores} decode threads / 1 decode thread${suffix ? ', BEFORE' : ''}`,
            one / t1,
            'x',
            `goal >= 1.8 on 2 cores; ${hostAllows(`${d.name}_1p${suffix}`, t1)}`,
          );
        }
        const sharp2 = fig[`${d.name}_1p_sharp${suffix}`];
        const sharp1 = fig[`${d.name}_1p_1t_sharp${suffix}`];
        if (sharp2 && sharp1) {
          put(
            `${d.name}_decode_threads_scaling_sharp${suffix}`,
            `${d.name}: JPEG through sharp, ${cores} decode threads / 1 decode thread`,
            sharp2 / sharp1,
            'x',
            `decoding is more of the work here; ${hostAllows(`${d.name}_1p_sharp${suffix}`, sharp1)}`,
          );
        }
        const viaSharp = fig[`${d.name}_1p_sharp${suffix}_cpu_ms`];
        const own = fig[`${d.name}_1p${suffix}_cpu_ms`];
        if (viaSharp && own)
          put(
            `${d.name}_native_vs_sharp${suffix}`,
            `${d.name}: CPU per image, libjpeg-turbo addon / sharp${suffix ? ', BEFORE' : ''}`,
            own / viaSharp,
            'x',
            'same pixels (test/jpeg-native.test.ts)',
          );
        const two = fig[`${d.name}_2p${suffix}`];
        if (one && two)
          put(
            `${d.name}_2p_vs_1p${suffix}`,
            `${d.name}: 2 extractors / 1 extractor${suffix ? ', BEFORE' : ''}`,
            two / one,
            'x',
            '',
          );
      }
    }
    // Decode threads where decoding is nearly all of the work: 1280×960 photos (1.2 MP, 4× the
    // pixels of the JPEGs above) through the decoder pool alone. With 640×480 JPEGs the pool's
    // calling side (0.3-0.5 ms per image) is a sixth of the decode and shares the 2 cores.
    if (cores > 1 && !quick && wanted('photo')) {
      const photos = await makeJpegs(96, 1280, 960);
      const kib = photos.reduce((a, j) => a + j.bytes.length, 0) / photos.length / 1024;
      console.log(`\nfeed: ${photos.length} 1280x960 JPEG (${kib.toFixed(0)} KiB avg), decoder pool alone`);
      const bytes = photos.map((p) => p.bytes);
      putPool('photo', await decoderPoolRates(bytes, Math.max(6, 2 * reps), quick, profileDir));
    }
    if (wanted('real')) await realEngineRatio(stack, reps, put, opts.baseline);
  } finally {
    for (const stop of stopLater) await stop().catch(() => undefined);
    await stack.close();
    await rm(profileDir, { recursive: true, force: true });
  }
  return fig;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const quick = process.argv.includes('--quick');
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const only = arg('--only')?.split(',');
  const keepProfiles = arg('--keep-profiles');
  const baseline = arg('--baseline');
  const reps = arg('--reps');
  console.log(
    `deepfeat feed bench${quick ? ' --quick (figures not meaningful)' : ''}: ${availableParallelism()} cores`,
  );
  await runFeedBench({
    quick,
    ...(only ? { only } : {}),
    ...(keepProfiles ? { keepProfiles: path.resolve(keepProfiles) } : {}),
    ...(baseline ? { baseline: path.resolve(baseline) } : {}),
    ...(reps ? { reps: Number(reps) } : {}),
  });
}
