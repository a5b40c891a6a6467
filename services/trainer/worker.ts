/**
 * Train job: check the fit fits in memory, read train/val features, standardise, pick L2 on val,
 * fit, and write the candidate with what made its features (from the extract jobs' results).
 */
import { z } from 'zod';
import { putJson } from '../../shared/s3.js';
import { readFeatureDim, readFeatureSets } from '../../shared/feature-store.js';
import { DatasetError, InternalError, ModelError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { quote } from '../../shared/text.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { DEFAULT_LAMBDAS } from './lambda-selection.js';
import { applyStandardizer, fitStandardizer } from './standardizer.js';
import { fitInThread } from './fit-thread.js';
import { checkTrainerMemory, trainerMemoryBudget } from './memory.js';
import { candidateKey, type Candidate } from '../../shared/model-format.js';
import { transformFeatures } from '../../shared/softmax-model.js';

export function startTrainerWorker(ctx: ServiceContext, concurrency = 1) {
  return startWorker(
    ctx,
    'train',
    async (data, job, log) => {
      const { runId, shards, classes } = data;
      await ctx.runs.setStage(runId, 'training');
      const bucket = ctx.config.bucket;
      const made = featureProvenance(await job.getChildrenValues(), shards, runId, log);
      // Before any shard is read: the most rows the fit can have (the plan's train+val images,
      // or every decoded image as the extract jobs reported them) × the features per row (a
      // shard's .npy header). Then exactly, once the shards' metadata has been read.
      const budget = trainerMemoryBudget(ctx.config.trainer.memoryMiB);
      const size = (rows: number, dim: number) => ({ rows, dim, classes: classes.length });
      const upper = Math.min(data.fitImages ?? Infinity, made.rows ?? Infinity);
      if (Number.isFinite(upper)) {
        const dim = await readFeatureDim(ctx.s3, bucket, runId);
        if (dim !== undefined) checkTrainerMemory(size(upper, dim), budget, runId);
      }
      const readStart = performance.now();
      const [train, val] = await readFeatureSets(ctx.s3, bucket, runId, shards, [['train'], ['val']], {
        beforeAllocate: (rows, dim) => checkTrainerMemory(size(rows, dim), budget, runId),
      });
      const d = Math.max(train.d, val.d);
      const index = new Map(classes.map((c, i) => [c, i]));
      const toY = (labels: string[]) => Int32Array.from(labels, (l) => index.get(l)!);
      for (const c of classes) {
        if (!train.labels.includes(c)) {
          throw new DatasetError(
            `class ${JSON.stringify(c)} has no usable training images in run ${runId} (all failed to decode?): see \`deepfeat status ${runId}\` for the failures`,
          );
        }
      }
      // Standardise with statistics of train+val (the data the final model is refit on), in place:
      // the two sets are adjacent views of one buffer (readFeatureSets), which then moves to the
      // fit thread without a copy. Peak memory is about one feature matrix.
      const n = train.n + val.n;
      if (
        val.n > 0 &&
        (train.X.buffer !== val.X.buffer || train.X.byteOffset + train.X.byteLength !== val.X.byteOffset)
      ) {
        // A bug, the same on every attempt: permanent, not retried.
        throw new InternalError('readFeatureSets returned train and val rows that are not adjacent');
      }
      const both = new Float32Array(train.X.buffer, train.X.byteOffset, n * d);
      refuseNonFinite(both, d, [...train.keys, ...val.keys], runId);
      transformFeatures(data.featureTransform, both);
      const standardizer = fitStandardizer(both, n, d);
      applyStandardizer(both, n, d, standardizer, both);
      const t0 = performance.now();
      const fit = await fitInThread(
        {
          train: { X: train.X, n: train.n, y: toY(train.labels) },
          val: { X: val.X, n: val.n, y: toY(val.labels) },
          d,
          k: classes.length,
          lambdas: data.lambdas ?? DEFAULT_LAMBDAS,
        },
        { timeoutMs: ctx.config.trainer.fitTimeoutSeconds * 1000, timeoutSetting: 'DEEPFEAT_FIT_TIMEOUT' },
      );
      const fitMs = Math.round(performance.now() - t0);
      const readMs = Math.round(t0 - readStart);
      log.info({ runId, lambda: fit.lambda, n, d, readMs, fitMs }, 'fitted');
      const candidate: Candidate = {
        runId,
        classes,
        dim: d,
        ...(data.featureTransform ? { featureTransform: data.featureTransform } : {}),
        mean: Array.from(standardizer.mean),
        std: Array.from(standardizer.std),
        weights: classes.map((_, c) => Array.from(fit.model.W.subarray(c * d, (c + 1) * d))),
        bias: Array.from(fit.model.b),
        lambda: fit.lambda,
        validation: fit.validation.map((v) => ({ lambda: v.lambda, accuracy: v.accuracy, logLoss: v.logLoss })),
        trainImages: train.n,
        valImages: val.n,
        fitMs,
        ...(made.features ? { features: made.features } : {}),
      };
      await putJson(ctx.s3, bucket, candidateKey(runId), candidate);
      return { lambda: fit.lambda, trainImages: train.n, valImages: val.n, dim: d };
    },
    concurrency,
  );
}

/**
 * A user's model or node can produce NaN or Infinity; one such value would poison the whole fit,
 * so the run fails naming the image and the way out (the solver's own check is an invariant).
 */
function refuseNonFinite(X: Float32Array, d: number, keys: readonly string[], runId: string): void {
  for (let i = 0; i < X.length; i++) {
    if (!Number.isFinite(X[i])) {
      const row = Math.floor(i / d);
      throw new ModelError(
        `the feature extractor gave ${X[i]} for image ${quote(keys[row] ?? `row ${row}`)} (feature ${i % d}) in run ${runId}: ` +
          'these features cannot be trained on; use another --model or --node',
      );
    }
  }
}

/** An extract job's result as the trainer reads it back (Redis gives back plain JSON). */
const extractResultSchema = z.object({
  shard: z.number().int().min(0),
  rows: z.number().int().min(0),
  engine: z.string().min(1),
  backend: z.string(),
  input: z
    .string()
    .regex(/^\d+x\d+$/)
    .optional(),
});

/**
 * What the extract jobs (this job's children) say about the features: the engine that made
 * them, and how many images they decoded (when every shard reported). A run's shards come from
 * one engine id (ids name the backbone and node, not the runtime), so two ids mean mixed features.
 */
export function featureProvenance(
  childValues: Record<string, unknown>,
  shards: number,
  runId: string,
  log?: Logger,
): { rows?: number; features?: Candidate['features'] } {
  const results: Array<z.infer<typeof extractResultSchema>> = [];
  for (const [key, value] of Object.entries(childValues)) {
    const r = extractResultSchema.safeParse(value);
    if (r.success) results.push(r.data);
    else log?.warn({ runId, child: key }, 'an extract result without engine or row count; ignored');
  }
  if (results.length === 0) return {};
  results.sort((a, b) => a.shard - b.shard);
  const engines = [...new Set(results.map((r) => r.engine))];
  if (engines.length > 1) {
    throw new DatasetError(
      `the shards of run ${runId} were made by different feature extractors (${engines.map((e) => quote(e, 80)).join(', ')}): ` +
        'their features cannot be trained on together; start a new run',
    );
  }
  const input = /^(\d+)x(\d+)$/.exec(results.find((r) => r.input !== undefined)?.input ?? '');
  const complete = new Set(results.map((r) => r.shard)).size === shards;
  return {
    ...(complete ? { rows: results.reduce((n, r) => n + r.rows, 0) } : {}),
    ...(input
      ? {
          features: {
            engine: engines[0]!,
            backends: [...new Set(results.map((r) => r.backend))].sort(),
            input: { width: Number(input[1]), height: Number(input[2]) },
          },
        }
      : {}),
  };
}
