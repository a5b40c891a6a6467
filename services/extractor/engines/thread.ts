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
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import {
  BadRequestError,
  DeepfeatError,
  ImageError,
  ModelError,
  NotFoundError,
  StorageError,
  errorMessage,
  type ErrorCode,
} from '../../../shared/errors.js';
import type { EngineDeps, FeatureEngine, FeatureSpec } from './engine.js';

/** Marks the engine thread, so other threads importing this module do nothing. */
const ROLE = 'deepfeat-engine';

/** Engine settings that cross to the thread (everything in EngineDeps but the callbacks). */
type ThreadOptions = Omit<EngineDeps, 'readObject' | 'log'>;

interface WireError {
  name: string;
  message: string;
  code?: ErrorCode;
  permanent?: boolean;
}

type ToThread =
  | { type: 'load'; spec: FeatureSpec; options: ThreadOptions }
  | { type: 'embed'; id: number; pixels: Uint8Array; count: number }
  | { type: 'read-result'; id: number; bytes?: Uint8Array; error?: WireError }
  | { type: 'dispose' };

type FromThread =
  | { type: 'ready'; engine: { id: string; backend: string; dim: number; preferredBatch: number; input: { width: number; height: number } } }
  | { type: 'load-error'; error: WireError }
  | { type: 'embedded'; id: number; rows?: Float32Array; error?: WireError }
  | { type: 'read'; id: number; url: string }
  | { type: 'log'; msg: string; extra?: object };

function toWire(err: unknown): WireError {
  if (err instanceof DeepfeatError) return { name: err.name, message: err.message, code: err.code, permanent: err.permanent };
  return { name: err instanceof Error ? err.name : 'Error', message: errorMessage(err) };
}

/** The error class on this side of the thread boundary, so retry decisions stay right. */
function fromWire(e: WireError): Error {
  switch (e.code) {
    case 'MODEL_INVALID':
      return new ModelError(e.message);
    case 'BAD_REQUEST':
      return new BadRequestError(e.message);
    case 'NOT_FOUND':
      return new NotFoundError(e.message);
    case 'IMAGE_INVALID':
      return new ImageError(e.message);
    case 'STORAGE_PERMANENT':
    case 'STORAGE_TRANSIENT':
      return new StorageError(e.message, { permanent: e.code === 'STORAGE_PERMANENT' });
    case undefined:
      return Object.assign(new Error(e.message), { name: e.name });
    default:
      return new DeepfeatError(e.code, e.message, { permanent: e.permanent });
  }
}

export interface ThreadedEngine extends FeatureEngine {
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
}

