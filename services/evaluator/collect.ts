/**
 * Collect job, the end of a prediction run: the shards' predictions/<shard>.jsonl files, read
 * in shard order a few at a time, become one runs/<id>/predictions.csv (predictions-csv.ts),
 * streamed to storage a part at a time (object-upload.ts), so memory holds a few shards and one
 * part however many images the run had. Then the run is done, and its final status is copied
 * to runs/<id>/run.json, as the evaluator does for a training run, for `status` once Redis no
 * longer has the run. A retried job writes the same CSV again.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { InternalError } from '../../shared/errors.js';
import { predictionLineSchema, predictionsCsvKey, predictionsShardKey } from '../../shared/predictions.js';
import { getObjectText, s3Url } from '../../shared/s3.js';
import { startWorker, type ServiceContext } from '../../shared/worker-kit.js';
import { createObjectWriter } from './object-upload.js';
import { csvHeader, csvRow } from './predictions-csv.js';
import { publishRunRecord } from './run-record.js';

/** Shard files fetched ahead of the one being written. */
const READ_AHEAD = 3;

export function startCollectWorker(ctx: ServiceContext, concurrency = 1) {
  return startWorker(
    ctx,
    'collect',
    async (data, _job, log) => {
      const { runId, shards, images, top } = data;
      const bucket = ctx.config.bucket;
      await ctx.runs.setStage(runId, 'collecting');
      const key = predictionsCsvKey(runId);
      const out = createObjectWriter(ctx.s3, bucket, key, 'text/csv; charset=utf-8');
      let rows = 0;
      let predicted = 0;
      try {
        await out.write(csvHeader(top));
        for await (const [text, shard] of shardTexts(ctx.s3, bucket, runId, shards)) {
          const file = predictionsShardKey(runId, shard);
          let csv = '';
          let n = 0;
          for (const raw of text.split('\n')) {
            if (raw === '') continue;
            n++;
            const line = parseLine(raw, `line ${n} of ${file}`, top);
            if ('top' in line) predicted++;
            csv += csvRow(line, top);
          }
          rows += n;
          await out.write(csv);
        }
        // Every image of the plan once: a shard file missing lines, or holding extra ones, is a bug.
        if (rows !== images) {
          throw new InternalError(
            `the prediction files of run ${runId} hold ${rows} images, not the ${images} planned; run the prediction again`,
          );
        }
        const { bytes, parts } = await out.finish();
        log.info({ runId, images: rows, bytes, parts }, 'predictions.csv written');
      } catch (err) {
        await out.abort();
        throw err;
      }
      const summary = { uri: s3Url(bucket, key), images: rows, predicted, failed: rows - predicted };
      await publishRunRecord(ctx, bucket, runId, { stage: 'done', predictions: summary }, log);
      return { predictions: summary.uri, images: rows, predicted, failed: summary.failed };
    },
    concurrency,
  );
}

/** One predictions line, checked: the predict jobs wrote it, so a bad one is a broken invariant. */
function parseLine(raw: string, where: string, top: number) {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    value = undefined;
  }
  const r = predictionLineSchema.safeParse(value);
  if (!r.success || ('top' in r.data && r.data.top.length !== top)) {
    throw new InternalError(`${where} is not a prediction of ${top} labels; run the prediction again`);
  }
  return r.data;
}

/** The shards' files in shard order, fetched up to READ_AHEAD ahead. */
async function* shardTexts(
  s3: S3Client,
  bucket: string,
  runId: string,
  shards: number,
): AsyncGenerator<[string, number]> {
  const ahead: Array<Promise<string>> = [];
  let next = 0;
  try {
    for (let s = 0; s < shards; s++) {
      while (next < shards && ahead.length < READ_AHEAD) {
        const p = getObjectText(s3, bucket, predictionsShardKey(runId, next++));
        p.catch(() => undefined); // observed when awaited below, or dropped if the reader stops early
        ahead.push(p);
      }
      yield [await ahead.shift()!, s];
    }
  } finally {
    await Promise.allSettled(ahead);
  }
}
