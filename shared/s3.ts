/**
 * All object-storage access goes through here: one client factory with the settings every
 * S3-compatible server needs, and errors turned into deepfeat errors that say whether a retry
 * can help (connection refused, 5xx, throttling) or not (no such bucket, access denied), and
 * whether the request itself was refused (an invalid bucket name, a key the server cannot store):
 * a bad request that carries the server's own reason.
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Readable } from 'node:stream';
import { enableFastGet, fastGetObject, readExactly } from './s3-fast-get.js';
import type { S3Config } from './config.js';
import { BadRequestError, NotFoundError, StorageError } from './errors.js';
import { capText, quote } from './text.js';

export function createS3Client(cfg: S3Config): S3Client {
  // The SDK warns on every process start that releases after January 2027 need Node 22; we pin
  // a release that supports Node 20, so the warning is noise in every worker's log.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const client = new S3Client({
    region: cfg.region,
    ...(cfg.endpoint !== undefined ? { endpoint: cfg.endpoint } : {}),
    ...(cfg.accessKeyId !== undefined && cfg.secretAccessKey !== undefined
      ? { credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey } }
      : {}),
    forcePathStyle: cfg.forcePathStyle,
    maxAttempts: cfg.maxAttempts,
    // The SDK sets no timeouts by default: a server that accepts a connection and then says
    // nothing would hold a job forever while its worker keeps renewing the lock. Silence for
    // S3_TIMEOUT seconds (connecting, or mid-request/response, body included) fails the request
    // as a TimeoutError, which the SDK retries and storageError() classes as transient.
    requestHandler: { connectionTimeout: cfg.timeoutSeconds * 1000, socketTimeout: cfg.timeoutSeconds * 1000 },
    // Without these, newer SDKs send streamed uploads with aws-chunked framing, which some
    // S3-compatible servers (s3rver, older MinIO) store verbatim inside the object.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // Resolve each command's middleware stack once per client, not on every send: an extractor
    // sends one GET per image, and resolving the stack was about a fifth of the SDK's CPU per GET
    // (0.59 -> 0.48 ms for a 2.5 KB object, 0.72 -> 0.54 ms for 70 KB; issue 14). Nothing here
    // adds middleware to a single command, which this caching would ignore.
    cacheMiddleware: true,
  });
  if (cfg.fastGet !== false) enableFastGet(client, cfg.timeoutSeconds * 1000);
  return client;
}

export interface S3Location {
  readonly bucket: string;
  /** Key prefix or key, without a leading '/'; may be ''. */
  readonly key: string;
}

/** S3's bucket naming rules, as a user reads them in a message. */
export const BUCKET_NAME_RULE =
  'bucket names are 3 to 63 characters of lowercase letters, digits, dots and hyphens, start and end with a ' +
  'letter or digit, have no "..", and are not an IP address (S3\'s naming rules)';

/**
 * Whether `bucket` follows S3's naming rules (those of the embedded server's guard too). Checked
 * before a request is made: a HEAD answer carries no reason, so the server could only say "400".
 */
export function isValidBucketName(bucket: string): boolean {
  return (
    /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) && !bucket.includes('..') && !/^\d+\.\d+\.\d+\.\d+$/.test(bucket)
  );
}

/** Splits `s3://bucket/some/prefix/` into bucket and key, without judging the bucket's name. */
export function splitS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url.trim());
  if (!m) {
    throw new BadRequestError(`not an S3 URL: ${quote(url)}: expected s3://bucket/prefix/ or s3://bucket/manifest.csv`);
  }
  return { bucket: m[1]!, key: m[2]! };
}

/**
 * Parses `s3://bucket/some/prefix/`; the message says what a valid URL looks like. A bucket name
 * S3 would refuse is a bad request here, before any request is recorded or sent.
 */
