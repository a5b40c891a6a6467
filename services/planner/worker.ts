/**
 * Planning job: list (or read the manifest), check, split, write the manifest, and add the
 * run's flow evaluate ← train ← extract(shard 0..n). Runs in a worker, never in the client.
 */
import type { FlowChildJob } from 'bullmq';
import { parseS3Url, listObjects, getObjectText, assertBucket, putObject, putJson, s3Url } from '../../shared/s3.js';
import { makeFlowProducer, type JobData } from '../../shared/queues.js';
import { jobOptions, startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { assignSplits, checkAndCount, labelsFromListing, labelsFromManifest, shardItems } from './plan.js';

export function startPlannerWorker(ctx: ServiceContext, concurrency = 1) {
  const flows = makeFlowProducer(ctx.queues);
  const worker = startWorker(ctx, 'plan', async (data, _job, log) => {
    const { runId, request } = data;
    await ctx.runs.setStage(runId, 'planning');
    const src = parseS3Url(request.source);
    await assertBucket(ctx.s3, src.bucket);
    const manifest = /\.(csv|jsonl|ndjson)$/i.exec(src.key);
    let labelled;
    let ignored: Array<{ key: string; reason: string }> = [];
    if (manifest) {
      const text = await getObjectText(ctx.s3, src.bucket, src.key);
      labelled = labelsFromManifest(text, manifest[1]!.toLowerCase() === 'csv' ? 'csv' : 'jsonl', request.source, src.bucket);
    } else {
      const prefix = src.key === '' || src.key.endsWith('/') ? src.key : `${src.key}/`;
      const keys: string[] = [];
      for await (const o of listObjects(ctx.s3, src.bucket, prefix)) keys.push(o.key);
      ({ items: labelled, ignored } = labelsFromListing(keys, prefix, s3Url(src.bucket, prefix)));
    }
    const items = assignSplits(labelled, request.split, request.seed);
    const { classes, counts } = checkAndCount(items, request.source);
    const shards = shardItems(items, request.shardSize);
    const bucket = ctx.config.bucket;
    await putObject(ctx.s3, bucket, `runs/${runId}/manifest.jsonl`, items.map((i) => JSON.stringify(i)).join('\n') + '\n', 'application/x-ndjson');
    await putJson(ctx.s3, bucket, `runs/${runId}/run.json`, { runId, request, stage: 'extracting', classes, counts, ignored, images: items.length, shards: shards.length });
    await ctx.runs.setPlan(runId, { total: items.length, shards: shards.length, classes, counts });
    log.info({ runId, images: items.length, shards: shards.length, classes: classes.length, ignored: ignored.length }, 'planned');

    const extractChildren: FlowChildJob[] = shards.map((shardItemsList, shard) => {
      const payload: JobData<'extract'> = { runId, shard, sourceBucket: src.bucket, features: request.features, items: shardItemsList };
      return { name: 'extract', queueName: 'extract', data: payload, opts: { ...jobOptions(ctx.config, `${runId}-extract-${shard}`), failParentOnFailure: true } };
    });
    const trainData: JobData<'train'> = { runId, shards: shards.length, classes, ...(request.lambdas ? { lambdas: request.lambdas } : {}) };
    const evalData: JobData<'evaluate'> = { runId, shards: shards.length, name: request.name };
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
  }, concurrency);
  worker.on('closed', () => void flows.close());
  return worker;
}
