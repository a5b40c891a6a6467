/**
 * A run's stored feature rows (runs/<id>/features/<shard>.npy and .jsonl) read into one float32
 * matrix for retrieval and the kNN metrics: rows in groups of splits (group after group, shard
 * order inside a group), each group whole or a seeded sample of at most `max` rows, and the size
 * offered to the caller before anything large is allocated (it may refuse).
 *
 * Why not shared/feature-store.ts's reader: its matrix lives in a SharedArrayBuffer (the trainer's
 * fit threads share it), which ONNX Runtime refuses as a tensor, and it keeps every row it meets;
 * here the matrix is a plain ArrayBuffer the search hands to ONNX Runtime without a copy, and a
 * sampled group holds at most `max` rows' metadata while the shards are read.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { forEachOrdered } from '../../shared/concurrency.js';
import { shardKey, type ShardRow, type Split } from '../../shared/dataset.js';
import { DatasetError } from '../../shared/errors.js';
import { decodeNpy } from '../../shared/npy.js';
import { getObjectBytes, getObjectText } from '../../shared/s3.js';
import { BoundedSample } from './sample.js';

/** Shard objects fetched at once (as the trainer and evaluator read them). */
const READ_CONCURRENCY = 8;

export interface VectorGroup {
  readonly splits: readonly Split[];
  /** Keep at most this many rows: a seeded sample by key (sample.ts); absent = every row. */
  readonly max?: number;
}

export interface GroupRows {
  /** First row of the group in the matrix; its rows are [start, start + n). */
  readonly start: number;
  readonly n: number;
  /** Rows of these splits in the run (n when the group is not sampled, or has at most `max`). */
  readonly of: number;
  readonly keys: string[];
  readonly labels: string[];
}

export interface RunVectors {
  /** rows × d, row-major, every group's rows in group order; a plain (transferable, non-shared) buffer. */
  readonly X: Float32Array;
  readonly rows: number;
  readonly d: number;
  readonly groups: GroupRows[];
}

export interface ReadVectorsOptions {
  /** Seed of the groups' samples (default 0). */
  readonly seed?: number;
  /**
   * Called once the sizes are known, before the matrix is allocated: the rows kept, features per
   * row and the UTF-16 characters of their keys (labels are shared strings). It may throw to refuse the size.
   */
  beforeAllocate?(rows: number, dim: number, keyChars: number): void;
}

type Meta = { shard: number; row: number; key: string; label: string };

/** Reads the rows of `groups` from the run's `shards` shards; see the module comment. */
export async function readRunVectors(
  s3: S3Client,
  bucket: string,
  runId: string,
  shards: number,
  groups: readonly VectorGroup[],
  options: ReadVectorsOptions = {},
): Promise<RunVectors> {
  const seed = options.seed ?? 0;
  // Pass 1: every shard's small .jsonl, in shard order, into each group's rows or bounded sample.
  // A label is one string however many rows carry it.
  const labelOf = new Map<string, string>();
  const kept = groups.map((g) => (g.max === undefined ? ([] as Meta[]) : new BoundedSample<Meta>(g.max, seed)));
  const seen = groups.map(() => 0);
  await forEachOrdered(
    shards,
    READ_CONCURRENCY,
    (s) => getObjectText(s3, bucket, shardKey(runId, s, 'jsonl')),
    (text, s) => {
      for (const line of text.split('\n')) {
        if (line === '') continue;
        const r = JSON.parse(line) as ShardRow;
        if (!('row' in r)) continue;
        const g = groups.findIndex((x) => x.splits.includes(r.split));
        if (g < 0) continue;
        const label = labelOf.get(r.label) ?? r.label;
        labelOf.set(label, label);
        const meta = { shard: s, row: r.row, key: r.key, label };
        const into = kept[g]!;
        seen[g]!++;
        if (Array.isArray(into)) into.push(meta);
        else into.offer(r.key, meta);
      }
    },
  );
  const chosen = kept.map((k) => (Array.isArray(k) ? k : k.values()));
  const rows = chosen.reduce((a, c) => a + c.length, 0);

  // Where each kept row goes, per shard: [row in the shard, row in the matrix] pairs.
  const moves = new Map<number, number[]>();
  let dst = 0;
  for (const group of chosen) {
    for (const m of group) {
      const list = moves.get(m.shard) ?? [];
      moves.set(m.shard, list);
      list.push(m.row, dst++);
    }
  }

  // Pass 2: the .npy of every shard holding a kept row, a few at a time, copied in shard order.
  const needed = [...moves.keys()].sort((a, b) => a - b);
  let d = -1;
  let X = new Float32Array(0);
  await forEachOrdered(
    needed.length,
    READ_CONCURRENCY,
    async (i) => decodeNpy(await getObjectBytes(s3, bucket, shardKey(runId, needed[i]!, 'npy'))),
    (arr, i) => {
      const s = needed[i]!;
      const [count = 0, dim = 0] = arr.shape;
      if (d !== -1 && dim !== d) {
        throw new DatasetError(
          `shard ${s} of run ${runId} has ${dim} features per row, others ${d}: the run mixed engines; start a new run`,
        );
      }
      if (d === -1) {
        d = dim;
        const keyChars = chosen.reduce((a, c) => a + c.reduce((b, m) => b + m.key.length, 0), 0);
        options.beforeAllocate?.(rows, d, keyChars);
        X = new Float32Array(rows * d);
      }
      const list = moves.get(s)!;
      for (let j = 0; j < list.length; j += 2) {
        const src = list[j]!;
        if (src < 0 || src >= count) {
          throw new DatasetError(
            `shard ${s} of run ${runId} lists row ${src}, but its .npy has ${count} rows: the shard is damaged; start a new run`,
          );
        }
        X.set(arr.data.subarray(src * d, (src + 1) * d), list[j + 1]! * d);
      }
    },
  );

  let start = 0;
  const out = chosen.map((group, g) => {
    const rowsOf: GroupRows = {
      start,
      n: group.length,
      of: seen[g]!,
      keys: group.map((m) => m.key),
      labels: group.map((m) => m.label),
    };
    start += group.length;
    return rowsOf;
  });
  return { X, rows, d: Math.max(d, 0), groups: out };
}
