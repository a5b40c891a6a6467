/**
 * The embedded S3 server (the single-machine default) against hostile requests, driven for real:
 * the child process started by startS3Server, the AWS SDK client deepfeat uses (createS3Client),
 * and raw HTTP where the SDK would not send such a request. After every hostile request a normal
 * PUT/GET must still work in the same server process: one request must not kill it, and a key is
 * either stored exactly or refused loudly, never stored under another key.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import {
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { startS3Server, type LocalS3 } from '../cli/local-stack.js';
import { createS3Client } from '../shared/s3.js';
import { uniqueName } from './helpers/services.js';

const MAX_OBJECT_BYTES = 1024 * 1024;
const ACCESS_KEY = 'minioadmin';

interface Server {
  s3: LocalS3;
  client: S3Client;
  bucket: string;
  dir: string;
}

async function startServer(t: ExecutionContext | undefined): Promise<Server> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'deepfeat-embedded-s3-'));
  const bucket = uniqueName('bucket');
  const s3 = await startS3Server({
    dir,
    buckets: [bucket],
    accessKeyIds: [ACCESS_KEY],
    maxObjectBytes: MAX_OBJECT_BYTES,
  });
  const client = createS3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    accessKeyId: ACCESS_KEY,
    secretAccessKey: ACCESS_KEY,
    forcePathStyle: true,
    maxAttempts: 1, // a refusal must show as it is, not after retries
    timeoutSeconds: 20,
  });
  const server = { s3, client, bucket, dir };
  t?.teardown(() => stopServer(server));
  return server;
}

async function stopServer(server: Server): Promise<void> {
  server.client.destroy();
  await server.s3.stop();
  await rm(server.dir, { recursive: true, force: true });
}

// One server for the tests that do not kill or count things in it; each uses its own key prefix.
let shared: Server;
let sharedPid: number | undefined;
test.before(async () => {
  shared = await startServer(undefined);
  sharedPid = shared.s3.pid;
});
test.after.always(async () => {
  if (shared) await stopServer(shared);
});

async function put(
  server: Server,
  key: string,
  body: string | Buffer,
  bucket = server.bucket,
): Promise<string | undefined> {
  const res = await server.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  return res.ETag;
}

async function get(server: Server, key: string, bucket = server.bucket): Promise<Buffer> {
  const res = await server.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

async function listAll(server: Server, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await server.client.send(
      new ListObjectsV2Command({ Bucket: server.bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const item of page.Contents ?? []) keys.push(item.Key!);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return keys;
}

/** The server process that answered before still answers a normal PUT and GET. */
async function stillServes(t: ExecutionContext, server: Server = shared, pid = sharedPid): Promise<void> {
  const key = uniqueName('alive/check');
  const body = randomBytes(64).toString('hex');
  await put(server, key, body);
  t.is((await get(server, key)).toString(), body, 'the server stores and returns a normal object');
  t.is(server.s3.pid, pid, 'the same server process (it did not die and restart)');
}

interface SdkError {
  name: string;
  message: string;
  $metadata?: { httpStatusCode?: number };
}

async function sdkRefusal(
  t: ExecutionContext,
  promise: Promise<unknown>,
  code: string,
  status: number,
): Promise<SdkError> {
  const err = (await t.throwsAsync(promise)) as unknown as SdkError;
  t.is(err.name, code, err.message);
  t.is(err.$metadata?.httpStatusCode, status);
  return err;
}

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  /** `<Code>` of an S3 error body. */
  code?: string;
}

/** One request over a fresh connection, with a path the SDK would never send. */
function raw(
  port: number,
  method: string,
  target: string,
  opts: { headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const body = opts.body ?? '';
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method,
        path: target,
        agent: false,
        headers: { 'content-length': String(Buffer.byteLength(body)), ...opts.headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          const code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1];
          resolve({ status: res.statusCode!, headers: res.headers, body: text, ...(code ? { code } : {}) });
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * Writes `bytes` on a new TCP connection and resolves with what comes back once one whole response
 * (headers and Content-Length body) has arrived, or the server closes. The request's body, if its
 * headers announce one, is not sent unless included in `bytes`.
 */
function rawSocket(port: number, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let got = Buffer.alloc(0);
    const finish = () => {
      socket.destroy();
      resolve(got.toString('latin1'));
    };
    socket.on('error', (err) => (got.length > 0 ? finish() : reject(err)));
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (chunk) => {
      got = Buffer.concat([got, chunk]);
      const text = got.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end))?.[1] ?? 0);
      if (got.length >= end + 4 + length) finish();
    });
    socket.on('end', finish);
  });
}

