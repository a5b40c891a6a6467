/**
 * A feature cache segment in the artifacts bucket: `cache/<prefix>/<specHash>/<name>.npy`, float32 rows ×
 * dim (numpy.load reads it), and `<name>.keys`, the 32-byte cache key of each row, in row order.
 * A segment is written once, whole, before the index names it, and never changed; readers check
 * every row's stored key against the key they looked up, so a row is only ever used for the
 * image it was made from.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { decodeNpy, encodeNpy } from '../../../shared/npy.js';
import { deleteObject, getObjectBytes, getObjectRange, putObject } from '../../../shared/s3.js';
import type { SegmentRecord } from './cache-index.js';
import { KEY_BYTES, segmentObjectKey } from './keys.js';

/**
 * Reading rows: one GET of the whole .npy when a quarter of its rows or more are wanted, else one
 * ranged GET per run of neighbouring rows, up to this many (more: the whole object). Measured on
 * the embedded S3 server with a 256-row, 816-d segment (835 KB), median of 30, its .keys GET
 * included: 1 row by range 7.8 ms, 4 rows in 4 ranges 18 ms, 63 neighbouring rows in one range
 * 10 ms, the whole segment 22 ms. A request costs about 4 ms there whatever its size, so past
 * about four ranges one whole GET is as fast.
 */
const MAX_RANGES = 4;
/** Rows apart that still share one ranged GET (reading the rows between costs less than a request). */
const RANGE_GAP_ROWS = 8;

/** Where a deployment's segments are: its artifacts bucket, and its Redis key prefix (keys.ts cacheFolder). */
export interface SegmentStore {
  readonly s3: S3Client;
  readonly bucket: string;
  readonly prefix: string;
}

/** What a segment write produced, for its record. */
export interface WrittenSegment {
  readonly offset: number;
  readonly bytes: number;
}

/** Writes a segment's two objects: keys (rows × 32 bytes, row order) and vectors (rows × dim). */
export async function writeSegment(
  store: SegmentStore,
  hash: string,
  name: string,
  keys: Uint8Array,
  vectors: Float32Array,
  dim: number,
): Promise<WrittenSegment> {
  const rows = keys.length / KEY_BYTES;
  const npy = encodeNpy(vectors, [rows, dim]);
  const { s3, bucket, prefix } = store;
  await putObject(s3, bucket, segmentObjectKey(prefix, hash, name, 'keys'), keys);
  await putObject(s3, bucket, segmentObjectKey(prefix, hash, name, 'npy'), npy);
  return { offset: npy.length - vectors.byteLength, bytes: npy.length + keys.length };
}

/** Every row's cache key of a segment; undefined when its .keys object is gone or not this segment's size. */
export async function readSegmentKeys(
  store: SegmentStore,
  hash: string,
  record: SegmentRecord,
): Promise<Uint8Array[] | undefined> {
  const want = record.rows * KEY_BYTES;
  const key = segmentObjectKey(store.prefix, hash, record.name, 'keys');
  const bytes = await getObjectBytes(store.s3, store.bucket, key, want);
  if (bytes.length !== want) return undefined;
  return Array.from({ length: record.rows }, (_, r) => bytes.subarray(r * KEY_BYTES, (r + 1) * KEY_BYTES));
}

/**
 * The vectors of `wanted` rows of a segment, each only if the segment's stored key for that row
 * equals the key it was looked up by (else undefined: a miss). Throws on storage faults and on a
 * segment that is gone or malformed; the caller counts those rows as misses.
 */
export async function readSegmentRows(
  store: SegmentStore,
  hash: string,
  record: SegmentRecord,
  wanted: ReadonlyArray<{ readonly row: number; readonly key: Uint8Array }>,
): Promise<Array<Float32Array | undefined>> {
  const { s3, bucket } = store;
  const keys = await readSegmentKeys(store, hash, record);
  if (!keys) throw new RangeError(`segment ${record.name}: its .keys object is not ${record.rows} rows`);
  const out = new Array<Float32Array | undefined>(wanted.length);
  const rows = [
    ...new Set(
      wanted
        .filter((w) => w.row >= 0 && w.row < record.rows && Buffer.from(keys[w.row]!).equals(w.key))
        .map((w) => w.row),
    ),
  ].sort((a, b) => a - b);
  if (rows.length === 0) return out;
  const vectors = new Map<number, Float32Array>();
  const runs = rowRuns(rows);
  const npyKey = segmentObjectKey(store.prefix, hash, record.name, 'npy');
  const rowBytes = record.dim * 4;
  if (rows.length * 4 >= record.rows || runs.length > MAX_RANGES) {
    const arr = decodeNpy(await getObjectBytes(s3, bucket, npyKey, record.offset + record.rows * rowBytes));
    if (arr.shape.length !== 2 || arr.shape[0] !== record.rows || arr.shape[1] !== record.dim) {
      throw new RangeError(
        `segment ${record.name}: shape [${arr.shape.join(', ')}], not [${record.rows}, ${record.dim}]`,
      );
    }
    for (const r of rows) vectors.set(r, arr.data.slice(r * record.dim, (r + 1) * record.dim));
  } else {
    for (const [first, last] of runs) {
      const start = record.offset + first * rowBytes;
      const end = record.offset + (last + 1) * rowBytes;
      const bytes = await getObjectRange(s3, bucket, npyKey, start, end, end - start);
      // A copy into aligned memory: the range's bytes may start at any offset of their buffer.
      const data = new Float32Array((last - first + 1) * record.dim);
      new Uint8Array(data.buffer).set(bytes);
      for (let r = first; r <= last; r++) {
        vectors.set(r, data.slice((r - first) * record.dim, (r - first + 1) * record.dim));
      }
    }
  }
  wanted.forEach((w, i) => {
    const v = vectors.get(w.row);
    if (v && Buffer.from(keys[w.row]!).equals(w.key)) out[i] = v;
  });
  return out;
}

/** Sorted rows grouped into [first, last] runs, neighbours within RANGE_GAP_ROWS sharing one. */
export function rowRuns(sortedRows: readonly number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (const r of sortedRows) {
    const last = runs[runs.length - 1];
    if (last && r - last[1] <= RANGE_GAP_ROWS) last[1] = r;
    else runs.push([r, r]);
  }
  return runs;
}

/** Deletes a segment's objects (vectors first: without them its keys serve nobody). */
export async function deleteSegmentObjects(store: SegmentStore, hash: string, name: string): Promise<void> {
  await deleteObject(store.s3, store.bucket, segmentObjectKey(store.prefix, hash, name, 'npy'));
  await deleteObject(store.s3, store.bucket, segmentObjectKey(store.prefix, hash, name, 'keys'));
}
