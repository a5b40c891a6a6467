/**
 * npm run bench [-- --quick]: what each stage costs on this machine, measured, never asserted.
 * Every figure is the median of several timed repetitions after a warm-up, and every ratio is
 * taken between figures of this one run. Prints a table and writes bench/results.json.
 *
 * 1. decodeImage (decode + resize) to the backbone's input (a 640×480 JPEG, through deepfeat's
 *    libjpeg-turbo addon where built and through sharp, and the 32×32 CIFAR PNGs the pipeline
 *    figures use), one at a time and 8 at once as the extractor fetches them.
 * 2. The default backbone's forward pass on every engine that loads here (ONNX Runtime at 1 and
 *    all-cores threads, TF.js WebAssembly, TF.js plain JS), same batch size as the pipeline.
 * 3. The pipeline on real parts: spawned redis-server, the embedded S3 server, a planner and
 *    extractor processes started as users start them; seconds from enqueue to the last feature
 *    shard written, for 1 extractor (all cores), 1 extractor (1 thread) and 2 extractors
 *    (1 thread each); Redis CPU per image; extractor peak RSS after the first and the last run.
 * 4. BullMQ's own cost per shard job (no-op processor), wall time and Redis CPU.
 * 3c. The feature cache: the same images twice through the whole pipeline (planner, extractor,
 *    trainer, evaluator; enqueue -> published), the second run with a new seed and name; the rerun
 *    as a ratio of the first, its hits, where each run's time goes; Redis memory per index entry.
 * 5. The trainer: one L-BFGS fit in-process, and a real train job (trainer process reading
 *    shards from S3, choosing L2, refitting) with its peak RSS, on 20,000 × 1,632 (the default
 *    features' width) × 10 classes.
 * 6. Retrieval: one query's exact top-5 over 10,000 and 100,000 stored 1,632-d unit vectors
 *    (synthetic), by a scalar JavaScript scan and by the ONNX Runtime scan `similar` uses (one
 *    thread), one query at a time and 8 at once; and the evaluator's kNN metrics at their caps.
 *
 * 7. Feed (bench/feed.ts): extractor processes with a zero-cost engine on the same real parts —
 *    images/s per process and per core, CPU per image by stage, for CIFAR PNGs and 640×480 JPEGs,
 *    1 and 2 extractors, 1 and all decode threads.
 *
 * --scale: instead of the above, the control plane at a million images (bench/scale.ts).
 * --quick: the same code paths on small inputs with one repetition, for the test suite's smoke
 * check (figures from it are not meaningful). --out FILE: write the JSON there instead.
 */
import { availableParallelism, tmpdir } from 'node:os';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { loadDemoImages } from '../cli/demo-data.js';
import type { FeatureEngine } from '../services/extractor/engines/engine.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { decodeImage } from '../services/extractor/image.js';
import { nativeJpeg } from '../services/extractor/jpeg-native.js';
import { fitLogisticRegression } from '../services/trainer/logreg.js';
import { ObjectivePool } from '../services/trainer/objective-pool.js';
import { loadConfig } from '../shared/config.js';
import { DEFAULT_FEATURES } from '../shared/features.js';
import { mulberry32 } from '../shared/random.js';
import {
  bullmqOverhead,
  copyImages,
  DEFAULT_FEATURE_DIM,
  machineCpuSeconds,
  publishModel,
  runMeasured,
  s3GetCost,
  startStack,
  startWorkers,
  timeExtraction,
  timePrediction,
  timeWholeRun,
  trainerJob,
  writeStackImages,
  type RunTimes,
  type Stack,
} from './stack.js';
import { predictLocal } from '../cli/predict-local.js';
import { makeQueue } from '../shared/queues.js';
import { randomBytes } from 'node:crypto';
import { CacheIndex } from '../services/extractor/feature-cache/cache-index.js';
import { redisKeys, specHash } from '../services/extractor/feature-cache/keys.js';
import { pruneCache } from '../services/extractor/feature-cache/maintenance.js';
import { mapLimit } from '../shared/concurrency.js';
import { median } from './stats.js';

if (process.argv.includes('--scale')) {
  // The control plane at a million images: its own script (minutes, gigabytes; see scale.ts).
  const { runScaleBench } = await import('./scale.js');
  await runScaleBench();
  process.exit(0);
}

const quick = process.argv.includes('--quick');
const outArg = process.argv.indexOf('--out');
const outFile =
  outArg > 0 && process.argv[outArg + 1]
    ? path.resolve(process.argv[outArg + 1]!)
    : fileURLToPath(new URL('./results.json', import.meta.url));
