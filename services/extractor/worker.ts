/**
 * Extract job: one shard of a few hundred images of a training run, through the shared shard loop
 * (shard-loop.ts: fetch and decode a batch ahead of the engine, failures with their reasons,
 * progress per batch), written as the shard's .npy of feature rows and its .jsonl of row
 * metadata (shared/feature-store.ts). With the feature cache (feature-cache/shard-cache.ts), the
 * images it holds are copied in from it rather than extracted, and the shard's new vectors are
 * added to it once the shard is written: a run's shards are its own either way.
 */
import type { ShardRow } from '../../shared/dataset.js';
import { writeShard } from '../../shared/feature-store.js';
import { jobLease } from '../../shared/job-lease.js';
import { beforeExit, startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { openShardCache } from './feature-cache/shard-cache.js';
import { acquireExtractorResources } from './resources.js';
import { completeShard, embedShard } from './shard-loop.js';
import { shardItems } from './shard-items.js';

export function startExtractorWorker(ctx: ServiceContext, concurrency = 1) {
  // The engines and decoders are the process's, shared with the predict worker (resources.ts).
  const { resources, release } = acquireExtractorResources(ctx);
  const { engines, decoders } = resources;

  const worker = startWorker(
    ctx,
    'extract',
    async (data, job, log) => {
      const { runId, shard, sourceBucket } = data;
      // Progress and the shard's files are written only while this attempt holds the job (job-lease.ts).
      const jobLock = jobLease(job, ctx.config.jobLockMs, `extract job of run ${runId} shard ${shard}`);
      const ref = { runId, shard, sourceBucket, lease: jobLock };
      const items = await shardItems(ctx, runId, shard, data.manifest);
      // Held until the job ends, so a concurrent job for another spec cannot dispose it (engine-cache.ts).
      using lease = await engines.acquire(data.features);
      const engine = lease.engine;
      const cache = await openShardCache(ctx, log, data.features, engine, sourceBucket, items);

      const rows: ShardRow[] = [];
      const chunks: Float32Array[] = [];
      let nRows = 0;
      const outcome = await embedShard(
        { ...ctx, decoders },
        ref,
        engine,
        items,
        (batch) => {
          batch.items.forEach((it, i) => {
            const error = batch.errors[i];
            // The shard's row metadata as before the cache: the listed version stays in the manifest.
            const { key, label, split } = it;
            rows.push(error === undefined ? { key, label, split, row: nRows++ } : { key, label, split, error });
          });
          if (batch.features.length > 0) chunks.push(batch.features);
        },
        cache,
      );
      const features = new Float32Array(nRows * engine.dim);
      let off = 0;
      for (const c of chunks) {
        features.set(c, off);
        off += c.length;
      }
      await writeShard(ctx.s3, ctx.config.bucket, runId, shard, features, engine.dim, rows, jobLock);
      // The shard's own output first: the cache is an optimisation that never holds a run's only copy.
      await cache?.flush();
      await completeShard(ctx.runs, ref, engine, outcome);
      if (cache) log.info({ runId, shard, ...outcome.cache }, 'feature cache');
      const { failures } = outcome;
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
  worker.on('closed', () => void release());
  beforeExit(ctx, release);
  return worker;
}
