/**
 * All object-storage access goes through here: one client factory with the settings every
 * S3-compatible server needs, and errors turned into deepfeat errors that say whether a retry
 * can help (connection refused, 5xx, throttling) or not (no such bucket, access denied).
 */
import {
  GetObjectCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import type { S3Config } from './config.js';
import { BadRequestError, NotFoundError, StorageError } from './errors.js';

export function createS3Client(cfg: S3Config): S3Client {
  // The SDK warns on every process start that releases after January 2027 need Node 22; we pin
  // a release that supports Node 20, so the warning is noise in every worker's log.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client({
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
  });
}

export interface S3Location {
  readonly bucket: string;
  /** Key prefix or key, without a leading '/'; may be ''. */
  readonly key: string;
}

/** Parses `s3://bucket/some/prefix/`; the message says what a valid URL looks like. */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url.trim());
  if (!m) {
    throw new BadRequestError(
      `not an S3 URL: ${JSON.stringify(url)}: expected s3://bucket/prefix/ or s3://bucket/manifest.csv`,
    );
  }
  return { bucket: m[1]!, key: m[2]! };
}

export function s3Url(bucket: string, key: string): string {
  return `s3://${bucket}/${key}`;
}

/** Refusals of our credentials or of access to the bucket (ACCESS_DENIED). */
const ACCESS_CODES = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AllAccessDisabled',
  'Forbidden',
]);
/** Other answers that no retry changes (STORAGE_PERMANENT). */
const PERMANENT_CODES = new Set(['InvalidBucketName', 'NotFound', 'NoSuchKey', 'PermanentRedirect']);

/** Maps an SDK failure to a StorageError (or NotFoundError) naming the object and the fix. */
export function storageError(err: unknown, what: string): StorageError | NotFoundError {
  if (err instanceof StorageError || err instanceof NotFoundError) return err;
  const name = err instanceof Error ? err.name : 'Error';
  const status = err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
  if (name === 'NoSuchKey' || (name === 'NotFound' && !what.endsWith('/'))) {
    return new NotFoundError(`${what} does not exist`, { cause: err });
  }
  if (name === 'NoSuchBucket' || (status === 404 && what.endsWith('/'))) {
    // Its own code: a bucket that does not exist is a bad request (CLI exit code 2), not a fault.
    return new StorageError(`no such bucket for ${what}: create it or fix the bucket name`, {
      cause: err,
      permanent: true,
      code: 'BUCKET_NOT_FOUND',
    });
  }
  const denied = ACCESS_CODES.has(name) || status === 403;
  if (denied || PERMANENT_CODES.has(name) || status === 400) {
    // A HEAD request's error has no body, so the SDK names it 'Unknown': show the status instead.
    const code = name === 'Unknown' || name === 'Error' ? `HTTP ${status ?? '?'}` : name;
    return new StorageError(`access to ${what} refused (${code}): check S3 credentials and the bucket policy`, {
      cause: err,
      permanent: true,
      ...(denied ? { code: 'ACCESS_DENIED' as const } : {}),
    });
  }
  // No "will retry" here: this text becomes the run's error after the last attempt too, and the
  // worker that records it says how many attempts were made.
  const detail = err instanceof Error ? err.message : String(err);
  return new StorageError(
    `storage unavailable for ${what} (${name}: ${detail}): check that the S3 endpoint is up and reachable`,
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
  const what = s3Url(bucket, key);
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if (maxBytes !== undefined && res.ContentLength !== undefined && res.ContentLength > maxBytes) {
      res.Body?.transformToWebStream()
        .cancel()
        .catch(() => undefined);
      throw new ObjectTooLargeError(what, res.ContentLength, maxBytes);
    }
    if (!res.Body) return new Uint8Array(0);
    return await res.Body.transformToByteArray();
  } catch (err) {
    if (err instanceof ObjectTooLargeError) throw err;
    throw storageError(err, what);
  }
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
    throw new StorageError(`${s3Url(bucket, key)} is not valid JSON`, { cause: err, permanent: true });
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
    throw storageError(err, s3Url(bucket, key));
  }
}

export async function putJson(client: S3Client, bucket: string, key: string, value: unknown): Promise<void> {
  await putObject(client, bucket, key, `${JSON.stringify(value, null, 2)}\n`, 'application/json');
}

/** Every object under a prefix, page by page. */
export async function* listObjects(
  client: S3Client,
  bucket: string,
  prefix: string,
): AsyncGenerator<{ key: string; size: number }> {
  let token: string | undefined;
  do {
    let page: ListObjectsV2CommandOutput;
    try {
      page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    } catch (err) {
      throw storageError(err, `${s3Url(bucket, prefix)}${prefix === '' || prefix.endsWith('/') ? '' : '/'}`);
    }
    for (const o of page.Contents ?? []) {
      if (o.Key !== undefined) yield { key: o.Key, size: o.Size ?? 0 };
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}

/** Fails with a clear permanent error when the bucket is missing or not ours to read. */
export async function assertBucket(client: S3Client, bucket: string): Promise<void> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
  } catch (err) {
    throw storageError(err, `s3://${bucket}/`);
  }
}
