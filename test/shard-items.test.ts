/**
 * Extract jobs carry a byte range of the run's manifest.jsonl, not their keys (issue 10). Against
 * a real S3 server: the planner's ranges read back each shard's items with one ranged GET, and a
 * range that does not match the manifest (count, line boundary, size bound, past the end) is a
 * permanent INTERNAL error naming the run and the shard, never a wrong set of images.
 */
import test from 'ava';
import type { S3Client } from '@aws-sdk/client-s3';
import { jsonLines } from '../services/planner/worker.js';
import { shardItems } from '../services/extractor/shard-items.js';
import type { ManifestItem } from '../shared/dataset.js';
import { DatasetError, InternalError } from '../shared/errors.js';
import { MAX_MANIFEST_LINE_BYTES } from '../shared/queues.js';
import { getObjectRange, putObject } from '../shared/s3.js';
import { getS3, makeS3Client, uniqueName, type TestS3 } from './helpers/services.js';

const bucket = uniqueName('shard-items');
const KEY = 'runs/r1/manifest.jsonl';
let s3srv: TestS3;
let s3: S3Client;
let ctx: { s3: S3Client; config: { bucket: string } };

// Keys with multi-byte UTF-8, escapes and a CRLF: byte offsets, not string lengths, must be right.
const items: ManifestItem[] = Array.from({ length: 11 }, (_, i) => ({
  key: i % 3 === 0 ? `data/chat-é-${i}/\r\n"${i}".jpg` : `data/cat/${i}-日本.png`,
  label: i % 2 ? 'cat' : 'dog',
  split: i % 4 === 0 ? 'test' : 'train',
}));

test.before(async () => {
  s3srv = await getS3({ buckets: [bucket] });
  s3 = makeS3Client(s3srv.endpoint);
  ctx = { s3, config: { bucket } };
});

test.after.always(async () => {
  s3?.destroy();
  await s3srv?.stop();
});

test.serial("the planner's ranges read back each shard's items, in order, with one ranged GET each", async (t) => {
  const { bytes, shards } = await jsonLines(items, 4);
  await putObject(s3, bucket, KEY, bytes, 'application/x-ndjson');
  t.deepEqual(
    shards.map((s) => s.count),
    [4, 4, 3],
  );
  t.is(shards[0]!.start, 0);
  t.is(shards.at(-1)!.end, bytes.length);
  const back = [];
  for (const [i, s] of shards.entries()) {
    const got = await shardItems(ctx, 'r1', i, { key: KEY, ...s });
    t.deepEqual(got, items.slice(i * 4, i * 4 + 4));
    back.push(...got);
  }
  t.deepEqual(back, items);
  // The same range read twice gives the same bytes: a retried shard reads what the first attempt read.
  t.deepEqual(
    await getObjectRange(s3, bucket, KEY, shards[1]!.start, shards[1]!.end, 1 << 20),
    await getObjectRange(s3, bucket, KEY, shards[1]!.start, shards[1]!.end, 1 << 20),
  );
});

test.serial('getObjectRange answers exactly the bytes asked for, from the middle of the object', async (t) => {
  await putObject(s3, bucket, 'digits', Buffer.from('0123456789'), 'text/plain');
  t.is(Buffer.from(await getObjectRange(s3, bucket, 'digits', 3, 7, 100)).toString(), '3456');
  t.is(Buffer.from(await getObjectRange(s3, bucket, 'digits', 9, 10, 100)).toString(), '9');
});

test.serial('a count that differs from the lines in the range is an INTERNAL error naming run and shard', async (t) => {
  const { shards } = await jsonLines(items, 4);
  const s = shards[1]!;
  const err = await t.throwsAsync(shardItems(ctx, 'r1', 1, { key: KEY, ...s, count: 5 }), {
    instanceOf: InternalError,
  });
  t.is(err!.code, 'INTERNAL');
  t.true(err!.permanent);
  t.regex(err!.message, /shard 1 of run "?r1"?/);
  t.regex(err!.message, /holds 4 lines, not the 5 planned/);
});

test.serial('a range not ending on a line boundary is an INTERNAL error naming run and shard', async (t) => {
  const { shards } = await jsonLines(items, 4);
  const s = shards[0]!;
  const err = await t.throwsAsync(shardItems(ctx, 'r1', 0, { key: KEY, ...s, end: s.end - 3 }), {
    instanceOf: InternalError,
  });
  t.true(err!.permanent);
  t.regex(err!.message, /shard 0 of run "?r1"?/);
  t.regex(err!.message, /do not end on a line boundary/);
  // Starting mid-line: the first "line" is not an item.
  const mid = await t.throwsAsync(shardItems(ctx, 'r1', 1, { key: KEY, ...shards[1]!, start: shards[1]!.start + 2 }), {
    instanceOf: InternalError,
  });
  t.regex(mid!.message, /line 1 of shard 1 of run "?r1"?.* is not a manifest item/);
});

test.serial('a range over the size bound is refused before any read; one past the end of the object too', async (t) => {
  const huge = { key: KEY, start: 0, end: 2 * MAX_MANIFEST_LINE_BYTES + 1, count: 2 };
  const over = await t.throwsAsync(shardItems(ctx, 'r1', 7, huge), { instanceOf: InternalError });
  t.regex(over!.message, /shard 7 of run "?r1"?.*over 16384/);
  const { bytes } = await jsonLines(items, 4);
  const past = { key: KEY, start: bytes.length - 10, end: bytes.length + 50, count: 1 };
  const err = await t.throwsAsync(shardItems(ctx, 'r1', 2, past), { instanceOf: InternalError });
  t.regex(err!.message, /shard 2 of run "?r1"?/);
});

test.serial("a range of another object than the run's manifest is refused before any read", async (t) => {
  await putObject(s3, bucket, 'runs/r2/manifest.jsonl', Buffer.from('{}\n'), 'application/x-ndjson');
  const other = { key: 'runs/r2/manifest.jsonl', start: 0, end: 3, count: 1 };
  const err = await t.throwsAsync(shardItems(ctx, 'r1', 0, other), { instanceOf: InternalError });
  t.regex(err!.message, /shard 0 of run "?r1"?.*names another object than the run's manifest\.jsonl/);
});

test('the planner refuses an item whose manifest line is over the limit, naming its key', async (t) => {
  const long = [{ key: `k/${'x'.repeat(MAX_MANIFEST_LINE_BYTES)}`, label: 'cat', split: 'train' as const }];
  const err = await t.throwsAsync(jsonLines(long, 4), { instanceOf: DatasetError });
  t.regex(err!.message, /over the limit of 8192/);
  t.regex(err!.message, /k\/xxx/);
});
