/**
 * A run's images as a search index: its stored feature rows, L2-normalised, in one float32 matrix
 * (train rows, then val, then test, each in shard order) with each row's key and label, read from
 * the run's shards once per process and kept in a small LRU by run id within a memory budget.
 * `searchIndex` answers queries with the exact top k by cosine similarity over all rows or one
 * split. Used by `deepfeat similar` (cli/similar.ts), and written to serve a long-lived process
 * too (an HTTP service): concurrent requests for one run share one read, and no request can make
 * the process hold more than its budget — a run that would need more is refused before its rows
 * are read.
 */
import os from 'node:os';
import type { S3Client } from '@aws-sdk/client-s3';
import { SPLITS, type Split } from '../../shared/dataset.js';
import { BadRequestError, DatasetError, InternalError } from '../../shared/errors.js';
import { readFeatureDim } from '../../shared/feature-store.js';
import { readRunVectors } from './run-vectors.js';
import type { Scanner } from './scan.js';
import { normaliseRows } from './top-k.js';

/** What `--split` may name: one split, or every row of the run. */
export const SEARCH_SPLITS = [...SPLITS, 'all'] as const;
export type SearchSplit = (typeof SEARCH_SPLITS)[number];

export interface RunIndex {
  readonly runId: string;
  /** rows × d, unit-length rows (an all-zero stored row stays zero). */
  readonly X: Float32Array;
  readonly rows: number;
  readonly d: number;
  readonly keys: readonly string[];
  readonly labels: readonly string[];
  /** Each split's rows, [start, end) of X. */
  readonly splits: Readonly<Record<Split, { start: number; end: number }>>;
  /** What the index holds in memory, as estimated before it was read (what the budget counts). */
  readonly bytes: number;
}

export interface Neighbour {
  /** 1 for the most similar. */
  readonly rank: number;
  readonly key: string;
  readonly label: string;
  readonly split: Split;
  /** Cosine similarity of the L2-normalised pooled features, -1 to 1. */
  readonly similarity: number;
}

/**
 * Memory besides the matrix, per row: a string header and an array slot each for the key and the
 * label reference (the key's characters, 2 bytes each, are counted exactly once the rows are listed).
 */
const ROW_OVERHEAD_BYTES = 64;

/** Bytes an index of `rows` × `dim` needs: the float32 matrix plus its keys (`keyChars` characters in all) and labels. */
export function indexMemoryNeed(rows: number, dim: number, keyChars: number): number {
  return rows * (dim * Float32Array.BYTES_PER_ELEMENT + ROW_OVERHEAD_BYTES) + 2 * keyChars;
}

export interface MemoryBudget {
  readonly bytes: number;
  /** Where the number comes from and how to change it, for the refusal. */
  readonly source: string;
}

/** Share of the host's (or container's) memory the indexes of one process may hold by default. */
export const DEFAULT_INDEX_MEMORY_SHARE = 0.5;

/**
 * The budget: `mib` when given (from `setting`, e.g. '--memory'), else half of this host's
 * memory, or of the container's limit when one is set (os.totalmem() reports the host's).
 */
export function indexMemoryBudget(
  mib: number | undefined,
  setting: string,
  host: { total: number; constrained?: number } = { total: os.totalmem(), constrained: process.constrainedMemory?.() },
): MemoryBudget {
  if (mib !== undefined) return { bytes: mib * 2 ** 20, source: `${setting} ${mib}` };
  const limited = host.constrained !== undefined && host.constrained > 0 && host.constrained < host.total;
  const base = limited ? host.constrained! : host.total;
  return {
    bytes: Math.floor(base * DEFAULT_INDEX_MEMORY_SHARE),
    source: `${Math.round(DEFAULT_INDEX_MEMORY_SHARE * 100)}% of this ${limited ? "container's memory limit" : "host's memory"}, ${size(base)}; ${setting} sets it`,
  };
}

