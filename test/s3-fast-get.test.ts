/**
 * The extractor's GET without the SDK's per-request cost (shared/s3-fast-get.ts), against the
 * tests' S3 server: the same bytes and ETag as the SDK for keys of every awkward kind, served
 * by the fast path (a key escaped differently from the SDK would fail its signature and show up
 * as a fallback), and every failure left to the SDK so errors read exactly as before.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import test, { type ExecutionContext } from 'ava';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { S3Config } from '../shared/config.js';
import { NotFoundError, StorageError } from '../shared/errors.js';
import { ObjectTooLargeError, RequestRefusedError, createS3Client, getObjectVersion } from '../shared/s3.js';
import { escapeKey, fastGetStats } from '../shared/s3-fast-get.js';
import { getS3, makeS3Client, uniqueName, type TestS3 } from './helpers/services.js';

let s3: TestS3;
test.before(async () => {
  s3 = await getS3();
});
test.after.always(async () => {
  await s3?.stop();
});

function client(endpoint: string, overrides: Partial<S3Config> = {}): S3Client {
  return createS3Client({
    endpoint,
    region: 'us-east-1',
    accessKeyId: 'minioadmin',
    secretAccessKey: 'minioadmin',
    forcePathStyle: true,
    maxAttempts: 2,
    timeoutSeconds: 10,
    ...overrides,
  });
}

/**
 * A new bucket on the tests' S3 server holding `objects` (key → body), written by a plain SDK
 * client `sdk` (no fast path), and a client `c` (with `overrides`); both close with the test.
 */
async function bucketWith(
  t: ExecutionContext,
  prefix: string,
  objects: Record<string, string>,
  overrides: Partial<S3Config> = {},
): Promise<{ c: S3Client; sdk: S3Client; bucket: string }> {
  const c = client(s3.endpoint, overrides);
  const sdk = makeS3Client(s3.endpoint);
  t.teardown(() => {
    c.destroy();
    sdk.destroy();
  });
  const bucket = uniqueName(prefix);
  await sdk.send(new CreateBucketCommand({ Bucket: bucket }));
  for (const [key, body] of Object.entries(objects)) {
    await sdk.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  }
  return { c, sdk, bucket };
}

/**
 * Every printable ASCII character but '/', in key segments, plus non-ASCII and long keys (the
 * embedded server's limit is 233 bytes a segment; MinIO and S3 take up to 1024 a key).
 */
const KEYS = [
  'first.png',
  'dir/sub/with space.png',
  `ascii/${Array.from({ length: 95 }, (_, i) => String.fromCharCode(32 + i))
    .filter((c) => c !== '/')
    .join('')}.png`,
  "quotes/we!rd'(k)*.jpg",
  'query/plus+eq=amp&q?hash#.png',
  'pct/%41%2F%.png',
  'uni/ünï cødé/ñ-日本-🙂.png',
  `long/${'x'.repeat(220)}.png`,
  'trailing-dot.',
];

