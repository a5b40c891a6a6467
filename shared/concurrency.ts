/** Small helpers for bounded concurrency over I/O. */

/** Maps over items with at most `limit` calls in flight; results keep the items' order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return out;
}

/**
 * Fetches 0..count-1 with at most `limit` fetches in flight and hands each result to `consume`
 * in index order, as soon as it and all before it are in. Memory holds at most `limit` results,
 * whatever `count` is. A failed fetch rejects the whole call (after in-flight fetches settle).
 */
export async function forEachOrdered<R>(
  count: number,
  limit: number,
  fetch: (index: number) => Promise<R>,
  consume: (result: R, index: number) => void,
): Promise<void> {
  const inFlight: Array<Promise<R>> = [];
  let started = 0;
  const startMore = () => {
    while (started < count && inFlight.length < limit) {
      const p = fetch(started++);
      p.catch(() => undefined); // observed when awaited below
      inFlight.push(p);
    }
  };
  try {
    for (let i = 0; i < count; i++) {
      startMore();
      consume(await inFlight.shift()!, i);
    }
  } finally {
    await Promise.allSettled(inFlight);
  }
}
