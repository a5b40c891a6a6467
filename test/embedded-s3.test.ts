/**
 * The embedded S3 server (the single-machine default) against hostile requests, driven for real:
 * the child process started by startS3Server, the AWS SDK client deepfeat uses (createS3Client),
 * and raw HTTP where the SDK would not send such a request. After every hostile request a normal
 * PUT/GET must still work in the same server process: one request must not kill it, and a key is
 * either stored exactly or refused loudly, never stored under another key.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
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
/** Room for the slow reader's 30 MB object. */
const QUIET_MAX_OBJECT_BYTES = 64 * 1024 * 1024;
const ACCESS_KEY = 'minioadmin';

interface Server {
  s3: LocalS3;
  client: S3Client;
  bucket: string;
  dir: string;
}

async function startServer(maxObjectBytes = MAX_OBJECT_BYTES): Promise<Server> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'deepfeat-embedded-s3-'));
  const bucket = uniqueName('bucket');
  const s3 = await startS3Server({ dir, buckets: [bucket], accessKeyIds: [ACCESS_KEY], maxObjectBytes });
  return { s3, client: newClient(s3.endpoint), bucket, dir };
}

function newClient(endpoint: string): S3Client {
  return createS3Client({
    endpoint,
    region: 'us-east-1',
    accessKeyId: ACCESS_KEY,
    secretAccessKey: ACCESS_KEY,
    forcePathStyle: true,
    maxAttempts: 1, // a refusal must show as it is, not after retries
    timeoutSeconds: 20,
  });
}

/**
 * The quiet server with an SDK client of the test's own. Its tests keep connections busy for
 * seconds; a pooled connection left idle meanwhile could be closed by the server (keep-alive
 * timeout) just as the next test sends on it, and with maxAttempts 1 that would fail the test.
 */
function onQuiet(t: ExecutionContext): Server {
  const client = newClient(quiet.s3.endpoint);
  t.teardown(() => client.destroy());
  return { ...quiet, client };
}

async function stopServer(server: Server): Promise<void> {
  server.client.destroy();
  await server.s3.stop();
  await rm(server.dir, { recursive: true, force: true });
}