function md5(body: string | Buffer): string {
  return `"${createHash('md5').update(body).digest('hex')}"`;
}

// --- keys at S3's limits --------------------------------------------------------------------

test('a 1024-byte key of short segments is stored, listed and read back exactly', async (t) => {
  const prefix = `${uniqueName('limit')}/`;
  // Multi-byte characters, every segment well under a file name's 255 bytes.
  let key = prefix;
  while (Buffer.byteLength(key) < 1024 - 200) key += `${'é'.repeat(90)}/`;
  key += 'x'.repeat(1024 - Buffer.byteLength(key));
  t.is(Buffer.byteLength(key), 1024);

  await put(shared, key, 'at the limit');
  t.is((await get(shared, key)).toString(), 'at the limit');
  const head = await shared.client.send(new HeadObjectCommand({ Bucket: shared.bucket, Key: key }));
  t.is(head.ContentLength, 'at the limit'.length);
  t.deepEqual(await listAll(shared, prefix), [key]);
  await stillServes(t);
});

test("a 1025-byte key gets S3's KeyTooLongError, for PUT and GET alike", async (t) => {
  const key = `${uniqueName('long')}/${'k/'.repeat(600)}`.slice(0, 1025);
  t.is(Buffer.byteLength(key), 1025);
  const err = await sdkRefusal(t, put(shared, key, 'too long'), 'KeyTooLongError', 400);
  t.regex(err.message, /1025 bytes, at most 1024/);
  await sdkRefusal(t, get(shared, key), 'KeyTooLongError', 400);
  await stillServes(t);
});

test('a 904-byte single-segment key is refused cleanly (it used to kill the server)', async (t) => {
  const key = 'k'.repeat(904);
  const err = await sdkRefusal(t, put(shared, key, 'x'), 'InvalidArgument', 400);
  t.regex(err.message, /embedded S3 server cannot store key "k+…\(\d+ more characters\)" faithfully/);
  t.regex(
    err.message,
    /path segment 1 is 904 bytes; each segment becomes a file or folder name, so at most 233 bytes here/,
  );
  t.regex(err.message, /use MinIO or AWS S3/);
  await stillServes(t);
});

test('segment lengths: the last at most 233 bytes (s3rver adds a suffix), a folder 255', async (t) => {
  const prefix = uniqueName('segments');
  const last233 = `${prefix}/${'a'.repeat(233)}`;
  await put(shared, last233, '233');
  t.is((await get(shared, last233)).toString(), '233');
  await sdkRefusal(t, put(shared, `${prefix}/${'a'.repeat(234)}`, '234'), 'InvalidArgument', 400);
  // Long unicode: 117 × 'é' is 234 bytes, though only 117 characters.
  await sdkRefusal(t, put(shared, `${prefix}/${'é'.repeat(117)}`, 'x'), 'InvalidArgument', 400);
  const folder255 = `${prefix}/${'b'.repeat(255)}/leaf`;
  await put(shared, folder255, '255');
  t.is((await get(shared, folder255)).toString(), '255');
  await sdkRefusal(t, put(shared, `${prefix}/${'b'.repeat(256)}/leaf`, 'x'), 'InvalidArgument', 400);
  t.deepEqual((await listAll(shared, `${prefix}/`)).sort(), [folder255, last233].sort());
  await stillServes(t);
});

// --- keys whose path form s3rver cannot store faithfully ------------------------------------

test('a/../b and a//b are refused, and the object they would alias is untouched', async (t) => {
  const p = uniqueName('alias');
  await put(shared, `${p}/b`, 'original');
  for (const key of [`${p}/a/../b`, `${p}/a//b`, `${p}/./b`, `/${p}/b`, `${p}/b//`]) {
    const err = await sdkRefusal(t, put(shared, key, 'overwritten?'), 'InvalidArgument', 400);
    t.regex(err.message, /cannot store key .* faithfully: it has (an empty|a "\.\.?") path segment/, key);
    await sdkRefusal(t, get(shared, key), 'InvalidArgument', 400); // refused on read too: consistent
  }
  t.is((await get(shared, `${p}/b`)).toString(), 'original');
  t.deepEqual(await listAll(shared, `${p}/`), [`${p}/b`]);
  await stillServes(t);
});

