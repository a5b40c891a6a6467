/**
 * The loop every shard of images goes through, for extraction (worker.ts) and for prediction
 * (predict.ts): objects are fetched and decoded with bounded concurrency, one batch ahead of the
 * engine (while batch b runs, batch b+1 downloads and decodes), so I/O overlaps inference. Bad
 * images become failures with their reason; storage faults fail the job (transient ones are
 * retried by BullMQ, permanent ones end the run). The shard's progress is recorded after every
 * batch, and once complete with its failures (`completeShard`), so status, throughput and ETA
 * read the same fields for both kinds of run.
 *
 * With the feature cache (feature-cache/shard-cache.ts), images whose vector it holds are neither
 * fetched nor embedded: their cached rows take their place in the batch, in item order, so the
 * handlers write exactly what extraction would have. Only the images to extract fill a batch.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Config } from '../../shared/config.js';
import { mapLimit } from '../../shared/concurrency.js';
import { ImageError, InternalError, NotFoundError } from '../../shared/errors.js';
import type { JobLease } from '../../shared/job-lease.js';
import type { CacheCounts, ImageFailure, RunStore } from '../../shared/run-state.js';
import { ObjectTooLargeError, RequestRefusedError, getObjectVersion } from '../../shared/s3.js';
import type { DecoderPool } from './decoder-pool.js';
import type { FeatureEngine } from './engines/engine.js';

/** An image ready for the engine, a vector the cache gave instead, or why the image cannot be used. */
type Decoded = { ok: true; pixels: Uint8Array } | { ok: true; vector: Float32Array } | { ok: false; reason: string };

/**
 * The feature cache's side of the loop, for one shard (feature-cache/shard-cache.ts ShardCache);
 * absent when the cache is off or does not apply to the spec.
 */
export interface LoopCache {
  /** Item i's vector if the lookup before fetching found it: then it is neither fetched nor embedded. */
  hit(index: number): Float32Array | undefined;
  /** Called with each object fetched: the version read becomes the item's key; may answer with a vector. */
  fetched(index: number, object: { bytes: Uint8Array; etag: string | undefined }): Promise<Float32Array | undefined>;
  /** Called with each vector the engine made (engine.dim floats), to be stored once the shard is written. */
  embedded(index: number, vector: Float32Array): void;
}

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
  /** The job's lease: progress is recorded only while this attempt holds the job (shared/job-lease.ts). */
  readonly lease?: JobLease;
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
  /** Images served by the feature cache, and the others; absent when the shard had no cache. */
  readonly cache?: CacheCounts;
}

/** The engine fields of a shard's progress (run-wide fields of the run's state). */
function engineFields(engine: FeatureEngine) {
  return { engine: engine.id, backend: engine.backend, input: `${engine.input.width}x${engine.input.height}` };
}

/**
 * Fetches, decodes and embeds `items` a batch at a time, hands each batch to `onBatch` in order,
 * and records the shard's progress after each. The handler writes its own output from the
 * batches, then calls `completeShard`. With `cache`, its vectors replace fetching and embedding.
 */
