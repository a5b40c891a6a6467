/**
 * The extractor's engines, shared by the jobs running at once in one process. A job leases the
 * engine for its feature spec and holds it until the job ends (`using` releases it); jobs asking
 * for the same spec share one engine and one load. An engine is disposed only when no job holds
 * it, so a job for another backbone can never pull the engine from under a running job (with
 * `--concurrency N` and two runs on different backbones, each run's jobs keep their engine).
 *
 * Memory: an engine is hundreds of MB, so idle engines are not collected. An idle engine is kept
 * for the next job with the same spec (the common case: a run's shards follow each other), and
 * every idle engine of another spec is disposed before a new engine loads. So at most as many
 * engines exist as jobs run at once (the worker's concurrency), and with concurrency 1 exactly
 * one. An engine whose thread dies or fails to load is forgotten, so the next job builds a fresh
 * one instead of failing on a dead engine forever.
 */
import type { FeatureSpec } from '../../shared/features.js';

export interface CachedEngine {
  /** Frees the engine; a promise, if any, settles once it is gone (its thread ended). */
  dispose(): void | Promise<void>;
  /** Called if the engine dies by itself (thread crash, out of memory, timeout). */
  onExit(listener: (reason: string) => void): void;
}

/** One job's hold on an engine; releasing (or leaving a `using` block) lets it be disposed. */
export interface EngineLease<E> extends Disposable {
  readonly engine: E;
  release(): void;
}

export interface EngineCache<E extends CachedEngine> {
  /** The engine for `spec`, loading it if needed; concurrent callers share one load. */
  acquire(spec: FeatureSpec): Promise<EngineLease<E>>;
  /** Engines alive or loading, for tests and logs. */
  readonly size: number;
  /**
   * Dispose every engine (worker shutdown, after the running jobs have finished); resolves once
   * each is gone, engines still loading included (they are disposed when their load ends).
   */
  close(): Promise<void>;
}

interface Entry<E> {
  readonly key: string;
  readonly engine: Promise<E>;
  /** Jobs holding a lease (or waiting for the load). */
  users: number;
}

export function createEngineCache<E extends CachedEngine>(
  load: (spec: FeatureSpec) => Promise<E>,
  onDeath: (reason: string) => void = () => undefined,
): EngineCache<E> {
  const entries = new Map<string, Entry<E>>();
  const dispose = (entry: Entry<E>): Promise<void> => {
    if (entries.get(entry.key) === entry) entries.delete(entry.key);
    return entry.engine.then((e) => e.dispose()).catch(() => undefined);
  };
  const forget = (entry: Entry<E>) => {
    if (entries.get(entry.key) === entry) entries.delete(entry.key);
  };

  return {
    async acquire(spec) {
      const key = JSON.stringify(spec);
      let entry = entries.get(key);
      if (!entry) {
        // Make room first: idle engines of other specs go before a new one loads.
        for (const other of [...entries.values()]) if (other.users === 0) void dispose(other);
        const created: Entry<E> = { key, engine: load(spec), users: 0 };
        entries.set(key, created);
        created.engine.then(
          (e) =>
            e.onExit((reason) => {
              forget(created);
              onDeath(reason);
            }),
          () => forget(created),
        );
        entry = created;
      }
      const held = entry;
      held.users++;
      let engine: E;
      try {
        engine = await held.engine;
      } catch (err) {
        held.users--;
        throw err;
      }
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        held.users--;
        // A forgotten entry (dead thread, replaced after close()) has no other way to be disposed.
        if (held.users === 0 && entries.get(held.key) !== held) void dispose(held);
      };
      return { engine, release, [Symbol.dispose]: release };
    },
    get size() {
      return entries.size;
    },
    async close() {
      await Promise.all([...entries.values()].map(dispose));
    },
  };
}
