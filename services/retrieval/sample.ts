/**
 * Seeded samples of a run's images that do not depend on the order rows are read in: an image is
 * in a sample of m when the hash of (seed, key) is among the m smallest of its set. The same key
 * and seed always give the same rank, so the kNN metrics sample the same images on every
 * evaluator, retry and host; ties (two keys with one hash) go to the row read first (shard order).
 */

/** 32-bit hash of `key` under `seed`: FNV-1a over the UTF-16 units, then murmur3's finaliser to spread the bits. */
export function keyHash(seed: number, key: string): number {
  let h = (0x811c9dc5 ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** One candidate of a bounded sample: its hash, the order it was seen in, and what the caller keeps. */
interface Entry<T> {
  hash: number;
  seq: number;
  value: T;
}

/**
 * The `max` candidates with the smallest (hash, order seen) among all offered, in memory bounded
 * by `max` however many are offered: a max-heap whose top is the worst candidate kept.
 */
export class BoundedSample<T> {
  readonly #heap: Entry<T>[] = [];
  #seen = 0;

  constructor(
    readonly max: number,
    readonly seed: number,
  ) {}

  /** Candidates offered so far. */
  get offered(): number {
    return this.#seen;
  }

  offer(key: string, value: T): void {
    const e: Entry<T> = { hash: keyHash(this.seed, key), seq: this.#seen++, value };
    const heap = this.#heap;
    if (heap.length < this.max) {
      heap.push(e);
      this.#up(heap.length - 1);
    } else if (this.max > 0 && worse(heap[0]!, e)) {
      heap[0] = e;
      this.#down(0);
    }
  }

  /** The kept candidates, in the order they were offered. */
  values(): T[] {
    return [...this.#heap].sort((a, b) => a.seq - b.seq).map((e) => e.value);
  }

  #up(i: number): void {
    const heap = this.#heap;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!worse(heap[i]!, heap[parent]!)) return;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  #down(i: number): void {
    const heap = this.#heap;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let top = i;
      if (l < heap.length && worse(heap[l]!, heap[top]!)) top = l;
      if (r < heap.length && worse(heap[r]!, heap[top]!)) top = r;
      if (top === i) return;
      [heap[i], heap[top]] = [heap[top]!, heap[i]!];
      i = top;
    }
  }
}

/** a ranks after b: a larger hash, or the same hash seen later. */
const worse = <T>(a: Entry<T>, b: Entry<T>): boolean => a.hash > b.hash || (a.hash === b.hash && a.seq > b.seq);

/** Indices (ascending) of the at most `max` keys a BoundedSample of them keeps. */
export function sampleIndices(keys: readonly string[], max: number, seed: number): number[] {
  if (keys.length <= max) return keys.map((_, i) => i);
  const sample = new BoundedSample<number>(max, seed);
  for (const [i, key] of keys.entries()) sample.offer(key, i);
  return sample.values();
}