export function parseS3Url(url: string): S3Location {
  const loc = splitS3Url(url);
  if (!isValidBucketName(loc.bucket)) {
    throw new BadRequestError(
      `invalid bucket name ${quote(loc.bucket, 100)} in ${quote(url)}: ${BUCKET_NAME_RULE}; fix the URL`,
    );
  }
  return loc;
}

export function s3Url(bucket: string, key: string): string {
  return `s3://${bucket}/${key}`;
}

/**
 * What a request was about: one object (`key`), or a bucket as a whole (a HEAD of the bucket, or
 * a listing of `prefix`). The extractor tells "S3 refused this image's key" (that image fails,
 * the run goes on) from "S3 refused the bucket" (the run fails) by it.
 */
export type StorageTarget =
  | { readonly bucket: string; readonly key: string }
  | { readonly bucket: string; readonly prefix?: string };

function targetUrl(t: StorageTarget): string {
  if ('key' in t) return s3Url(t.bucket, t.key);
  const p = t.prefix ?? '';
  return s3Url(t.bucket, p === '' || p.endsWith('/') ? p : `${p}/`);
}

/** Refusals of our credentials or of access to the bucket (ACCESS_DENIED). */
const ACCESS_CODES = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AllAccessDisabled',
  'Forbidden',
  'ExpiredToken',
  'InvalidToken',
  'AuthorizationHeaderMalformed',
]);
/** 4xx answers that mean "not now" rather than "never" (the SDK has retried them already). */
const TRANSIENT_CODES = new Set([
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'OperationAborted',
]);
const TRANSIENT_STATUS = new Set([408, 409, 429]);
/** Longest part of a server's own error message quoted in ours. */
const MAX_SERVER_MESSAGE_CHARS = 500;

/**
 * The S3 server refused the request itself (HTTP 4xx other than "denied" and "not found"): an
 * invalid bucket name, a key it cannot store (InvalidArgument, KeyTooLongError), a malformed
 * URI. No retry changes the answer, and the fix is in the request (exit code 2), so it carries
 * the server's own reason. `scope` says whether one object's key was refused or the bucket.
 */
