/**
 * The on-storage feature format: per shard, a float32 .npy (rows × dim) and a JSON-lines file
 * with one line per manifest item (key, label, split, and either its row or its failure).
 * Written by the extractor; read by the trainer and the evaluator.
 */
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { shardKey, type ShardRow, type Split } from './dataset.js';
import { encodeNpy, decodeNpy } from './npy.js';
import { getObjectBytes, getObjectText, putObject, storageError } from './s3.js';
import { forEachOrdered, mapLimit } from './concurrency.js';
import { DatasetError } from './errors.js';
import { type JobLease, leasedPutObject } from './job-lease.js';

/** Shard objects fetched at once by readers (trainer, evaluator). */
const READ_CONCURRENCY = 8;

export async function writeShard(
  s3: S3Client,
  bucket: string,
  runId: string,
  shard: number,
  features: Float32Array,
  dim: number,
  rows: readonly ShardRow[],
  lease?: JobLease,
): Promise<void> {
  const n = dim === 0 ? 0 : features.length / dim;
  // Metadata last: a shard counts as written once its .jsonl exists, and a retry rewrites both
  // with the same bytes (features are deterministic for the same images and engine).
  // With the job's lease (job-lease.ts), each object is written only while this attempt holds the
  // job, and must be written before the lease could lapse: an attempt that lost its job to another
  // (cut off from Redis longer than the lock) writes nothing, so a shard's two files always come
  // from the attempt that owned it last, and a finished shard is never overwritten late.
  const put: typeof putObject = lease ? (...args) => leasedPutObject(lease, ...args) : putObject;
  await put(s3, bucket, shardKey(runId, shard, 'npy'), encodeNpy(features, [n, dim]));
  await put(
    s3,
    bucket,
    shardKey(runId, shard, 'jsonl'),
    `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`,
    'application/x-ndjson',
  );
}

export interface LabelledFeatures {
  /** n × d row-major */
  X: Float32Array;
  n: number;
  d: number;
  labels: string[];
  keys: string[];
}

/** Reads the rows of the given splits from every shard, in shard order (deterministic). */
export async function readFeatures(
  s3: S3Client,
  bucket: string,
  runId: string,
  shards: number,
  splits: readonly Split[],
): Promise<LabelledFeatures> {
  const [set] = await readFeatureSets(s3, bucket, runId, shards, [splits]);
  return set!;
}

/** Bytes of a shard's .npy read to learn its shape: the header (128 bytes as written here) with room to spare. */
const NPY_HEAD_BYTES = 4096;

/**
 * Features per row of a run's shard, from the first bytes of its .npy (its header), without
 * reading its rows; undefined when the header does not say (not a 2-d .npy). Every shard of a
 * run has the same width (readFeatureSets checks), so shard 0 tells for the run.
 */
export async function readFeatureDim(
  s3: S3Client,
  bucket: string,
  runId: string,
  shard = 0,
): Promise<number | undefined> {
  const key = shardKey(runId, shard, 'npy');
  let head: Uint8Array;
  try {
    const res = await s3.send(
      new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=0-${NPY_HEAD_BYTES - 1}` }),
    );
    head = res.Body ? await res.Body.transformToByteArray() : new Uint8Array(0);
  } catch (err) {
    throw storageError(err, { bucket, key });
  }
  // Magic "\x93NUMPY", version, header length, then a Python dict literal with the shape.
  const text = Buffer.from(head.buffer, head.byteOffset, head.byteLength).toString('latin1', 0, 512);
  if (!text.startsWith('\x93NUMPY')) return undefined;
  const m = /'shape':\s*\(\s*\d+\s*,\s*(\d+)\s*\)/.exec(text);
  return m ? Number(m[1]) : undefined;
}

export interface ReadFeatureOptions {
  /**
   * Called once the matrices' sizes are known (all splits' rows, features per row) and before
   * they are allocated: it may throw to refuse a size (the trainer's memory budget).
   */
  beforeAllocate?(rows: number, dim: number): void;
}

/**
 * Reads every shard once and returns one matrix per group of splits (e.g. [['train'], ['val']]),
 * rows in shard order, so a caller that needs several sets does not fetch the shards again.
 * The matrices are views into one buffer, in group order (group 2's rows follow group 1's), so
 * a caller can use several groups as one matrix without a copy.
 */
export async function readFeatureSets(
  s3: S3Client,
  bucket: string,
  runId: string,
  shards: number,
  groups: ReadonlyArray<readonly Split[]>,
  options: ReadFeatureOptions = {},
): Promise<LabelledFeatures[]> {
  type Row = { row: number; label: string; key: string };
  // Pass 1: the small JSON-lines metadata of every shard, to size each matrix exactly.
  const meta = await mapLimit(
    Array.from({ length: shards }, (_, s) => s),
    READ_CONCURRENCY,
    async (s) => {
      const rows: Row[][] = groups.map(() => []);
      for (const line of (await getObjectText(s3, bucket, shardKey(runId, s, 'jsonl'))).split('\n')) {
        if (line === '') continue;
        const r = JSON.parse(line) as ShardRow;
        if (!('row' in r)) continue;
        groups.forEach((g, i) => {
          if (g.includes(r.split)) rows[i]!.push({ row: r.row, label: r.label, key: r.key });
        });
      }
      return rows;
    },
  );
  const sizes = groups.map((_, g) => meta.reduce((acc, rows) => acc + rows[g]!.length, 0));
  // Pass 2: shards' float32 rows, fetched a few at a time and copied in shard order straight into
  // the matrices, so memory peaks at the matrices plus READ_CONCURRENCY shards, whatever the
  // dataset size.
  let d = -1;
  let out: LabelledFeatures[] | undefined;
  const filled = groups.map(() => 0);
  await forEachOrdered(
    shards,
    READ_CONCURRENCY,
    async (s) => decodeNpy(await getObjectBytes(s3, bucket, shardKey(runId, s, 'npy'))),
    (arr, s) => {
      const dim = arr.shape[1] ?? 0;
      if (arr.shape[0]! === 0) return;
      if (d !== -1 && dim !== d)
        throw new DatasetError(
          `shard ${s} of run ${runId} has ${dim} features per row, others ${d}: the run mixed engines; start a new run`,
        );
      d = dim;
      if (!out) {
        const rows = sizes.reduce((a, b) => a + b, 0);
        options.beforeAllocate?.(rows, dim);
        // Shared memory: the trainer's fit threads read it in place (no copy per thread).
        const buffer = new SharedArrayBuffer(rows * dim * Float32Array.BYTES_PER_ELEMENT);
        let offset = 0;
        out = sizes.map((n) => {
          const X = new Float32Array(buffer, offset * dim * Float32Array.BYTES_PER_ELEMENT, n * dim);
          offset += n;
          return { X, n, d: dim, labels: [], keys: [] };
        });
      }
      meta[s]!.forEach((rows, g) => {
        const set = out![g]!;
        for (const r of rows) {
          set.X.set(arr.data.subarray(r.row * d, (r.row + 1) * d), filled[g]! * d);
          set.labels.push(r.label);
          set.keys.push(r.key);
          filled[g]!++;
        }
      });
    },
  );
  return out ?? groups.map(() => ({ X: new Float32Array(0), n: 0, d: 0, labels: [], keys: [] }));
}
