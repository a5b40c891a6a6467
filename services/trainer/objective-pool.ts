/**
 * Threads that share the trainer's objective: each evaluation's row chunks (logreg.ts
 * objectiveChunks) are taken from a shared counter by the calling thread and the pool's
 * threads, each writing its chunk's loss and gradient into shared memory; the caller then sums
 * them in chunk order, so the result does not depend on how many threads ran.
 *
 * The caller is synchronous (L-BFGS), so it hands out work and waits with Atomics on a small
 * shared control array, never through the event loop. Threads are told about a problem by a
 * message (bind), acknowledge it through the control array, then serve evaluations until the
 * caller binds another problem or closes the pool.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { objectiveChunk, type ChunkRunner, type LogisticProblem } from './logreg.js';

/** Slots of the shared control array. */
const GEN = 0; // bumped to start an evaluation (or to make threads leave their loop)
const NEXT = 1; // next chunk index to take
const DONE = 2; // chunks finished in this evaluation
const CMD = 3; // RUN or LEAVE
const ACK = 4; // threads that have taken the latest bind
/** Marks this module's own threads: other threads that import it (the fit thread) must not serve. */
const ROLE = 'deepfeat-objective-pool';
const RUN = 1;
const LEAVE = 2;

interface BindMessage {
  type: 'bind';
  ctrl: SharedArrayBuffer;
  X: { buffer: SharedArrayBuffer; offset: number; length: number };
  y: SharedArrayBuffer;
  n: number;
  d: number;
  k: number;
  chunks: Array<[number, number]>;
  theta: SharedArrayBuffer;
  losses: SharedArrayBuffer;
  partials: SharedArrayBuffer;
}

function sharedCopy<T extends Float32Array | Int32Array>(a: T): T {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const ctor = a.constructor as { new (b: SharedArrayBuffer): T; BYTES_PER_ELEMENT: number };
  const out = new ctor(new SharedArrayBuffer(a.length * ctor.BYTES_PER_ELEMENT));
  out.set(a);
  return out;
}

export class ObjectivePool {
  readonly threads: number;
  readonly #workers: Worker[];
  readonly #ctrl = new Int32Array(new SharedArrayBuffer(8 * Int32Array.BYTES_PER_ELEMENT));
  #bound = false;

  private constructor(workers: Worker[]) {
    this.#workers = workers;
    this.threads = workers.length;
  }

  /** Starts `threads` helper threads (the caller computes chunks too). */
  static async create(threads: number): Promise<ObjectivePool> {
    const workers = Array.from({ length: threads }, () => new Worker(new URL('./objective-pool-entry.mjs', import.meta.url), { workerData: { role: ROLE } }));
    try {
      await Promise.all(
        workers.map(
          (w) =>
            new Promise<void>((resolve, reject) => {
              w.once('message', (m: { type?: string }) => (m.type === 'ready' ? resolve() : reject(new Error('objective thread sent no ready'))));
              w.once('error', reject);
              w.once('exit', (code) => reject(new Error(`objective thread exited with code ${code}`)));
            }),
        ),
      );
    } catch (err) {
      await Promise.all(workers.map((w) => w.terminate()));
      throw err;
    }
    for (const w of workers) w.removeAllListeners('exit');
    return new ObjectivePool(workers);
  }