export async function embedShard<T extends { readonly key: string }>(
  deps: ShardLoopDeps,
  ref: ShardRef,
  engine: FeatureEngine,
  items: readonly T[],
  onBatch: (batch: EmbeddedBatch<T>) => void | Promise<void>,
  cache?: LoopCache,
): Promise<ShardOutcome> {
  const cfg = deps.config.extractor;
  const fetchAndDecode = async (index: number): Promise<Decoded> => {
    const key = items[index]!.key;
    try {
      const object = await getObjectVersion(deps.s3, ref.sourceBucket, key, cfg.maxImageBytes);
      const cached = await cache?.fetched(index, object);
      if (cached) return { ok: true, vector: cached };
      const size = { width: engine.input.width, height: engine.input.height };
      const pixels = await deps.decoders.decode(object.bytes, {
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

  // Batches of item indices, each with `batchSize` images to extract; images the cache already
  // holds ride along with the batch they fall in, so a shard of hits is one batch, never fetched.
  const batches: number[][] = [];
  const batchSize = cfg.batchSize || engine.preferredBatch;
  let current: number[] = [];
  let toEmbed = 0;
  for (let i = 0; i < items.length; i++) {
    current.push(i);
    if (cache?.hit(i) === undefined && ++toEmbed === batchSize) {
      batches.push(current);
      current = [];
      toEmbed = 0;
    }
  }
  if (current.length > 0) batches.push(current);

  // A batch's images are fetched and decoded together, up to `inFlight` at once (never fewer
  // than the decoder processes, or some would idle), while the batch before it runs through the
  // engine: `prefetchBatches` batches start ahead (memory: that many batches of fetched bytes and
  // pixels). One batch ahead (the default) suits an engine slower than decoding, as on CPU; a
  // fast GPU fed from distant storage wants more. A stream with no batch boundary was measured
  // too (issue 14): same images/s, and a third more CPU per image (more wake-ups per request).
  const inFlight = Math.max(cfg.fetchConcurrency, deps.decoders.processes);
  const decodeBatch = (b: number) =>
    mapLimit(batches[b]!, inFlight, async (i): Promise<Decoded> => {
      const vector = cache?.hit(i);
      return vector ? { ok: true, vector } : fetchAndDecode(i);
    });
  const ahead: Array<Promise<Decoded[]> | undefined> = [];
  const startUpTo = (last: number) => {
    for (let k = ahead.length; k <= Math.min(last, batches.length - 1); k++) {
      const p = decodeBatch(k);
      p.catch(() => undefined); // a rejection is rethrown when its batch is awaited
      ahead.push(p);
    }
  };

  const dim = engine.dim;
  const failures: ImageFailure[] = [];
  let done = 0;
  let processed = 0;
  let fromCache = 0;
  for (let b = 0; b < batches.length; b++) {
    startUpTo(b);
    const decoded = await ahead[b]!;
    ahead[b] = undefined; // its pixels go with the batch
    // Start the next batches' downloads before running this one through the engine.
    startUpTo(b + cfg.prefetchBatches);
    const indices = batches[b]!;
    const batch = indices.map((i) => items[i]!);
    const pixels: Uint8Array[] = [];
    let cachedRows = 0;
    const errors = decoded.map((d, j) => {
      if (!d.ok) {
        failures.push({ key: batch[j]!.key, reason: d.reason });
        return d.reason;
      }
      if ('pixels' in d) pixels.push(d.pixels);
      else cachedRows++;
      return undefined;
    });
    const embedded = pixels.length > 0 ? await engine.embed(pixels) : new Float32Array(0);
    // Rows in item order: the cache's vector where it had one, else the engine's next row.
    const features = cachedRows === 0 ? embedded : new Float32Array((pixels.length + cachedRows) * dim);
    let row = 0;
    let next = 0;
    decoded.forEach((d, j) => {
      if (!d.ok) return;
      if ('vector' in d) features.set(d.vector, row * dim);
      else {
        const vector = embedded.subarray(next * dim, (next + 1) * dim);
        next++;
        if (features !== embedded) features.set(vector, row * dim);
        cache?.embedded(indices[j]!, vector);
      }
      row++;
    });
    done += row;
    processed += indices.length;
    fromCache += cachedRows;
    await onBatch({ items: batch, errors, features });
    const { runFailed } = await deps.runs.setShardProgress(
      ref.runId,
      ref.shard,
      {
        done,
        failed: failures.length,
        complete: false,
        ...engineFields(engine),
        ...(cache ? { cache: { hits: fromCache, misses: processed - fromCache } } : {}),
      },
      undefined,
      ref.lease,
    );
    // The run failed (another shard's permanent error, a --local command's Ctrl-C, …): the rest
    // of this shard would be work for nothing, and a worker that is shutting down would wait for
    // it. Permanent, so the job is not retried; the run keeps its own reason (worker-kit.ts: an
    // INTERNAL report never replaces an earlier error).
    if (runFailed) {
      throw new InternalError(`run ${ref.runId} has failed; shard ${ref.shard} stopped after ${processed} images`, {
        permanent: true,
      });
    }
  }
  return {
    done,
    failures,
    ...(cache ? { cache: { hits: fromCache, misses: items.length - fromCache } } : {}),
  };
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
    {
      done: outcome.done,
      failed: outcome.failures.length,
      complete: true,
      ...engineFields(engine),
      ...(outcome.cache ? { cache: outcome.cache } : {}),
    },
    outcome.failures,
    ref.lease,
  );
}
