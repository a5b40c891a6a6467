/**
 * Runs a feature engine in a worker thread, so inference never blocks the extractor's event loop:
 * BullMQ renews job locks on that loop, and a TF.js WebAssembly batch holds the CPU for seconds.
 * The main thread keeps storage (the thread asks it to read model files) and logging; images go
 * to the thread and feature rows come back as transferred buffers (no copies).
 *
 * `loadEngineInThread(spec, deps)` has the same contract as `loadEngine`; its engine's `embed`
 * rejects with a retryable error if the thread dies, and `onExit` tells the owner to make a new one.
 * A batch that gets no answer within `timeoutMs` counts as a dead thread too (a hung driver or a
 * runaway graph): the thread is terminated, so a job can never hang while its lock is renewed.
 * Thread lifecycle, errors and timeouts are shared/thread-call.ts's; the thread's side is
 * engine-thread-main.ts.
 */
import { InternalError } from '../../../shared/errors.js';
import { startThread } from '../../../shared/thread-call.js';
import type { EngineDeps, FeatureEngine, FeatureSpec } from './engine.js';

/** Engine settings that cross to the thread (everything in EngineDeps but the callbacks). */
export type EngineThreadOptions = Omit<EngineDeps, 'readObject' | 'log'>;

/** What the thread tells its owner about the engine it loaded. */
export type EngineInfo = Pick<FeatureEngine, 'id' | 'backend' | 'dim' | 'preferredBatch' | 'input'>;

/** Calls the engine thread serves. */
export interface EngineThreadApi {
  load(req: { spec: FeatureSpec; options: EngineThreadOptions }): EngineInfo;
  /** `count` images of input size, RGB uint8, back to back in `pixels`. */
  embed(req: { pixels: Uint8Array; count: number }): Float32Array;
  dispose(): void;
}

/** Calls the thread makes to its owner. */
export interface EngineHostApi {
  read(req: { url: string; maxBytes?: number }): Uint8Array;
  log(req: { msg: string; extra?: object }): void;
}

export interface ThreadedEngine extends FeatureEngine {
  /** As FeatureEngine's; resolves once the thread has ended (after the batches already queued). */
  dispose(): Promise<void>;
  /** Called once if the thread ends other than by dispose() (crash, out of memory, timeout). */
  onExit(listener: (reason: string) => void): void;
}

export interface ThreadOptionsExtra {
  /**
   * Longest wait for one `embed` call (including the batch ahead of it in the thread's queue),
   * in milliseconds; past it the thread is terminated and every pending call rejects with a
   * retryable error. Default: no limit.
   */
  timeoutMs?: number;
  /** Named in the timeout message, so the reader knows what to change. */
  timeoutSetting?: string;
  /**
   * The thread module serving EngineThreadApi; default engine-thread-main.ts. Set only by code
   * (bench/zero-engine-extractor.ts), never from a request or the environment.
   */
  module?: URL;
}

/** How long a disposed engine's thread may take to free its model before it is terminated. */
const DISPOSE_GRACE_MS = 5_000;

/** Build the engine `spec` asks for in a new worker thread; resolves once it is warmed up. */
export async function loadEngineInThread(
  spec: FeatureSpec,
  deps: EngineDeps,
  extra: ThreadOptionsExtra = {},
): Promise<ThreadedEngine> {
  const { readObject, log, ...options } = deps;
  const thread = await startThread<EngineThreadApi, EngineHostApi>({
    name: 'feature engine thread',
    module: extra.module ?? new URL('./engine-thread-main.ts', import.meta.url),
    host: {
      read: async ({ url, maxBytes }) => readObject(url, maxBytes),
      log: ({ msg, extra: fields }) => log?.(msg, fields),
    },
    // An idle engine must not keep the process (or a test) alive.
    unrefWhenIdle: true,
  });
  let info: EngineInfo;
  try {
    info = await thread.call('load', { spec, options });
  } catch (err) {
    await thread.close();
    throw err;
  }
  /** Set by dispose(): the thread's end. */
  let closed: Promise<void> | undefined;
  return {
    ...info,
    embed(images) {
      if (closed)
        return Promise.reject(
          new InternalError(`feature engine ${info.id} used after dispose()`, { permanent: false }),
        );
      const per = info.input.width * info.input.height * 3;
      const pixels = new Uint8Array(images.length * per);
      for (const [i, img] of images.entries()) {
        if (img.length !== per)
          return Promise.reject(new InternalError(`${info.id}: image ${i} has ${img.length} bytes, expected ${per}`));
        pixels.set(img, i * per);
      }
      return thread.call(
        'embed',
        { pixels, count: images.length },
        {
          transfer: [pixels.buffer],
          timeoutMs: extra.timeoutMs,
          timeoutSetting: extra.timeoutSetting,
          what: `a batch of ${images.length}`,
        },
      );
    },
    dispose() {
      if (closed) return closed;
      // Let the thread free the model after the batches already queued, then end it either way.
      // Resolves once the thread has ended: a process that exits while a batch is still inside
      // the engine's native code aborts ("terminate called after throwing an instance of
      // 'Napi::Error'"), so shutdown waits for this (worker-kit.ts, beforeExit).
      closed = new Promise<void>((resolve) => {
        let timer: NodeJS.Timeout | undefined;
        const close = () => {
          clearTimeout(timer);
          thread.close().then(resolve, resolve);
        };
        timer = setTimeout(close, DISPOSE_GRACE_MS);
        timer.unref();
        thread.call('dispose', undefined).then(close, close);
      });
      return closed;
    },
    onExit(listener) {
      thread.onExit(listener);
    },
  };
}
