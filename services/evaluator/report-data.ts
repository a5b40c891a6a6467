/**
 * What the run report shows beyond the status, gathered from real records:
 * - the most confident mistakes: the published candidate's predictions on the test rows, and the
 *   source images made into small thumbnails (decoded as the extractor decodes them, bounded);
 * - throughput over time: nothing records throughput samples while a run extracts, so they are
 *   derived from what is recorded — each shard's image count (its progress field in the run
 *   hash) and when its extract job finished (BullMQ's `finishedOn`, ms), measured from the run's
 *   `extractStartedAt`. Shards finish in bursts of the extractors' concurrency, so the curve is
 *   a staircase at that grain, not a per-second rate.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Redis } from 'ioredis';
import sharp from 'sharp';
import { getObjectBytes, parseS3Url } from '../../shared/s3.js';
import type { LinearSoftmaxModel } from '../../shared/softmax-model.js';
import { predictProba } from '../../shared/softmax-model.js';
import { capText } from '../../shared/text.js';
import { decodeImage } from '../extractor/image.js';
import { MAX_MISTAKES, type ReportMistake, type ThroughputSample } from './report-html.js';

/** Side of a mistake's thumbnail, in pixels. */
export const THUMBNAIL_SIDE = 64;
/** Longest a thumbnail may take to fetch and decode before the report goes on without it. */
const THUMBNAIL_TIMEOUT_MS = 10_000;
/** Shards in the throughput chart at most (a bigger run's chart covers its first ones). */
const MAX_THROUGHPUT_SHARDS = 10_000;

export interface TestRows {
  readonly n: number;
  readonly d: number;
  readonly X: Float32Array;
  readonly keys: readonly string[];
  readonly labels: readonly string[];
}

/**
 * Test rows the model got wrong, the `max` with the highest probability on the wrong class first
 * (ties by key, so the choice does not depend on shard timing), and how many it got wrong in all.
 */
export function confidentMistakes(
  model: LinearSoftmaxModel,
  test: TestRows,
  max = MAX_MISTAKES,
): { mistakes: Array<Omit<ReportMistake, 'thumbnail' | 'thumbnailError'>>; total: number } {
  const wrong: Array<Omit<ReportMistake, 'thumbnail' | 'thumbnailError'>> = [];
  const k = model.classes.length;
  for (let i = 0; i < test.n; i++) {
    const p = predictProba(model, test.X.subarray(i * test.d, (i + 1) * test.d));
    let best = 0;
    for (let c = 1; c < k; c++) if (p[c]! > p[best]!) best = c;
    const predicted = model.classes[best]!;
    if (predicted === test.labels[i]) continue;
    wrong.push({ key: test.keys[i]!, label: test.labels[i]!, predicted, confidence: p[best]! });
  }
  wrong.sort((a, b) => b.confidence - a.confidence || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return { mistakes: wrong.slice(0, max), total: wrong.length };
}

export interface ThumbnailLimits {
  readonly maxImageBytes: number;
  readonly maxImagePixels: number;
  readonly formats: readonly string[];
}

/**
 * A small JPEG data: URI of an image, decoded as the extractor decodes (allowed formats only,
 * pixel limit, cover and centre crop) from at most `maxImageBytes`, or the reason there is none.
 */
export async function thumbnail(
  s3: S3Client,
  bucket: string,
  key: string,
  limits: ThumbnailLimits,
): Promise<{ thumbnail: string } | { thumbnailError: string }> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`took longer than ${THUMBNAIL_TIMEOUT_MS / 1000} s`)),
      THUMBNAIL_TIMEOUT_MS,
    );
  });
  try {
    const work = (async () => {
      const bytes = await getObjectBytes(s3, bucket, key, limits.maxImageBytes);
      const rgb = await decodeImage(bytes, {
        width: THUMBNAIL_SIDE,
        height: THUMBNAIL_SIDE,
        maxPixels: limits.maxImagePixels,
        formats: limits.formats,
      });
      const jpeg = await sharp(rgb, { raw: { width: THUMBNAIL_SIDE, height: THUMBNAIL_SIDE, channels: 3 } })
        .jpeg({ quality: 80 })
        .toBuffer();
      return { thumbnail: `data:image/jpeg;base64,${jpeg.toString('base64')}` };
    })();
    work.catch(() => undefined); // a late failure after the timeout is not unhandled
    return await Promise.race([work, timeout]);
  } catch (err) {
    return { thumbnailError: capText(err instanceof Error ? err.message : String(err), 300) };
  } finally {
    clearTimeout(timer);
  }
}

/** The mistakes (at most MAX_MISTAKES) with their thumbnails, fetched from the run's source bucket together. */
export async function withThumbnails(
  s3: S3Client,
  source: string,
  mistakes: ReadonlyArray<Omit<ReportMistake, 'thumbnail' | 'thumbnailError'>>,
  limits: ThumbnailLimits,
): Promise<ReportMistake[]> {
  const { bucket } = parseS3Url(source);
  return Promise.all(
    mistakes.slice(0, MAX_MISTAKES).map(async (m) => ({ ...m, ...(await thumbnail(s3, bucket, m.key, limits)) })),
  );
}

/**
 * Cumulative images processed against seconds since extraction started, one sample per completed
 * shard in time order; see the module comment for where the numbers come from. `queue` is the
 * queue of the run's image jobs ('predict' for a prediction run). Empty when the run hash is gone
 * or no shard has completed.
 */
export async function throughputSamples(
  redis: Redis,
  queuePrefix: string,
  runId: string,
  queue: 'extract' | 'predict' = 'extract',
): Promise<ThroughputSample[]> {
  const h = await redis.hgetall(`${queuePrefix}:run:${runId}`);
  const started = Number(h.extractStartedAt ?? 0);
  if (!(started > 0)) return [];
  const shards: Array<{ shard: number; images: number }> = [];
  for (const [field, value] of Object.entries(h)) {
    if (!field.startsWith('shard:')) continue;
    const p = JSON.parse(value) as { done?: number; failed?: number; complete?: boolean };
    if (p.complete) shards.push({ shard: Number(field.slice(6)), images: (p.done ?? 0) + (p.failed ?? 0) });
  }
  shards.sort((a, b) => a.shard - b.shard);
  shards.length = Math.min(shards.length, MAX_THROUGHPUT_SHARDS);
  // When each shard's job finished: BullMQ keeps it in the job's hash (<prefix>:<queue>:<jobId>,
  // field finishedOn, ms) for as long as the job is kept. One pipelined HGET per shard, so a page
  // of a 4,000-shard run costs one round trip, not 4,000 Job objects.
  const pipeline = redis.pipeline();
  for (const s of shards) pipeline.hget(`${queuePrefix}:${queue}:${runId}-${queue}-${s.shard}`, 'finishedOn');
  const finished = (await pipeline.exec()) ?? [];
  const written: Array<{ at: number; images: number }> = [];
  shards.forEach((s, i) => {
    const at = Number(finished[i]?.[1] ?? Number.NaN);
    if (Number.isFinite(at) && at > 0) written.push({ at, images: s.images });
  });
  written.sort((a, b) => a.at - b.at);
  const out: ThroughputSample[] = [];
  let total = 0;
  for (const w of written) {
    total += w.images;
    out.push({ seconds: Math.max(0, (w.at - started) / 1000), images: total });
  }
  return out;
}
