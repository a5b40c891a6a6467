/**
 * Planning of a prediction run: the model is checked, the source listed (every image under the
 * prefix, recursively) or its manifest read (only `key` required), the items written as the
 * run's manifest.jsonl with their shard ranges exactly as a training run's (jsonLines), and the
 * flow added: collect ← predict(shard 0..n). No labels are needed and no split is made.
 */
import type { FlowChildJob, FlowProducer } from 'bullmq';
import { DatasetError, ModelError } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { readPublishedModel } from '../../shared/published-model.js';
import type { JobData, JobResult, PredictItem, PredictRequest } from '../../shared/queues.js';
import { boundSkipped, type SkippedObject } from '../../shared/run-state.js';
import { assertBucket, listObjects, parseS3Url, putJson, putObject, s3Url } from '../../shared/s3.js';
import { capText, quote } from '../../shared/text.js';
import { jobOptions, type ServiceContext } from '../../shared/worker-kit.js';
import { shardJobPriority } from './fair-share.js';
import { keysFromManifest, manifestFormat } from './manifest.js';
import { jsonLines } from './manifest-lines.js';
import { listedKey, versionOf, type ListedKey } from './plan.js';
import { MAX_WHERE_CHARS, readManifest } from './sources.js';

/**
 * File name extensions of the image formats deepfeat can decode (shared/config.ts IMAGE_FORMATS;
 * which of them an extractor decodes is its DEEPFEAT_IMAGE_FORMATS, and a refused one is recorded
 * with its reason). Only for choosing what to classify under a prefix: the decoder goes by the
 * bytes, never by the name.
 */
export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set([
  'jpg',
  'jpeg',
  'jpe',
  'jfif',
  'png',
  'webp',
  'gif',
  'tif',
  'tiff',
  'avif',
  'heic',
  'heif',
  'hif',
  'svg',
]);

/**
 * The objects under a prefix that a prediction run classifies: every key, however deep, whose
 * name has an image extension (any case) or no extension at all (content-addressed stores
 * often name images so), unless it is hidden (.DS_Store). Folder markers are passed over; every
 * other object is skipped with why, as a training run's stray files are, so `status` can show it.
 * A listed object's ETag and size go with its item, for the feature cache.
 */
export function imagesFromListing(keys: Iterable<ListedKey>): { items: PredictItem[]; ignored: SkippedObject[] } {
  const items: PredictItem[] = [];
  const ignored: SkippedObject[] = [];
  for (const listed of keys) {
    const key = typeof listed === 'string' ? listed : listed.key;
    if (key.endsWith('/')) continue; // folder marker objects
    const name = key.slice(key.lastIndexOf('/') + 1);
    const dot = name.lastIndexOf('.');
    const ext = dot > 0 ? name.slice(dot + 1).toLowerCase() : '';
    if (name.startsWith('.')) {
      // .DS_Store and the like, left by the tools that uploaded the images.
      ignored.push({ key, reason: 'a hidden file (its name starts with "."); list it in a manifest to classify it' });
    } else if (ext === '' || IMAGE_EXTENSIONS.has(ext)) items.push({ key, ...versionOf(listed) });
    else {
      ignored.push({
        key,
        reason:
          `not an image file name (.${capText(ext, 20)}); a prefix is classified by name (.jpg, .png, .webp, ...): ` +
          'list other objects in a manifest to classify them',
      });
    }
  }
  return { items, ignored };
}

/** Plans a prediction run and adds its flow; the plan job's result. */
export async function planPredictRun(
  ctx: ServiceContext,
  flows: FlowProducer,
  runId: string,
  request: PredictRequest,
  log: Logger,
): Promise<JobResult<'plan'>> {
  await ctx.runs.setStage(runId, 'planning');
  const src = parseS3Url(request.source);
  await assertBucket(ctx.s3, src.bucket);
  const bucket = ctx.config.bucket;
  // The client checked the model; a plan job from another producer is not trusted, and the
  // model may have gone since. Checked before the listing, which can take minutes.
  const model = await readPublishedModel(ctx.s3, bucket, request.model.key, ctx.config.extractor.maxModelBytes);
  if (request.top > model.classes.length) {
    throw new ModelError(
      `${quote(s3Url(bucket, request.model.key))} has ${model.classes.length} classes: ask for ${model.classes.length} ` +
        `labels per image at most, not ${request.top}`,
    );
  }
  const where = capText(request.source, MAX_WHERE_CHARS);
  const { items, ignored } = await predictItems(ctx, src, where);
  const manifestKey = `runs/${runId}/manifest.jsonl`;
  const { bytes, shards } = await jsonLines(items, request.shardSize);
  await putObject(ctx.s3, bucket, manifestKey, bytes, 'application/x-ndjson');
  await putJson(ctx.s3, bucket, `runs/${runId}/run.json`, {
    runId,
    request,
    stage: 'predicting',
    classes: model.classes,
    ...boundSkipped(ignored),
    images: items.length,
    shards: shards.length,
  });
  await ctx.runs.setPlan(
    runId,
    { total: items.length, shards: shards.length, classes: model.classes, counts: {}, skipped: ignored },
    'predicting',
  );
  log.info({ runId, images: items.length, shards: shards.length, skipped: ignored.length }, 'planned prediction');

  const children: FlowChildJob[] = shards.map((range, shard) => {
    const payload: JobData<'predict'> = {
      runId,
      shard,
      sourceBucket: src.bucket,
      model: request.model,
      top: request.top,
      manifest: { key: manifestKey, ...range },
    };
    return {
      name: 'predict',
      queueName: 'predict',
      data: payload,
      opts: {
        ...jobOptions(ctx.config, `${runId}-predict-${shard}`),
        failParentOnFailure: true,
        // Shard by shard across runs, by the run's priority (fair-share.ts).
        priority: shardJobPriority(request.priority, shard),
      },
    };
  });
  const collect: JobData<'collect'> = { runId, shards: shards.length, images: items.length, top: request.top };
  await flows.add({
    name: 'collect',
    queueName: 'collect',
    data: collect,
    opts: jobOptions(ctx.config, `${runId}-collect`),
    children,
  });
  return { images: items.length, shards: shards.length, classes: model.classes };
}

/** The run's items: the listing's images, or the manifest's keys (in the manifest's order). */
async function predictItems(
  ctx: ServiceContext,
  src: { bucket: string; key: string },
  where: string,
): Promise<{ items: PredictItem[]; ignored: SkippedObject[] }> {
  const format = manifestFormat(src.key);
  if (format) {
    const bytes = await readManifest(ctx, src.bucket, src.key, where);
    return { items: await keysFromManifest(bytes, format, where, src.bucket), ignored: [] };
  }
  const prefix = src.key === '' || src.key.endsWith('/') ? src.key : `${src.key}/`;
  const listed: ListedKey[] = [];
  for await (const o of listObjects(ctx.s3, src.bucket, prefix)) listed.push(listedKey(o));
  const found = imagesFromListing(listed);
  if (found.items.length === 0) {
    const others = found.ignored.length > 0 ? ` (${found.ignored.length} objects not named as images)` : '';
    throw new DatasetError(
      `no images under ${capText(s3Url(src.bucket, prefix), MAX_WHERE_CHARS)}${others}: expected .jpg, .png, ... ` +
        'files under the prefix, or a manifest .csv/.jsonl',
    );
  }
  return found;
}
