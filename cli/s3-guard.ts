/**
 * What the embedded S3 server admits. Every request is checked here before s3rver sees it; what
 * s3rver would store under another name, lose, or crash on is refused with an S3 error, every time.
 *
 * Decision (issue 9 item 9): guard s3rver rather than replace it with a store of our own. Tests,
 * the demo and DESIGN.md use s3rver as the real S3 API server, and it implements the API deepfeat
 * needs well. Its one flaw is storage: it maps a key to a file path (`a/b` -> `<bucket>/a/b._S3rver_object`
 * plus `.md5` and `._S3rver_metadata.json` beside it), so a key whose path form is not one-to-one
 * with the key is aliased (`a/../b` is stored as `b`, `a%2F%2Fb` as `a/b`, `..` segments reach
 * outside the data folder), refused by its router (`a//b`), or fails on the file system (a segment
 * longer than a file name kills the process). Storing such keys under hashed names would be a new
 * store to maintain; the single-machine default does not need them. So they are refused loudly,
 * naming the way out (MinIO or AWS S3), and the checks below make "admitted" mean "stored exactly".
 *
 * The request is also rewritten into one canonical form (each key segment percent-encoded, the
 * copy source re-encoded for s3rver's decodeURI), so what was checked is exactly what s3rver reads.
 */
import type { IncomingHttpHeaders } from 'node:http';
import querystring from 'node:querystring';
import { quote } from '../shared/text.js';

/** S3's limit on a key, in UTF-8 bytes. */
export const MAX_KEY_BYTES = 1024;
/** S3's limit on one PutObject body (5 GiB); larger objects need multipart upload. */
export const DEFAULT_MAX_OBJECT_BYTES = 5 * 1024 ** 3;
/** Bodies s3rver reads into memory (XML: tagging, CORS, CompleteMultipartUpload of 10,000 parts). */
export const MAX_XML_BODY_BYTES = 2 * 1024 * 1024;
/** Longest suffix s3rver adds to a key's last segment to make a file name. */
export const STORE_SUFFIX_BYTES = Buffer.byteLength('._S3rver_metadata.json');
/** Marker s3rver puts in its own file names; a key containing it could collide with them. */
const STORE_MARKER = '._S3rver_';

const WAY_OUT = 'S3 itself accepts it: use MinIO or AWS S3 (set S3_ENDPOINT) for such keys';

export interface GuardLimits {
  /** Largest PutObject / UploadPart body. */
  readonly maxObjectBytes: number;
  /** Longest file name the data folder's file system takes, in bytes (255 on ext4, xfs, btrfs, APFS). */
  readonly maxNameBytes: number;
}

export interface GuardRequest {
  readonly method: string;
  /** The raw request target, as Node's http server gives it (`req.url`). */
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
}

/** The multipart upload a request adds a part to or completes. */
export interface UploadTarget {
  readonly bucket: string;
  /** The key the request names; the upload must have been created for exactly this key. */
  readonly key: string;
  readonly uploadId: string;
}

export interface S3Refusal {
  readonly status: number;
  readonly code: string;
  readonly message: string;
  /** Extra elements of the error XML, as S3 sends them (`Size`, `MaxSizeAllowed`, `BucketName`...). */
  readonly details?: Readonly<Record<string, string | number>>;
}

export type GuardDecision =
  | {
      readonly ok: true;
      /** Canonical request target to hand to s3rver. */
      readonly url: string;
      /** Canonical `x-amz-copy-source`, when the request has one. */
      readonly copySource?: string;
      /**
       * UploadPart and CompleteMultipartUpload: s3rver takes the key from the upload's own record
       * and would write it whatever key the request names, so the server checks they agree.
       */
      readonly upload?: UploadTarget;
    }
  | { readonly ok: false; readonly refusal: S3Refusal };

/** Query parameters of an upload whose body s3rver streams to disk (PutObject, UploadPart). */
const STREAMED_PARAMS = new Set(['x-id', 'uploadId', 'partNumber']);

class Refused extends Error {
  constructor(readonly refusal: S3Refusal) {
    super(refusal.message);
  }
}

function refuse(status: number, code: string, message: string, details?: Record<string, string | number>): never {
  throw new Refused({ status, code, message, ...(details ? { details } : {}) });
}

