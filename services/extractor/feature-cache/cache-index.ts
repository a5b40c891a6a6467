/**
 * The feature cache's index in Redis (layout in keys.ts): which segment and row hold the vector
 * of a cache key, the record of each segment, and the specs that have entries. Writers add a
 * segment's entries only after its objects are written (shard-cache.ts), so an entry never names
 * a segment that is not whole; prune removes entries first, then the objects (maintenance.ts).
 */
import type { Redis } from 'ioredis';
import { INDEX_BUCKETS, entryValue, indexBucket, indexField, parseEntry, redisKeys, type EntryRef } from './keys.js';

/** What the index knows of one segment. */
export interface SegmentRecord {
  /** Object name under cache/<specHash>/ (keys.ts newSegmentName). */
  readonly name: string;
  readonly rows: number;
  readonly dim: number;
  /** Byte offset of the first row in the .npy (its header length). */
  readonly offset: number;
  /** Bytes of both objects together. */
  readonly bytes: number;
  /** When it was written, ms since the epoch. */
  readonly createdAt: number;
}

/** A spec with entries, as the index records it. */
export interface SpecRecord {
  readonly hash: string;
  /** The feature spec id (shard-cache.ts cacheSpecId). */
  readonly spec: string;
  readonly dim: number;
}

/**
 * Deletes each named field only while it still holds the given value: a segment's prune must not
 * remove an entry a newer segment has taken over since. KEYS: bucket hashes; ARGV: field, value
 * per key, in the same order. Returns how many were deleted.
 */
const REMOVE_IF_EQUAL = `
local n = 0
for i = 1, #KEYS do
  local field = ARGV[2 * i - 1]
  if redis.call('HGET', KEYS[i], field) == ARGV[2 * i] then
    n = n + redis.call('HDEL', KEYS[i], field)
  end
end
return n
`;

/** Entries removed per script call: bounded so one call never holds Redis for long. */
const REMOVE_BATCH = 512;

function parseRecord(json: string | null | undefined): SegmentRecord | undefined {
  if (!json) return undefined;
  try {
    const r = JSON.parse(json) as Partial<SegmentRecord>;
    const ok =
      typeof r.name === 'string' &&
      [r.rows, r.dim, r.offset, r.bytes, r.createdAt].every((x) => typeof x === 'number' && Number.isSafeInteger(x));
    return ok ? (r as SegmentRecord) : undefined;
  } catch {
    return undefined;
  }
}

export class CacheIndex {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private keys(hash: string) {
    return redisKeys(this.prefix, hash);
  }

  /** Where each cache key's vector is, in the keys' order (undefined: not in the index). */
  async lookup(hash: string, cacheKeys: readonly Uint8Array[]): Promise<Array<EntryRef | undefined>> {
    if (cacheKeys.length === 0) return [];
    const k = this.keys(hash);
    // One HMGET per bucket touched, in one round trip.
    const byBucket = new Map<number, number[]>();
    cacheKeys.forEach((key, i) => {
      const b = indexBucket(key);
      const list = byBucket.get(b);
      if (list) list.push(i);
      else byBucket.set(b, [i]);
    });
    const groups = [...byBucket];
    const pipe = this.redis.pipeline();
    for (const [b, idx] of groups) pipe.hmget(k.bucket(b), ...idx.map((i) => indexField(cacheKeys[i]!)));
    const results = (await pipe.exec()) ?? [];
    const out = new Array<EntryRef | undefined>(cacheKeys.length);
    groups.forEach(([, idx], g) => {
      const [err, values] = results[g] ?? [new Error('no reply')];
      if (err) throw err;
      (values as Array<string | null>).forEach((v, j) => {
        out[idx[j]!] = parseEntry(v);
      });
    });
    return out;
  }

  /** The records of the given segments (absent: pruned, or never finished). */
  async segments(hash: string, numbers: readonly number[]): Promise<Map<number, SegmentRecord>> {
    const out = new Map<number, SegmentRecord>();
    if (numbers.length === 0) return out;
    const values = await this.redis.hmget(this.keys(hash).segments, ...numbers.map(String));
    numbers.forEach((n, i) => {
      const r = parseRecord(values[i]);
      if (r) out.set(n, r);
    });
    return out;
  }

  /** Every segment of a spec, by number. */
  async allSegments(hash: string): Promise<Map<number, SegmentRecord>> {
    const all = await this.redis.hgetall(this.keys(hash).segments);
    const out = new Map<number, SegmentRecord>();
    for (const [n, json] of Object.entries(all)) {
      const r = parseRecord(json);
      if (r) out.set(Number(n), r);
    }
    return out;
  }

