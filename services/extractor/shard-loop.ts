/**
 * The loop every shard of images goes through, for extraction (worker.ts) and for prediction
 * (predict.ts): objects are fetched and decoded with bounded concurrency, one batch ahead of the
 * engine (while batch b runs, batch b+1 downloads and decodes), so I/O overlaps inference. Bad
 * images become failures with their reason; storage faults fail the job (transient ones are
 * retried by BullMQ, permanent ones end the run). The shard's progress is recorded after every
 * batch, and once complete with its failures (`completeShard`), so status, throughput and ETA
 * read the same fields for both kinds of run.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Config } from '../../shared/config.js';
import { mapLimit } from '../../shared/concurrency.js';
import { ImageError, NotFoundError } from '../../shared/errors.js';
import type { ImageFailure, RunStore } from '../../shared/run-state.js';
import { ObjectTooLargeError, RequestRefusedError, getObjectBytes } from '../../shared/s3.js';
import type { DecoderPool } from './decoder-pool.js';
import type { FeatureEngine } from './engines/engine.js';

type Decoded = { ok: true; pixels: Uint8Array } | { ok: false; reason: string };

/** What the loop needs from the worker's context. */
export interface ShardLoopDeps {
  readonly s3: S3Client;
  readonly runs: RunStore;
  readonly config: Pick<Config, 'extractor'>;
  readonly decoders: DecoderPool;
}

/** One shard of one run, with the bucket its keys are in. */
export interface ShardRef {
  readonly runId: string;
  readonly shard: number;
  readonly sourceBucket: string;
}

/** One batch through the engine: each item's outcome, and the rows of those that worked. */
export interface EmbeddedBatch<T> {
  readonly items: readonly T[];
  /** Per item: undefined when it was embedded (its row is the next one in `features`), else why not. */
  readonly errors: ReadonlyArray<string | undefined>;
  /** The embedded items' feature rows, in item order: (items without error) × engine.dim floats. */
  readonly features: Float32Array;
}

/** What a shard's loop leaves for its handler to record. */
export interface ShardOutcome {
  /** Images embedded. */
  readonly done: number;
  /** Images that could not be used, with why, in item order. */
  readonly failures: ImageFailure[];
}

/** The engine fields of a shard's progress (run-wide fields of the run's state). */
function engineFields(engine: FeatureEngine) {
  return { engine: engine.id, backend: engine.backend, input: `${engine.input.width}x${engine.input.height}` };
}

/**
 * Fetches, decodes and embeds `items` a batch at a time, hands each batch to `onBatch` in order,
 * and records the shard's progress after each. The handler writes its own output from the
 * batches, then calls `completeShard`.
 */
export async function embedShard<T extends { readonly key: string }>(
  deps: ShardLoopDeps,
  ref: ShardRef,
  engine: FeatureEngine,
  items: readonly T[],
  onBatch: (batch: EmbeddedBatch<T>) => void | Promise<void>,
): Promise<ShardOutcome> {
  const cfg = deps.config.extractor;
  const fetchAndDecode = async (key: string): Promise<Decoded> => {
    try {
      const bytes = await getObjectBytes(deps.s3, ref.sourceBucket, key, cfg.maxImageBytes);
      const size = { width: engine.input.width, height: engine.input.height };
      const pixels = await deps.decoders.decode(bytes, {
        ...size,
        maxPixels: cfg.maxImagePixels,
        formats: cfg.imageFormats,
      });
      return { ok: true, pixels };
    } catch (err) {
      if (err instanceof ImageError || err instanceof ObjectTooLargeError) return { ok: false, reason: err.message };
      if (err instanceof NotFoundError) return { ok: false, reason: 'object not found (deleted after planning?)' };
      // The server refused this image's key (one it cannot store, too long, not valid text):
      // that image's failure, with the server's reason. A refusal of the bucket, denied
      // access and storage faults are not about one image: they fail the job.
      if (err instanceof RequestRefusedError && err.scope === 'object') return { ok: false, reason: err.reason };
      throw err; // storage faults: fail the job so BullMQ retries it, or the run fails
    }
  };

  const batches: Array<readonly T[]> = [];
  const batchSize = cfg.batchSize || engine.preferredBatch;
  for (let i = 0; i < items.length; i += batchSize) batches.push(items.slice(i, i + batchSize));
  const decodeBatch = (b: number) => mapLimit(batches[b]!, cfg.fetchConcurrency, (it) => fetchAndDecode(it.key));

  const failures: ImageFailure[] = [];
  let done = 0;
  let pending = batches.length > 0 ? decodeBatch(0) : undefined;
  for (let b = 0; b < batches.length; b++) {
    const decoded = await pending!;
    // Start the next batch's downloads before running this one through the engine.
    pending = b + 1 < batches.length ? decodeBatch(b + 1) : undefined;
    pending?.catch(() => undefined); // a rejection is rethrown when awaited above
    const batch = batches[b]!;
    const ok: Uint8Array[] = [];
    const errors = decoded.map((d, i) => {
      if (d.ok) {
        ok.push(d.pixels);
        return undefined;
      }
      failures.push({ key: batch[i]!.key, reason: d.reason });
      return d.reason;
    });
    const features = ok.length > 0 ? await engine.embed(ok) : new Float32Array(0);
    done += ok.length;
    await onBatch({ items: batch, errors, features });
    await deps.runs.setShardProgress(ref.runId, ref.shard, {
      done,
      failed: failures.length,
      complete: false,
      ...engineFields(engine),
    });
  }
  return { done, failures };
}

/**
 * Marks the shard complete with its failures, once its output is written: the failures replace
 * any an earlier attempt recorded, so a retried shard never counts twice.
 */
export async function completeShard(
  runs: RunStore,
  ref: ShardRef,
  engine: FeatureEngine,
  outcome: ShardOutcome,
): Promise<void> {
  await runs.setShardProgress(
    ref.runId,
    ref.shard,
    { done: outcome.done, failed: outcome.failures.length, complete: true, ...engineFields(engine) },
    outcome.failures,
  );
}
