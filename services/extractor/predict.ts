/**
 * Predict job: one shard of a prediction run, in an extractor process. The shard's images go
 * through the same loop as extraction (shard-loop.ts) with the engine the model's features were
 * made with, from the same per-process engine cache (resources.ts); each embedded row is scored
 * by the model's linear softmax (shared/softmax-model.ts) and written with its top-k labels to
 * runs/<id>/predictions/<shard>.jsonl, one line per item in manifest order, a bad image with its
 * reason. A retried shard rewrites the same file with the same lines (features are deterministic
 * for the same images and engine), so nothing is lost or doubled. The feature cache serves the
 * images it holds for the model's feature spec (a model's own training images, say), and keeps
 * the new vectors, as for extraction.
 */
import { ModelError } from '../../shared/errors.js';
import type { ModelArtifact } from '../../shared/model-format.js';
import { predictionsShardKey, topK, type PredictionLine } from '../../shared/predictions.js';
import { putObject, s3Url } from '../../shared/s3.js';
import { predictProba } from '../../shared/softmax-model.js';
import { predictItemSchema } from '../../shared/queues.js';
import { quote } from '../../shared/text.js';
import { beforeExit, startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import type { FeatureEngine } from './engines/engine.js';
import { createModelCache } from './model-cache.js';
import { readPublishedModel } from '../../shared/published-model.js';
import { shardItems } from './shard-items.js';
import { acquireExtractorResources } from './resources.js';
import { completeShard, embedShard } from './shard-loop.js';
import { openShardCache } from './feature-cache/shard-cache.js';

export function startPredictWorker(ctx: ServiceContext, concurrency = 1) {
  // The engines and decoders are the process's, shared with the extract worker (resources.ts).
  const { resources, release } = acquireExtractorResources(ctx);
  const { engines, decoders } = resources;
  const bucket = ctx.config.bucket;
  const models = createModelCache((key) => readPublishedModel(ctx.s3, bucket, key, ctx.config.extractor.maxModelBytes));

  const worker = startWorker(
    ctx,
    'predict',
    async (data, _job, log) => {
      const { runId, shard, sourceBucket, top } = data;
      const ref = { runId, shard, sourceBucket };
      const items = await shardItems(ctx, runId, shard, data.manifest, predictItemSchema);
      // The payload's schema holds the key to models/<name>/<version>/model.json of its name and version.
      const model = await models.get(data.model.key);
      const uri = s3Url(bucket, data.model.key);
      if (top > model.classes.length) {
        throw new ModelError(`${quote(uri)} has ${model.classes.length} classes, fewer than the ${top} asked for`);
      }
      using lease = await engines.acquire(model.features.spec);
      const engine = lease.engine;
      assertEngineFits(model, engine, uri);
      const cache = await openShardCache(ctx, log, model.features.spec, engine, sourceBucket, items);

      const lines: string[] = [];
      const outcome = await embedShard(
        { ...ctx, decoders },
        ref,
        engine,
        items,
        (batch) => {
          let row = 0;
          batch.items.forEach((it, i) => {
            const error = batch.errors[i];
            const base = it.label === undefined ? { key: it.key } : { key: it.key, label: it.label };
            let line: PredictionLine;
            if (error !== undefined) line = { ...base, error };
            else {
              const x = batch.features.subarray(row * engine.dim, (row + 1) * engine.dim);
              row++;
              line = { ...base, top: topK(model.classes, predictProba(model, x), top) };
            }
            lines.push(JSON.stringify(line));
          });
        },
        cache,
      );
      // Results first, then the shard counts as complete: a shard marked complete has its file.
      await putObject(
        ctx.s3,
        bucket,
        predictionsShardKey(runId, shard),
        lines.length > 0 ? `${lines.join('\n')}\n` : '',
        'application/x-ndjson',
      );
      await cache?.flush();
      await completeShard(ctx.runs, ref, engine, outcome);
      const { failures } = outcome;
      if (failures.length > 0) log.warn({ runId, shard, failed: failures.length, first: failures[0] }, 'images failed');
      return { shard, rows: outcome.done, failed: failures.length, engine: engine.id, backend: engine.backend };
    },
    concurrency,
  );
  worker.on('closed', () => void release());
  beforeExit(ctx, release);
  return worker;
}

/**
 * The engine must make the features the model was fitted on: the same width, and the same
 * engine id (backbone@node, or raw-pixels:NxN) where the model records it. Otherwise every
 * prediction would be meaningless, so the run fails naming both.
 */
export function assertEngineFits(model: ModelArtifact, engine: Pick<FeatureEngine, 'id' | 'dim'>, uri: string): void {
  const recorded = model.features.engine;
  if (engine.dim !== model.features.dim || (recorded !== 'unknown' && recorded !== engine.id)) {
    throw new ModelError(
      `${quote(uri)} was fitted on ${quote(recorded)} features (${model.features.dim} per image), but its feature ` +
        `spec now gives ${quote(engine.id)} (${engine.dim}): publish the model again from a run on this deepfeat`,
    );
  }
}
