/**
 * How S3 answers become deepfeat errors (shared/s3.ts `storageError`), with the SDK's own error
 * class built as the SDK builds it from a server's error document: a refused request is a bad
 * request carrying the server's reason (exit code 2), never "check credentials"; keys are quoted;
 * and `formatError` keeps every error on one line.
 */
import test from 'ava';
import { S3ServiceException } from '@aws-sdk/client-s3';
import { exitCodeForError } from '../cli/exit-codes.js';
import { formatError } from '../cli/format.js';
import { BadRequestError, ConfigError, NotFoundError, StorageError } from '../shared/errors.js';
import { RequestRefusedError, isValidBucketName, parseS3Url, storageError } from '../shared/s3.js';

/** What the SDK throws for an S3 error answer: name = the document's Code, message = its Message. */
function s3Answer(status: number, code: string, message?: string): S3ServiceException {
  return new S3ServiceException({
    name: code,
    $fault: status >= 500 ? 'server' : 'client',
    $metadata: { httpStatusCode: status },
    ...(message !== undefined ? { message } : {}),
  });
}

const GUARD_MESSAGE =
  'the embedded S3 server cannot store key "missing//double.png" faithfully: it has an empty path segment ' +
  '(a leading "/" or "//"); S3 itself accepts it: use MinIO or AWS S3 (set S3_ENDPOINT) for such keys';

test('a key the server refuses is a bad request about that object, with the server reason, exit 2', (t) => {
  for (const [code, message] of [
    ['InvalidArgument', GUARD_MESSAGE],
    ['KeyTooLongError', 'Your key is too long: 1100 bytes, at most 1024.'],
    ['InvalidURI', "Couldn't parse the specified URI."],
  ] as const) {
    const err = storageError(s3Answer(400, code, message), { bucket: 'data', key: 'missing//double.png' });
    t.true(err instanceof RequestRefusedError, code);
    t.true(err instanceof BadRequestError);
    t.is(err.code, 'BAD_REQUEST');
    t.true(err.permanent);
    t.is(exitCodeForError(err), 2);
    const refused = err as RequestRefusedError;
    t.is(refused.scope, 'object');
    t.is(refused.reason, `the S3 server refused this key (${code}: ${message})`);
    t.is(err.message, `the S3 server refused the request for "s3://data/missing//double.png" (${code}: ${message})`);
    t.notRegex(err.message, /credentials/);
  }
});

test('an invalid bucket name is the bucket scope, even in a request for one object', (t) => {
  const msg = 'The specified bucket is not valid: "BAD_Bucket"';
  const get = storageError(s3Answer(400, 'InvalidBucketName', msg), { bucket: 'BAD_Bucket', key: 'x' });
  t.is((get as RequestRefusedError).scope, 'bucket');
  t.is(exitCodeForError(get), 2);
  t.notRegex(get.message, /credentials/);
  // A HEAD answer has no body: the SDK names it "Unknown" and the message says what to check.
  const head = storageError(s3Answer(400, 'Unknown', 'UnknownError'), { bucket: 'BAD_Bucket' });
  t.true(head instanceof RequestRefusedError);
  t.is((head as RequestRefusedError).scope, 'bucket');
  t.regex(
    head.message,
    /^the S3 server refused the request for "s3:\/\/BAD_Bucket\/" \(HTTP 400, no reason given\): check the bucket name \(bucket names are 3 to 63/,
  );
  t.notRegex(head.message, /credentials/);
});

test('access refusals still say check credentials; missing objects and buckets keep their codes', (t) => {
  const denied = storageError(s3Answer(403, 'AccessDenied', 'Access Denied'), { bucket: 'b', key: 'k' });
  t.is(denied.code, 'ACCESS_DENIED');
  t.regex(denied.message, /^access to "s3:\/\/b\/k" refused \(AccessDenied\): check S3 credentials/);
  const head403 = storageError(s3Answer(403, 'Unknown'), { bucket: 'b' });
  t.regex(head403.message, /^access to "s3:\/\/b\/" refused \(HTTP 403\)/);
  t.true(storageError(s3Answer(404, 'NoSuchKey', 'x'), { bucket: 'b', key: 'k' }) instanceof NotFoundError);
  const bucket = storageError(s3Answer(404, 'NoSuchBucket', 'x'), { bucket: 'b', prefix: 'p' });
  t.is(bucket.code, 'BUCKET_NOT_FOUND');
  t.regex(bucket.message, /^no such bucket for "s3:\/\/b\/p\/": create it or fix the bucket name$/);
  t.is(storageError(s3Answer(404, 'NotFound'), { bucket: 'b' }).code, 'BUCKET_NOT_FOUND');
});

test('no credentials on the host: a permanent error that says where credentials come from, exit 2', (t) => {
  const sdk = Object.assign(new Error('Could not load credentials from any providers'), {
    name: 'CredentialsProviderError',
  });
  const e = storageError(sdk, { bucket: 'deepfeat', key: 'models/m/latest.json' });
  t.true(e instanceof StorageError);
  t.regex(e.message, /no S3 credentials for "s3:\/\/deepfeat\/models\/m\/latest.json": set AWS_ACCESS_KEY_ID/);
  t.regex(e.message, /folder holding \.deepfeat/);
  t.is(exitCodeForError(e), 2);
});

test('throttling, timeouts and 5xx stay transient (retried)', (t) => {
  for (const [status, code] of [
    [503, 'SlowDown'],
    [500, 'InternalError'],
    [400, 'RequestTimeout'],
    [429, 'TooManyRequests'],
    [409, 'OperationAborted'],
  ] as const) {
    const err = storageError(s3Answer(status, code, 'try again'), { bucket: 'b', key: 'k' });
    t.true(err instanceof StorageError, code);
    t.false(err.permanent, code);
    t.is(err.code, 'STORAGE_TRANSIENT');
  }
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { name: 'Error' });
  t.false(storageError(refused, { bucket: 'b', key: 'k' }).permanent);
});