/** Build the engine `spec` asks for in a new worker thread; resolves once it is warmed up. */
export function loadEngineInThread(spec: FeatureSpec, deps: EngineDeps, extra: ThreadOptionsExtra = {}): Promise<ThreadedEngine> {
  const { readObject, log, ...options } = deps;
  const worker = new Worker(new URL('./engine-thread-entry.mjs', import.meta.url), { workerData: { role: ROLE } });
  const pending = new Map<number, { resolve: (rows: Float32Array) => void; reject: (err: Error) => void }>();
  let nextId = 1;
  let disposed = false;
  let dead: string | undefined;
  const exitListeners: Array<(reason: string) => void> = [];
  // The thread keeps the process alive only while it has work: an idle engine must not stop a
  // process (or a test) from exiting.
  const busy = () => worker.ref();
  const idleIfDone = () => {
    if (pending.size === 0) worker.unref();
  };

  return new Promise<ThreadedEngine>((resolveLoad, rejectLoad) => {
    let loaded = false;
    const die = (reason: string) => {
      if (dead !== undefined) return;
      dead = reason;
      const err = new DeepfeatError('INTERNAL', `feature engine thread ended: ${reason}`, { permanent: false });
      for (const p of pending.values()) p.reject(err);
      pending.clear();
      if (!loaded) rejectLoad(err);
      else if (!disposed) for (const l of exitListeners) l(reason);
    };
    worker.on('error', (err) => die(errorMessage(err)));
    worker.on('exit', (code) => die(disposed ? 'disposed' : `exit code ${code}`));
    worker.on('message', (m: FromThread) => {
      switch (m.type) {
        case 'log':
          log?.(m.msg, m.extra);
          break;
        case 'read':
          readObject(m.url).then(
            (bytes) => worker.postMessage({ type: 'read-result', id: m.id, bytes } satisfies ToThread),
            (err) => worker.postMessage({ type: 'read-result', id: m.id, error: toWire(err) } satisfies ToThread),
          );
          break;
        case 'load-error':
          loaded = true; // settled: the exit that follows is not a crash to report
          disposed = true;
          rejectLoad(fromWire(m.error));
          void worker.terminate();
          break;
        case 'ready': {
          loaded = true;
          idleIfDone();
          const info = m.engine;
          const engine: ThreadedEngine = {
            id: info.id,
            backend: info.backend,
            dim: info.dim,
            preferredBatch: info.preferredBatch,
            input: info.input,
            embed(images) {
              if (disposed) return Promise.reject(new DeepfeatError('INTERNAL', `feature engine ${info.id} used after dispose()`));
              if (dead !== undefined) return Promise.reject(new DeepfeatError('INTERNAL', `feature engine thread ended: ${dead}`, { permanent: false }));
              const per = info.input.width * info.input.height * 3;
              const pixels = new Uint8Array(images.length * per);
              images.forEach((img, i) => {
                if (img.length !== per) throw new DeepfeatError('INTERNAL', `${info.id}: image ${i} has ${img.length} bytes, expected ${per}`);
                pixels.set(img, i * per);
              });
              const id = nextId++;
              busy();
              return new Promise<Float32Array>((resolve, reject) => {
                const timer = extra.timeoutMs === undefined ? undefined : setTimeout(() => {
                  const setting = extra.timeoutSetting ? ` (${extra.timeoutSetting})` : '';
                  die(`no answer to a batch of ${images.length} within ${extra.timeoutMs! / 1000} s${setting}`);
                  void worker.terminate();
                }, extra.timeoutMs);
                timer?.unref();
                const settle = () => clearTimeout(timer);
                pending.set(id, {
                  resolve: (rows) => (settle(), resolve(rows)),
                  reject: (err) => (settle(), reject(err)),
                });
                worker.postMessage({ type: 'embed', id, pixels, count: images.length } satisfies ToThread, [pixels.buffer]);
              });
            },
            dispose() {
              if (disposed) return;
              disposed = true;
              worker.postMessage({ type: 'dispose' } satisfies ToThread);
              // The thread exits by itself after disposing; make sure it does.
              setTimeout(() => void worker.terminate(), 5_000).unref();
            },
            onExit(listener) {
              exitListeners.push(listener);
            },
          };
          resolveLoad(engine);
          break;
        }
        case 'embedded': {
          const p = pending.get(m.id);
          pending.delete(m.id);
          if (!p) break;
          idleIfDone();
          if (m.rows) p.resolve(m.rows);
          else p.reject(fromWire(m.error ?? { name: 'Error', message: 'engine thread returned nothing' }));
          break;
        }
      }
    });
    worker.postMessage({ type: 'load', spec, options } satisfies ToThread);
  });
}

// ───────────────────────────── the thread side ─────────────────────────────

async function serve(port: NonNullable<typeof parentPort>): Promise<void> {
  const { loadEngine } = await import('./index.js');
  const reads = new Map<number, { resolve: (b: Uint8Array) => void; reject: (e: Error) => void }>();
  let nextRead = 1;
  let engine: FeatureEngine | undefined;
  // Embed requests run one at a time, in order: an engine is not re-entrant.
  let queue: Promise<void> = Promise.resolve();
  const send = (m: FromThread, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);

  port.on('message', (m: ToThread) => {
    switch (m.type) {
      case 'load': {
        const deps: EngineDeps = {
          ...m.options,
          log: (msg, extra) => send({ type: 'log', msg, extra }),
          readObject: (url) =>
            new Promise((resolve, reject) => {
              const id = nextRead++;
              reads.set(id, { resolve, reject });
              send({ type: 'read', id, url });
            }),
        };
        loadEngine(m.spec, deps).then(
          (e) => {
            engine = e;
            send({ type: 'ready', engine: { id: e.id, backend: e.backend, dim: e.dim, preferredBatch: e.preferredBatch, input: e.input } });
          },
          (err) => send({ type: 'load-error', error: toWire(err) }),
        );
        break;
      }
      case 'read-result': {
        const r = reads.get(m.id);
        reads.delete(m.id);
        if (m.bytes) r?.resolve(m.bytes);
        else r?.reject(fromWire(m.error ?? { name: 'Error', message: 'read failed' }));
        break;
      }
      case 'embed': {
        const e = engine!;
        const per = e.input.width * e.input.height * 3;
        const images = Array.from({ length: m.count }, (_, i) => m.pixels.subarray(i * per, (i + 1) * per));
        queue = queue.then(() =>
          e.embed(images).then(
            (rows) => {
              try {
                send({ type: 'embedded', id: m.id, rows }, [rows.buffer as ArrayBuffer]);
              } catch {
                // A buffer owned by native code cannot be transferred: send a copy.
                send({ type: 'embedded', id: m.id, rows: rows.slice() });
              }
            },
            (err) => send({ type: 'embedded', id: m.id, error: toWire(err) }),
          ),
        );
        break;
      }
      case 'dispose':
        void queue.then(() => {
          engine?.dispose();
          port.close();
        });
        break;
    }
  });
}
if (!isMainThread && parentPort && (workerData as { role?: string } | null)?.role === ROLE) void serve(parentPort);