export class RequestRefusedError extends BadRequestError {
  constructor(
    readonly url: string,
    readonly scope: 'object' | 'bucket',
    /** Why, without the URL: what a failed image's row says next to its key. */
    readonly reason: string,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

/**
 * Maps an SDK failure to a deepfeat error naming the object (quoted: keys are user data and may
 * hold newlines or escapes) and the fix: NotFoundError, RequestRefusedError (a bad request), or
 * a StorageError that says whether a retry can help.
 */
export function storageError(err: unknown, target: StorageTarget): StorageError | NotFoundError | RequestRefusedError {
  if (err instanceof StorageError || err instanceof NotFoundError || err instanceof RequestRefusedError) return err;
  const url = targetUrl(target);
  const what = quote(url);
  const isObject = 'key' in target;
  const name = err instanceof Error ? err.name : 'Error';
  const status = err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
  // A HEAD request's error has no body, so the SDK names it 'Unknown': show the status instead.
  const code = name === 'Unknown' || name === 'Error' ? `HTTP ${status ?? '?'}` : name;
  if (
    name === 'NoSuchKey' ||
    (name === 'NotFound' && isObject) ||
    (status === 404 && isObject && name !== 'NoSuchBucket')
  ) {
    return new NotFoundError(`${what} does not exist`, { cause: err });
  }
  if (name === 'NoSuchBucket' || status === 404) {
    // Its own code: a bucket that does not exist is a bad request (CLI exit code 2), not a fault.
    return new StorageError(`no such bucket for ${what}: create it or fix the bucket name`, {
      cause: err,
      permanent: true,
      code: 'BUCKET_NOT_FOUND',
    });
  }
  if (name === 'CredentialsProviderError') {
    // No request was sent: the SDK found no credentials on this host. Permanent, and the fix is here.
    return new StorageError(
      `no S3 credentials for ${what}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or ` +
        'S3_ENDPOINT with S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY for MinIO; after `npm run demo`, run deepfeat in ' +
        'the folder holding .deepfeat/ (it serves the demo store itself when S3_ENDPOINT is unset)',
      { cause: err, permanent: true, code: 'ACCESS_DENIED' },
    );
  }
  if (ACCESS_CODES.has(name) || status === 403) {
    return new StorageError(`access to ${what} refused (${code}): check S3 credentials and the bucket policy`, {
      cause: err,
      permanent: true,
      code: 'ACCESS_DENIED',
    });
  }
  if (name === 'PermanentRedirect' || status === 301) {
    return new StorageError(
      `the S3 server says bucket ${quote(target.bucket, 100)} is served elsewhere (${code}): ` +
        "set S3_REGION to the bucket's region, or S3_ENDPOINT to its endpoint",
      { cause: err, permanent: true },
    );
  }
  if (name === 'URIError' && isObject) {
    // The SDK could not put the key in a URL (a lone UTF-16 surrogate, e.g. from a JSON "\ud800"):
    // no server can be asked for it.
    const why = 'the key is not valid Unicode text (it holds a lone surrogate), so no S3 request can name it';
    return new RequestRefusedError(url, 'object', why, `cannot ask S3 for ${what}: ${why}; fix the key`, {
      cause: err,
    });
  }
  const refused =
    status !== undefined &&
    status >= 400 &&
    status < 500 &&
    !TRANSIENT_STATUS.has(status) &&
    !TRANSIENT_CODES.has(name);
  if (refused) {
    const serverMessage =
      err instanceof Error && name !== 'Unknown' && err.message !== 'UnknownError' ? err.message : '';
    // An invalid bucket name is the bucket's problem even in a request for one of its objects.
    const scope = isObject && name !== 'InvalidBucketName' ? 'object' : 'bucket';
    const detail = serverMessage
      ? `${code}: ${capText(serverMessage, MAX_SERVER_MESSAGE_CHARS)}`
      : `${code}, no reason given`;
    const fix = serverMessage
      ? ''
      : `: check the bucket name (${BUCKET_NAME_RULE}) and the key (1 to 1024 bytes of UTF-8)`;
    return new RequestRefusedError(
      url,
      scope,
      `the S3 server refused ${scope === 'object' ? 'this key' : 'the bucket'} (${detail})`,
      `the S3 server refused the request for ${what} (${detail})${fix}`,
      { cause: err },
    );
  }
  // No "will retry" here: this text becomes the run's error after the last attempt too, and the
  // worker that records it says how many attempts were made.
  const detail = err instanceof Error ? err.message : String(err);
  return new StorageError(
    `storage unavailable for ${what} (${name}: ${capText(detail, MAX_SERVER_MESSAGE_CHARS)}): ` +
      'check that the S3 endpoint is up and reachable',
    { cause: err, permanent: false },
  );
}

/** Reads a whole object. `maxBytes` refuses larger objects before reading their body. */
export async function getObjectBytes(
  client: S3Client,
  bucket: string,
  key: string,
  maxBytes?: number,
): Promise<Uint8Array> {
  return (await getObjectVersion(client, bucket, key, maxBytes)).bytes;
}

/**
 * An object's ETag as the feature cache compares it: without the quotes S3 puts around it and
 * without a weak-validator `W/` mark, so a listing, a HEAD and a GET of one version give the same
 * text; undefined when the store gives none.
 */
export function normalizeEtag(etag: string | undefined): string | undefined {
  if (etag === undefined) return undefined;
  const bare = etag.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  return bare === '' ? undefined : bare;
}

/**
 * Reads a whole object with the ETag of the bytes returned (normalised; undefined when the
 * store sends none): the feature cache records a vector under the version it was made from,
 * not the one listed at planning, which may have been overwritten since.
 */
export async function getObjectVersion(
  client: S3Client,
  bucket: string,
  key: string,
  maxBytes?: number,
): Promise<{ bytes: Uint8Array; etag: string | undefined }> {
  const what = s3Url(bucket, key);
  // The plain case without the SDK's per-request cost (s3-fast-get.ts); anything else is the SDK's.
  const fast = await fastGetObject(client, bucket, key, maxBytes);
  if (fast?.kind === 'too-large') throw new ObjectTooLargeError(what, fast.length, maxBytes!);
  if (fast) return { bytes: fast.bytes, etag: normalizeEtag(fast.etag) };
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if (maxBytes !== undefined && res.ContentLength !== undefined && res.ContentLength > maxBytes) {
      res.Body?.transformToWebStream()
        .cancel()
        .catch(() => undefined);
      throw new ObjectTooLargeError(what, res.ContentLength, maxBytes);
    }
    const bytes = res.Body ? await readBody(res.Body, res.ContentLength) : new Uint8Array(0);
    return { bytes, etag: normalizeEtag(res.ETag) };
  } catch (err) {
    if (err instanceof ObjectTooLargeError) throw err;
    throw storageError(err, { bucket, key });
  }
}

/**
 * A response body in one buffer of its declared length, filled as it streams in. The SDK's own
 * collector (`transformToByteArray`) concatenates the chunks and then copies the result once
 * more: for an extractor reading one image per GET, two short-lived copies of every image that
 * the garbage collector must chase (issue 14). Without a length, or off Node streams, the SDK's.
 */
async function readBody(
  body: { transformToByteArray(): Promise<Uint8Array> },
  length: number | undefined,
): Promise<Uint8Array> {
  if (length === undefined || !(body instanceof Readable)) return body.transformToByteArray();
  return readExactly(body as AsyncIterable<Uint8Array>, length);
}

/** An object's ETag (normalised; undefined when the store gives none) and size, without its body. */
export async function headObject(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<{ etag: string | undefined; size: number }> {
  try {
    const res = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return { etag: normalizeEtag(res.ETag), size: res.ContentLength ?? 0 };
  } catch (err) {
    throw storageError(err, { bucket, key });
  }
}

/** Deletes one object; one that is already gone is not an error (S3 answers 204 either way). */
export async function deleteObject(client: S3Client, bucket: string, key: string): Promise<void> {
  try {
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  } catch (err) {
    const mapped = storageError(err, { bucket, key });
    if (mapped instanceof NotFoundError) return;
    throw mapped;
  }
}

/**
 * Reads bytes [start, endExclusive) of an object with one ranged GET (`Range: bytes=start-(end-1)`).
 * The range is checked against `maxBytes` before any request, and the answer must be exactly that
 * many bytes: a server that ignores Range (and sends the whole object) or an object shorter than
 * the range is refused rather than trusted. Returns the bytes; storage faults map as getObjectBytes'.
 */
export async function getObjectRange(
  client: S3Client,
  bucket: string,
  key: string,
  start: number,
  endExclusive: number,
  maxBytes: number,
): Promise<Uint8Array> {
  const what = s3Url(bucket, key);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(endExclusive) || start < 0 || endExclusive <= start) {
    throw new RangeError(`invalid byte range [${start}, ${endExclusive}) of ${quote(what)}`);
  }
  const want = endExclusive - start;
  if (want > maxBytes)
    throw new RangeError(`range [${start}, ${endExclusive}) of ${quote(what)} is ${want} bytes, over ${maxBytes}`);
  let bytes: Uint8Array;
  try {
    const res = await client.send(
      new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${start}-${endExclusive - 1}` }),
    );
    if (res.ContentLength !== undefined && res.ContentLength !== want) {
      res.Body?.transformToWebStream()
        .cancel()
        .catch(() => undefined);
      throw new RangeError(
        `the S3 server answered ${res.ContentLength} bytes for range [${start}, ${endExclusive}) ` +
          `of ${quote(what)}, not ${want}`,
      );
    }
    bytes = res.Body ? await res.Body.transformToByteArray() : new Uint8Array(0);
  } catch (err) {
    if (err instanceof RangeError) throw err;
    // 416: the object is shorter than the range (it changed, or the range is wrong).
    if (err instanceof S3ServiceException && err.$metadata.httpStatusCode === 416) {
      throw new RangeError(`range [${start}, ${endExclusive}) is past the end of ${quote(what)}`, { cause: err });
    }
    throw storageError(err, { bucket, key });
  }
  if (bytes.length !== want) {
    throw new RangeError(
      `the S3 server answered ${bytes.length} bytes for range [${start}, ${endExclusive}) of ${quote(what)}, ` +
        `not ${want}`,
    );
  }
  return bytes;
}

/** The object is over the configured limit; a per-image failure, not a storage fault. */
export class ObjectTooLargeError extends Error {
  constructor(
    readonly url: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(`object too large: ${size} bytes exceeds the limit of ${limit} (DEEPFEAT_MAX_IMAGE_BYTES)`);
    this.name = 'ObjectTooLargeError';
  }
}

export async function getObjectText(client: S3Client, bucket: string, key: string): Promise<string> {
  return Buffer.from(await getObjectBytes(client, bucket, key)).toString('utf8');
}

export async function getObjectJson<T = unknown>(client: S3Client, bucket: string, key: string): Promise<T> {
  const text = await getObjectText(client, bucket, key);
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new StorageError(`${quote(s3Url(bucket, key))} is not valid JSON`, { cause: err, permanent: true });
  }
}

export async function putObject(
  client: S3Client,
  bucket: string,
  key: string,
  body: Uint8Array | string,
  contentType = 'application/octet-stream',
): Promise<void> {
  try {
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType }));
  } catch (err) {
    throw storageError(err, { bucket, key });
  }
}

export async function putJson(client: S3Client, bucket: string, key: string, value: unknown): Promise<void> {
  await putObject(client, bucket, key, `${JSON.stringify(value, null, 2)}\n`, 'application/json');
}

/** One object of a listing: its key, size, ETag (normalised; absent when the store gives none) and age. */
export interface ListedObject {
  readonly key: string;
  readonly size: number;
  readonly etag?: string;
  readonly lastModified?: Date;
}

/**
 * Every object under a prefix, page by page. The ETag and size come free with the listing: the
 * planner records them for the feature cache, so a folder source needs no request per image.
 */
export async function* listObjects(client: S3Client, bucket: string, prefix: string): AsyncGenerator<ListedObject> {
  let token: string | undefined;
  do {
    let page: ListObjectsV2CommandOutput;
    try {
      page = await client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token, EncodingType: 'url' }),
      );
    } catch (err) {
      throw storageError(err, { bucket, prefix });
    }
    // XML cannot carry every key as it is (a CR comes back as LF, some controls not at all), so keys
    // are asked for URL-encoded; a store that ignores the request says so by not echoing it.
    const encoded = page.EncodingType === 'url';
    for (const o of page.Contents ?? []) {
      if (o.Key === undefined) continue;
      const etag = normalizeEtag(o.ETag);
      yield {
        key: encoded ? decodeListedKey(o.Key) : o.Key,
        size: o.Size ?? 0,
        ...(etag !== undefined ? { etag } : {}),
        ...(o.LastModified !== undefined ? { lastModified: o.LastModified } : {}),
      };
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}

/**
 * A key from a listing made with EncodingType=url: S3 writes it form-encoded (a space as '+', a '+'
 * as %2B), so '+' is a space before the percent escapes are undone.
 */
export function decodeListedKey(key: string): string {
  return decodeURIComponent(key.replace(/\+/g, ' '));
}

/** Fails with a clear permanent error when the bucket is missing or not ours to read. */
export async function assertBucket(client: S3Client, bucket: string): Promise<void> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (err) {
    throw storageError(err, { bucket });
  }
}
