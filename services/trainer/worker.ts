/** Train job: read train/val features, standardise, pick L2 on val, fit, write the candidate. */
import { putJson } from '../../shared/s3.js';
import { readFeatureSets } from '../../shared/feature-store.js';
import { DatasetError, InternalError, ModelError } from '../../shared/errors.js';
import { quote } from '../../shared/text.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { applyStandardizer, fitStandardizer, DEFAULT_LAMBDAS } from './logreg.js';
import { fitInThread } from './fit-thread.js';
import { candidateKey, type Candidate } from '../../shared/model-format.js';

export function startTrainerWorker(ctx: ServiceContext, concurrency = 1) {
  return startWorker(
    ctx,
    'train',
    async (data, _job, log) => {
      const { runId, shards, classes } = data;
      await ctx.runs.setStage(runId, 'training');
      const bucket = ctx.config.bucket;
      const readStart = performance.now();
      const [train, val] = await readFeatureSets(ctx.s3, bucket, runId, shards, [['train'], ['val']]);
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
        mean: Array.from(standardizer.mean),
        std: Array.from(standardizer.std),
        weights: classes.map((_, c) => Array.from(fit.model.W.subarray(c * d, (c + 1) * d))),
        bias: Array.from(fit.model.b),
        lambda: fit.lambda,
        validation: fit.validation.map((v) => ({ lambda: v.lambda, accuracy: v.accuracy, logLoss: v.logLoss })),
        trainImages: train.n,
        valImages: val.n,
        fitMs,
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