// One server for the tests that do not kill or count things in it; each uses its own key prefix.
// A second, `quiet`, for the serial tests that count its open files and temporary files, or stall
// its connections: nothing else runs on it meanwhile. (A server per test would mean starting many
// server processes at once, each loading TypeScript, on a loaded machine.)
let shared: Server;
let sharedPid: number | undefined;
let quiet: Server;
let quietPid: number;
test.before(async () => {
  [shared, quiet] = await Promise.all([startServer(), startServer(QUIET_MAX_OBJECT_BYTES)]);
  sharedPid = shared.s3.pid;
  quietPid = quiet.s3.pid!;
});
test.after.always(async () => {
  await Promise.all([shared, quiet].filter(Boolean).map(stopServer));
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

/**
 * `promise`, or a failure naming `what` if it has not settled after `ms`. Only for requests whose
 * bug was never answering (or answering after minutes): the bound says "at all", not "fast".
 */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Open file descriptors of a process (Linux). */
async function openFiles(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** Waits (up to 5 s) for the process's descriptor count to fall back to `before`; returns the last count. */
async function openFilesSettle(pid: number, before: number): Promise<number> {
  let now = await openFiles(pid);
  for (let i = 0; i < 50 && now > before; i++) {
    await new Promise((r) => setTimeout(r, 100));
    now = await openFiles(pid);
  }
  return now;
}

async function tmpFiles(server: Server): Promise<string[]> {
  return readdir(path.join(server.dir, server.bucket, '._S3rver_tmp')).catch(() => []);
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
  // A GET of this test's own object: a listing of the shared bucket can race the other tests'
  // writes in this file (one CI run answered 500 here), which is not what this test is about.
  const key = `rebinding/${uniqueName('probe')}`;
  await put(shared, key, 'probe');
  const target = `/${shared.bucket}/${key}`;
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
  await shared.client.send(
    new PutObjectCommand({
      Bucket: shared.bucket,
      Key: source,
      Body: 'copied body',
      ContentType: 'text/plain',
      Metadata: { origin: 'test' },
    }),
  );
  const copied = await shared.client.send(
    new CopyObjectCommand({
      Bucket: shared.bucket,
      Key: `${p}/dest`,
      CopySource: `${shared.bucket}/${encodeURIComponent(source)}`,
    }),
  );
  t.is(copied.CopyObjectResult?.ETag, md5('copied body'));
  t.is((await get(shared, `${p}/dest`)).toString(), 'copied body');
  const head = await shared.client.send(new HeadObjectCommand({ Bucket: shared.bucket, Key: `${p}/dest` }));
  t.is(head.ETag, md5('copied body'));
  t.is(head.ContentType, 'text/plain', 'the metadata is copied with the bytes');
  t.deepEqual(head.Metadata, { origin: 'test' });
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

test('listings while objects are written and overwritten answer every time, with whole entries', async (t) => {
  // Each write stages its body in the bucket's temporary folder and renames it into place, then
  // rewrites the key's MD5 and metadata files: a listing walks the same folders meanwhile.
  const prefix = `${uniqueName('listrace')}/`;
  const keys = Array.from({ length: 24 }, (_, i) => `${prefix}k${String(i).padStart(2, '0')}`);
  await Promise.all(keys.map((k) => put(shared, k, randomBytes(64))));
  let writing = true;
  const writers = Array.from({ length: 6 }, async (_, w) => {
    for (let round = 0; writing; round++) await put(shared, keys[(round * 7 + w) % keys.length]!, randomBytes(2048));
  });
  const failures: string[] = [];
  let listings = 0;
  try {
    for (let i = 0; i < 150; i++) {
      for (const listPrefix of [prefix, '']) {
        try {
          const page = await shared.client.send(
            new ListObjectsV2Command({ Bucket: shared.bucket, Prefix: listPrefix, MaxKeys: 1000 }),
          );
          listings++;
          if (listPrefix === prefix) {
            const listed = (page.Contents ?? []).map((c) => c.Key);
            if (listed.length !== keys.length) failures.push(`listed ${listed.length} of ${keys.length}`);
            for (const c of page.Contents ?? [])
              if (!/^"[0-9a-f]{32}"$/.test(c.ETag ?? '')) failures.push(`ETag ${c.ETag}`);
          }
        } catch (err) {
          failures.push(`${(err as Error).name}: ${(err as Error).message}`);
        }
      }
    }
  } finally {
    writing = false;
    await Promise.all(writers);
  }
  t.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${listings + failures.length} listings failed`);
});

test('a write error the guard cannot foresee fails that request with a 500, not the server', async (t) => {
  const key = `${uniqueName('fault')}/victim`;
  // A folder where the object's file must go (a damaged data folder, say): the write fails.
  await mkdir(path.join(shared.dir, shared.bucket, `${key}._S3rver_object`, 'inner'), { recursive: true });
  await sdkRefusal(t, put(shared, key, 'x'), 'InternalError', 500);
  await stillServes(t);
});

test.serial('aborted uploads leave no open file, no temporary file, and the old object whole', async (t) => {
  const server = onQuiet(t);
  const pid = quietPid;
  const key = uniqueName('aborted');
  await put(server, key, 'old body');
  const before = await openFiles(pid);
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
  const after = await openFilesSettle(pid, before);
  t.true(after <= before, `open descriptors went from ${before} to ${after}`);
  t.is((await get(server, key)).toString(), 'old body', 'a failed overwrite leaves the old object');
  t.deepEqual(await tmpFiles(server), []);
  await stillServes(t, server, pid);
});

// --- multipart uploads completed by a hostile client ------------------------------------------

/** CreateMultipartUpload over raw HTTP; returns the upload id. */
async function createUpload(server: Server, key: string): Promise<string> {
  const res = await raw(server.s3.port, 'POST', `/${server.bucket}/${key}?uploads`);
  const uploadId = /<UploadId>([^<]+)<\/UploadId>/.exec(res.body)?.[1];
  if (res.status !== 200 || !uploadId) throw new Error(`CreateMultipartUpload answered ${res.status}: ${res.body}`);
  return uploadId;
}

/** UploadPart over raw HTTP; returns the part's ETag (quoted). */
async function uploadPart(server: Server, key: string, uploadId: string, n: number, body: Buffer): Promise<string> {
  const res = await raw(server.s3.port, 'PUT', `/${server.bucket}/${key}?partNumber=${n}&uploadId=${uploadId}`, {
    body,
  });
  if (res.status !== 200) throw new Error(`UploadPart ${n} answered ${res.status}: ${res.body}`);
  return String(res.headers.etag);
}

function completeXml(parts: readonly [number | string, string][]): string {
  const items = parts.map(([n, etag]) => `<Part><PartNumber>${n}</PartNumber><ETag>${etag}</ETag></Part>`);
  return `<CompleteMultipartUpload>${items.join('')}</CompleteMultipartUpload>`;
}

/** CompleteMultipartUpload over raw HTTP; fails the test if it gets no answer at all (the old hang). */
function complete(server: Server, key: string, uploadId: string, body: string): Promise<RawResponse> {
  const target = `/${server.bucket}/${key}?uploadId=${uploadId}`;
  return within(10_000, `CompleteMultipartUpload ${target}`, raw(server.s3.port, 'POST', target, { body }));
}

test.serial(
  'CompleteMultipartUpload naming a missing, wrong or misordered part gets S3 errors and leaks nothing',
  async (t) => {
    const server = onQuiet(t);
    const pid = quietPid;
    const key = uniqueName('leak');
    await stillServes(t, server, pid); // warm: the descriptors a served request leaves behind are counted
    const before = await openFiles(pid);

    // Part 1 was never uploaded: this request used to get no answer, keep its files open and hold
    // the key's lock until its connection closed.
    const uploadId = await createUpload(server, key);
    for (let i = 0; i < 30; i++) {
      const res = await complete(server, key, uploadId, completeXml([[1, 'x']]));
      t.is(res.status, 400);
      t.is(res.code, 'InvalidPart');
    }
    t.regex((await complete(server, key, uploadId, completeXml([[1, 'x']]))).body, /part 1 .*was never uploaded/);

    const one = randomBytes(1000);
    const two = randomBytes(500);
    const etag1 = await uploadPart(server, key, uploadId, 1, one);
    const etag2 = await uploadPart(server, key, uploadId, 2, two);
    const cases: [string, string][] = [
      [
        completeXml([
          [1, etag1],
          [2, md5('other bytes')],
        ]),
        'InvalidPart',
      ], // wrong ETag
      [
        completeXml([
          [1, etag1],
          [2, etag2],
          [3, etag2],
        ]),
        'InvalidPart',
      ], // one part too many
      [
        completeXml([
          [2, etag2],
          [1, etag1],
        ]),
        'InvalidPartOrder',
      ],
      [
        completeXml([
          [1, etag1],
          [1, etag1],
        ]),
        'InvalidPartOrder',
      ],
      [completeXml([]), 'MalformedXML'],
      [completeXml([['one', etag1]]), 'MalformedXML'],
      ['<CompleteMultipartUpload><Part>', 'MalformedXML'],
    ];
    for (const [body, code] of cases) {
      const res = await complete(server, key, uploadId, body);
      t.is(res.status, 400, body);
      t.is(res.code, code, body);
    }
    // s3rver's own parser fails on a Part without an ETag before the part list reaches the store:
    // an InternalError rather than S3's MalformedXML, but an answer, with nothing left open.
    const noEtag = '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>';
    t.true((await complete(server, key, uploadId, noEtag)).status >= 400);

    // Nothing was stored, and no failed request still holds the key: a GET answers at once.
    const get404 = await within(
      10_000,
      'GET after failed completes',
      raw(server.s3.port, 'GET', `/${server.bucket}/${key}`),
    );
    t.is(get404.code, 'NoSuchKey');
    const after = await openFilesSettle(pid, before);
    t.true(after <= before, `open descriptors went from ${before} to ${after}`);
    t.deepEqual(await tmpFiles(server), [], 'no temporary file is left behind');

    // The upload survives the refused attempts and completes with the right list.
    const done = await complete(
      server,
      key,
      uploadId,
      completeXml([
        [1, etag1],
        [2, etag2],
      ]),
    );
    t.is(done.status, 200, done.body);
    t.true((await get(server, key)).equals(Buffer.concat([one, two])));
    const again = await complete(
      server,
      key,
      uploadId,
      completeXml([
        [1, etag1],
        [2, etag2],
      ]),
    );
    t.is(again.code, 'NoSuchUpload', 'a completed upload is gone');
    await stillServes(t, server, pid);
  },
);

test.serial(
  'a part file lost between upload and complete fails the complete with InvalidPart and leaks nothing',
  async (t) => {
    const server = onQuiet(t);
    const pid = quietPid;
    await stillServes(t, server, pid);
    const before = await openFiles(pid);
    const uploads = path.join(server.dir, server.bucket, '._S3rver_uploads');
    const key = `${uniqueName('lost')}/part`;
    await put(server, key, 'old body');

    // The part's data goes, its recorded MD5 stays: only reading the part can find out.
    const uploadId = await createUpload(server, key);
    const etag1 = await uploadPart(server, key, uploadId, 1, randomBytes(2000));
    const etag2 = await uploadPart(server, key, uploadId, 2, randomBytes(2000));
    await rm(path.join(uploads, uploadId, '2'));
    const res = await complete(
      server,
      key,
      uploadId,
      completeXml([
        [1, etag1],
        [2, etag2],
      ]),
    );
    t.is(res.status, 400);
    t.is(res.code, 'InvalidPart');
    t.regex(res.body, /part 2 /);

    // The part's bytes were replaced behind the server's back: its ETag no longer matches them.
    const replaced = await createUpload(server, key);
    const etag = await uploadPart(server, key, replaced, 1, randomBytes(3000));
    await writeFile(path.join(uploads, replaced, '1'), randomBytes(3000));
    const changed = await complete(server, key, replaced, completeXml([[1, etag]]));
    t.is(changed.code, 'InvalidPart');

    t.is((await get(server, key)).toString(), 'old body', 'a failed complete leaves the old object whole');
    const after = await openFilesSettle(pid, before);
    t.true(after <= before, `open descriptors went from ${before} to ${after}`);
    t.deepEqual(await tmpFiles(server), []);
    await stillServes(t, server, pid);
  },
);

test('an upload id works only for its own key: another key gets NoSuchUpload and nothing is written', async (t) => {
  const p = uniqueName('upload-key');
  const uploadId = await createUpload(shared, `${p}/mine`);
  const etag = await uploadPart(shared, `${p}/mine`, uploadId, 1, Buffer.from('part one'));
  // Completing under another key would write `mine` while holding the lock of `theirs`.
  const res = await complete(shared, `${p}/theirs`, uploadId, completeXml([[1, etag]]));
  t.is(res.status, 404);
  t.is(res.code, 'NoSuchUpload');
  const part = await raw(shared.s3.port, 'PUT', `/${shared.bucket}/${p}/theirs?partNumber=2&uploadId=${uploadId}`, {
    body: 'x',
  });
  t.is(part.code, 'NoSuchUpload');
  const unknown = 'f'.repeat(32);
  const orphan = await raw(shared.s3.port, 'PUT', `/${shared.bucket}/${p}/mine?partNumber=1&uploadId=${unknown}`, {
    body: 'x',
  });
  t.is(orphan.code, 'NoSuchUpload', 'a part for an upload that was never created');
  const noNumber = await raw(shared.s3.port, 'PUT', `/${shared.bucket}/${p}/mine?uploadId=${uploadId}`, { body: 'x' });
  t.is(noNumber.code, 'InvalidArgument', 'UploadPart without partNumber');
  const partCopy = await raw(shared.s3.port, 'PUT', `/${shared.bucket}/${p}/mine?partNumber=2&uploadId=${uploadId}`, {
    headers: { 'x-amz-copy-source': `/${shared.bucket}/${p}/mine` },
  });
  t.is(partCopy.code, 'NotImplemented', 'UploadPartCopy is not supported');
  t.deepEqual(await listAll(shared, `${p}/`), [], 'nothing was stored under either key');
  const uploads = await readdir(path.join(shared.dir, shared.bucket, '._S3rver_uploads'));
  t.false(uploads.includes(unknown), 'no folder was made for the unknown upload id');

  const done = await complete(shared, `${p}/mine`, uploadId, completeXml([[1, etag]]));
  t.is(done.status, 200, done.body);
  t.is((await get(shared, `${p}/mine`)).toString(), 'part one');
  await stillServes(t);
});

test('a client that leaves in the middle of a CompleteMultipartUpload body holds no lock afterwards', async (t) => {
  const key = `${uniqueName('gone')}/object`;
  const uploadId = await createUpload(shared, key);
  const etag = await uploadPart(shared, key, uploadId, 1, Buffer.from('the part'));
  const body = completeXml([[1, etag]]);
  await new Promise<void>((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: shared.s3.port }, () => {
      socket.write(
        `POST /${shared.bucket}/${key}?uploadId=${uploadId} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
          `Content-Length: ${body.length}\r\n\r\n${body.slice(0, 40)}`,
        () =>
          setTimeout(() => {
            socket.destroy();
            resolve();
          }, 100),
      );
    });
  });
  await within(10_000, 'PUT after an abandoned complete', put(shared, key, 'written after'));
  t.is((await get(shared, key)).toString(), 'written after');
  const done = await complete(shared, key, uploadId, body);
  t.is(done.status, 200, 'the abandoned attempt left the upload usable');
  t.is((await get(shared, key)).toString(), 'the part');
  await stillServes(t);
});

