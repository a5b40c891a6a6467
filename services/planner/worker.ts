/**
 * Planning job: for a training run, list (or read the manifest), check, split, write the
 * manifest, and add the run's flow evaluate ← train ← extract(shard 0..n); for a prediction run,
 * the same without labels or split, and the flow collect ← predict(shard 0..n)
 * (predict-plan.ts). Runs in a worker, never in the client.
 */
import type { FlowChildJob } from 'bullmq';
import { parseS3Url, listObjects, assertBucket, putObject, putJson, s3Url } from '../../shared/s3.js';
import { isPredictRequest, makeFlowProducer, type JobData, type RunRequest } from '../../shared/queues.js';
import { boundSkipped } from '../../shared/run-state.js';
import { capText } from '../../shared/text.js';
import { jobOptions, startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { shardJobPriority } from './fair-share.js';
import {
  assignSplits,
  checkAndCount,
  labelsFromListing,
  listedKey,
  type Labelled,
  type ListedKey,
  type Plan,
  type PlannedItem,
} from './plan.js';
import { labelsFromManifest, manifestFormat, type ManifestFormat } from './manifest.js';
import { jsonLines } from './manifest-lines.js';
import { planPredictRun } from './predict-plan.js';
import { MAX_WHERE_CHARS, readManifest } from './sources.js';

export { jsonLines, type ShardRange } from './manifest-lines.js';

export function startPlannerWorker(ctx: ServiceContext, concurrency = 1) {
  const flows = makeFlowProducer(ctx.queues);
  const worker = startWorker(
    ctx,
    'plan',
    async (data, _job, log) => {
      const { runId, request } = data;
      const predict = isPredictRequest(request);
      // A plan job whose first attempt already added the run's flow (it died before it could
      // report done) must not plan again: the listing may have changed since, and the extract
      // (or predict) jobs already hold the first plan. The flow is added atomically, so its root tells.
      const existing = await flows.getFlow({
        id: predict ? `${runId}-collect` : `${runId}-evaluate`,
        queueName: predict ? 'collect' : 'evaluate',
        depth: 1,
        maxChildren: 1,
      });
      if (existing?.job) {
        const s = await ctx.runs.get(runId);
        log.info({ runId }, 'already planned by an earlier attempt; nothing to do');
        return { images: s?.total ?? 0, shards: s?.shards ?? 0, classes: [...(s?.classes ?? [])] };
      }
      if (predict) return planPredictRun(ctx, flows, runId, request, log);
      await ctx.runs.setStage(runId, 'planning');
      // parseS3Url refuses a bucket name S3 would refuse (a bad request, exit code 2), before any
      // request: the client checks it too, but a plan job from another producer is not trusted,
      // and the server's answer to a HEAD of such a bucket carries no reason.
      const src = parseS3Url(request.source);
      await assertBucket(ctx.s3, src.bucket);
      const where = capText(request.source, MAX_WHERE_CHARS);
      const format = manifestFormat(src.key);
      const { items, ignored } = await datasetItems(ctx, src, where, format, request);
      const { classes, counts } = checkAndCount(items, where, format ? 'manifest' : 'folders');
      const bucket = ctx.config.bucket;
      const manifestKey = `runs/${runId}/manifest.jsonl`;
      // Shard i is lines [i × shardSize, (i+1) × shardSize) of the manifest, in order; its extract
      // job carries only their byte range, not the keys (issue 10: Redis memory at scale).
      const { bytes: manifestBytes, shards } = await jsonLines(items, request.shardSize);
      await putObject(ctx.s3, bucket, manifestKey, manifestBytes, 'application/x-ndjson');
      // Skipped objects as the run state keeps them (bounded); the evaluator's final run.json is
      // a copy of the run state, so it has the same two fields.
      await putJson(ctx.s3, bucket, `runs/${runId}/run.json`, {
        runId,
        request,
        stage: 'extracting',
        classes,
        counts,
        ...boundSkipped(ignored),
        images: items.length,
        shards: shards.length,
      });
      await ctx.runs.setPlan(runId, { total: items.length, shards: shards.length, classes, counts, skipped: ignored });
      log.info(
        { runId, images: items.length, shards: shards.length, classes: classes.length, skipped: ignored.length },
        'planned',
      );

      const extractChildren: FlowChildJob[] = shards.map((range, shard) => {
        const payload: JobData<'extract'> = {
          runId,
          shard,
          sourceBucket: src.bucket,
          features: request.features,
          manifest: { key: manifestKey, ...range },
        };
        return {
          name: 'extract',
          queueName: 'extract',
          data: payload,
          opts: {
            ...jobOptions(ctx.config, `${runId}-extract-${shard}`),
            failParentOnFailure: true,
            // Shard by shard across runs, by the run's priority (fair-share.ts).
            priority: shardJobPriority(request.priority, shard),
          },
        };
      });
      const trainData: JobData<'train'> = {
        runId,
        shards: shards.length,
        classes,
        ...(request.lambdas ? { lambdas: request.lambdas } : {}),
        fitImages: classes.reduce((n, c) => n + counts[c]!.train + counts[c]!.val, 0),
        // Deep features get the square-root transform (shared/softmax-model.ts says why); the raw
        // pixels baseline stays the lesson's plain logistic regression.
        ...(request.features.kind !== 'raw-pixels' ? { featureTransform: 'signed-sqrt' as const } : {}),
      };
      // What the published model records about its making travels with the job, not through
      // the run's status in Redis (issue 10): the request's source and feature spec here, the
      // engine in the trainer's candidate.
      const evalData: JobData<'evaluate'> = {
        runId,
        shards: shards.length,
        name: request.name,
        source: request.source,
        features: request.features,
      };
      await flows.add({
        name: 'evaluate',
        queueName: 'evaluate',
        data: evalData,
        opts: jobOptions(ctx.config, `${runId}-evaluate`),
        children: [
          {
            name: 'train',
            queueName: 'train',
            data: trainData,
            opts: { ...jobOptions(ctx.config, `${runId}-train`), failParentOnFailure: true },
            children: extractChildren,
          },
        ],
      });
      return { images: items.length, shards: shards.length, classes };
    },
    concurrency,
  );
  worker.on('closed', () => void flows.close());
  return worker;
}

/**
 * The run's images, labelled and split. In a function of its own so that what it reads — the
 * manifest's bytes, the listing, the labelled keys before their split — can be freed as soon as
 * the items exist: at a million images each is a few hundred megabytes.
 */
async function datasetItems(
  ctx: ServiceContext,
  src: { bucket: string; key: string },
  where: string,
  format: ManifestFormat | undefined,
  request: RunRequest,
): Promise<{ items: PlannedItem[]; ignored: Plan['ignored'] }> {
  let labelled: Labelled[];
  let ignored: Plan['ignored'] = [];
  if (format) {
    labelled = await labelsFromManifest(await readManifest(ctx, src.bucket, src.key, where), format, where, src.bucket);
  } else {
    const prefix = src.key === '' || src.key.endsWith('/') ? src.key : `${src.key}/`;
    // Each key with its ETag and size, which the listing gives for free: the manifest carries
    // them to the extractors, whose feature cache is keyed by them (no HEAD per image).
    const listed: ListedKey[] = [];
    for await (const o of listObjects(ctx.s3, src.bucket, prefix)) listed.push(listedKey(o));
    ({ items: labelled, ignored } = labelsFromListing(
      listed,
      prefix,
      capText(s3Url(src.bucket, prefix), MAX_WHERE_CHARS),
    ));
  }
  return { items: assignSplits(labelled, request.split, request.seed), ignored };
}
