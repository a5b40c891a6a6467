/**
 * Evaluate job: score the candidate on the test split (and the features' kNN accuracy beside it),
 * write the versioned model, and only then move latest.json to it (a reader never sees latest
 * point at a half-written version).
 * The model is built from the job's payload and the candidate (model-artifact.ts), never from
 * the run's status in Redis.
 */
import { getObjectJson, putJson, putObject, s3Url } from '../../shared/s3.js';
import { predictProba } from '../../shared/softmax-model.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import {
  CLASSIFIER_FILE,
  candidateKey,
  latestKey,
  modelKey,
  versionPrefix,
  type Candidate,
  type LatestPointer,
} from '../../shared/model-format.js';
import type { PublishedModel } from '../../shared/run-state.js';
import { exportClassifier } from '../extractor/engines/classifier-export.js';
import { createModelSource } from '../extractor/model-source.js';
import type { RunMetrics } from '../../shared/run-state.js';
import { classificationReport } from './metrics.js';
import { KNN_SEED, knnDatabaseCap, knnMetrics } from '../retrieval/knn.js';
import { readRunVectors } from '../retrieval/run-vectors.js';
import { sharedScanner } from '../retrieval/scan.js';
import { buildModelArtifact } from './model-artifact.js';
import { writeRunReport } from './report.js';
import { publishRunRecord } from './run-record.js';
import type { Job } from 'bullmq';
import type { Logger } from '../../shared/logger.js';
import { NotFoundError } from '../../shared/errors.js';
import { jobLease, leasedPutObject } from '../../shared/job-lease.js';

export function startEvaluatorWorker(ctx: ServiceContext, concurrency = 1) {
  const { modelDirs, maxModelBytes } = ctx.config.extractor;
  // The backbone is read as the extractors read it: s3:// or DEEPFEAT_MODEL_DIRS, size-bounded.
  const readObject = createModelSource({ s3: ctx.s3, modelDirs, maxModelBytes });
  return startWorker(
    ctx,
    'evaluate',
    async (data, job, log) => {
      const { runId, shards, name } = data;
      const bucket = ctx.config.bucket;
      await ctx.runs.setStage(runId, 'evaluating');
      const candidate = await getObjectJson<Candidate>(ctx.s3, bucket, candidateKey(runId));
      // One read of the shards for both metrics: every test row (the regression's score) and
      // train+val rows for the kNN database, a seeded sample when there are more than its cap.
      const vectors = await readRunVectors(
        ctx.s3,
        bucket,
        runId,
        shards,
        [{ splits: ['test'] }, { splits: ['train', 'val'], max: knnDatabaseCap(candidate.dim) }],
        { seed: KNN_SEED },
      );
      const testRows = vectors.groups[0]!;
      const dbRows = vectors.groups[1]!;
      const d = vectors.d;
      const test = { ...testRows, d, X: vectors.X.subarray(0, testRows.n * d) };
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
        knn: await knnMetrics({
          test,
          database: { ...dbRows, d, X: vectors.X.subarray(dbRows.start * d, (dbRows.start + dbRows.n) * d) },
          databaseOf: dbRows.of,
          scanner: await sharedScanner(),
        }),
      };
      // The whole classifier as ONNX, written before model.json names it (and latest.json, last).
      const exported = await exportClassifier({
        spec: data.features,
        head: candidate,
        engineId: candidate.features?.engine,
        deps: { readObject, maxModelBytes },
      });
      const version = runId; // buildModelArtifact sets the same: the version is the run id
      const classifierKey = `${versionPrefix(name, version)}${CLASSIFIER_FILE}`;
      if (exported.ok) await putObject(ctx.s3, bucket, classifierKey, exported.bytes, 'application/octet-stream');
      else log.warn({ runId, reason: exported.reason }, 'published without classifier.onnx');
      const artifact = buildModelArtifact({
        runId,
        name,
        source: data.source,
        spec: data.features,
        candidate,
        metrics,
        classifier: exported.ok ? exported.info : { file: null, reason: exported.reason },
        createdAt: new Date().toISOString(),
      });
      const key = modelKey(name, version);
      await putJson(ctx.s3, bucket, key, artifact);
      const model: PublishedModel = {
        name,
        version,
        uri: s3Url(bucket, key),
        ...(exported.ok ? { classifier: s3Url(bucket, classifierKey) } : { classifierUnavailable: exported.reason }),
      };
      // runs/<id>/report.html, part of the version: written before latest.json points at it.
      const current = await ctx.runs.get(runId);
      if (current) {
        const status = { ...current, stage: 'published' as const, metrics, model };
        await writeRunReport(ctx, { runId, status, source: data.source, model: candidate, test });
      } else log.warn({ runId }, 'the run has no status in Redis; report.html not written');
      const latest: LatestPointer = { name, version, key, publishedAt: artifact.createdAt };
      await moveLatest(ctx, job, latest, log);
      await publishRunRecord(ctx, bucket, runId, { stage: 'published', metrics, model }, log);
      log.info({ runId, accuracy: report.accuracy, model: model.uri }, 'published');
      return { model: model.uri, accuracy: report.accuracy };
    },
    concurrency,
  );
}

/**
 * Points models/<name>/latest.json at `latest`, unless it already points at a newer version
 * (versions are run ids, which sort by the time their runs were queued): an evaluator that finishes
 * late — a long run queued before a short one, or a host cut off mid-publish whose job another
 * evaluator redid — never moves the pointer back. The write goes through the job's lease
 * (shared/job-lease.ts): an attempt that no longer holds its job writes nothing. What remains is
 * two evaluators publishing the same name at the same moment; S3 has no compare-and-set to close
 * that, and either pointer names a complete version.
 */
export async function moveLatest(ctx: ServiceContext, job: Job, latest: LatestPointer, log: Logger): Promise<void> {
  const bucket = ctx.config.bucket;
  const key = latestKey(latest.name);
  const current = await getObjectJson<Partial<LatestPointer>>(ctx.s3, bucket, key).catch((err) => {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  });
  if (typeof current?.version === 'string' && current.version > latest.version) {
    log.warn(
      { name: latest.name, version: latest.version, latest: current.version },
      'a newer version is already latest; latest.json not moved back',
    );
    return;
  }
  const body = `${JSON.stringify(latest, null, 2)}\n`;
  const lease = jobLease(job, ctx.config.jobLockMs, `evaluate job of run ${latest.version}`);
  if (lease) await leasedPutObject(lease, ctx.s3, bucket, key, body, 'application/json');
  else await putJson(ctx.s3, bucket, key, latest);
}