// --- slow readers -----------------------------------------------------------------------------

test.serial(
  'a stalled reader does not block writers, and still gets the whole old object under its old ETag',
  async (t) => {
    const size = 30 * 1024 * 1024; // far more than the socket buffers between server and client hold
    const server = onQuiet(t);
    const key = `${uniqueName('models/slow-reader')}/latest.json`;
    const old = randomBytes(size);
    await put(server, key, old);

    // A GET that reads its headers and a few bytes, then stops reading.
    const socket = net.connect({ host: '127.0.0.1', port: server.s3.port });
    t.teardown(() => socket.destroy());
    const chunks: Buffer[] = [];
    let received = 0;
    let stalled = false;
    const started = new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        received += chunk.length;
        if (!stalled) {
          stalled = true;
          socket.pause();
          resolve();
        }
      });
    });
    socket.write(`GET /${server.bucket}/${key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
    await started;
    t.true(received < size, 'the reader has only begun');

    // The writer is not kept waiting for the reader (it used to wait until the reader's connection closed).
    const etag = await within(15_000, 'PUT during a stalled GET', put(server, key, 'new body'));
    t.is(etag, md5('new body'));
    t.is((await get(server, key)).toString(), 'new body');

    // The stalled reader resumes and gets exactly the object it started reading.
    const whole = new Promise<Buffer>((resolve) => {
      const check = (ended = false) => {
        const all = Buffer.concat(chunks);
        const end = all.indexOf('\r\n\r\n');
        if (ended || (end >= 0 && all.length >= end + 4 + size)) resolve(all);
      };
      socket.on('data', () => check());
      socket.on('end', () => check(true));
      check();
    });
    socket.resume();
    const response = await whole;
    const end = response.indexOf('\r\n\r\n');
    const head = response.subarray(0, end).toString('latin1');
    t.regex(head, /^HTTP\/1\.1 200 /);
    t.regex(head, new RegExp(`\\r\\netag: ${md5(old)}\\r\\n`, 'i'));
    t.regex(head, new RegExp(`\\r\\ncontent-length: ${size}\\r\\n`, 'i'));
    t.true(response.subarray(end + 4).equals(old), 'the old bytes, whole, never mixed with the new');
  },
);

test.serial(
  'a stalled upload does not block readers: a GET during a PUT whose body stalls gets the old object',
  async (t) => {
    const server = onQuiet(t);
    const key = `${uniqueName('models/slow-writer')}/latest.json`;
    await put(server, key, 'old body');

    // A PUT that sends its headers and part of its body, then stops sending.
    const socket = net.connect({ host: '127.0.0.1', port: server.s3.port });
    t.teardown(() => socket.destroy());
    const answer = new Promise<string>((resolve) => {
      let text = '';
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
        if (/\r\n\r\n/.test(text)) resolve(text);
      });
    });
    const body = randomBytes(500_000);
    await new Promise<void>((resolve) => {
      socket.once('connect', () => {
        socket.write(
          `PUT /${server.bucket}/${key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: ${body.length}\r\n\r\n`,
        );
        socket.write(body.subarray(0, 100_000), () => resolve());
      });
    });

    // Readers are not kept waiting for the writer's body (they used to wait until its connection closed).
    const read = await within(10_000, 'GET during a stalled PUT', get(server, key));
    t.is(read.toString(), 'old body');

    // The writer finishes its body; its object replaces the old one.
    socket.write(body.subarray(100_000));
    t.regex(await within(10_000, 'the stalled PUT, once its body is whole', answer), /^HTTP\/1\.1 200 /);
    t.true((await get(server, key)).equals(body));
    t.deepEqual(await tmpFiles(server), []);
  },
);

test.serial('conditional GETs answered 304 leave no file open', async (t) => {
  const server = onQuiet(t);
  const pid = quietPid;
  const key = uniqueName('conditional');
  const etag = await put(server, key, 'body');
  await stillServes(t, server, pid);
  const before = await openFiles(pid);
  const tomorrow = new Date(Date.now() + 86_400_000).toUTCString();
  for (let i = 0; i < 20; i++) {
    const notChanged = await raw(server.s3.port, 'GET', `/${server.bucket}/${key}`, {
      headers: { 'if-none-match': String(etag) },
    });
    t.is(notChanged.status, 304);
    const notModified = await raw(server.s3.port, 'GET', `/${server.bucket}/${key}`, {
      headers: { 'if-modified-since': tomorrow },
    });
    t.is(notModified.status, 304);
  }
  const after = await openFilesSettle(pid, before);
  t.true(after <= before, `open descriptors went from ${before} to ${after}`);
  await stillServes(t, server, pid);
});
