/**
 * What `deepfeat cache stats` and `deepfeat cache prune` do (cli/cache.ts prints it): count the
 * cache per feature spec, and delete segments with their index entries. Pruning is safe while
 * runs extract: index entries go first (compared with the segment they name, so an entry a newer
 * segment took over stays), then the segment's record, then its objects; a reader that found an
 * entry just before sees a missing record or object, which is a miss, never a failure.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import type { Redis } from 'ioredis';
import { mapLimit } from '../../../shared/concurrency.js';
import { BadRequestError, NotFoundError } from '../../../shared/errors.js';
import { deleteObject, listObjects } from '../../../shared/s3.js';
import { quote } from '../../../shared/text.js';
import { CacheIndex, type SegmentRecord, type SpecRecord } from './cache-index.js';
import { INDEX_BUCKETS, cacheFolder, parseEntry, redisKeys } from './keys.js';
import { deleteSegmentObjects, readSegmentKeys } from './segments.js';

export interface CacheDeps {
  readonly redis: Redis;
  /** DEEPFEAT_QUEUE_PREFIX: the deployment's Redis keys. */
  readonly prefix: string;
  readonly s3: S3Client;
  /** DEEPFEAT_BUCKET: where the segments are. */
  readonly bucket: string;
}

/** One feature spec's share of the cache. */
export interface SpecStats {
  /** The feature spec id (engine id, input size, range, preprocessing version). */
  readonly spec: string;
  /** Its short hash: the folder cache/<hash>/ and the Redis keys' part. */
  readonly hash: string;
  readonly dim: number;
  /** Index entries: images whose vector can be found. */
  readonly entries: number;
  readonly segments: number;
  /** Rows in the segments (more than entries when a key was stored twice or re-extracted). */
  readonly rows: number;
  /** Bytes of the segments' objects. */
  readonly bytes: number;
  /** When the oldest and newest segments were written (ISO), null without segments. */
  readonly oldest: string | null;
  readonly newest: string | null;
}

export interface CacheStats {
  readonly specs: SpecStats[];
  readonly total: { entries: number; segments: number; rows: number; bytes: number };
}

export async function cacheStats(deps: Pick<CacheDeps, 'redis' | 'prefix'>): Promise<CacheStats> {
  const index = new CacheIndex(deps.redis, deps.prefix);
  const specs: SpecStats[] = [];
  for (const spec of await index.specs()) {
    const segments = [...(await index.allSegments(spec.hash)).values()];
    const times = segments.map((s) => s.createdAt);
    specs.push({
      spec: spec.spec,
      hash: spec.hash,
      dim: spec.dim,
      entries: await index.countEntries(spec.hash),
      segments: segments.length,
      rows: segments.reduce((n, s) => n + s.rows, 0),
      bytes: segments.reduce((n, s) => n + s.bytes, 0),
      oldest: times.length > 0 ? new Date(Math.min(...times)).toISOString() : null,
      newest: times.length > 0 ? new Date(Math.max(...times)).toISOString() : null,
    });
  }
  const sum = (f: (s: SpecStats) => number) => specs.reduce((n, s) => n + f(s), 0);
  return {
    specs,
    total: {
      entries: sum((s) => s.entries),
      segments: sum((s) => s.segments),
      rows: sum((s) => s.rows),
      bytes: sum((s) => s.bytes),
    },
  };
}

export interface PruneOptions {
  /** Only segments written longer ago than this many milliseconds. */
  readonly olderThanMs?: number;
  /** Only this spec: its id as `cache stats` shows it, or its hash. */
  readonly spec?: string;
  /** Everything: every spec, every segment, and objects of the deployment's cache folder that no record names. */
  readonly all?: boolean;
}

export interface PruneResult {
  /** Specs pruned (their ids; a folder no spec record names shows as its hash). */
  readonly specs: string[];
  readonly segments: number;
  readonly entries: number;
  readonly objects: number;
}

/** Objects deleted at once. */
const DELETE_CONCURRENCY = 16;

/** Refuses a selection that is empty or contradicts itself (the CLI checks before connecting). */
export function checkPruneOptions(options: PruneOptions): void {
  if (options.all && (options.spec !== undefined || options.olderThanMs !== undefined)) {
    throw new BadRequestError('--all prunes everything: drop --spec and --older-than, or drop --all');
  }
  if (!options.all && options.spec === undefined && options.olderThanMs === undefined) {
    throw new BadRequestError('say what to prune: --older-than DURATION (e.g. 30d), --spec ID, or --all');
  }
}

/**
 * Deletes what `options` selects: --all, or a spec's segments, or every spec's segments older
 * than a duration (the two may be combined). Refuses an empty selection and an unknown spec.
 */
