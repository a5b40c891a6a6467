/**
 * Extract job: one shard of a few hundred images of a training run, through the shared shard loop
 * (shard-loop.ts: fetch and decode a batch ahead of the engine, failures with their reasons,
 * progress per batch), written as the shard's .npy of feature rows and its .jsonl of row
 * metadata (shared/feature-store.ts).
 */
import type { ShardRow } from '../../shared/dataset.js';
import { writeShard } from '../../shared/feature-store.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
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
    async (data, _job, log) => {
      const { runId, shard, sourceBucket } = data;
      const ref = { runId, shard, sourceBucket };
      const items = await shardItems(ctx, runId, shard, data.manifest);
      // Held until the job ends, so a concurrent job for another spec cannot dispose it (engine-cache.ts).
      using lease = await engines.acquire(data.features);
      const engine = lease.engine;

      const rows: ShardRow[] = [];
      const chunks: Float32Array[] = [];
      let nRows = 0;
      const outcome = await embedShard({ ...ctx, decoders }, ref, engine, items, (batch) => {
        batch.items.forEach((it, i) => {
          const error = batch.errors[i];
          rows.push(error === undefined ? { ...it, row: nRows++ } : { ...it, error });
        });
        if (batch.features.length > 0) chunks.push(batch.features);
      });
      const features = new Float32Array(nRows * engine.dim);
      let off = 0;
      for (const c of chunks) {
        features.set(c, off);
        off += c.length;
      }
      await writeShard(ctx.s3, ctx.config.bucket, runId, shard, features, engine.dim, rows);
      await completeShard(ctx.runs, ref, engine, outcome);
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
  worker.on('closed', release);
  return worker;
}
