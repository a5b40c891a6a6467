/**
 * How the feature cache names things, pure: the cache key of a vector (what determines it), the
 * Redis index bucket and field it is filed under, and the segment objects that hold the vectors.
 * The layout and why it is so are in README.md ("DESIGN: feature cache"); in short:
 *
 * - cache key = sha256 of the feature spec id and the image's identity: its source bucket, key,
 *   ETag and size (the store's own name for one version of the object), or, where the store gives
 *   no ETag, the sha256 of its bytes.
 * - vectors live in segments in the artifacts bucket, `cache/<prefix>/<specHash>/<name>.npy`
 *   (float32 rows × dim) beside `<name>.keys` (each row's 32-byte cache key, in row order), one
 *   per shard that extracted something: a million vectors are a few thousand objects, not a
 *   million. <prefix> is the deployment's DEEPFEAT_QUEUE_PREFIX: deployments sharing a bucket
 *   each have their own index, so each keeps (and prunes) its own segments.
 * - the index is a few thousand Redis hashes per spec, `<prefix>:fcache:<specHash>:b:<bucket>`,
 *   bucket = the key's first 14 bits, field = the key's first 16 bytes, value = segment number ×
 *   2^17 + row (an integer, which Redis stores in a few bytes). Hashes of up to 128 small entries
 *   stay listpack-encoded, so memory per entry stays near the bytes it holds.
 */
import { createHash, randomBytes } from 'node:crypto';

/** Bumped when the cache key or the layout changes meaning: old entries then simply never match. */
export const CACHE_FORMAT = 1;
/** Bytes of a cache key (a sha256), as stored per row in a segment's .keys object. */
export const KEY_BYTES = 32;
/** Bytes of a cache key the index stores as a field: the reader compares all 32 with the segment's. */
export const FIELD_BYTES = 16;
/**
 * Index hashes per spec (the key's first 14 bits). With Redis's default hash-max-listpack-entries
 * of 128, a spec's index stays listpack-encoded up to about 2 million entries; at a thousand
 * entries the keys' own overhead (a few MB at most) is what costs.
 */
export const INDEX_BUCKETS = 2 ** 14;
/** Rows a segment may hold: above the largest shard (100,000), and the radix of an index value. */
export const MAX_SEGMENT_ROWS = 2 ** 17;
/** Where segments live in the artifacts bucket. */
export const CACHE_OBJECT_PREFIX = 'cache/';

/** A deployment's folder of segments (its Redis key prefix), or one spec's within it. */
export function cacheFolder(prefix: string, hash?: string): string {
  return `${CACHE_OBJECT_PREFIX}${prefix}/${hash === undefined ? '' : `${hash}/`}`;
}

/** What an image's vector is keyed by, besides the feature spec. */
export type ImageIdentity =
  /** One version of an object, named by the store: ETag (without quotes) and size. */
  | {
      readonly kind: 'version';
      readonly bucket: string;
      readonly key: string;
      readonly etag: string;
      readonly size: number;
    }
  /** The object's bytes, where the store gives no ETag. */
  | { readonly kind: 'content'; readonly sha256: string };

/** Short, stable name of a feature spec id: in object keys and Redis keys (64 bits of its sha256). */
export function specHash(specId: string): string {
  return createHash('sha256').update(`deepfeat.fcache/${CACHE_FORMAT}\n${specId}`).digest('hex').slice(0, 16);
}

/**
 * The cache key of the vector of `image` under `specId`: sha256 over a JSON array of the parts, so
 * no choice of key or ETag text can make two different identities hash the same input.
 */
export function cacheKey(specId: string, image: ImageIdentity): Buffer {
  const parts =
    image.kind === 'version'
      ? [CACHE_FORMAT, specId, 'version', image.bucket, image.key, image.etag, image.size]
      : [CACHE_FORMAT, specId, 'content', image.sha256];
  return createHash('sha256').update(JSON.stringify(parts)).digest();
}

/** sha256 of an object's bytes, hex: the content identity. */
export function contentHash(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Index bucket of a cache key: its first 14 bits. */
export function indexBucket(key: Uint8Array): number {
  return ((key[0]! << 8) | key[1]!) >>> 2;
}

/** Index field of a cache key: its first 16 bytes. */
export function indexField(key: Uint8Array): Buffer {
  return Buffer.from(key.buffer, key.byteOffset, FIELD_BYTES);
}

/** Where a vector is: a segment (by number) and a row of it. */
export interface EntryRef {
  readonly segment: number;
  readonly row: number;
}

/** An index value: segment × 2^17 + row, as decimal text (Redis keeps it as an integer). */
export function entryValue(ref: EntryRef): string {
  if (!Number.isSafeInteger(ref.segment) || ref.segment < 1 || ref.row < 0 || ref.row >= MAX_SEGMENT_ROWS) {
    throw new RangeError(`no index value for segment ${ref.segment}, row ${ref.row}`);
  }
  return String(ref.segment * MAX_SEGMENT_ROWS + ref.row);
}

/** The segment and row an index value names; undefined for anything this format did not write. */
export function parseEntry(value: string | null | undefined): EntryRef | undefined {
  if (value === null || value === undefined || !/^\d{1,16}$/.test(value)) return undefined;
  const n = Number(value);
  const segment = Math.floor(n / MAX_SEGMENT_ROWS);
  if (!Number.isSafeInteger(n) || segment < 1) return undefined;
  return { segment, row: n - segment * MAX_SEGMENT_ROWS };
}

/** A new segment's name, unique without coordination: UTC time to the second and 64 random bits. */
export function newSegmentName(now = new Date()): string {
  return `${now.toISOString().replace(/[-:T]/g, '').slice(0, 14)}-${randomBytes(8).toString('hex')}`;
}

export const SEGMENT_NAME_PATTERN = /^\d{14}-[0-9a-f]{16}$/;

/** A segment's objects: the vectors (.npy) and each row's cache key (.keys). */
export function segmentObjectKey(prefix: string, hash: string, name: string, ext: 'npy' | 'keys'): string {
  return `${cacheFolder(prefix, hash)}${name}.${ext}`;
}

/** The Redis keys of the cache under a deployment's prefix. */
export function redisKeys(prefix: string, hash: string) {
  const base = `${prefix}:fcache:${hash}`;
  return {
    /** Hash: spec hash → JSON {spec, dim} of every spec with entries. */
    specs: `${prefix}:fcache:specs`,
    /** Counter: the last segment number given out (never reset, so numbers are never reused). */
    seq: `${base}:seq`,
    /** Hash: segment number → JSON SegmentRecord. */
    segments: `${base}:segments`,
    /** Hash of one index bucket: field → entry value. */
    bucket: (b: number) => `${base}:b:${b.toString(16).padStart(4, '0')}`,
    /** SCAN pattern of every index bucket of the spec. */
    bucketPattern: `${base}:b:*`,
  };
}
