/**
 * An extract or predict job's items, read back from the run's manifest.jsonl (issue 10: Redis
 * memory at scale). Training runs' lines are {key, label, split}; prediction runs' {key, label?}.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { z } from 'zod';
import { InternalError } from '../../shared/errors.js';
import { MAX_MANIFEST_LINE_BYTES, itemSchema, type JobData } from '../../shared/queues.js';
import { getObjectRange, s3Url } from '../../shared/s3.js';
import { quote } from '../../shared/text.js';

/**
 * A shard's items: its lines of the run's manifest.jsonl, read with one ranged GET (the job
 * carries the range, not the keys). The planner wrote the manifest and the range together, so
 * a range over the size bound, bytes not ending on a line, a line that is not an item, or a
 * count that differs is a broken invariant (a permanent INTERNAL error), never a bad image. A
 * retried job reads the same bytes: the manifest is written once, before the flow is added.
 */
export async function shardItems<S extends z.ZodTypeAny = typeof itemSchema>(
  ctx: { s3: S3Client; config: { bucket: string } },
  runId: string,
  shard: number,
  m: JobData<'extract'>['manifest'],
  schema: S = itemSchema as unknown as S,
): Promise<z.infer<S>[]> {
  const url = quote(s3Url(ctx.config.bucket, m.key), 200);
  const where = `shard ${shard} of run ${quote(runId, 100)} (bytes ${m.start}-${m.end} of ${url})`;
  // Only the run's own manifest: a payload is not trusted to name another object of the bucket.
  if (m.key !== `runs/${runId}/manifest.jsonl`) {
    throw new InternalError(`${where} names another object than the run's manifest.jsonl; start the run again`);
  }
  let bytes: Uint8Array;
  try {
    bytes = await getObjectRange(ctx.s3, ctx.config.bucket, m.key, m.start, m.end, m.count * MAX_MANIFEST_LINE_BYTES);
  } catch (err) {
    if (!(err instanceof RangeError)) throw err; // storage faults: retried as any other
    throw new InternalError(`cannot read the items of ${where}: ${err.message}; start the run again`, { cause: err });
  }
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8');
  if (!text.endsWith('\n')) {
    throw new InternalError(`the items of ${where} do not end on a line boundary; start the run again`);
  }
  const lines = text.slice(0, -1).split('\n');
  if (lines.length !== m.count) {
    throw new InternalError(`${where} holds ${lines.length} lines, not the ${m.count} planned; start the run again`);
  }
  return lines.map((line, i) => {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      value = undefined;
    }
    const r = schema.safeParse(value);
    if (!r.success) {
      throw new InternalError(`line ${i + 1} of ${where} is not a manifest item; start the run again`);
    }
    return r.data as z.infer<S>;
  });
}