test('hostile key spellings in raw requests are refused, never stored under another key', async (t) => {
  const p = uniqueName('raw');
  await put(shared, `${p}/b`, 'original');
  const bucketPath = `/${shared.bucket}`;
  const cases: [string, string, number][] = [
    [`${bucketPath}/${p}/a/%2e%2e/b`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/a%2F..%2Fb`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}%2F%2Fb`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/%2E/b`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/n%00ul`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/line%0Dbreak`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/not-xml-%EF%BF%BF`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/x._S3rver_object/y`, 'InvalidArgument', 400],
    [`${bucketPath}/${p}/%FF`, 'InvalidURI', 400], // not UTF-8: s3rver would have kept "%FF" literally
    [`${bucketPath}/${p}/%zz`, 'InvalidURI', 400],
    [`${bucketPath}/..%2F..%2Ftmp/x`, 'InvalidArgument', 400],
    [`/..%2F..%2Ftmp/x`, 'InvalidBucketName', 400],
    [`/%2e%2e/x`, 'InvalidBucketName', 400],
  ];
  for (const [target, code, status] of cases) {
    const res = await raw(shared.s3.port, 'PUT', target, { body: 'overwritten?' });
    t.is(res.status, status, target);
    t.is(res.code, code, target);
  }
  t.is((await get(shared, `${p}/b`)).toString(), 'original');
  t.deepEqual(await listAll(shared, `${p}/`), [`${p}/b`]);
  await stillServes(t);
});

test('keys the embedded server can store faithfully are kept distinct: backslash, trailing slash, %', async (t) => {
  const p = uniqueName('distinct');
  const keys = [
    `${p}/a/b`,
    `${p}/a\\b`,
    `${p}/a/`,
    `${p}/a`,
    `${p}/50%25 off+`,
    `${p}/日本語 ファイル.jpg`,
    `${p}/a#b?c`,
  ];
  for (const key of keys) await put(shared, key, `body of ${key}`);
  for (const key of keys) t.is((await get(shared, key)).toString(), `body of ${key}`, key);
  t.deepEqual((await listAll(shared, `${p}/`)).sort(), [...keys].sort());
  await stillServes(t);
});

test('ListObjectsV2 with hostile prefixes, start-after and tokens answers without harm', async (t) => {
  const p = uniqueName('list');
  await put(shared, `${p}/one`, '1');
  for (const prefix of ['../', `${p}//`, `${p}/../`, 'x'.repeat(1100), `${p}/\u0000`, '%', '._S3rver_']) {
    const page = await shared.client.send(new ListObjectsV2Command({ Bucket: shared.bucket, Prefix: prefix }));
    t.deepEqual(page.Contents ?? [], [], JSON.stringify(prefix));
  }
  const after = await shared.client.send(
    new ListObjectsV2Command({ Bucket: shared.bucket, Prefix: `${p}/`, StartAfter: '../../../../etc' }),
  );
  t.deepEqual(
    after.Contents?.map((c) => c.Key),
    [`${p}/one`],
  );
  const bogus = await raw(shared.s3.port, 'GET', `/${shared.bucket}?list-type=2&continuation-token=bm90LWEtdG9rZW4%3D`);
  t.true(bogus.status >= 400, `a forged continuation token is refused (${bogus.status})`);
  await stillServes(t);
});

// --- request shapes ---------------------------------------------------------------------------

test('thousands of query parameters and a 100 KB header are answered, and the server goes on', async (t) => {
  const params = Array.from({ length: 3000 }, (_, i) => `p${i}=`).join('&');
  const many = await raw(shared.s3.port, 'GET', `/${shared.bucket}?list-type=2&${params}`);
  t.true([200, 400, 414, 431].includes(many.status), `answered ${many.status}`);

  const huge = await rawSocket(
    shared.s3.port,
    `GET /${shared.bucket}?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'h'.repeat(100 * 1024)}\r\n\r\n`,
  );
  t.regex(huge, /^HTTP\/1\.1 431 /);

  const dup = await raw(shared.s3.port, 'GET', `/${shared.bucket}?list-type=2&prefix=a&prefix=b`);
  t.is(dup.code, 'InvalidArgument');
  t.regex(dup.body, /query parameter &quot;prefix&quot; is given more than once/);
  await stillServes(t);
});

test('a body over the bound is refused from its Content-Length, before any of it is sent', async (t) => {
  const key = `${uniqueName('big')}/object`;
  const target = `/${shared.bucket}/${key}`;
  const head = (extra: string) =>
    `PUT ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${MAX_OBJECT_BYTES + 1}\r\n${extra}\r\n`;

  // No body follows: an answer at all shows the server did not wait to read (or buffer) it.
  const plain = await rawSocket(shared.s3.port, head(''));
  t.regex(plain, /^HTTP\/1\.1 400 /);
  t.regex(plain, /<Code>EntityTooLarge<\/Code>/);
  t.regex(plain, /<MaxSizeAllowed>1048576<\/MaxSizeAllowed>/);

  // A client that waits for "100 Continue" is refused without ever being asked for the body.
  const waiting = await rawSocket(shared.s3.port, head('Expect: 100-continue\r\n'));
  t.regex(waiting, /^HTTP\/1\.1 400 /);
  t.notRegex(waiting, /100 Continue/);

  // A body of unknown length could not be bounded first: refused as S3 refuses it.
  const chunked = await rawSocket(
    shared.s3.port,
    `PUT ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
  );
  t.regex(chunked, /^HTTP\/1\.1 501 /);
  t.regex(chunked, /<Code>NotImplemented<\/Code>/);

  await sdkRefusal(t, put(shared, key, Buffer.alloc(MAX_OBJECT_BYTES + 1)), 'EntityTooLarge', 400);
  const exact = randomBytes(MAX_OBJECT_BYTES);
  await put(shared, key, exact);
  t.true((await get(shared, key)).equals(exact), 'a body of exactly the bound is stored');
  await stillServes(t);
});

test('bucket names: dots accepted; uppercase, underscores and IP-like names refused', async (t) => {
  const dotted = `${uniqueName('my.bucket')}.x`;
  await shared.client.send(new CreateBucketCommand({ Bucket: dotted }));
  await put(shared, 'in/dotted', 'dots are fine', dotted);
  t.is((await get(shared, 'in/dotted', dotted)).toString(), 'dots are fine');
  for (const bucket of ['MyBucket', 'my_bucket', '192.168.1.1', 'a..b', 'ab', '-bucket']) {
    const err = await sdkRefusal(t, put(shared, 'k', 'x', bucket), 'InvalidBucketName', 400);
    t.regex(err.message, /bucket names are 3 to 63 characters/);
  }
  await stillServes(t);
});

test('only loopback Host names and same-machine origins are served (no DNS rebinding)', async (t) => {
  const target = `/${shared.bucket}?list-type=2`;
  const rebound = await raw(shared.s3.port, 'GET', target, { headers: { host: 'attacker.example:80' } });
  t.is(rebound.status, 403);
  t.is(rebound.code, 'AccessDenied');
  const vhost = await raw(shared.s3.port, 'GET', '/x', { headers: { host: `${shared.bucket}.s3.amazonaws.com` } });
  t.is(vhost.status, 403);
  const crossSite = await raw(shared.s3.port, 'GET', target, { headers: { origin: 'https://attacker.example' } });
  t.is(crossSite.status, 403);
  t.is((await raw(shared.s3.port, 'GET', target, { headers: { host: `localhost:${shared.s3.port}` } })).status, 200);
  t.is((await raw(shared.s3.port, 'GET', target, { headers: { origin: 'http://127.0.0.1:8080' } })).status, 200);
  await stillServes(t);
});

test('requests whose keys hide in a body or query are refused; upload ids cannot name paths', async (t) => {
  const bucketPath = `/${shared.bucket}`;
  const multiDelete = await raw(shared.s3.port, 'POST', `${bucketPath}?delete`, {
    body: '<Delete><Object><Key>../../x</Key></Object></Delete>',
  });
  t.is(multiDelete.status, 501);
  t.regex(multiDelete.body, /does not support DeleteObjects/);
  const form = await raw(shared.s3.port, 'POST', bucketPath, {
    headers: { 'content-type': 'multipart/form-data; boundary=x' },
  });
  t.is(form.status, 501);
  const traversal = await raw(shared.s3.port, 'PUT', `${bucketPath}/k?uploadId=..%2F..%2F..%2Ftmp&partNumber=1`, {
    body: 'x',
  });
  t.is(traversal.code, 'NoSuchUpload');
  const badPart = await raw(shared.s3.port, 'PUT', `${bucketPath}/k?uploadId=${'a'.repeat(32)}&partNumber=..%2Fx`, {
    body: 'x',
  });
  t.is(badPart.code, 'InvalidArgument');
  await stillServes(t);
});

test('CopyObject: the copy source is checked like a key and copied exactly', async (t) => {
  const p = uniqueName('copy');
  const source = `${p}/50% off+ é#?&=`;
  await put(shared, source, 'copied body');
  await shared.client.send(
    new CopyObjectCommand({
      Bucket: shared.bucket,
      Key: `${p}/dest`,
      CopySource: `${shared.bucket}/${encodeURIComponent(source)}`,
    }),
  );
  t.is((await get(shared, `${p}/dest`)).toString(), 'copied body');
  for (const copySource of [
    `${shared.bucket}/${p}/a/../b`,
    `..%2F..%2Fetc/${p}`,
    `${shared.bucket}/${'k'.repeat(300)}`,
  ]) {
    const err = (await t.throwsAsync(
      shared.client.send(new CopyObjectCommand({ Bucket: shared.bucket, Key: `${p}/dest2`, CopySource: copySource })),
    )) as unknown as SdkError;
    t.is(err.$metadata?.httpStatusCode, 400, copySource);
  }
  await stillServes(t);
});

test('multipart upload still works through the rewritten part writer', async (t) => {
  const key = `${uniqueName('multipart')}/object`;
  const created = await shared.client.send(new CreateMultipartUploadCommand({ Bucket: shared.bucket, Key: key }));
  const parts = [randomBytes(300_000), randomBytes(1000)];
  const done = [];
  for (const [i, body] of parts.entries()) {
    const res = await shared.client.send(
      new UploadPartCommand({
        Bucket: shared.bucket,
        Key: key,
        UploadId: created.UploadId,
        PartNumber: i + 1,
        Body: body,
      }),
    );
    t.is(res.ETag, md5(body));
    done.push({ PartNumber: i + 1, ETag: res.ETag });
  }
  await shared.client.send(
    new CompleteMultipartUploadCommand({
      Bucket: shared.bucket,
      Key: key,
      UploadId: created.UploadId,
      MultipartUpload: { Parts: done },
    }),
  );
  t.true((await get(shared, key)).equals(Buffer.concat(parts)));
  await stillServes(t);
});

// --- concurrency and faults -------------------------------------------------------------------

test('concurrent PUTs to one key leave one whole body under its own ETag; readers see whole bodies', async (t) => {
  const key = `${uniqueName('race')}/object`;
  const bodies = Array.from({ length: 16 }, () => randomBytes(200_000));
  await put(shared, key, bodies[0]!);
  const reads: Promise<Buffer>[] = [];
  const etags = await Promise.all(
    bodies.map(async (body, i) => {
      if (i % 2 === 0) reads.push(get(shared, key));
      return put(shared, key, body);
    }),
  );
  for (const [i, body] of bodies.entries()) t.is(etags[i], md5(body));
  for (const read of await Promise.all(reads)) {
    t.true(
      bodies.some((body) => body.equals(read)),
      'a reader saw one whole body, not a mix',
    );
  }
  const res = await shared.client.send(new GetObjectCommand({ Bucket: shared.bucket, Key: key }));
  const final = Buffer.from(await res.Body!.transformToByteArray());
  t.true(
    bodies.some((body) => body.equals(final)),
    'the object is one of the bodies sent',
  );
  t.is(res.ETag, md5(final), "and its ETag is that body's MD5");
  await stillServes(t);
});

test('a write error the guard cannot foresee fails that request with a 500, not the server', async (t) => {
  const key = `${uniqueName('fault')}/victim`;
  // A folder where the object's file must go (a damaged data folder, say): the write fails.
  await mkdir(path.join(shared.dir, shared.bucket, `${key}._S3rver_object`, 'inner'), { recursive: true });
  await sdkRefusal(t, put(shared, key, 'x'), 'InternalError', 500);
  await stillServes(t);
});

test('aborted uploads leave no open file, no temporary file, and the old object whole', async (t) => {
  const server = await startServer(t);
  const key = 'object';
  await put(server, key, 'old body');
  const pid = server.s3.pid!;
  const openFiles = async () => (await readdir(`/proc/${pid}/fd`)).length;
  const before = await openFiles();
  for (let i = 0; i < 10; i++) {
    await new Promise<void>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port: server.s3.port }, () => {
        socket.write(`PUT /${server.bucket}/${key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500000\r\n\r\n`);
        socket.write(Buffer.alloc(100_000, 1), () =>
          setTimeout(() => {
            socket.destroy();
            resolve();
          }, 50),
        );
      });
    });
  }
  let after = await openFiles();
  for (let i = 0; i < 50 && after > before; i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = await openFiles();
  }
  t.true(after <= before, `open descriptors went from ${before} to ${after}`);
  t.is((await get(server, key)).toString(), 'old body', 'a failed overwrite leaves the old object');
  const tmp = await readdir(path.join(server.dir, server.bucket, '._S3rver_tmp')).catch(() => []);
  t.deepEqual(tmp, []);
  await stillServes(t, server, pid);
});