  /** A new segment number for the spec: unique, never reused. */
  async nextSegment(hash: string): Promise<number> {
    return this.redis.incr(this.keys(hash).seq);
  }

  /**
   * Files a written segment: its record, the spec, and one entry per row (row i ↔ cacheKeys[i]),
   * in one transaction. An entry already there is replaced (the last writer wins; both segments
   * hold a valid vector for the key).
   */
  async addSegment(
    spec: SpecRecord,
    segment: number,
    record: SegmentRecord,
    cacheKeys: readonly Uint8Array[],
  ): Promise<void> {
    const k = this.keys(spec.hash);
    const tx = this.redis.multi();
    tx.hset(k.specs, spec.hash, JSON.stringify({ spec: spec.spec, dim: spec.dim }));
    tx.hset(k.segments, String(segment), JSON.stringify(record));
    const byBucket = new Map<number, Array<Buffer | string>>();
    cacheKeys.forEach((key, row) => {
      const b = indexBucket(key);
      const pairs = byBucket.get(b) ?? [];
      if (pairs.length === 0) byBucket.set(b, pairs);
      pairs.push(indexField(key), entryValue({ segment, row }));
    });
    for (const [b, pairs] of byBucket) tx.hset(k.bucket(b), ...pairs);
    const results = (await tx.exec()) ?? [];
    for (const [err] of results) if (err) throw err;
  }

  /** Removes the entries that still name row i of `segment` for cacheKeys[i]; returns how many. */
  async removeEntries(hash: string, segment: number, cacheKeys: readonly Uint8Array[]): Promise<number> {
    const k = this.keys(hash);
    let removed = 0;
    for (let start = 0; start < cacheKeys.length; start += REMOVE_BATCH) {
      const keys: string[] = [];
      const args: Array<Buffer | string> = [];
      for (let row = start; row < Math.min(cacheKeys.length, start + REMOVE_BATCH); row++) {
        const key = cacheKeys[row]!;
        keys.push(k.bucket(indexBucket(key)));
        args.push(indexField(key), entryValue({ segment, row }));
      }
      removed += Number(await this.redis.eval(REMOVE_IF_EQUAL, keys.length, ...keys, ...args));
    }
    return removed;
  }

  async removeSegmentRecord(hash: string, segment: number): Promise<void> {
    await this.redis.hdel(this.keys(hash).segments, String(segment));
  }

  /** Every spec with entries. */
  async specs(): Promise<SpecRecord[]> {
    const all = await this.redis.hgetall(redisKeys(this.prefix, '').specs);
    const out: SpecRecord[] = [];
    for (const [hash, json] of Object.entries(all)) {
      try {
        const v = JSON.parse(json) as { spec?: unknown; dim?: unknown };
        if (typeof v.spec === 'string' && typeof v.dim === 'number') out.push({ hash, spec: v.spec, dim: v.dim });
      } catch {
        // not a record this format wrote: not listed
      }
    }
    return out.sort((a, b) => (a.spec < b.spec ? -1 : a.spec > b.spec ? 1 : 0));
  }

  /** Index entries of a spec: the sum of its buckets' sizes (one pipelined HLEN each). */
  async countEntries(hash: string): Promise<number> {
    const k = this.keys(hash);
    let total = 0;
    const CHUNK = 4096;
    for (let start = 0; start < INDEX_BUCKETS; start += CHUNK) {
      const pipe = this.redis.pipeline();
      for (let b = start; b < start + CHUNK; b++) pipe.hlen(k.bucket(b));
      for (const [err, n] of (await pipe.exec()) ?? []) {
        if (err) throw err;
        total += Number(n);
      }
    }
    return total;
  }

  /** Deletes a spec's whole index (every bucket, every segment record) and its registration. */
  async removeSpec(hash: string): Promise<void> {
    const k = this.keys(hash);
    const CHUNK = 1024;
    for (let start = 0; start < INDEX_BUCKETS; start += CHUNK) {
      const keys = Array.from({ length: CHUNK }, (_, i) => k.bucket(start + i));
      await this.redis.unlink(...keys);
    }
    await this.redis.multi().unlink(k.segments).hdel(k.specs, hash).exec();
  }

  /** Unregisters a spec that has no segment left (kept while any has, so stats still name it). */
  async forgetSpecIfEmpty(hash: string): Promise<void> {
    const k = this.keys(hash);
    if ((await this.redis.hlen(k.segments)) === 0) await this.redis.hdel(k.specs, hash);
  }
}
