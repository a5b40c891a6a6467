/**
 * The on-storage feature format: per shard, a float32 .npy (rows × dim) and a JSON-lines file
 * with one line per manifest item (key, label, split, and either its row or its failure).
 * Written by the extractor; read by the trainer and the evaluator.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { shardKey, type ShardRow, type Split } from './dataset.js';
import { encodeNpy, decodeNpy } from './npy.js';
import { getObjectBytes, getObjectText, putObject } from './s3.js';
import { DatasetError } from './errors.js';

export async function writeShard(
  s3: S3Client,
  bucket: string,
  runId: string,
  shard: number,
  features: Float32Array,
  dim: number,
  rows: readonly ShardRow[],
): Promise<void> {
  const n = dim === 0 ? 0 : features.length / dim;
  // Metadata last: a shard counts as written once its .jsonl exists, and a retry rewrites both
  // with the same bytes (features are deterministic for the same images and engine).
  await putObject(s3, bucket, shardKey(runId, shard, 'npy'), encodeNpy(features, [n, dim]));
  await putObject(s3, bucket, shardKey(runId, shard, 'jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n', 'application/x-ndjson');
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

/**
 * Reads every shard once and returns one matrix per group of splits (e.g. [['train'], ['val']]),
 * rows in shard order, so a caller that needs several sets does not fetch the shards again.
 */
export async function readFeatureSets(
  s3: S3Client,
  bucket: string,
  runId: string,
  shards: number,
  groups: ReadonlyArray<readonly Split[]>,
): Promise<LabelledFeatures[]> {
  type Row = { row: number; label: string; key: string };
  const parts: Array<{ data: Float32Array; rows: Row[][] }> = [];
  let d = -1;
  for (let s = 0; s < shards; s++) {
    const [npy, meta] = await Promise.all([
      getObjectBytes(s3, bucket, shardKey(runId, s, 'npy')),
      getObjectText(s3, bucket, shardKey(runId, s, 'jsonl')),
    ]);
    const arr = decodeNpy(npy);
    const dim = arr.shape[1] ?? 0;
    const rows: Row[][] = groups.map(() => []);
    for (const line of meta.split('\n')) {
      if (line === '') continue;
      const r = JSON.parse(line) as ShardRow;
      if (!('row' in r)) continue;
      groups.forEach((g, i) => {
        if (g.includes(r.split)) rows[i]!.push({ row: r.row, label: r.label, key: r.key });
      });
    }
    if (arr.shape[0]! > 0) {
      if (d !== -1 && dim !== d) throw new DatasetError(`shard ${s} of run ${runId} has ${dim} features per row, others ${d}: the run mixed engines; start a new run`);
      d = dim;
    }
    parts.push({ data: arr.data, rows });
  }
  d = Math.max(d, 0);
  return groups.map((_, g) => {
    const n = parts.reduce((acc, p) => acc + p.rows[g]!.length, 0);
    const X = new Float32Array(n * d);
    const labels: string[] = [];
    const keys: string[] = [];
    let i = 0;
    for (const p of parts) {
      for (const r of p.rows[g]!) {
        X.set(p.data.subarray(r.row * d, (r.row + 1) * d), i * d);
        labels.push(r.label);
        keys.push(r.key);
        i++;
      }
    }
    return { X, n, d, labels, keys };
  });
}