/** The refusal of a run too large for the budget: the numbers and the ways out. */
function tooLarge(runId: string, rows: number, dim: number, need: number, budget: MemoryBudget, keys = true) {
  return new DatasetError(
    `run ${runId} is too large to search in this process: ${rows.toLocaleString('en-US')} images × ${dim} features ` +
      `is a ${size(rows * dim * 4)} float32 matrix, ${keys ? 'about' : 'at least'} ${size(need)} with its keys and ` +
      'labels, over the budget of ' +
      `${size(budget.bytes)} (${budget.source}). Search on a host with more memory and raise the budget, or search a ` +
      'run of fewer images (e.g. a manifest listing a sample of each class)',
  );
}

export interface LoadIndexOptions {
  readonly shards: number;
  /** Images the run has features for (its status's `done`), to refuse a run too large before any row is read. */
  readonly images?: number;
  readonly budget: MemoryBudget;
  /** Called with the index's size once it is known to fit the budget, before its matrix is allocated. */
  reserve?(bytes: number): void;
}

/** Reads a run's rows into a RunIndex; refuses one over `budget` (DatasetError) as early as it can tell. */
export async function loadRunIndex(
  s3: S3Client,
  bucket: string,
  runId: string,
  o: LoadIndexOptions,
): Promise<RunIndex> {
  if (o.images !== undefined && o.shards > 0) {
    // A cheap look first: the width from shard 0's .npy header, the rows from the status, the
    // keys not counted yet (so this refuses only a run surely too large; the exact size is
    // checked once the rows are listed).
    const dim = await readFeatureDim(s3, bucket, runId, 0);
    const need = dim === undefined ? 0 : indexMemoryNeed(o.images, dim, 0);
    if (dim !== undefined && need > o.budget.bytes) throw tooLarge(runId, o.images, dim, need, o.budget, false);
  }
  let bytes = 0;
  const v = await readRunVectors(
    s3,
    bucket,
    runId,
    o.shards,
    SPLITS.map((s) => ({ splits: [s] })),
    {
      beforeAllocate(rows, dim, keyChars) {
        bytes = indexMemoryNeed(rows, dim, keyChars);
        if (bytes > o.budget.bytes) throw tooLarge(runId, rows, dim, bytes, o.budget);
        o.reserve?.(bytes);
      },
    },
  );
  normaliseRows(v.X, v.rows, v.d);
  const splits = {} as Record<Split, { start: number; end: number }>;
  SPLITS.forEach((s, i) => {
    const g = v.groups[i]!;
    splits[s] = { start: g.start, end: g.start + g.n };
  });
  return {
    runId,
    X: v.X,
    rows: v.rows,
    d: v.d,
    keys: v.groups.flatMap((g) => g.keys),
    labels: v.groups.flatMap((g) => g.labels),
    splits,
    bytes,
  };
}

/** The split row r of `index` belongs to. */
export function splitOf(index: RunIndex, r: number): Split {
  return SPLITS.find((s) => r >= index.splits[s].start && r < index.splits[s].end)!;
}

/** The rows of `split` in `index`, [start, end); BadRequestError naming the splits that have rows when it has none. */
export function splitRange(index: RunIndex, split: SearchSplit): { start: number; end: number } {
  const range = split === 'all' ? { start: 0, end: index.rows } : index.splits[split];
  if (range.end > range.start) return range;
  const have = SEARCH_SPLITS.filter((s) =>
    s === 'all' ? index.rows > 0 : index.splits[s].end > index.splits[s].start,
  );
  throw new BadRequestError(
    `run ${index.runId} has no ${split === 'all' ? '' : `${split} `}images with features to search` +
      (have.length > 0 ? `: choose --split ${have.join(', ')}` : ''),
  );
}

/**
 * For each of the q queries (q × d raw pooled features, as the run's backbone gives them), the k
 * most similar rows of `split` (fewer when it has fewer rows). The queries are normalised here,
 * in a copy.
 */