/** Decides whether s3rver may serve this request, and in which canonical form. Never throws. */
export function checkRequest(req: GuardRequest, limits: GuardLimits): GuardDecision {
  try {
    return admit(req, limits);
  } catch (err) {
    if (err instanceof Refused) return { ok: false, refusal: err.refusal };
    return {
      ok: false,
      refusal: { status: 400, code: 'InvalidRequest', message: `request not understood: ${String(err)}` },
    };
  }
}

function admit(req: GuardRequest, limits: GuardLimits): GuardDecision {
  const method = req.method.toUpperCase();
  checkOrigin(req.headers);
  if (req.headers['transfer-encoding'] !== undefined) {
    // As S3 does: a body of unknown length could not be bounded before it is read.
    const message =
      'A header you provided implies functionality that is not implemented: send the body with Content-Length';
    refuse(501, 'NotImplemented', message, { Header: 'Transfer-Encoding' });
  }

  // Origin-form targets of printable ASCII only: clients percent-encode everything else, and
  // s3rver would read raw bytes as Latin-1 (another key than the client meant).
  if (!/^\/[\x21-\x7e]*$/.test(req.url)) refuse(400, 'InvalidURI', "Couldn't parse the specified URI.");
  const q = req.url.indexOf('?');
  const rawPath = q < 0 ? req.url : req.url.slice(0, q);
  const rawQuery = q < 0 ? '' : req.url.slice(q + 1);
  if (rawPath.includes('#')) refuse(400, 'InvalidURI', "Couldn't parse the specified URI.");
  const query = parseQuery(rawQuery);
  const search = rawQuery ? `?${rawQuery}` : '';

  if (rawPath === '/') return { ok: true, url: `/${search}` }; // ListBuckets
  const slash = rawPath.indexOf('/', 1);
  const bucket = decode(slash < 0 ? rawPath.slice(1) : rawPath.slice(1, slash));
  checkBucketName(bucket);
  const rawKey = slash < 0 ? '' : rawPath.slice(slash + 1);
  const contentLength = Number(req.headers['content-length'] ?? 0);

  if (rawKey === '') {
    checkBucketOperation(method, query);
    checkBodySize(contentLength, MAX_XML_BODY_BYTES);
    return { ok: true, url: `/${bucket}${search}` };
  }

  const key = decode(rawKey);
  checkKey(key, limits);
  let copySource: string | undefined;
  const header = req.headers['x-amz-copy-source'];
  if (header !== undefined && method === 'PUT') {
    const source = parseCopySource(Array.isArray(header) ? header.join(',') : header, limits);
    copySource = `/${source.bucket}/${encodeURI(source.key)}`;
  }

  const streamed =
    method === 'PUT' && copySource === undefined && Object.keys(query).every((p) => STREAMED_PARAMS.has(p));
  checkBodySize(contentLength, streamed ? limits.maxObjectBytes : MAX_XML_BODY_BYTES, streamed);

  let upload: UploadTarget | undefined;
  if ('uploadId' in query && (method === 'PUT' || method === 'POST')) {
    // s3rver would name the part file after a missing partNumber: "undefined".
    if (method === 'PUT' && !('partNumber' in query)) {
      refuse(400, 'InvalidArgument', 'UploadPart needs a partNumber: an integer between 1 and 10000, inclusive', {
        ArgumentName: 'partNumber',
      });
    }
    upload = { bucket, key, uploadId: String(query.uploadId) };
  }

  return {
    ok: true,
    url: `/${bucket}/${encodeKey(key)}${search}`,
    ...(copySource !== undefined ? { copySource } : {}),
    ...(upload !== undefined ? { upload } : {}),
  };
}

/** The key's segments percent-encoded; s3rver's router decodes each segment back to the same text. */
function encodeKey(key: string): string {
  return key.split('/').map(encodeURIComponent).join('/');
}

/** Percent-decoding as S3 does it (UTF-8); malformed escapes or bytes are refused, not kept literally. */
function decode(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    const message = "Couldn't parse the specified URI: it has a malformed %-escape or bytes that are not UTF-8.";
    return refuse(400, 'InvalidURI', message);
  }
}

