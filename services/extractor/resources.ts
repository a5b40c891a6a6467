/**
 * What an extractor process holds once, whichever of its queues a job comes from: the feature
 * engines (engine-cache.ts, each in its own thread) and the decoder processes (decoder-pool.ts).
 * The extract handler (worker.ts) and the predict handler (predict.ts) run in the same process
 * and share them, so a prediction run on a backbone an extraction just used reuses its engine,
 * and the process never holds two pools of decoders.
 *
 * Both workers of a process acquire the resources of their context; the last one to close
 * releases them, and a shutdown waits until they are gone (worker-kit.ts, beforeExit). With
 * `--concurrency N`, each of the two workers runs up to N jobs, so a process may run an extract
 * job and a predict job at once: on the same backbone they share one engine, on two backbones it
 * holds two (the engine cache never disposes an engine a job holds).
 */
import v8 from 'node:v8';
import type { ServiceContext } from '../../shared/worker-kit.js';
import { createEngineCache, type EngineCache } from './engine-cache.js';
import { loadEngineInThread, type ThreadedEngine } from './engines/thread.js';
import { DecoderPool, decodeProcesses } from './decoder-pool.js';
import { createModelSource } from './model-source.js';

export interface ExtractorResources {
  readonly engines: EngineCache<ThreadedEngine>;
  readonly decoders: DecoderPool;
}

interface Held {
  readonly resources: ExtractorResources;
  users: number;
}

/** One set per context, and a context per worker process (cli/workers.ts). */
const held = new WeakMap<ServiceContext, Held>();

/** The engine thread's module when a benchmark replaced it (useEngineThreadModule); else the real one. */
let engineThreadModule: URL | undefined;

/**
 * Bench only: engines of this process load from `module` (a thread module serving the engine
 * API) instead of the real engines. Called by bench/zero-engine-extractor.ts before it starts the
 * worker; no CLI flag, request field or environment variable reaches it.
 */
export function useEngineThreadModule(module: URL): void {
  engineThreadModule = module;
}

/**
 * The process's engines and decoders, made on first use; `release()` once the caller's worker
 * has closed. The last release disposes the engines and ends the decoder processes.
 */
export function acquireExtractorResources(ctx: ServiceContext): {
  resources: ExtractorResources;
  /** Lets go (once; later calls return the same promise); the last one resolves when the engines and decoders are gone. */
  release(): Promise<void>;
} {
  let h = held.get(ctx);
  if (!h) {
    h = { resources: createResources(ctx), users: 0 };
    held.set(ctx, h);
  }
  const mine = h;
  mine.users++;
  let released: Promise<void> | undefined;
  const letGo = async () => {
    if (--mine.users > 0) return;
    if (held.get(ctx) === mine) held.delete(ctx);
    await Promise.all([mine.resources.engines.close(), mine.resources.decoders.close()]);
  };
  return {
    resources: mine.resources,
    release() {
      released ??= letGo();
      return released;
    },
  };
}

/**
 * V8's old-generation limit grows to twice the live heap after each full collection, not by its
 * own factor (issue 14, measured with bench/feed.ts and --trace-incremental-marking). Fetching and
 * decoding hundreds of images a second grows the young generation to its largest; V8 then starts
 * incremental marking ("Start (task)") whenever the room left below the old-generation limit is
 * less than the young generation's size, and its own factor after a collection left about 23 MB
 * of room above the extractor's 65 MB heap: some runs fell into a full collection every 100–400 ms
 * (40–48% of the main thread's samples, twice the extractor's CPU per image), others never did.
 * Twice the live heap leaves more room than the young generation can hold. An operator's own
 * --heap-growing-percent (on the command line or in NODE_OPTIONS) is kept.
 */
function steadyHeapGrowth(): void {
  const given = [...process.execArgv, process.env.NODE_OPTIONS ?? ''];
  if (given.some((a) => a.includes('heap-growing-percent') || a.includes('heap_growing_percent'))) return;
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}

/** The old-generation limit after a full collection, as a percentage above the live heap. */
const HEAP_GROWING_PERCENT = 100;

function createResources(ctx: ServiceContext): ExtractorResources {
  steadyHeapGrowth();
  const { extractor: cfg } = ctx.config;
  // One engine per process and spec, in its own thread (see engine-cache.ts).
  const engines = createEngineCache(
    (spec) =>
      loadEngineInThread(
        spec,
        {
          backend: cfg.tfjsBackend,
          engine: cfg.engine,
          threads: cfg.engineThreads,
          onnxProvider: cfg.onnxProvider,
          cacheDir: cfg.cacheDir,
          log: (msg, extra) => ctx.log.info(extra ?? {}, msg),
          // A run request names the model: only s3:// and DEEPFEAT_MODEL_DIRS folders, size-bounded.
          readObject: createModelSource({ s3: ctx.s3, modelDirs: cfg.modelDirs, maxModelBytes: cfg.maxModelBytes }),
          maxModelBytes: cfg.maxModelBytes,
        },
        {
          timeoutMs: cfg.engineTimeoutSeconds * 1000,
          timeoutSetting: 'DEEPFEAT_ENGINE_TIMEOUT',
          ...(engineThreadModule ? { module: engineThreadModule } : {}),
        },
      ),
    (reason) => ctx.log.error({ reason }, 'feature engine thread ended; a new one starts with the next job'),
  );
  // Images are decoded in separate processes, each bounded in time and memory (decoder-pool.ts):
  // one per core by default (DEEPFEAT_DECODE_THREADS); each holds at most DEEPFEAT_DECODE_MEMORY.
  const decoders = new DecoderPool({
    processes: decodeProcesses(cfg),
    timeoutSeconds: cfg.decodeTimeoutSeconds,
    memoryLimitMiB: cfg.decodeMemoryMiB,
    jpegDecoder: cfg.jpegDecoder,
    log: (msg, extra) => ctx.log.warn(extra ?? {}, msg),
  });
  return { engines, decoders };
}