const reps = quick ? 1 : 5;
const pipelineReps = quick ? 1 : 3;
const cores = availableParallelism();
const defaults = loadConfig({}).extractor;
const batch = defaults.batchSize || 8; // the CPU engines' preferred batch (FeatureEngine.preferredBatch)
const shardSize = defaults.shardSize;
const pipelineImages = quick ? 64 : 1024;
const trainRows = quick ? 2000 : 20000;
const CLASSES = 10;

/** Median milliseconds of `n` timed calls after `warmUps` untimed ones. */
async function timeIt(fn: () => Promise<unknown> | unknown, n = reps, warmUps = 1): Promise<number> {
  for (let i = 0; i < warmUps; i++) await fn();
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

interface Row {
  key: string;
  stage: string;
  figure: number;
  unit: string;
  detail: string;
}
const rows: Row[] = [];
const fig: Record<string, number> = {};
function record(key: string, stage: string, figure: number, unit: string, detail: string): void {
  rows.push({ key, stage, figure, unit, detail });
  fig[key] = figure;
  const shown = Number.isNaN(figure)
    ? '-'
    : figure >= 100
      ? figure.toFixed(0)
      : figure >= 0.01
        ? figure.toFixed(figure >= 10 ? 1 : 3)
        : figure.toPrecision(2);
  console.log(`${stage.padEnd(62)} ${shown.padStart(9)} ${unit.padEnd(9)} ${detail}`);
}
const section = (title: string) => console.log(`\n${title}`);

console.log(
  `deepfeat bench${quick ? ' --quick (smoke check: figures not meaningful)' : ''}: ${cores} cores, median of ${reps} (engines) / ${pipelineReps} (pipeline) after a warm-up`,
);

// ───────────── 1. decode ─────────────
section(`decode (decodeImage; JPEG: ${nativeJpeg() ? 'the libjpeg-turbo addon' : 'sharp, the addon is not built'})`);
const size = { width: 224, height: 224, maxPixels: 1e8 };
const jpeg = await sharp({ create: { width: 640, height: 480, channels: 3, background: { r: 90, g: 140, b: 200 } } })
  .composite([
    { input: Buffer.from('<svg width="640" height="480"><circle cx="320" cy="240" r="150" fill="orange"/></svg>') },
  ])
  .jpeg()
  .toBuffer();
const cifar = await loadDemoImages({ perClass: Math.max(batch, 32) });
const decodeN = quick ? 8 : 64;
const jpegMs = await timeIt(async () => {
  for (let i = 0; i < decodeN; i++) await decodeImage(jpeg, size);
});
record(
  'decode_jpeg_sequential',
  '640x480 JPEG -> 224x224 RGB, one at a time',
  (decodeN * 1000) / jpegMs,
  'images/s',
  `${(jpegMs / decodeN).toFixed(2)} ms/image`,
);
if (nativeJpeg()) {
  const viaSharpMs = await timeIt(async () => {
    for (let i = 0; i < decodeN; i++) await decodeImage(jpeg, { ...size, jpegDecoder: 'sharp' });
  });
  record(
    'decode_jpeg_sequential_sharp',
    '640x480 JPEG -> 224x224 RGB, one at a time, through sharp',
    (decodeN * 1000) / viaSharpMs,
    'images/s',
    `${(viaSharpMs / decodeN).toFixed(2)} ms/image; the addon takes ${(jpegMs / viaSharpMs).toFixed(2)}x the time (DEEPFEAT_JPEG_DECODER=sharp)`,
  );
}
const pngs = cifar.slice(0, decodeN).map((c) => c.png);
const pngMs = await timeIt(async () => {
  for (const p of pngs) await decodeImage(p, size);
});
record(
  'decode_cifar_sequential',
  '32x32 CIFAR PNG -> 224x224 RGB, one at a time',
  (pngs.length * 1000) / pngMs,
  'images/s',
  `${(pngMs / pngs.length).toFixed(2)} ms/image`,
);
const pngParMs = await timeIt(async () => {
  let next = 0;
  await Promise.all(
    Array.from({ length: defaults.fetchConcurrency }, async () => {
      while (next < pngs.length) await decodeImage(pngs[next++]!, size);
    }),
  );
});
record(
  'decode_cifar_parallel',
  `32x32 CIFAR PNG -> 224x224 RGB, ${defaults.fetchConcurrency} at once`,
  (pngs.length * 1000) / pngParMs,
  'images/s',
  'libuv thread pool, as in the extractor',
);

// ───────────── 2. engines ─────────────
section(
  `backbone forward pass (${DEFAULT_FEATURES.kind === 'builtin' ? DEFAULT_FEATURES.id : 'default'}, batch ${batch}, real CIFAR images)`,
);
const images = await Promise.all(cifar.slice(0, batch).map((c) => decodeImage(c.png, size)));
const engineConfigs: Array<{
  key: string;
  engine: 'onnx' | 'tfjs';
  threads?: number;
  backend?: 'wasm' | 'cpu';
  timed: number;
}> = [
  { key: 'engine_onnx_1', engine: 'onnx', threads: 1, timed: reps },
  ...(cores > 1 ? [{ key: `engine_onnx_${cores}`, engine: 'onnx' as const, threads: cores, timed: reps }] : []),
  { key: 'engine_tfjs_wasm', engine: 'tfjs', backend: 'wasm', timed: reps },
  // Plain-JS TF.js takes ~1.5 s per image here: one timed batch, full mode only.
  ...(quick ? [] : [{ key: 'engine_tfjs_cpu', engine: 'tfjs' as const, backend: 'cpu' as const, timed: 1 }]),
];
let engineDim: number | undefined;
for (const c of engineConfigs) {
  let engine: FeatureEngine;
  try {
    engine = await loadEngine(DEFAULT_FEATURES, {
      engine: c.engine,
      threads: c.threads,
      backend: c.backend,
      readObject: async () => new Uint8Array(),
    });
  } catch (err) {
    record(
      c.key,
      `${c.engine} ${c.backend ?? ''}`,
      NaN,
      'images/s',
      `not available: ${(err as Error).message.split('\n')[0]}`,
    );
    continue;
  }
  // ONNX Runtime needs two full batches to settle (its memory arena grows on the first); a
  // plain-JS batch is too slow to repeat, and loadEngine already warmed it up on one image.
  engineDim ??= engine.dim;
  const ms = await timeIt(() => engine.embed(images), c.timed, c.backend === 'cpu' ? 0 : 2);
  record(c.key, engine.backend, (batch * 1000) / ms, 'images/s', `${(ms / batch).toFixed(1)} ms/image`);
  engine.dispose();
}
/** The default features' width, for the synthetic trainer, cache and retrieval figures below. */
const DIM = engineDim ?? DEFAULT_FEATURE_DIM;
const onnxAll = fig[`engine_onnx_${cores}`] ?? fig.engine_onnx_1!;
record(
  'ratio_onnx_vs_wasm',
  'ONNX Runtime (all cores) / TF.js WebAssembly',
  onnxAll / fig.engine_tfjs_wasm!,
  'x',
  'target >= 5',
);
record(
  'ratio_onnx1_vs_wasm',
  'ONNX Runtime (1 thread) / TF.js WebAssembly',
  fig.engine_onnx_1! / fig.engine_tfjs_wasm!,
  'x',
  'same single core',
);

// ───────────── 3. pipeline ─────────────
const stack: Stack = await startStack(pipelineImages);
const stopLater: Array<() => Promise<void>> = [];
try {
  section(
    `pipeline: ${stack.images} CIFAR images in S3, shards of ${shardSize}, batch ${batch}, enqueue -> last shard written`,
  );
  await s3GetCost(stack, defaults.fetchConcurrency); // warm-up: connections, SDK code paths
  const gets = [];
  for (let i = 0; i < pipelineReps; i++) gets.push(await s3GetCost(stack, defaults.fetchConcurrency));
  record(
    's3_get_cpu_ms',
    `S3 GET of one image, client CPU (AWS SDK), ${defaults.fetchConcurrency} at once`,
    median(gets.map((g) => g.cpuMsPerGet)),
    'ms',
    `wall ${median(gets.map((g) => g.wallMsPerGet)).toFixed(2)} ms per GET with the S3 server on the same cores; ${gets[0]!.gets} GETs`,
  );
  const planner = await startWorkers(stack, 'planner', 1);
  stopLater.push(() => planner.stop());
  const configs = [
    {
      key: 'pipeline_1x_all',
      label: `1 extractor, ${cores} threads (default)`,
      extractors: 1,
      threads: cores,
      raw: onnxAll,
    },
    ...(cores > 1
      ? [
          { key: 'pipeline_1x_1', label: '1 extractor, 1 thread', extractors: 1, threads: 1, raw: fig.engine_onnx_1! },
          {
            key: 'pipeline_2x_1',
            label: '2 extractors, 1 thread each',
            extractors: 2,
            threads: 1,
            raw: fig.engine_onnx_1! * 2,
          },
        ]
      : []),
  ];
  for (const c of configs) {
    // Shards small enough that every extractor gets work: at least 2 per extractor.
    const shard = Math.min(shardSize, Math.ceil(stack.images / (2 * c.extractors)));
    const workers = await startWorkers(stack, 'extractor', c.extractors, {
      DEEPFEAT_ENGINE_THREADS: String(c.threads),
    });
    try {
      const warm = await timeExtraction(stack, shard); // loads the engine (and converts the model once)
      const rssFirst = await workers.peakRssMiB();
      const redisBefore = await redisUsec(stack);
      const [cpuBefore, machineBefore] = [await workers.cpuSeconds(), await machineCpuSeconds()];
      const times: number[] = [];
      for (let i = 0; i < pipelineReps; i++) times.push((await timeExtraction(stack, shard)).seconds);
      const [cpuAfter, machineAfter] = [await workers.cpuSeconds(), await machineCpuSeconds()];
      const redisPerImage = ((await redisUsec(stack)) - redisBefore) / (pipelineReps * stack.images);
      const imagesDone = pipelineReps * stack.images;
      const extractorMs = ((cpuAfter - cpuBefore) * 1000) / imagesDone;
      const machineBusyMs = ((machineAfter.busy - machineBefore.busy) * 1000) / imagesDone;
      const idleShare = 1 - (machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total);
      const rate = stack.images / median(times);
      record(
        c.key,
        c.label,
        rate,
        'images/s',
        `${median(times).toFixed(2)} s for ${stack.images} images, ${Math.ceil(stack.images / shard)} shards of ${shard}; ${warm.backend}`,
      );
      record(
        `${c.key}_vs_raw`,
        `  pipeline / raw engine (${c.extractors === 1 ? `onnx ${c.threads} thread${c.threads > 1 ? 's' : ''}` : '2 x onnx 1 thread'})`,
        rate / c.raw,
        'ratio',
        c.key === 'pipeline_1x_all' ? 'target >= 0.9' : '',
      );
      record(
        `${c.key}_rss`,
        '  extractor peak RSS (after first run / after all runs)',
        await workers.peakRssMiB(),
        'MiB',
        `${rssFirst.toFixed(0)} MiB after the first run of ${stack.images} images`,
      );
      record(
        `${c.key}_redis_usec_per_image`,
        '  Redis CPU per image (all commands: BullMQ, run state)',
        redisPerImage,
        'us',
        '',
      );
      record(
        `${c.key}_extractor_cpu_ms`,
        '  extractor CPU per image (decode + inference + I/O)',
        extractorMs,
        'ms',
        `machine: ${machineBusyMs.toFixed(1)} ms busy per image (S3 server, Redis, planner, bench too), ${(100 * idleShare).toFixed(0)}% idle`,
      );
    } finally {
      await workers.stop();
    }
  }
  if (fig.pipeline_2x_1 && fig.pipeline_1x_1) {
    record(
      'scaling_2x_vs_1x_1thread',
      '2 extractors / 1 extractor (1 thread each)',
      fig.pipeline_2x_1 / fig.pipeline_1x_1,
      'x',
      'target >= 1.6',
    );
    record(
      'scaling_2x_vs_1x_default',
      '2 extractors (1 thread) / 1 extractor (all cores)',
      fig.pipeline_2x_1 / fig.pipeline_1x_all!,
      'x',
      '',
    );
  }

  // ───────────── 3b. prediction ─────────────
  section(
    `predict: the same ${stack.images} images, classified by a model published from them (1 extractor, ${cores} threads)`,
  );
  // The timed runs above left train jobs queued (no trainer ran): drop them, or the trainer
  // started here would fit them all while predictions are timed.
  const trainQueue = makeQueue(stack.client.queues!, 'train');
  await trainQueue.obliterate({ force: true });
  await trainQueue.close();
  const evaluator = await startWorkers(stack, 'evaluator', 1);
  stopLater.push(() => evaluator.stop());
  const predictShard = Math.min(shardSize, Math.ceil(stack.images / 2));
  const extractorEnv = { DEEPFEAT_ENGINE_THREADS: String(cores) };
  // Extraction and batch prediction each in a fresh extractor process, so each peak RSS is its own.
  let model = '';
  const extractTimes: number[] = [];
  let extractRss = 0;
  {
    const ex = await startWorkers(stack, 'extractor', 1, extractorEnv);
    const trainer = await startWorkers(stack, 'trainer', 1);
    try {
      model = await publishModel(stack, 'bench-predict'); // also loads the engine
      await trainer.stop(); // the timed runs below must not be fitted meanwhile
      for (let i = 0; i < pipelineReps; i++) extractTimes.push((await timeExtraction(stack, predictShard)).seconds);
      extractRss = await ex.peakRssMiB();
    } finally {
      await trainer.stop();
      await ex.stop();
    }
  }
  const extractRate = stack.images / median(extractTimes);
  record(
    'predict_extract_rate',
    '  extraction of the images (enqueue -> last shard written)',
    extractRate,
    'images/s',
    `${median(extractTimes).toFixed(2)} s; extractor peak RSS ${extractRss.toFixed(0)} MiB`,
  );
  const batchRuns: Array<Awaited<ReturnType<typeof timePrediction>>> = [];
  let batchRss = 0;
  {
    const ex = await startWorkers(stack, 'extractor', 1, extractorEnv);
    try {
      await timePrediction(stack, model, predictShard); // warm-up: engine load, model read
      for (let i = 0; i < pipelineReps; i++) batchRuns.push(await timePrediction(stack, model, predictShard));
      batchRss = await ex.peakRssMiB();
    } finally {
      await ex.stop();
    }
  }
  const batchSeconds = median(batchRuns.map((r) => r.seconds));
  record(
    'predict_batch_rate',
    '  batch prediction on the pipeline (enqueue -> last shard written)',
    stack.images / batchSeconds,
    'images/s',
    `${batchSeconds.toFixed(2)} s; ${median(batchRuns.map((r) => r.secondsToCsv)).toFixed(2)} s to predictions.csv; ${batchRuns[0]!.classified}/${batchRuns[0]!.images} classified`,
  );
  record(
    'predict_batch_vs_extract',
    '  batch prediction / extraction',
    stack.images / batchSeconds / extractRate,
    'ratio',
    'target >= 0.9',
  );
  record(
    'predict_batch_rss',
    '  extractor peak RSS, batch prediction',
    batchRss,
    'MiB',
    `extraction: ${extractRss.toFixed(0)} MiB`,
  );

  // Local prediction: the same images as files, one process (the CLI's code, in this process for
  // the rate; as `deepfeat predict` in a child process for its peak RSS).
  const imageDir = await mkdtemp(path.join(tmpdir(), 'deepfeat-bench-predict-'));
  stopLater.push(() => rm(imageDir, { recursive: true, force: true }));
  await writeStackImages(stack, imageDir);
  const silent = () => undefined;
  const local = () => predictLocal(stack.client, model, [imageDir], { format: 'json' }, silent);
  const localMs = await timeIt(local, pipelineReps);
  const localRate = stack.images / (localMs / 1000);
  record(
    'predict_local_rate',
    `  deepfeat predict on local files (one process, classifier.onnx, ${cores} threads)`,
    localRate,
    'images/s',
    `${(localMs / 1000).toFixed(2)} s for ${stack.images} files`,
  );
  record(
    'predict_local_vs_extract',
    '  local prediction / extraction',
    localRate / extractRate,
    'ratio',
    'target >= 0.9',
  );
  const child = await runMeasured(['predict', model, imageDir, '--json'], stack.env);
  if (child.code !== 0) throw new Error(`deepfeat predict exited ${child.code}: ${child.stderr}`);
  record(
    'predict_local_rss',
    '  deepfeat predict peak RSS (the CLI process; decoders are separate)',
    child.peakMiB,
    'MiB',
    `${child.seconds.toFixed(1)} s wall with start-up and model load`,
  );

  // ───────────── 3c. feature cache ─────────────
  section(
    `feature cache: the same ${stack.images} images twice, planner + extractor + trainer + evaluator, enqueue -> published`,
  );
  {
    // The runs above left train jobs queued (their trainer was stopped): drop them, or the trainer
    // started here would fit them first.
    const trainJobs = makeQueue(stack.client.queues!, 'train');
    await trainJobs.obliterate({ force: true });
    await trainJobs.close();
    const cacheDeps = {
      redis: stack.client.redis!,
      prefix: stack.client.config.queuePrefix,
      s3: stack.client.s3,
      bucket: stack.client.config.bucket,
    };
    const ex = await startWorkers(stack, 'extractor', 1, { ...extractorEnv, DEEPFEAT_FEATURE_CACHE: 'on' });
    const trainer = await startWorkers(stack, 'trainer', 1);
    try {
      // Warm-up on copies of a few images (keys, so cache entries, of their own): the engine loads.
      await timeWholeRun(stack, await copyImages(stack, 'cache-warm-up', 16), 'bench-cache-warm-up', 1);
      const pairs: Array<{ first: RunTimes; rerun: RunTimes }> = [];
      for (let i = 0; i < pipelineReps; i++) {
        await pruneCache(cacheDeps, { all: true }); // every pair starts with nothing cached
        const first = await timeWholeRun(stack, stack.source, `bench-cache-${i}`, 100 + i);
        const rerun = await timeWholeRun(stack, stack.source, `bench-cache-${i}-again`, 200 + i);
        pairs.push({ first, rerun });
      }
      const med = (f: (r: RunTimes) => number, which: 'first' | 'rerun') => median(pairs.map((p) => f(p[which])));
      const stages = (which: 'first' | 'rerun') =>
        `plan ${med((r) => r.plan, which).toFixed(2)} s, extract ${med((r) => r.extract, which).toFixed(2)} s, ` +
        `train ${med((r) => r.train, which).toFixed(2)} s (job ${med((r) => r.trainWork, which).toFixed(2)}), ` +
        `evaluate ${med((r) => r.evaluate, which).toFixed(2)} s (job ${med((r) => r.evaluateWork, which).toFixed(2)})`;
      record(
        'cache_first_run',
        '  first run (nothing cached)',
        med((r) => r.seconds, 'first'),
        's',
        stages('first'),
      );
      const hits = Math.min(...pairs.map((p) => p.rerun.cache?.hits ?? 0));
      record(
        'cache_rerun',
        '  rerun, new seed and name (every image cached)',
        med((r) => r.seconds, 'rerun'),
        's',
        stages('rerun'),
      );
      record(
        'cache_rerun_hits',
        '  rerun cache hits',
        hits,
        'images',
        `of ${pairs[0]!.rerun.images} (fewest over ${pairs.length} reruns)`,
      );
      record(
        'cache_rerun_ratio',
        '  rerun / first run, enqueue -> published',
        median(pairs.map((p) => p.rerun.seconds / p.first.seconds)),
        'ratio',
        'goal <= 0.1',
      );
      record(
        'cache_rerun_extract_ms_per_image',
        '  rerun extract stage per image (lookups, segment reads, shard writes)',
        (med((r) => r.extract, 'rerun') * 1000) / pairs[0]!.rerun.images,
        'ms',
        `first run: ${((med((r) => r.extract, 'first') * 1000) / pairs[0]!.first.images).toFixed(2)} ms`,
      );
    } finally {
      await trainer.stop();
      await ex.stop();
    }
    // The index's memory in Redis per entry at scale (synthetic keys, filed as 256-row segments).
    const entries = quick ? 20_000 : 1_000_000;
    const mem = await cacheIndexMemory(stack, entries);
    record(
      'cache_redis_bytes_per_entry',
      `  feature cache index in Redis, per entry at ${entries} entries`,
      mem.bytesPerEntry,
      'bytes',
      `${(mem.totalBytes / 2 ** 20).toFixed(1)} MiB in ${mem.keys} keys; buckets ${mem.encoding}-encoded`,
    );
  }

  // ───────────── 4. BullMQ overhead ─────────────
  section('BullMQ overhead per shard job (no-op processor, 256-key payload)');
  const overheadJobs = quick ? 20 : 300;
  const overheads: Array<Awaited<ReturnType<typeof bullmqOverhead>>> = [];
  await bullmqOverhead(stack, Math.min(20, overheadJobs)); // warm-up
  for (let i = 0; i < (quick ? 1 : 3); i++) overheads.push(await bullmqOverhead(stack, overheadJobs));
  record(
    'bullmq_ms_per_job',
    'wall time per job, add -> completed, 1 worker',
    median(overheads.map((o) => o.msPerJob)),
    'ms',
    `${overheadJobs} jobs`,
  );
  record(
    'bullmq_redis_usec_per_job',
    'Redis CPU per job',
    median(overheads.map((o) => o.redisUsecPerJob)),
    'us',
    `${median(overheads.map((o) => o.redisCallsPerJob)).toFixed(0)} Redis commands per job`,
  );
  const perExtractor = fig.pipeline_1x_all!;
  const redisPerImage = fig.pipeline_1x_all_redis_usec_per_image!;
  record(
    'redis_extractors_capacity',
    'extractors one Redis core can feed (est.)',
    1e6 / (redisPerImage * perExtractor),
    'extractors',
    `1e6 us/s / (${redisPerImage.toFixed(0)} us/image x ${perExtractor.toFixed(0)} images/s per extractor)`,
  );
  record(
    'bullmq_share_of_shard',
    'BullMQ wall time / one shard extraction',
    (100 * fig.bullmq_ms_per_job!) / ((shardSize / perExtractor) * 1000),
    '%',
    `per ${shardSize}-image shard`,
  );

  // ───────────── 5. trainer ─────────────
  section(`trainer: ${trainRows} x ${DIM} features, ${CLASSES} classes`);
  const rand = mulberry32(1);
  const X = new Float32Array(trainRows * DIM);
  const y = new Int32Array(trainRows);
  for (let i = 0; i < trainRows; i++) {
    y[i] = i % CLASSES;
    for (let j = 0; j < DIM; j++) X[i * DIM + j] = rand() * 2 - 1 + (j % CLASSES === y[i] ? 0.5 : 0);
  }
  const fitMs = await timeIt(
    () => fitLogisticRegression({ X, n: trainRows, d: DIM, y, k: CLASSES, lambda: 1e-2 }),
    quick ? 1 : 3,
    quick ? 0 : 1,
  );
  record('fit_one_lambda', 'one L-BFGS fit (one lambda), in-process, 1 thread', fitMs / 1000, 's', '');
  if (cores > 1) {
    const pool = await ObjectivePool.create(cores - 1);
    try {
      const poolMs = await timeIt(
        () => fitLogisticRegression({ X, n: trainRows, d: DIM, y, k: CLASSES, lambda: 1e-2, runner: pool.bind }),
        quick ? 1 : 3,
        quick ? 0 : 1,
      );
      record(
        'fit_one_lambda_pool',
        `  the same fit on ${cores} threads (objective pool, same result)`,
        poolMs / 1000,
        's',
        `${(fitMs / poolMs).toFixed(2)}x faster`,
      );
    } finally {
      await pool.close();
    }
  }
  const job = await trainerJob(stack, trainRows, DIM, CLASSES);
  record(
    'train_job',
    'train job in the trainer process (5 lambdas + refit, all cores)',
    job.seconds,
    's',
    `fit ${job.fitSeconds.toFixed(1)} s, rest is reading ${Math.ceil(trainRows / 256)} shards from S3; one run`,
  );
  record(
    'train_job_rss',
    '  trainer peak RSS',
    job.peakRssMiB,
    'MiB',
    `feature matrix ${job.matrixMiB.toFixed(0)} MiB`,
  );
  const extractSeconds = trainRows / perExtractor;
  record(
    'ratio_fit_vs_extract',
    'trainer fit / extraction of the same images (1 extractor)',
    job.fitSeconds / extractSeconds,
    'ratio',
    `${extractSeconds.toFixed(0)} s to extract ${trainRows} images; target <= 0.05`,
  );
  record(
    'ratio_train_vs_extract',
    'whole train job / extraction of the same images',
    job.seconds / extractSeconds,
    'ratio',
    'includes reading the shards from S3',
  );
} finally {
  for (const stop of stopLater) await stop().catch(() => undefined);
  await stack.close();
}

/**
 * Redis memory of the feature cache's index at `entries` entries (random keys, 256-row segments,
 * filed as the extractor files them), from INFO's used_memory before and after; then removed.
 */
async function cacheIndexMemory(
  s: Stack,
  entries: number,
): Promise<{ bytesPerEntry: number; totalBytes: number; keys: number; encoding: string }> {
  const redis = s.client.redis!;
  const prefix = 'bench-cache-memory';
  const index = new CacheIndex(redis, prefix);
  const hash = specHash('bench-cache-memory');
  const used = async () => Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
  const before = await used();
  const record = { name: 'synthetic', rows: 256, dim: DIM, offset: 128, bytes: 0, createdAt: Date.now() };
  const segments = Math.ceil(entries / 256);
  await mapLimit(
    Array.from({ length: segments }, (_, i) => i),
    8,
    async (i) => {
      const rows = Math.min(256, entries - i * 256);
      const keys = Array.from({ length: rows }, () => randomBytes(32));
      await index.addSegment({ hash, spec: 'synthetic', dim: DIM }, await index.nextSegment(hash), record, keys);
    },
  );
  const totalBytes = (await used()) - before;
  const keys = (await redis.keys(`${prefix}:fcache:*`)).length;
  const encoding = String(await redis.object('ENCODING', redisKeys(prefix, hash).bucket(0)));
  await index.removeSpec(hash);
  return { bytesPerEntry: totalBytes / entries, totalBytes, keys, encoding };
}

async function redisUsec(s: Stack): Promise<number> {
  const info = await s.client.redis!.info('commandstats');
  let usec = 0;
  for (const m of info.matchAll(/usec=(\d+)/g)) usec += Number(m[1]);
  return usec;
}

// ───────────── 6. retrieval ─────────────
{
  const { openScanner } = await import('../services/retrieval/scan.js');
  const { exactTopK, normaliseRows } = await import('../services/retrieval/top-k.js');
  const { KNN_MAX_QUERIES, knnDatabaseCap, knnMetrics } = await import('../services/retrieval/knn.js');
  const sizes = quick ? [1_000, 10_000] : [10_000, 100_000];
  const name = (n: number) => `${n / 1000}k`;
  section(`retrieval: exact top-5 by cosine over ${DIM}-d unit vectors (synthetic), one core`);
  const scanner = await openScanner(1);
  const rand = mulberry32(13);
  const unitRows = (n: number) => {
    const X = new Float32Array(n * DIM);
    for (let i = 0; i < X.length; i++) X[i] = rand() * 2 - 1;
    normaliseRows(X, n, DIM);
    return X;
  };
  try {
    const queries = unitRows(8);
    for (const n of sizes) {
      const X = unitRows(n);
      const mb = (n * DIM * 4) / 1e6;
      const q = queries.subarray(0, DIM);
      const jsMs = await timeIt(() => exactTopK(X, n, DIM, q, 5));
      record(
        `retrieval_js_${name(n)}`,
        `scalar JS scan, ${n.toLocaleString('en-US')} vectors`,
        jsMs,
        'ms/query',
        `${mb.toFixed(0)} MB matrix`,
      );
      const onnxMs = await timeIt(() => scanner.topK(X, n, DIM, q, 1, 5), quick ? 1 : 9);
      record(
        `retrieval_onnx_${name(n)}`,
        `ONNX Runtime MatMul + TopK, 1 thread, ${n.toLocaleString('en-US')} vectors`,
        onnxMs,
        'ms/query',
        `${(mb / onnxMs).toFixed(1)} GB/s of matrix; ${(jsMs / onnxMs).toFixed(1)}x the JS scan; goal < 50 ms at 100k`,
      );
      const batchMs = await timeIt(() => scanner.topK(X, n, DIM, queries, 8, 5), quick ? 1 : 5);
      record(
        `retrieval_onnx_batch8_${name(n)}`,
        '  the same, 8 queries at once (as `similar` sends a batch)',
        batchMs / 8,
        'ms/query',
        `${batchMs.toFixed(1)} ms for the batch`,
      );
    }
    // The evaluator's kNN metrics at both caps: 1,000 queries over an 82,241-row database.
    const dbRows = quick ? 5_000 : knnDatabaseCap(DIM);
    const qRows = quick ? 200 : KNN_MAX_QUERIES;
    const db = new Float32Array(dbRows * DIM);
    for (let i = 0; i < db.length; i++) db[i] = rand();
    const test = unitRows(qRows);
    const labels = (n: number) => Array.from({ length: n }, (_, i) => `c${i % CLASSES}`);
    const t0 = performance.now();
    await knnMetrics({
      database: { X: db, n: dbRows, d: DIM, labels: labels(dbRows) },
      databaseOf: dbRows,
      test: { X: test, n: qRows, d: DIM, labels: labels(qRows), keys: labels(qRows).map((l, i) => `${l}/${i}`) },
      scanner,
    });
    record(
      'knn_metrics_at_caps',
      `evaluator kNN metrics, ${qRows.toLocaleString('en-US')} queries x ${dbRows.toLocaleString('en-US')} rows, 1 thread`,
      (performance.now() - t0) / 1000,
      's',
      'one run; the caps bound it at any run size',
    );
  } finally {
    await scanner.close();
  }
}

// ───────────── 7. feed ─────────────
// The extractor with a zero-cost engine (bench/feed.ts, issue 14): what it can feed an accelerator,
// and its CPU per image by stage; on its own stack. --quick runs one configuration on CIFAR.
section('feed: extractors with a zero-cost engine (their ceiling on any accelerator), CPU per image by stage');
{
  const { runFeedBench } = await import('./feed.js');
  await runFeedBench({ quick, record, ...(quick ? { only: ['cifar', '1p'] } : {}) });
}

await writeFile(
  outFile,
  JSON.stringify({ date: new Date().toISOString(), quick, cores, batch, shardSize, figures: fig, rows }, null, 2) +
    '\n',
);
console.log(`\nwritten: ${path.relative(process.cwd(), outFile)}`);
