/**
 * Planning job: list (or read the manifest), check, split, write the manifest, and add the
 * run's flow evaluate ← train ← extract(shard 0..n). Runs in a worker, never in the client.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { FlowChildJob } from 'bullmq';
import {
  parseS3Url,
  listObjects,
  getObjectBytes,
  assertBucket,
  putObject,
  putJson,
  s3Url,
  ObjectTooLargeError,
} from '../../shared/s3.js';
import { MAX_MANIFEST_LINE_BYTES, makeFlowProducer, type JobData } from '../../shared/queues.js';
import { DatasetError, InternalError } from '../../shared/errors.js';
import { boundSkipped } from '../../shared/run-state.js';
import { capText, quote } from '../../shared/text.js';
import { jobOptions, startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { assignSplits, checkAndCount, labelsFromListing, type Labelled, type Plan } from './plan.js';
import { labelsFromManifest, manifestFormat, type ManifestFormat } from './manifest.js';
import type { ManifestItem } from '../../shared/dataset.js';

/** The source as messages name it: a run request is untrusted, and its URL has no length limit. */
const MAX_WHERE_CHARS = 300;

export function startPlannerWorker(ctx: ServiceContext, concurrency = 1) {
  const flows = makeFlowProducer(ctx.queues);
  const worker = startWorker(
    ctx,
    'plan',
    async (data, _job, log) => {
      const { runId, request } = data;
      // A plan job whose first attempt already added the run's flow (it died before it could
      // report done) must not plan again: the listing may have changed since, and the extract
      // jobs already hold the first plan. The flow is added atomically, so its root tells.
      const existing = await flows.getFlow({
        id: `${runId}-evaluate`,
        queueName: 'evaluate',
        depth: 1,
        maxChildren: 1,
      });
      if (existing?.job) {
        const s = await ctx.runs.get(runId);
        log.info({ runId }, 'already planned by an earlier attempt; nothing to do');
        return { images: s?.total ?? 0, shards: s?.shards ?? 0, classes: [...(s?.classes ?? [])] };
      }
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
          opts: { ...jobOptions(ctx.config, `${runId}-extract-${shard}`), failParentOnFailure: true },
        };
      });
      const trainData: JobData<'train'> = {
        runId,
        shards: shards.length,
        classes,
        ...(request.lambdas ? { lambdas: request.lambdas } : {}),
        fitImages: classes.reduce((n, c) => n + counts[c]!.train + counts[c]!.val, 0),
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
  request: JobData<'plan'>['request'],
): Promise<{ items: ManifestItem[]; ignored: Plan['ignored'] }> {
  let labelled: Labelled[];
  let ignored: Plan['ignored'] = [];
  if (format) {
    labelled = await labelsFromManifest(await readManifest(ctx, src.bucket, src.key, where), format, where, src.bucket);
  } else {
    const prefix = src.key === '' || src.key.endsWith('/') ? src.key : `${src.key}/`;
    const keys: string[] = [];
    for await (const o of listObjects(ctx.s3, src.bucket, prefix)) keys.push(o.key);
    ({ items: labelled, ignored } = labelsFromListing(
      keys,
      prefix,
      capText(s3Url(src.bucket, prefix), MAX_WHERE_CHARS),
    ));
  }
  return { items: assignSplits(labelled, request.split, request.seed), ignored };
}

/** Shard i's lines of runs/<id>/manifest.jsonl: bytes [start, end), `count` lines. */
export interface ShardRange {
  start: number;
  end: number;
  count: number;
}

/**
 * runs/<id>/manifest.jsonl's bytes, built a block of lines at a time (yielding between blocks):
 * never one string of every line plus its copy as bytes. Also each shard's byte range: shard i
 * is items [i × shardSize, (i+1) × shardSize), which are consecutive lines, since the items are
 * written in order.
 */
export async function jsonLines(
  items: readonly ManifestItem[],
  shardSize: number,
): Promise<{ bytes: Buffer; shards: ShardRange[] }> {
  const BLOCK = 10_000;
  const blocks: Buffer[] = [];
  const shards: ShardRange[] = [];
  let offset = 0;
  let shardStart = 0;
  for (let i = 0; i < items.length; i += BLOCK) {
    const lines = items.slice(i, i + BLOCK).map((it) => JSON.stringify(it));
    lines.forEach((line, j) => {
      const size = Buffer.byteLength(line, 'utf8') + 1; // + the newline
      if (size > MAX_MANIFEST_LINE_BYTES) {
        throw new DatasetError(
          `the item for key ${quote(items[i + j]!.key, 200)} is ${size} bytes as a manifest line, over the limit of ` +
            `${MAX_MANIFEST_LINE_BYTES}: shorten its key or label`,
        );
      }
      offset += size;
      const n = i + j + 1; // items written so far
      if (n % shardSize === 0 || n === items.length) {
        shards.push({ start: shardStart, end: offset, count: n - shards.length * shardSize });
        shardStart = offset;
      }
    });
    blocks.push(Buffer.from(`${lines.join('\n')}\n`, 'utf8'));
    if (i + BLOCK < items.length) await yieldToEventLoop();
  }
  const bytes = Buffer.concat(blocks);
  // The ranges were counted line by line; the bytes are what the extractors will read.
  if (bytes.length !== offset) throw new InternalError(`manifest.jsonl is ${bytes.length} bytes, its lines ${offset}`);
  return { bytes, shards };
}

/** The manifest's bytes; one larger than DEEPFEAT_MAX_MANIFEST_BYTES is refused before its body is read. */
async function readManifest(ctx: ServiceContext, bucket: string, key: string, where: string): Promise<Uint8Array> {
  const max = ctx.config.maxManifestBytes;
  try {
    return await getObjectBytes(ctx.s3, bucket, key, max);
  } catch (err) {
    if (!(err instanceof ObjectTooLargeError)) throw err;
    throw new DatasetError(
      `manifest ${where} is ${err.size} bytes, over the limit of ${max} (DEEPFEAT_MAX_MANIFEST_BYTES): split the dataset into several runs, or raise the limit`,
      { cause: err },
    );
  }
}
