/**
 * The engine thread (started by thread.ts through shared/thread-call.ts): loads one feature
 * engine and runs its batches. Model files are read by the owner (`read`), which holds the
 * storage client; log lines go to the owner's logger.
 */
import { serveThread, transfer } from '../../../shared/thread-call.js';
import type { EngineDeps, FeatureEngine } from './engine.js';
import type { EngineHostApi, EngineThreadApi } from './thread.js';

let engine: FeatureEngine | undefined;
// Batches run one at a time, in order: an engine is not re-entrant.
let queue: Promise<unknown> = Promise.resolve();
const inOrder = <T>(work: () => Promise<T>): Promise<T> => {
  const next = queue.then(work);
  queue = next.catch(() => undefined);
  return next;
};

const owner = serveThread<EngineThreadApi, EngineHostApi>({
  async load({ spec, options }) {
    const { loadEngine } = await import('./load-engine.js');
    const deps: EngineDeps = {
      ...options,
      log: (msg, extra) => owner.notify('log', { msg, extra }),
      readObject: (url, maxBytes) => owner.call('read', { url, maxBytes }),
    };
    const e = await loadEngine(spec, deps);
    engine = e;
    return { id: e.id, backend: e.backend, dim: e.dim, preferredBatch: e.preferredBatch, input: e.input };
  },
  embed({ pixels, count }) {
    return inOrder(async () => {
      const e = engine!;
      const per = e.input.width * e.input.height * 3;
      const images = Array.from({ length: count }, (_, i) => pixels.subarray(i * per, (i + 1) * per));
      const rows = await e.embed(images);
      return transfer(rows, [rows.buffer as ArrayBuffer]);
    });
  },
  dispose() {
    return inOrder(async () => {
      engine?.dispose();
      engine = undefined;
    });
  },
});