export async function pruneCache(deps: CacheDeps, options: PruneOptions, now = Date.now()): Promise<PruneResult> {
  checkPruneOptions(options);
  const index = new CacheIndex(deps.redis, deps.prefix);
  const registered = await index.specs();
  let selected: SpecRecord[] = registered;
  if (options.spec !== undefined) {
    selected = registered.filter((s) => s.spec === options.spec || s.hash === options.spec);
    if (selected.length === 0) {
      throw new BadRequestError(
        `no feature spec ${quote(options.spec)} in the cache: give an id or hash that \`deepfeat cache stats\` lists`,
      );
    }
  }
  const result = { specs: [] as string[], segments: 0, entries: 0, objects: 0 };
  const whole = options.all || options.olderThanMs === undefined;
  for (const spec of selected) {
    const r = whole
      ? await dropSpec(deps, index, spec.hash)
      : await pruneOld(deps, index, spec.hash, now - options.olderThanMs!);
    if (r.segments > 0 || r.objects > 0) result.specs.push(spec.spec);
    result.segments += r.segments;
    result.entries += r.entries;
    result.objects += r.objects;
  }
  if (options.all) {
    // This deployment's folders that no spec record names (records lost with a Redis that was emptied).
    const known = new Set(registered.map((s) => s.hash));
    const folders = new Set<string>();
    const mine = cacheFolder(deps.prefix);
    for await (const o of listObjects(deps.s3, deps.bucket, mine)) {
      const folder = o.key.slice(mine.length).split('/')[0]!;
      if (!known.has(folder)) folders.add(folder);
    }
    for (const hash of folders) {
      const n = await deleteObjectsUnder(deps, cacheFolder(deps.prefix, hash), () => true);
      if (n > 0) result.specs.push(hash);
      result.objects += n;
    }
  }
  return result;
}

/** Deletes a spec's whole index, then every object of its folder. */
async function dropSpec(deps: CacheDeps, index: CacheIndex, hash: string) {
  const segments = (await index.allSegments(hash)).size;
  const entries = await index.countEntries(hash);
  await index.removeSpec(hash);
  const objects = await deleteObjectsUnder(deps, cacheFolder(deps.prefix, hash), () => true);
  return { segments, entries, objects };
}

/** Deletes a spec's segments written before `cutoff` (ms), then objects of its folder no record names. */
async function pruneOld(deps: CacheDeps, index: CacheIndex, hash: string, cutoff: number) {
  const all = await index.allSegments(hash);
  const old = [...all].filter(([, r]) => r.createdAt < cutoff);
  let entries = 0;
  let objects = 0;
  const keyless: number[] = [];
  for (const [segment, record] of old) {
    const keys = await readKeys(deps, hash, record);
    if (keys) entries += await index.removeEntries(hash, segment, keys);
    else keyless.push(segment);
  }
  // A segment whose .keys object is gone: its entries are found by scanning the spec's buckets.
  if (keyless.length > 0) entries += await removeEntriesOf(deps, hash, new Set(keyless));
  for (const [segment, record] of old) {
    await index.removeSegmentRecord(hash, segment);
    await deleteSegmentObjects(deps, hash, record.name);
    objects += 2;
  }
  // Objects no record names (a writer that died between its objects and its entries), as old.
  const named = new Set([...all.values()].map((r) => r.name));
  objects += await deleteObjectsUnder(
    deps,
    cacheFolder(deps.prefix, hash),
    (name, modified) => !named.has(name) && modified < cutoff,
  );
  await index.forgetSpecIfEmpty(hash);
  return { segments: old.length, entries, objects };
}

async function readKeys(deps: CacheDeps, hash: string, record: SegmentRecord): Promise<Uint8Array[] | undefined> {
  try {
    return await readSegmentKeys(deps, hash, record);
  } catch (err) {
    if (err instanceof NotFoundError) return undefined;
    throw err;
  }
}

/** Removes every entry of the spec that names one of `segments` (one HGETALL per bucket). */
async function removeEntriesOf(deps: CacheDeps, hash: string, segments: ReadonlySet<number>): Promise<number> {
  const k = redisKeys(deps.prefix, hash);
  let removed = 0;
  for (let b = 0; b < INDEX_BUCKETS; b++) {
    // Fields are binary: read as Buffers (field, value, field, value, ...), never as text.
    const flat = (await deps.redis.callBuffer('HGETALL', k.bucket(b))) as Buffer[];
    const stale: Buffer[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const ref = parseEntry(flat[i + 1]!.toString());
      if (ref !== undefined && segments.has(ref.segment)) stale.push(flat[i]!);
    }
    if (stale.length > 0) removed += await deps.redis.hdel(k.bucket(b), ...stale);
  }
  return removed;
}

/** Deletes the objects under `prefix` whose segment name and age `select` picks; returns how many. */
async function deleteObjectsUnder(
  deps: CacheDeps,
  prefix: string,
  select: (segmentName: string, modifiedMs: number) => boolean,
): Promise<number> {
  const doomed: string[] = [];
  for await (const o of listObjects(deps.s3, deps.bucket, prefix)) {
    const name = o.key.slice(prefix.length).replace(/\.(npy|keys)$/, '');
    if (select(name, o.lastModified?.getTime() ?? 0)) doomed.push(o.key);
  }
  await mapLimit(doomed, DELETE_CONCURRENCY, (key) => deleteObject(deps.s3, deps.bucket, key));
  return doomed.length;
}