export async function searchIndex(
  index: RunIndex,
  scanner: Scanner,
  queries: Float32Array,
  q: number,
  k: number,
  split: SearchSplit,
): Promise<Neighbour[][]> {
  const { start, end } = splitRange(index, split);
  if (queries.length !== q * index.d) {
    throw new BadRequestError(
      `the queries have ${queries.length / Math.max(q, 1)} features each, but run ${index.runId}'s rows have ${index.d}`,
    );
  }
  const unit = queries.slice();
  normaliseRows(unit, q, index.d);
  const d = index.d;
  const hits = await scanner.topK(index.X.subarray(start * d, end * d), end - start, d, unit, q, k);
  return hits.map((list) =>
    list.map((h, i) => {
      const r = start + h.index;
      return {
        rank: i + 1,
        key: index.keys[r]!,
        label: index.labels[r]!,
        split: splitOf(index, r),
        similarity: h.score,
      };
    }),
  );
}

export interface IndexCacheOptions {
  readonly budget: MemoryBudget;
  /** Indexes kept at most, besides the budget (default 4). */
  readonly maxEntries?: number;
}

/**
 * Indexes by run id, least recently used dropped first, their sizes together within the budget:
 * a read makes room (dropping indexes) before it allocates its matrix. A run's rows never change
 * once extracted (shards are written once; a published version's id is its run's), so an entry
 * never goes stale. A request for a run being read waits for that read.
 */
export class RunIndexCache {
  readonly #entries = new Map<string, RunIndex>();
  readonly #loading = new Map<string, Promise<RunIndex>>();
  /** Bytes reserved by reads under way. */
  #reserved = 0;

  constructor(readonly options: IndexCacheOptions) {}

  /** Indexes held, least recently used first. */
  get runIds(): string[] {
    return [...this.#entries.keys()];
  }

  /** Bytes of the indexes held and of those being read. */
  get bytes(): number {
    let sum = this.#reserved;
    for (const e of this.#entries.values()) sum += e.bytes;
    return sum;
  }

  async get(s3: S3Client, bucket: string, runId: string, o: Omit<LoadIndexOptions, 'budget'>): Promise<RunIndex> {
    const hit = this.#entries.get(runId);
    if (hit) {
      this.#entries.delete(runId);
      this.#entries.set(runId, hit);
      return hit;
    }
    const pending = this.#loading.get(runId);
    if (pending) return pending;
    let reserved = 0;
    const load = loadRunIndex(s3, bucket, runId, {
      ...o,
      budget: this.options.budget,
      reserve: (bytes) => {
        this.#makeRoom(bytes, runId);
        reserved = bytes;
        this.#reserved += bytes;
      },
    }).then((index) => {
      this.#entries.set(runId, index);
      return index;
    });
    this.#loading.set(runId, load);
    try {
      return await load;
    } finally {
      this.#reserved -= reserved;
      this.#loading.delete(runId);
    }
  }

  /** Drops least recently used indexes until `bytes` more fit in the budget and an entry is free. */
  #makeRoom(bytes: number, runId: string): void {
    const max = this.options.maxEntries ?? 4;
    const fits = () => this.#entries.size < max && this.bytes + bytes <= this.options.budget.bytes;
    for (const id of this.#entries.keys()) {
      if (fits()) return;
      this.#entries.delete(id);
    }
    if (!fits()) {
      // Only reads under way fill the budget: a moment later they are indexes that can be dropped.
      throw new InternalError(
        `run ${runId} cannot be read now: reads of other runs under way hold ${size(this.#reserved)} of the ` +
          `${size(this.options.budget.bytes)} budget (${this.options.budget.source}); try again`,
        { permanent: false },
      );
    }
  }
}

function size(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${Math.ceil(bytes / 2 ** 20)} MiB`;
}
