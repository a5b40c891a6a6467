/**
 * The feature cache as one shard sees it (the shard loop calls it, shard-loop.ts): before any
 * image is fetched, every item that has an identity — the ETag and size its listing gave, or a
 * HEAD where the manifest had none — is looked up, and the vectors found are read from their
 * segments; as each miss is fetched, the version the GET returned becomes its key (an object
 * overwritten since planning is keyed by what was really read; where the store gives no ETag,
 * by the sha256 of the bytes, looked up then); once the shard's output is written, its new
 * vectors become one new segment and its index entries (segment first, entries after).
 *
 * The cache is an optimisation: a segment that is gone or does not match is a miss, and a
 * failure to read or write the cache is logged and the shard goes on without it. Failed images
 * are never cached (a transient failure must be retried by the next run).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Redis } from 'ioredis';
import type { Config } from '../../../shared/config.js';
import { mapLimit } from '../../../shared/concurrency.js';
import { NotFoundError } from '../../../shared/errors.js';
import type { FeatureSpec } from '../../../shared/features.js';
import type { Logger } from '../../../shared/logger.js';
import { RequestRefusedError, headObject } from '../../../shared/s3.js';
import { CacheIndex, type SegmentRecord } from './cache-index.js';
import { cacheKey, contentHash, newSegmentName, specHash, type EntryRef, type ImageIdentity } from './keys.js';
import { readSegmentRows, writeSegment, type SegmentStore } from './segments.js';
import { cacheSpecId } from './spec-id.js';

/** What the cache needs from the worker's context. */
export interface ShardCacheDeps {
  readonly s3: S3Client;
  readonly redis: Redis;
  readonly config: Pick<Config, 'bucket' | 'queuePrefix' | 'featureCache'> & {
    readonly extractor: Pick<Config['extractor'], 'fetchConcurrency'>;
  };
}

/** An item as the cache sees it: its key, and the version its listing gave, if any. */
export interface CacheItem {
  readonly key: string;
  readonly etag?: string;
  readonly size?: number;
}

/** Segments read at once when a shard's hits are spread over several. */
const SEGMENT_READ_CONCURRENCY = 4;

/**
 * The cache for one shard of `items`, or undefined when it does not apply (DEEPFEAT_FEATURE_CACHE
 * =off, or a spec whose vectors are not cached: a user's model). Looks every item up at once.
 */
export async function openShardCache(
  deps: ShardCacheDeps,
  log: Logger,
  spec: FeatureSpec,
  engine: { readonly id: string; readonly dim: number; readonly input: { width: number; height: number } },
  sourceBucket: string,
  items: readonly CacheItem[],
): Promise<ShardCache | undefined> {
  if (deps.config.featureCache === 'off') return undefined;
  const specId = cacheSpecId(spec, engine);
  if (specId === undefined) return undefined;
  const cache = new ShardCache(deps, log, specId, engine.dim, sourceBucket, items);
  await cache.lookUpAll();
  return cache;
}

export class ShardCache {
  private readonly index: CacheIndex;
  private readonly store: SegmentStore;
  private readonly hash: string;
  /** The key each item was looked up by before fetching (undefined: looked up after its fetch). */
  private readonly lookupKeys: Array<Buffer | undefined>;
  /** The key each fetched item's new vector is stored under: the version the GET returned. */
  private readonly storeKeys: Array<Buffer | undefined>;
  private readonly found = new Map<number, Float32Array>();
  private readonly fresh = new Map<number, Float32Array>();

  constructor(
    private readonly deps: ShardCacheDeps,
    private readonly log: Logger,
    readonly specId: string,
    private readonly dim: number,
    private readonly sourceBucket: string,
    private readonly items: readonly CacheItem[],
  ) {
    this.index = new CacheIndex(deps.redis, deps.config.queuePrefix);
    this.store = { s3: deps.s3, bucket: deps.config.bucket, prefix: deps.config.queuePrefix };
    this.hash = specHash(specId);
    this.lookupKeys = new Array(items.length);
    this.storeKeys = new Array(items.length);
  }

  /** Item i's vector, when the lookup before fetching found it: the loop then neither fetches nor embeds it. */
  hit(index: number): Float32Array | undefined {
    return this.found.get(index);
  }

  /** Identities before fetching (HEAD for items without a listed version), then one lookup of them all. */
  async lookUpAll(): Promise<void> {
    const identities = await mapLimit(this.items, this.deps.config.extractor.fetchConcurrency, (it) =>
      this.identify(it),
    );
    identities.forEach((id, i) => {
      if (id) this.lookupKeys[i] = cacheKey(this.specId, id);
    });
    const asked = [...this.lookupKeys.keys()].filter((i) => this.lookupKeys[i] !== undefined);
    const refs = await this.index.lookup(
      this.hash,
      asked.map((i) => this.lookupKeys[i]!),
    );
    const found = await this.readVectors(asked.map((i, j) => ({ item: i, key: this.lookupKeys[i]!, ref: refs[j] })));
    for (const [i, v] of found) this.found.set(i, v);
  }

