/**
 * listObjects (shared/s3.ts) against the tests' S3 server: keys come back exactly as they were
 * written, including those XML cannot carry as they are (a CR becomes LF in an XML listing unless
 * the keys are URL-encoded).
 */
import test from 'ava';
import { CreateBucketCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { decodeListedKey, listObjects } from '../shared/s3.js';
import { getS3, makeS3Client, uniqueName, type TestS3 } from './helpers/services.js';

let s3: TestS3;
test.before(async () => {
  s3 = await getS3();
});
test.after.always(async () => {
  await s3?.stop();
});

test('decodeListedKey undoes S3 form encoding: + is a space, %2B a plus', (t) => {
  t.is(decodeListedKey('a/b+c%2Bd%0D%C3%A9.png'), 'a/b c+d\ré.png');
});

// The tests' S3 server (s3rver) refuses keys with control characters, so CR and tab keys are
// covered by the decoding test above; MinIO and AWS S3 take them.
test('a listing gives back every key exactly: plus, space, percent, non-ASCII', async (t) => {
  const client = makeS3Client(s3.endpoint);
  const bucket = uniqueName('listing');
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  const keys = ['k/plus+ space.png', 'k/pct%41.png', 'k/pct%2B.png', 'k/uni-é.png', 'k/plain.png'];
  for (const key of keys) await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'x' }));
  const listed: string[] = [];
  for await (const o of listObjects(client, bucket, 'k/')) listed.push(o.key);
  t.deepEqual(listed.sort(), [...keys].sort());
  client.destroy();
});