test('a key that cannot be put in a URL (a lone surrogate) is refused for that object, not retried', (t) => {
  const err = storageError(new URIError('URI malformed'), { bucket: 'b', key: 'a\ud800b' });
  t.true(err instanceof RequestRefusedError);
  t.is((err as RequestRefusedError).scope, 'object');
  t.regex(err.message, /^cannot ask S3 for "s3:\/\/b\/a\\ud800b": the key is not valid Unicode text/);
  t.regex((err as RequestRefusedError).reason, /^the key is not valid Unicode text/);
});

test('keys are quoted in storage messages: a newline or escape in a key stays inside the quotes', (t) => {
  const key = 'cats/a\ndeepfeat: forged line\u001b[2J.png';
  for (const err of [
    storageError(s3Answer(403, 'AccessDenied', 'Access Denied'), { bucket: 'b', key }),
    storageError(s3Answer(404, 'NoSuchKey', 'x'), { bucket: 'b', key }),
    storageError(s3Answer(400, 'InvalidArgument', 'bad'), { bucket: 'b', key }),
    storageError(s3Answer(503, 'SlowDown', 'slow'), { bucket: 'b', key }),
  ]) {
    t.false(/[\n\u001b]/.test(err.message), err.message);
    t.true(err.message.includes('"s3://b/cats/a\\ndeepfeat: forged line\\u001b[2J.png"'), err.message);
  }
});

test('a server message is capped in ours', (t) => {
  const err = storageError(s3Answer(400, 'InvalidArgument', 'x'.repeat(100_000)), { bucket: 'b', key: 'k' });
  t.true(err.message.length < 1000, `${err.message.length} characters`);
});

test('source URLs: bucket names S3 would refuse are bad requests naming the rule', (t) => {
  t.deepEqual(parseS3Url('s3://my-data.bucket/cats/'), { bucket: 'my-data.bucket', key: 'cats/' });
  for (const bucket of ['BAD_Bucket', 'ab', 'a'.repeat(64), 'a..b', '-abc', 'abc-', '192.168.1.1', 'bu cket']) {
    t.false(isValidBucketName(bucket), bucket);
    const err = t.throws(() => parseS3Url(`s3://${bucket}/x/`), { instanceOf: BadRequestError });
    t.regex(
      err!.message,
      /^invalid bucket name ".*" in "s3:\/\/.*": bucket names are 3 to 63 characters .*; fix the URL$/,
    );
  }
  const err = t.throws(() => parseS3Url('bucket/prefix\n'), { instanceOf: BadRequestError });
  t.true(err!.message.startsWith('not an S3 URL: "bucket/prefix\\n"'));
});

test('formatError puts every error on one line; only the configuration list keeps its layout', (t) => {
  const forged = formatError(new NotFoundError('run r1 has not published a model (extract failed: "a\ndeepfeat: ok")'));
  t.is(forged.split('\n').length, 1);
  t.true(forged.includes('a\\x0adeepfeat: ok'));
  t.is(formatError(new Error('x\r\u001b[2Jy')), 'deepfeat: x\\x0d\\x1b[2Jy');
  const config = formatError(new ConfigError(['REDIS_URL: bad\nforged', `S3_ENDPOINT: ${'\u001b'}[31m`]));
  t.deepEqual(config.split('\n'), [
    'deepfeat: invalid configuration:',
    '  - REDIS_URL: bad\\x0aforged',
    '  - S3_ENDPOINT: \\x1b[31m',
  ]);
});