test('GETs give the bytes and ETag the SDK gives, served without the SDK after the first', async (t) => {
  const objects = Object.fromEntries(KEYS.map((key, i) => [key, `body ${i}: ${key}`]));
  const { c, sdk, bucket } = await bucketWith(t, 'fast-get', objects);
  for (const [i, key] of KEYS.entries()) {
    const got = await getObjectVersion(c, bucket, key);
    t.is(Buffer.from(got.bytes).toString(), `body ${i}: ${key}`, key);
    const viaSdk = await sdk.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    await viaSdk.Body?.transformToByteArray();
    t.is(got.etag, viaSdk.ETag?.replace(/"/g, ''), key);
  }
  // The first GET of the bucket is the SDK's (it shows the request); every other is fast, and
  // none fell back: a key escaped unlike the SDK would fail the server's signature check.
  t.deepEqual(fastGetStats(c), { fast: KEYS.length - 1, fallback: 0 });
});

// The tests' server (s3rver) does not check signatures, so a key escaped unlike the SDK would
// still be served here; MinIO and S3 would refuse it (and the GET would fall back). So the paths
// are compared with the ones the SDK itself sends, for every awkward key.
test('keys are escaped in the path exactly as the SDK escapes them', async (t) => {
  const sdk = makeS3Client(s3.endpoint);
  t.teardown(() => sdk.destroy());
  const bucket = uniqueName('fast-get-paths');
  await sdk.send(new CreateBucketCommand({ Bucket: bucket }));
  const sent: string[] = [];
  sdk.middlewareStack.add(
    (next) => async (args) => {
      sent.push((args as { request: { path: string } }).request.path);
      return next(args);
    },
    { step: 'finalizeRequest', name: 'capturePath' },
  );
  for (const key of [...KEYS, 'a//b/', '../up', './here', 'x/..', ' lead-space', 'é/'.repeat(5)]) {
    sent.length = 0;
    await sdk.send(new GetObjectCommand({ Bucket: bucket, Key: key })).catch(() => undefined);
    t.is(sent[0], `/${bucket}/${escapeKey(key)}`, key);
  }
});

test('escapeKey leaves only unreserved characters and slashes as they are', (t) => {
  t.is(escapeKey("a b/c!'()*~._-/é+?#%"), 'a%20b/c%21%27%28%29%2A~._-/%C3%A9%2B%3F%23%25');
  t.is(escapeKey('a//b/'), 'a//b/');
});

test('failures are the SDK path’s: missing key, refused key, too large, with the same messages', async (t) => {
  // `plain` has no fast path: what the errors were before it.
  const { c, sdk: plain, bucket } = await bucketWith(t, 'fast-get-errors', { 'a.png': '0123456789' });
  await getObjectVersion(c, bucket, 'a.png'); // records the bucket
  const before = fastGetStats(c);

  const missing = await t.throwsAsync(getObjectVersion(c, bucket, 'missing.png'), { instanceOf: NotFoundError });
  const missingPlain = await t.throwsAsync(getObjectVersion(plain, bucket, 'missing.png'));
  t.is(missing?.message, missingPlain?.message);
  // s3rver refuses keys with an empty segment (MinIO and S3 do not): a refused request either way.
  const refused = await t.throwsAsync(getObjectVersion(c, bucket, 'x//y.png'));
  const refusedPlain = await t.throwsAsync(getObjectVersion(plain, bucket, 'x//y.png'));
  t.is(refused?.constructor, refusedPlain?.constructor);
  t.is(refused?.message, refusedPlain?.message);
  if (refusedPlain instanceof RequestRefusedError) t.true(refused instanceof RequestRefusedError);

  const big = await t.throwsAsync(getObjectVersion(c, bucket, 'a.png', 4), { instanceOf: ObjectTooLargeError });
  t.is(big?.message, 'object too large: 10 bytes exceeds the limit of 4 (DEEPFEAT_MAX_IMAGE_BYTES)');
  const after = fastGetStats(c);
  t.is(after.fast, before.fast + 1, 'the too-large answer came from the fast path, without its body');
  t.is(after.fallback, before.fallback + 2, 'missing and refused keys went to the SDK');
});

test('an unknown access key: nothing is recorded, and the error is the SDK path’s', async (t) => {
  const { c, bucket } = await bucketWith(t, 'fast-get-creds', { 'a.png': 'x' }, { accessKeyId: 'not-a-known-key-id' });
  for (let i = 0; i < 2; i++) {
    const err = await t.throwsAsync(getObjectVersion(c, bucket, 'a.png'), { instanceOf: StorageError });
    t.regex(err?.message ?? '', /access to .* refused|signature/i);
  }
  t.deepEqual(fastGetStats(c), { fast: 0, fallback: 0 });
});

test.serial(
  'a server restart breaks kept-alive sockets: that GET falls back, the next ones are fast again',
  async (t) => {
    if (!s3.restart) return t.pass('this S3 server cannot be restarted here (TEST_S3_ENDPOINT or a container)');
    const { c, bucket } = await bucketWith(t, 'fast-get-restart', { 'a.png': 'abc' });
    for (let i = 0; i < 3; i++) await getObjectVersion(c, bucket, 'a.png');
    await s3.restart();
    for (let i = 0; i < 3; i++) t.is(Buffer.from((await getObjectVersion(c, bucket, 'a.png')).bytes).toString(), 'abc');
    const stats = fastGetStats(c);
    t.true(stats.fast >= 3, JSON.stringify(stats));
    t.true(stats.fallback <= 1, JSON.stringify(stats));
  },
);

/**
 * An S3-like server of our own, for answers the tests' S3 server never gives: each GET is
 * answered by `answer(key)`, which may also never answer.
 */
async function fakeS3(
  answer: (key: string, res: ServerResponse, req: IncomingMessage) => void,
  host = '127.0.0.1',
): Promise<{ endpoint: string; close(): void }> {
  const server = createServer((req, res) => {
    const key = decodeURIComponent((req.url ?? '').split('?')[0]!.split('/').slice(2).join('/'));
    answer(key, res, req);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

const ok = (res: ServerResponse, body: string) => {
  res.writeHead(200, { 'content-length': Buffer.byteLength(body), etag: '"e1"' });
  res.end(body);
};

/** A fake server answering with `answer`, and a client of it (with `opts.client`); both close with the test. */
async function onFake(
  t: ExecutionContext,
  answer: Parameters<typeof fakeS3>[0],
  opts: { host?: string; client?: Partial<S3Config> } = {},
): Promise<S3Client> {
  const fake = await fakeS3(answer, opts.host);
  const c = client(fake.endpoint, opts.client);
  t.teardown(() => {
    c.destroy();
    fake.close();
  });
  return c;
}

test('a declared length no buffer can hold fails that GET as the SDK path does, without crashing', async (t) => {
  const c = await onFake(t, (key, res) => {
    if (key === 'huge') {
      res.writeHead(200, { 'content-length': '5000000000' });
      res.write('x');
      return; // and nothing more
    }
    ok(res, 'small');
  });
  t.is(Buffer.from((await getObjectVersion(c, 'bucket', 'first')).bytes).toString(), 'small');
  t.is(Buffer.from((await getObjectVersion(c, 'bucket', 'second')).bytes).toString(), 'small');
  t.is(fastGetStats(c).fast, 1);
  await t.throwsAsync(getObjectVersion(c, 'bucket', 'huge'), { instanceOf: StorageError });
});

test('a key that is not valid Unicode is refused for that image, as without the fast path', async (t) => {
  const c = await onFake(t, (_key, res) => ok(res, 'body'));
  await getObjectVersion(c, 'bucket', 'first');
  const err = await t.throwsAsync(getObjectVersion(c, 'bucket', 'lone-\ud800-surrogate.png'));
  t.true(err instanceof RequestRefusedError, String(err));
});

test('a server that stops answering costs one fast-path timeout, then GETs go to the SDK until it answers', async (t) => {
  let silent = false;
  const c = await onFake(
    t,
    (_key, res) => {
      if (!silent) ok(res, 'body');
    },
    { client: { maxAttempts: 1, timeoutSeconds: 1 } },
  );
  await getObjectVersion(c, 'bucket', 'a');
  await getObjectVersion(c, 'bucket', 'b');
  t.deepEqual(fastGetStats(c), { fast: 1, fallback: 0 });
  silent = true;
  await t.throwsAsync(getObjectVersion(c, 'bucket', 'c'), { instanceOf: StorageError });
  t.deepEqual(fastGetStats(c), { fast: 1, fallback: 1 }, 'the fast path timed out once');
  await t.throwsAsync(getObjectVersion(c, 'bucket', 'd'), { instanceOf: StorageError });
  t.deepEqual(fastGetStats(c), { fast: 1, fallback: 1 }, 'and was not tried again while the server is silent');
  silent = false;
  await getObjectVersion(c, 'bucket', 'e'); // the SDK's success records the bucket again
  await getObjectVersion(c, 'bucket', 'f');
  t.deepEqual(fastGetStats(c), { fast: 2, fallback: 1 });
});

test('a host clock the server calls skewed: the SDK corrects it once, and fast GETs sign with its correction', async (t) => {
  const ahead = 3600_000; // the server's clock is an hour ahead of this host's
  const c = await onFake(t, (_key, res, req) => {
    const m = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(String(req.headers['x-amz-date'] ?? ''));
    const signedAt = m ? Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) : 0;
    const serverNow = Date.now() + ahead;
    if (Math.abs(serverNow - signedAt) > 15 * 60_000) {
      res.writeHead(403, { 'content-type': 'application/xml', date: new Date(serverNow).toUTCString() });
      res.end(
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>RequestTimeTooSkewed</Code><Message>skewed</Message>' +
          `<ServerTime>${new Date(serverNow).toISOString()}</ServerTime></Error>`,
      );
      return;
    }
    ok(res, 'body');
  });
  for (let i = 0; i < 4; i++)
    t.is(Buffer.from((await getObjectVersion(c, 'bucket', `k${i}`)).bytes).toString(), 'body');
  t.deepEqual(fastGetStats(c), { fast: 3, fallback: 0 });
});

test('an answer about the bucket or the credentials (403) sends the bucket back to the SDK until it succeeds', async (t) => {
  let refuse = false;
  const c = await onFake(t, (_key, res) => {
    if (!refuse) return ok(res, 'body');
    res.writeHead(403, { 'content-type': 'application/xml' });
    res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>');
  });
  await getObjectVersion(c, 'bucket', 'a');
  await getObjectVersion(c, 'bucket', 'b');
  refuse = true;
  await t.throwsAsync(getObjectVersion(c, 'bucket', 'c'), { instanceOf: StorageError });
  await t.throwsAsync(getObjectVersion(c, 'bucket', 'd'), { instanceOf: StorageError });
  t.deepEqual(fastGetStats(c), { fast: 1, fallback: 1 }, 'one 403 on the fast path, then the SDK alone');
  refuse = false;
  await getObjectVersion(c, 'bucket', 'e');
  await getObjectVersion(c, 'bucket', 'f');
  t.deepEqual(fastGetStats(c), { fast: 2, fallback: 1 });
});

test('an object stored with a Content-Encoding comes back as stored, on the fast path', async (t) => {
  const stored = Buffer.from([0x1f, 0x8b, 0x08, 0x00]);
  const c = await onFake(t, (_key, res) => {
    res.writeHead(200, { 'content-length': stored.length, 'content-encoding': 'gzip', etag: '"e2"' });
    res.end(stored);
  });
  const viaSdk = await getObjectVersion(c, 'bucket', 'a');
  const fast = await getObjectVersion(c, 'bucket', 'b');
  t.deepEqual(Buffer.from(viaSdk.bytes), stored);
  t.deepEqual(Buffer.from(fast.bytes), stored);
  t.deepEqual(fastGetStats(c), { fast: 1, fallback: 0 });
});

test('an IPv6 literal endpoint is served by the fast path', async (t) => {
  const c = await onFake(t, (_key, res) => ok(res, 'six'), { host: '::1' }).catch(() => undefined);
  if (!c) return t.pass('no IPv6 loopback on this host');
  for (let i = 0; i < 3; i++) t.is(Buffer.from((await getObjectVersion(c, 'bucket', `k${i}`)).bytes).toString(), 'six');
  t.deepEqual(fastGetStats(c), { fast: 2, fallback: 0 });
});

test('S3_FAST_GET=false: every GET goes through the SDK', async (t) => {
  const c = await onFake(t, (_key, res) => ok(res, 'body'), { client: { fastGet: false } });
  for (let i = 0; i < 3; i++) await getObjectVersion(c, 'bucket', `k${i}`);
  t.deepEqual(fastGetStats(c), { fast: 0, fallback: 0 });
});
