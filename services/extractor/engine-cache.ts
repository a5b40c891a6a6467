/**
 * The extractor's one engine per process: built on first use, kept across jobs while they ask for
 * the same feature spec, replaced when a job asks for another (the old one is disposed), and
 * forgotten when its thread dies or fails to load, so the next job builds a fresh one instead of
 * failing on a dead engine forever.
 */
import type { FeatureSpec } from '../../shared/features.js';

export interface CachedEngine {
  dispose(): void;
  /** Called if the engine dies by itself (thread crash, out of memory, timeout). */
  onExit(listener: (reason: string) => void): void;
}

export interface EngineCache<E extends CachedEngine> {
  /** The engine for `spec`, loading it if needed; concurrent callers share one load. */
  get(spec: FeatureSpec): Promise<E>;
  /** Dispose the current engine (worker shutdown). */
  close(): void;
}

export function createEngineCache<E extends CachedEngine>(
  load: (spec: FeatureSpec) => Promise<E>,
  onDeath: (reason: string) => void = () => undefined,
): EngineCache<E> {
  let cached: { key: string; engine: Promise<E> } | undefined;
  const disposeLater = (engine: Promise<E> | undefined) => engine?.then((e) => e.dispose()).catch(() => undefined);
  return {
    get(spec) {
      const key = JSON.stringify(spec);
      if (cached?.key === key) return cached.engine;
      disposeLater(cached?.engine);
      const entry = { key, engine: load(spec) };
      cached = entry;
      const forget = () => {
        if (cached === entry) cached = undefined;
      };
      entry.engine.then(
        (e) =>
          e.onExit((reason) => {
            forget();
            onDeath(reason);
          }),
        forget,
      );
      return entry.engine;
    },
    close() {
      disposeLater(cached?.engine);
      cached = undefined;
    },
  };
}