function parseQuery(rawQuery: string): querystring.ParsedUrlQuery {
  // The same parser Koa uses for s3rver, so both see the same parameters.
  const query = querystring.parse(rawQuery);
  for (const [name, value] of Object.entries(query)) {
    if (Array.isArray(value)) {
      refuse(400, 'InvalidArgument', `query parameter ${quote(name, 60)} is given more than once`, {
        ArgumentName: name,
      });
    }
  }
  // s3rver joins these into file paths; S3 itself issues upload ids and takes part numbers 1..10000.
  const { uploadId, partNumber } = query;
  if (uploadId !== undefined && !/^[0-9a-f]{32}$/.test(String(uploadId))) {
    refuse(404, 'NoSuchUpload', 'The specified upload does not exist.', { UploadId: String(uploadId).slice(0, 100) });
  }
  if (partNumber !== undefined && !(/^[1-9][0-9]{0,4}$/.test(String(partNumber)) && Number(partNumber) <= 10_000)) {
    refuse(400, 'InvalidArgument', 'Part number must be an integer between 1 and 10000, inclusive', {
      ArgumentName: 'partNumber',
    });
  }
  return query;
}

/**
 * Only requests addressed to this machine's loopback names: a web page that rebinds its own
 * domain name to 127.0.0.1 cannot reach the server (s3rver checks no signatures), and s3rver
 * never reads a bucket name out of the Host header.
 */
function checkOrigin(headers: IncomingHttpHeaders): void {
  const host = headers.host ?? '';
  const hostname = host.replace(/:\d+$/, '');
  if (!isLoopbackName(hostname)) {
    const message = `the embedded S3 server answers only requests addressed to 127.0.0.1 or localhost, not Host ${quote(host, 100)}`;
    refuse(403, 'AccessDenied', message);
  }
  const origin = headers.origin;
  if (origin !== undefined) {
    let originHost: string | undefined;
    try {
      originHost = new URL(origin).hostname;
    } catch {
      originHost = undefined;
    }
    if (originHost === undefined || !isLoopbackName(originHost)) {
      const message = `the embedded S3 server refuses browser requests from other sites (Origin ${quote(origin, 100)})`;
      refuse(403, 'AccessDenied', message);
    }
  }
}

function isLoopbackName(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/**
 * S3's bucket naming rules. They keep a bucket name a plain folder name (no `/`, no leading `.`,
 * no `..`), which s3rver relies on: it checks names only when a bucket is created.
 */
function checkBucketName(bucket: string): void {
  const valid =
    /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket) && !bucket.includes('..') && !/^\d+\.\d+\.\d+\.\d+$/.test(bucket);
  if (!valid) {
    refuse(
      400,
      'InvalidBucketName',
      `The specified bucket is not valid: ${quote(bucket, 100)}: bucket names are 3 to 63 characters of lowercase ` +
        `letters, digits, dots and hyphens, start and end with a letter or digit, and have no ".." (S3's rules)`,
      { BucketName: bucket.slice(0, 100) },
    );
  }
}

/** Bucket operations whose keys come from the body, where no check here could see them. */
function checkBucketOperation(method: string, query: querystring.ParsedUrlQuery): void {
  if (method === 'POST' && 'delete' in query) {
    const message =
      'the embedded S3 server does not support DeleteObjects (POST ?delete): the keys in its body would bypass ' +
      'its key checks; delete objects one at a time or use MinIO or AWS S3';
    refuse(501, 'NotImplemented', message);
  }
  if (method === 'POST') {
    const message =
      'the embedded S3 server does not support browser form uploads (POST to a bucket): use PutObject, or MinIO or AWS S3';
    refuse(501, 'NotImplemented', message);
  }
  if (method === 'PUT' && 'website' in query) {
    refuse(501, 'NotImplemented', 'the embedded S3 server does not host websites: use MinIO or AWS S3');
  }
}

function checkBodySize(contentLength: number, max: number, object = false): void {
  if (contentLength <= max) return;
  if (object) {
    const message = `Your proposed upload exceeds the maximum allowed object size of the embedded S3 server (${max} bytes).`;
    refuse(400, 'EntityTooLarge', message, { ProposedSize: contentLength, MaxSizeAllowed: max });
  }
  refuse(
    400,
    'MaxMessageLengthExceeded',
    `Your request was too big: ${contentLength} bytes, at most ${max} for this operation.`,
  );
}