  /**
   * Called with each fetched object that was not a hit: records the version it was made from (its
   * key for storing), and, for an item that had no identity before fetching, looks it up now.
   */
  async fetched(index: number, object: { bytes: Uint8Array; etag: string | undefined }) {
    const identity: ImageIdentity =
      object.etag !== undefined
        ? {
            kind: 'version',
            bucket: this.sourceBucket,
            key: this.items[index]!.key,
            etag: object.etag,
            size: object.bytes.length,
          }
        : { kind: 'content', sha256: contentHash(object.bytes) };
    const key = cacheKey(this.specId, identity);
    this.storeKeys[index] = key;
    if (this.lookupKeys[index] !== undefined) return undefined;
    const [ref] = await this.index.lookup(this.hash, [key]);
    const vector = (await this.readVectors([{ item: index, key, ref }])).get(index);
    if (vector) this.storeKeys[index] = undefined; // found: nothing new to store
    return vector;
  }

  /** Called with each newly extracted vector (`dim` floats); kept until flush. */
  embedded(index: number, vector: Float32Array): void {
    this.fresh.set(index, vector);
  }

  /**
   * Stores the shard's new vectors: one segment (objects first), then its index entries. Called
   * once the shard's own output is written. A failure is logged, never thrown: the run's result
   * does not depend on the cache, and the next run extracts those images again.
   */
  async flush(): Promise<void> {
    const rows: Array<{ key: Buffer; vector: Float32Array }> = [];
    const seen = new Set<string>();
    for (const [i, vector] of [...this.fresh].sort((a, b) => a[0] - b[0])) {
      const key = this.storeKeys[i];
      // Two items with the same bytes and no ETag share a content key: one row is enough.
      if (!key || seen.has(key.toString('hex'))) continue;
      seen.add(key.toString('hex'));
      rows.push({ key, vector });
    }
    if (rows.length === 0) return;
    try {
      const keys = Buffer.concat(rows.map((r) => r.key));
      const vectors = new Float32Array(rows.length * this.dim);
      rows.forEach((r, i) => {
        vectors.set(r.vector, i * this.dim);
      });
      const name = newSegmentName();
      const written = await writeSegment(this.store, this.hash, name, keys, vectors, this.dim);
      const segment = await this.index.nextSegment(this.hash);
      const record: SegmentRecord = { name, rows: rows.length, dim: this.dim, ...written, createdAt: Date.now() };
      await this.index.addSegment(
        { hash: this.hash, spec: this.specId, dim: this.dim },
        segment,
        record,
        rows.map((r) => r.key),
      );
    } catch (err) {
      this.log.warn({ err, rows: rows.length }, 'feature cache: new vectors not stored');
    }
  }

  /** An item's identity before fetching: its listed version, else a HEAD; undefined when neither gives one. */
  private async identify(item: CacheItem): Promise<ImageIdentity | undefined> {
    const version = (etag: string, size: number): ImageIdentity => ({
      kind: 'version',
      bucket: this.sourceBucket,
      key: item.key,
      etag,
      size,
    });
    if (item.etag !== undefined && item.size !== undefined) return version(item.etag, item.size);
    try {
      const head = await headObject(this.deps.s3, this.sourceBucket, item.key);
      return head.etag !== undefined ? version(head.etag, head.size) : undefined;
    } catch (err) {
      // Gone, or a key the server refuses: no identity; the fetch records why the image fails.
      if (err instanceof NotFoundError || (err instanceof RequestRefusedError && err.scope === 'object')) {
        return undefined;
      }
      throw err; // storage faults: the job is retried, as for a failed GET
    }
  }

  /**
   * The vectors of looked-up items that the index names, read from their segments (grouped: one
   * read per segment). Rows whose segment is gone, unreadable or holds another key are misses.
   */
  private async readVectors(
    lookups: ReadonlyArray<{ item: number; key: Buffer; ref: EntryRef | undefined }>,
  ): Promise<Map<number, Float32Array>> {
    const out = new Map<number, Float32Array>();
    const bySegment = new Map<number, Array<{ item: number; key: Buffer; row: number }>>();
    for (const l of lookups) {
      if (!l.ref) continue;
      const list = bySegment.get(l.ref.segment) ?? [];
      if (list.length === 0) bySegment.set(l.ref.segment, list);
      list.push({ item: l.item, key: l.key, row: l.ref.row });
    }
    if (bySegment.size === 0) return out;
    const records = await this.index.segments(this.hash, [...bySegment.keys()]);
    await mapLimit([...bySegment], SEGMENT_READ_CONCURRENCY, async ([segment, wanted]) => {
      const record = records.get(segment);
      if (!record || record.dim !== this.dim) return; // pruned meanwhile, or another width: misses
      try {
        const vectors = await readSegmentRows(this.store, this.hash, record, wanted);
        vectors.forEach((v, j) => {
          if (v && v.length === this.dim) out.set(wanted[j]!.item, v);
        });
      } catch (err) {
        this.log.warn(
          { err, segment: record.name, rows: wanted.length },
          'feature cache: segment unreadable; its rows are extracted again',
        );
      }
    });
    return out;
  }
}