  /** A ChunkRunner for this problem: usable as FitInput.runner / SelectInput.runner. */
  bind = (problem: LogisticProblem, chunks: Array<[number, number]>): ChunkRunner => {
    this.#leave();
    const { n, d, k } = problem;
    const len = k * d + k;
    const X = sharedCopy(problem.X);
    const y = sharedCopy(problem.y);
    const theta = new Float64Array(new SharedArrayBuffer(len * 8));
    const losses = new Float64Array(new SharedArrayBuffer(chunks.length * 8));
    const partials = new Float64Array(new SharedArrayBuffer(chunks.length * len * 8));
    const ctrl = this.#ctrl;
    Atomics.store(ctrl, ACK, 0);
    const msg: BindMessage = {
      type: 'bind',
      ctrl: ctrl.buffer as SharedArrayBuffer,
      X: { buffer: X.buffer as SharedArrayBuffer, offset: X.byteOffset, length: X.length },
      y: y.buffer as SharedArrayBuffer,
      n,
      d,
      k,
      chunks,
      theta: theta.buffer as SharedArrayBuffer,
      losses: losses.buffer as SharedArrayBuffer,
      partials: partials.buffer as SharedArrayBuffer,
    };
    for (const w of this.#workers) w.postMessage(msg);
    for (let a = Atomics.load(ctrl, ACK); a < this.threads; a = Atomics.load(ctrl, ACK)) Atomics.wait(ctrl, ACK, a, 30_000);
    this.#bound = true;
    const Z = new Float64Array(Math.max(...chunks.map(([s, e]) => e - s)) * k);
    return {
      run: (thetaIn, lossesOut, partialsOut) => {
        theta.set(thetaIn);
        Atomics.store(ctrl, DONE, 0);
        Atomics.store(ctrl, NEXT, 0);
        Atomics.store(ctrl, CMD, RUN);
        Atomics.add(ctrl, GEN, 1);
        Atomics.notify(ctrl, GEN);
        // The caller takes chunks too.
        for (let c = Atomics.add(ctrl, NEXT, 1); c < chunks.length; c = Atomics.add(ctrl, NEXT, 1)) {
          const [s, e] = chunks[c]!;
          losses[c] = objectiveChunk(X, y, s, e, d, k, theta, 1 / n, Z, partials.subarray(c * len, (c + 1) * len));
          Atomics.add(ctrl, DONE, 1);
        }
        for (let done = Atomics.load(ctrl, DONE); done < chunks.length; done = Atomics.load(ctrl, DONE)) Atomics.wait(ctrl, DONE, done, 1_000);
        lossesOut.set(losses);
        partialsOut.set(partials);
      },
    };
  };

  /** Makes bound threads leave their evaluation loop (so they can take a new bind). */
  #leave(): void {
    if (!this.#bound) return;
    Atomics.store(this.#ctrl, CMD, LEAVE);
    Atomics.add(this.#ctrl, GEN, 1);
    Atomics.notify(this.#ctrl, GEN);
    this.#bound = false;
  }

  async close(): Promise<void> {
    this.#leave();
    await Promise.all(this.#workers.map((w) => w.terminate()));
  }
}

// ───────────────────────────── the thread side ─────────────────────────────

function serveBind(m: BindMessage): void {
  const ctrl = new Int32Array(m.ctrl);
  const X = new Float32Array(m.X.buffer, m.X.offset, m.X.length);
  const y = new Int32Array(m.y);
  const theta = new Float64Array(m.theta);
  const losses = new Float64Array(m.losses);
  const partials = new Float64Array(m.partials);
  const { n, d, k, chunks } = m;
  const len = k * d + k;
  const Z = new Float64Array(Math.max(...chunks.map(([s, e]) => e - s)) * k);
  let gen = Atomics.load(ctrl, GEN);
  Atomics.add(ctrl, ACK, 1);
  Atomics.notify(ctrl, ACK);
  for (;;) {
    Atomics.wait(ctrl, GEN, gen);
    gen = Atomics.load(ctrl, GEN);
    if (Atomics.load(ctrl, CMD) === LEAVE) return;
    for (let c = Atomics.add(ctrl, NEXT, 1); c < chunks.length; c = Atomics.add(ctrl, NEXT, 1)) {
      const [s, e] = chunks[c]!;
      losses[c] = objectiveChunk(X, y, s, e, d, k, theta, 1 / n, Z, partials.subarray(c * len, (c + 1) * len));
      Atomics.add(ctrl, DONE, 1);
      Atomics.notify(ctrl, DONE);
    }
  }
}

if (!isMainThread && parentPort && (workerData as { role?: string } | null)?.role === ROLE) {
  const port = parentPort;
  port.on('message', (m: BindMessage) => {
    if (m.type === 'bind') serveBind(m);
  });
  port.postMessage({ type: 'ready' });
}
