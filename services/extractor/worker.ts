/**
 * Extract job: one shard of a few hundred images. Objects are fetched and decoded with bounded
 * concurrency, one batch ahead of the engine (while batch b runs, batch b+1 downloads and
 * decodes), so I/O overlaps inference. Bad images become failure rows with their reason; storage
 * faults fail the job (transient ones are retried by BullMQ, permanent ones end the run).
 */
import { availableParallelism } from 'node:os';
import { mapLimit } from '../../shared/concurrency.js';
import type { ShardRow } from '../../shared/dataset.js';
import { ImageError, NotFoundError } from '../../shared/errors.js';
import { writeShard } from '../../shared/feature-store.js';
import { ObjectTooLargeError, RequestRefusedError, getObjectBytes } from '../../shared/s3.js';
import { shardItems } from './shard-items.js';
import type { ImageFailure } from '../../shared/run-state.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { createEngineCache } from './engine-cache.js';
import { loadEngineInThread } from './engines/thread.js';
import { DecoderPool } from './decoder-pool.js';
import { createModelSource } from './model-source.js';

type Decoded = { ok: true; pixels: Uint8Array } | { ok: false; reason: string };

export function startExtractorWorker(ctx: ServiceContext, concurrency = 1) {
  const { extractor: cfg } = ctx.config;
  // One engine per process, in its own thread (see engine-cache.ts).
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
        { timeoutMs: cfg.engineTimeoutSeconds * 1000, timeoutSetting: 'DEEPFEAT_ENGINE_TIMEOUT' },
      ),
    (reason) => ctx.log.error({ reason }, 'feature engine thread ended; a new one starts with the next job'),
  );

  // Images are decoded in separate processes, each bounded in time and memory (decoder-pool.ts).
  // More of them than cores would only queue for the CPU; each holds at most DEEPFEAT_DECODE_MEMORY.
  const decoders = new DecoderPool({
    processes: Math.max(1, Math.min(cfg.fetchConcurrency, availableParallelism())),
    timeoutSeconds: cfg.decodeTimeoutSeconds,
    memoryLimitMiB: cfg.decodeMemoryMiB,
    log: (msg, extra) => ctx.log.warn(extra ?? {}, msg),
  });

  const worker = startWorker(
    ctx,
    'extract',
    async (data, _job, log) => {
      const { runId, shard, sourceBucket } = data;
      const items = await shardItems(ctx, runId, shard, data.manifest);
      // Held until the job ends, so a concurrent job for another spec cannot dispose it (engine-cache.ts).
      using lease = await engines.acquire(data.features);
      const engine = lease.engine;
      const fetchAndDecode = async (key: string): Promise<Decoded> => {
        try {
          const bytes = await getObjectBytes(ctx.s3, sourceBucket, key, cfg.maxImageBytes);
          const size = { width: engine.input.width, height: engine.input.height };
          const pixels = await decoders.decode(bytes, {
            ...size,
            maxPixels: cfg.maxImagePixels,
            formats: cfg.imageFormats,
          });
          return { ok: true, pixels };
        } catch (err) {
          if (err instanceof ImageError || err instanceof ObjectTooLargeError)
            return { ok: false, reason: err.message };
          if (err instanceof NotFoundError) return { ok: false, reason: 'object not found (deleted after planning?)' };
          // The server refused this image's key (one it cannot store, too long, not valid text):
          // that image's failure, with the server's reason. A refusal of the bucket, denied
          // access and storage faults are not about one image: they fail the job.
          if (err instanceof RequestRefusedError && err.scope === 'object') return { ok: false, reason: err.reason };
          throw err; // storage faults: fail the job so BullMQ retries it, or the run fails
        }
      };

      const batches: Array<typeof items> = [];
      const batchSize = cfg.batchSize || engine.preferredBatch;
      for (let i = 0; i < items.length; i += batchSize) batches.push(items.slice(i, i + batchSize));
      const decodeBatch = (b: number) => mapLimit(batches[b]!, cfg.fetchConcurrency, (it) => fetchAndDecode(it.key));

      const rows: ShardRow[] = [];
      const failures: ImageFailure[] = [];
      const chunks: Float32Array[] = [];
      let nRows = 0;
      let pending = batches.length > 0 ? decodeBatch(0) : undefined;
      for (let b = 0; b < batches.length; b++) {
        const decoded = await pending!;
        // Start the next batch's downloads before running this one through the engine.
        pending = b + 1 < batches.length ? decodeBatch(b + 1) : undefined;
        pending?.catch(() => undefined); // a rejection is rethrown when awaited above
        const ok: Uint8Array[] = [];
        batches[b]!.forEach((it, i) => {
          const d = decoded[i]!;
          if (d.ok) {
            rows.push({ ...it, split: it.split as ShardRow['split'], row: nRows + ok.length });
            ok.push(d.pixels);
          } else {
            rows.push({ ...it, split: it.split as ShardRow['split'], error: d.reason });
            failures.push({ key: it.key, reason: d.reason });
          }
        });
        if (ok.length > 0) {
          chunks.push(await engine.embed(ok));
          nRows += ok.length;
        }
        await ctx.runs.setShardProgress(runId, shard, {
          done: nRows,
          failed: failures.length,
          complete: false,
          engine: engine.id,
          backend: engine.backend,
          input: `${engine.input.width}x${engine.input.height}`,
        });
      }
      const features = new Float32Array(nRows * engine.dim);
      let off = 0;
      for (const c of chunks) {
        features.set(c, off);
        off += c.length;
      }
      await writeShard(ctx.s3, ctx.config.bucket, runId, shard, features, engine.dim, rows);
      await ctx.runs.setShardProgress(
        runId,
        shard,
        {
          done: nRows,
          failed: failures.length,
          complete: true,
          engine: engine.id,
          backend: engine.backend,
          input: `${engine.input.width}x${engine.input.height}`,
        },
        failures,
      );
      if (failures.length > 0) log.warn({ runId, shard, failed: failures.length, first: failures[0] }, 'images failed');
      return {
        shard,
        rows: nRows,
        failed: failures.length,
        engine: engine.id,
        backend: engine.backend,
        input: `${engine.input.width}x${engine.input.height}`,
      };
    },
    concurrency,
  );
  worker.on('closed', () => {
    engines.close();
    void decoders.close();
  });
  return worker;
}
