/**
 * What a train job needs in memory, the budget it must fit in (DEEPFEAT_TRAINER_MEMORY), and the
 * refusal when it does not. The trainer holds the whole train+val feature matrix (float32,
 * rows × features) while it fits, so a run of a million images needs gigabytes; a host that
 * cannot hold them must say so before any shard is read, not die half-way out of memory (and
 * then again on every retry).
 *
 * The estimate is a fixed part plus a part per row, measured with real train jobs (bench/stack.ts
 * trainerJob, 816 features, 10 classes; peak RSS): 357 MiB for 20,000 rows and 623 MiB for
 * 100,000, i.e. about 290 MiB fixed (Node, the AWS SDK, the fit thread and its helpers) plus
 * 3,490 bytes a row, of which 3,264 are the matrix row and the rest its key and label while the
 * shards are read and the fit's per-row scratch. The constants below round both up, so the
 * estimate is a little above what was measured (391 and 675 MiB for those two fits).
 */
import os from 'node:os';
import { DatasetError } from '../../shared/errors.js';

/** Node, the AWS SDK, the fit thread and its helpers, before any feature is read (measured ~290 MiB). */
export const TRAINER_FIXED_BYTES = 320 * 2 ** 20;
/** Per train/val row besides its features: key and label strings, row bookkeeping (keys of ~100 bytes). */
export const TRAINER_ROW_BYTES = 300;
/** Per row and class: the fit's probabilities and scratch (float64), over the fit's threads. */
export const TRAINER_ROW_CLASS_BYTES = 16;
/**
 * Float64 vectors of the model's size (classes × (features + 1)) the fit holds at once: L-BFGS keeps
 * 10 pairs of history (20 vectors), plus the iterate, gradient, direction and line-search copies,
 * plus one gradient per row chunk of the objective (at most 32 chunks). With many classes this,
 * not the feature matrix, is what fills memory: 2,000 classes × 3,072 raw pixels is 6 M parameters,
 * about 2.9 GiB at 60 vectors (the previous estimate left it out, and such a run grew a trainer
 * far past its budget).
 */
export const TRAINER_PARAM_VECTORS = 60;
/** Share of the host's (or container's) memory a train job may plan to use by default. */
export const DEFAULT_MEMORY_SHARE = 0.8;

export interface FitSize {
  /** Train + validation rows (an upper bound is fine: the check is then conservative). */
  readonly rows: number;
  /** Features per row. */
  readonly dim: number;
  readonly classes: number;
}

/** Bytes a train job of this size needs at its peak. */
export function trainerMemoryNeed(size: FitSize): number {
  const perRow = size.dim * Float32Array.BYTES_PER_ELEMENT + TRAINER_ROW_BYTES + size.classes * TRAINER_ROW_CLASS_BYTES;
  const params = size.classes * (size.dim + 1) * Float64Array.BYTES_PER_ELEMENT * TRAINER_PARAM_VECTORS;
  return TRAINER_FIXED_BYTES + size.rows * perRow + params;
}

export interface MemoryBudget {
  readonly bytes: number;
  /** Where the number comes from, for the message. */
  readonly source: string;
}

/**
 * The budget: DEEPFEAT_TRAINER_MEMORY when set (MiB), else DEFAULT_MEMORY_SHARE of this host's
 * memory, or of the container's limit when one is set (cgroups; os.totalmem() reports the host's).
 */
export function trainerMemoryBudget(
  memoryMiB: number,
  host: { total: number; constrained?: number } = { total: os.totalmem(), constrained: process.constrainedMemory?.() },
): MemoryBudget {
  if (memoryMiB > 0) return { bytes: memoryMiB * 2 ** 20, source: `DEEPFEAT_TRAINER_MEMORY=${memoryMiB}` };
  const limited = host.constrained !== undefined && host.constrained > 0 && host.constrained < host.total;
  const base = limited ? host.constrained! : host.total;
  const share = `${Math.round(DEFAULT_MEMORY_SHARE * 100)}%`;
  return {
    bytes: Math.floor(base * DEFAULT_MEMORY_SHARE),
    source: `${share} of this ${limited ? "container's memory limit" : "host's memory"}, ${gib(base)}; DEEPFEAT_TRAINER_MEMORY unset`,
  };
}

/**
 * Refuses a fit that would not fit: a permanent error (the same on every attempt) naming the
 * numbers and the ways out.
 */
export function checkTrainerMemory(size: FitSize, budget: MemoryBudget, runId: string): void {
  const need = trainerMemoryNeed(size);
  if (need <= budget.bytes) return;
  const matrix = size.rows * size.dim * Float32Array.BYTES_PER_ELEMENT;
  throw new DatasetError(
    `run ${runId} is too large for this trainer: ${size.rows.toLocaleString('en-US')} train+val images × ` +
      `${size.dim} features is a ${gib(matrix)} float32 matrix, and with ${size.classes.toLocaleString('en-US')} ` +
      `classes the fit needs about ${gib(need)} in all, ` +
      `over its budget of ${gib(budget.bytes)} (${budget.source}). Run the trainer on a host with more memory ` +
      '(and raise DEEPFEAT_TRAINER_MEMORY if it is set), or train on fewer images: a sample of the dataset ' +
      '(e.g. a manifest listing some of each class), or fewer classes or features',
  );
}

function gib(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${Math.ceil(bytes / 2 ** 20)} MiB`;
}
