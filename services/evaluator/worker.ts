/**
 * Evaluate job: score the candidate on the test split, write the versioned model, and only
 * then move latest.json to it (a reader never sees latest point at a half-written version).
 */
import { getObjectJson, putJson, s3Url } from '../../shared/s3.js';
import { readFeatures } from '../../shared/feature-store.js';
import { predictProba } from '../../shared/softmax-model.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import {
  MODEL_FORMAT,
  candidateKey,
  latestKey,
  modelKey,
  type Candidate,
  type LatestPointer,
  type ModelArtifact,
} from '../../shared/model-format.js';
import type { RunMetrics } from '../../shared/run-state.js';
import { NotFoundError } from '../../shared/errors.js';
import { classificationReport } from './metrics.js';

export function startEvaluatorWorker(ctx: ServiceContext, concurrency = 1) {
  return startWorker(
    ctx,
    'evaluate',
    async (data, _job, log) => {
      const { runId, shards, name } = data;
      const bucket = ctx.config.bucket;
      await ctx.runs.setStage(runId, 'evaluating');
      const candidate = await getObjectJson<Candidate>(ctx.s3, bucket, candidateKey(runId));
      const test = await readFeatures(ctx.s3, bucket, runId, shards, ['test']);
      const index = new Map(candidate.classes.map((c, i) => [c, i]));
      const yTrue = Int32Array.from(test.labels, (l) => index.get(l)!);
      const yPred = new Int32Array(test.n);
      const k = candidate.classes.length;
      for (let i = 0; i < test.n; i++) {
        const p = predictProba(candidate, test.X.subarray(i * test.d, (i + 1) * test.d));
        let best = 0;
        for (let c = 1; c < k; c++) if (p[c]! > p[best]!) best = c;
        yPred[i] = best;
      }
      const report = classificationReport(yTrue, yPred, candidate.classes);
      const metrics: RunMetrics = {
        accuracy: report.accuracy,
        macroF1: report.macroF1,
        perClass: report.perClass,
        confusion: report.confusion,
        classes: candidate.classes,
        testImages: test.n,
        lambda: candidate.lambda,
        validation: candidate.validation,
      };
      const status = await ctx.runs.get(runId);
      if (!status) throw new NotFoundError(`run ${runId} has no state in Redis; it may have expired`);
      // The version is the run id: sortable by time, and a retried evaluate rewrites the same keys.
      const version = runId;
      const artifact: ModelArtifact = {
        format: MODEL_FORMAT,
        name,
        version,
        runId,
        createdAt: new Date().toISOString(),
        source: status.request.source,
        features: {
          spec: status.request.features,
          engine: status.engine ?? 'unknown',
          dim: candidate.dim,
          input: inputSize(status.engineInput, status.request.features),
        },
        classes: candidate.classes,
        mean: candidate.mean,
        std: candidate.std,
        weights: candidate.weights,
        bias: candidate.bias,
        training: {
          lambda: candidate.lambda,
          trainImages: candidate.trainImages,
          valImages: candidate.valImages,
          validation: candidate.validation,
        },
        metrics,
      };
      const key = modelKey(name, version);
      await putJson(ctx.s3, bucket, key, artifact);
      const latest: LatestPointer = { name, version, key, publishedAt: artifact.createdAt };
      await putJson(ctx.s3, bucket, latestKey(name), latest);
      const model = { name, version, uri: s3Url(bucket, key) };
      await ctx.runs.setResult(runId, metrics, model);
      const final = await ctx.runs.get(runId);
      await putJson(ctx.s3, bucket, `runs/${runId}/run.json`, final);
      log.info({ runId, accuracy: report.accuracy, model: model.uri }, 'published');
      return { model: model.uri, accuracy: report.accuracy };
    },
    concurrency,
  );
}

function inputSize(
  recorded: string | null,
  spec: ModelArtifact['features']['spec'],
): { width: number; height: number } {
  const m = /^(\d+)x(\d+)$/.exec(recorded ?? '');
  if (m) return { width: Number(m[1]), height: Number(m[2]) };
  switch (spec.kind) {
    case 'raw-pixels':
      return { width: spec.size, height: spec.size };
    case 'builtin':
      return { width: 224, height: 224 };
    case 'tfjs':
      return { width: spec.inputSize ?? 224, height: spec.inputSize ?? 224 };
  }
}