/**
 * S3 takes any UTF-8 key of 1..1024 bytes. The embedded server refuses, besides over-long keys,
 * those it cannot store as exactly that key: see the comment at the top.
 */
function checkKey(key: string, limits: GuardLimits): void {
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) {
    refuse(400, 'KeyTooLongError', `Your key is too long: ${bytes} bytes, at most ${MAX_KEY_BYTES}.`, {
      Size: bytes,
      MaxSizeAllowed: MAX_KEY_BYTES,
    });
  }
  const cannot = (why: string): never =>
    refuse(
      400,
      'InvalidArgument',
      `the embedded S3 server cannot store key ${quote(key, 120)} faithfully: ${why}; ${WAY_OUT}`,
      {
        ArgumentName: 'key',
      },
    );
  // Control characters (XML 1.0 cannot carry most, and parsers turn \r into \n) and the two
  // non-characters XML forbids would make every listing that includes the key unreadable.
  const bad = /[\u0000-\u001f\ufffe\uffff]/.exec(key);
  if (bad)
    cannot(`it contains the control character U+${bad[0].charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`);
  const segments = key.split('/');
  segments.forEach((segment, i) => {
    const last = i === segments.length - 1;
    if (segment === '') {
      // One trailing "/" is a folder marker s3rver stores faithfully; any other empty segment is
      // dropped by the path it becomes (`a//b` -> `a/b`).
      if (last && i > 0) return;
      cannot('it has an empty path segment (a leading "/" or "//")');
    }
    if (segment === '.' || segment === '..')
      cannot(`it has a ${quote(segment)} path segment, which a file path resolves away`);
    if (segment.includes(STORE_MARKER)) {
      cannot(`it contains ${quote(STORE_MARKER)}, which the embedded server uses in its own file names`);
    }
    const max = last ? limits.maxNameBytes - STORE_SUFFIX_BYTES : limits.maxNameBytes;
    const size = Buffer.byteLength(segment, 'utf8');
    if (size > max) {
      cannot(
        `its path segment ${i + 1} is ${size} bytes; each segment becomes a file or folder name, so at most ${max} bytes here`,
      );
    }
  });
}

function parseCopySource(raw: string, limits: GuardLimits): { bucket: string; key: string } {
  if (raw.includes('?')) {
    const message = 'the embedded S3 server keeps no object versions: x-amz-copy-source must not carry ?versionId';
    refuse(501, 'NotImplemented', message, { Header: 'x-amz-copy-source' });
  }
  let decoded: string;
  try {
    decoded = decodeURIComponent(raw);
  } catch {
    const message = 'Copy Source must mention the source bucket and key: sourcebucket/sourcekey, URL-encoded';
    return refuse(400, 'InvalidArgument', message, { ArgumentName: 'x-amz-copy-source' });
  }
  const path = decoded.startsWith('/') ? decoded.slice(1) : decoded;
  const slash = path.indexOf('/');
  if (slash <= 0 || slash === path.length - 1) {
    refuse(400, 'InvalidArgument', 'Copy Source must mention the source bucket and key: sourcebucket/sourcekey', {
      ArgumentName: 'x-amz-copy-source',
    });
  }
  const bucket = path.slice(0, slash);
  const key = path.slice(slash + 1);
  checkBucketName(bucket);
  checkKey(key, limits);
  return { bucket, key };
}

/** S3's error document; text is escaped so that any refused input still yields valid XML. */
export function s3ErrorXml(refusal: S3Refusal, resource: string, requestId: string): string {
  const fields: [string, string | number][] = [
    ['Code', refusal.code],
    ['Message', refusal.message],
    ...Object.entries(refusal.details ?? {}),
    ['Resource', resource],
    ['RequestId', requestId],
  ];
  const body = fields.map(([name, value]) => `<${name}>${xmlText(String(value))}</${name}>`).join('');
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error>${body}</Error>`;
}

const XML_ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };

/** Characters XML 1.0 cannot carry at all, even escaped: most C0 controls, U+FFFE/U+FFFF, lone surrogates. */
const NOT_XML =
  /[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function xmlText(s: string): string {
  return s
    .replace(/[&<>"']/g, (c) => XML_ENTITIES[c]!)
    .replace(NOT_XML, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
