/**
 * Published models (models/<name>/<version>/model.json) as the predict handler uses them, read
 * and checked once per process (shared/published-model.ts) and kept by key: a run's shards
 * follow each other on the same model, and re-reading and re-parsing tens of megabytes of
 * weights per shard would cost more than classifying the shard. A few models at most (LRU), so
 * a process serving many prediction runs does not grow without bound.
 */
import type { ModelArtifact } from '../../shared/model-format.js';

/** Models kept per process. */
export const MODEL_CACHE_SIZE = 4;

export interface ModelCache {
  /** The model at `key`, read on first use; concurrent callers share one read. */
  get(key: string): Promise<ModelArtifact>;
  readonly size: number;
}

/** A cache over `load`; a load that fails is forgotten, so the next job tries again. */
export function createModelCache(
  load: (key: string) => Promise<ModelArtifact>,
  capacity = MODEL_CACHE_SIZE,
): ModelCache {
  const entries = new Map<string, Promise<ModelArtifact>>();
  return {
    get(key) {
      let entry = entries.get(key);
      if (entry) {
        // Most recently used last: a Map keeps insertion order.
        entries.delete(key);
        entries.set(key, entry);
        return entry;
      }
      entry = load(key);
      entries.set(key, entry);
      const mine = entry;
      mine.catch(() => {
        if (entries.get(key) === mine) entries.delete(key);
      });
      while (entries.size > capacity) entries.delete(entries.keys().next().value!);
      return entry;
    },
    get size() {
      return entries.size;
    },
  };
}
