/**
 * Threads that share the trainer's objective: each evaluation's row chunks (logistic-objective.ts
 * objectiveChunks) are taken from a shared counter by the calling thread and the pool's
 * threads, each writing its chunk's loss and gradient into shared memory; the caller then sums
 * them in chunk order, so the result does not depend on how many threads ran.
 *
 * The caller is synchronous (L-BFGS), so it hands out work and waits with Atomics on a small
 * shared control array, never through the event loop. Threads are told about a problem by a
 * message (bind) on their own port, acknowledge it through the control array, then serve
 * evaluations until the caller binds another problem or lets them go.
 *
 * A helper thread can die (out of memory, a crash); a caller waiting on it would wait forever.
 * So the pool's owner — the thread that created it, whose event loop must stay free — watches
 * its helpers, and on a death marks the control array dead and wakes the caller, which throws a
 * retryable InternalError. That is why fitInThread creates the pool on the trainer's main thread
 * and binds it in the fit thread (`handOver`). A pool bound on the thread that owns it (tests,
 * the benchmark) works the same, but cannot hear of a death while it waits.
 * The helpers' side is objective-pool-thread.ts.
 */
import { MessageChannel, type MessagePort, type Transferable } from 'node:worker_threads';
import { InternalError } from '../../shared/errors.js';
import { connect, startThread, type Channel, type ThreadClient } from '../../shared/thread-call.js';
import { objectiveChunk, type ChunkRunner, type LogisticProblem } from './logistic-objective.js';

/** Slots of the shared control array. */
const GEN = 0; // bumped to start an evaluation (or to make threads leave their loop)
const NEXT = 1; // next chunk index to take
const DONE = 2; // chunks finished in this evaluation
const CMD = 3; // RUN or LEAVE
const ACK = 4; // threads that have taken the latest bind
const DEAD = 5; // 1 once a helper has died; the reason is in the reason buffer
const REASON_LENGTH = 6; // bytes of the reason
const CTRL_SLOTS = 8;
const REASON_BYTES = 256;
export const RUN = 1;
export const LEAVE = 2;
export const SLOTS = { GEN, NEXT, DONE, CMD, ACK } as const;

/** What a helper gets for one problem; its arrays are views of shared memory. */
export interface BindMessage {
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

/** Calls a helper serves on its port (one-way: it answers through the control array). */
export interface PoolThreadApi {
  bind(req: BindMessage): void;
}

/** Everything a thread needs to bind the pool: shared control memory and a port per helper. */
export interface PoolHandle {
  ctrl: SharedArrayBuffer;
  reason: SharedArrayBuffer;
  ports: MessagePort[];
}

function sharedCopy<T extends Float32Array | Int32Array>(a: T): T {
  if (a.buffer instanceof SharedArrayBuffer) return a;
  const ctor = a.constructor as { new (b: SharedArrayBuffer): T; BYTES_PER_ELEMENT: number };
  const out = new ctor(new SharedArrayBuffer(a.length * ctor.BYTES_PER_ELEMENT));
  out.set(a);
  return out;
}

/** The binding side of a pool, in whichever thread runs the fit. */
export class PoolBinder {
  readonly threads: number;
  readonly #ctrl: Int32Array;
  readonly #reason: Uint8Array;
  readonly #helpers: Array<Channel<PoolThreadApi>>;
  #bound = false;

  constructor(handle: PoolHandle) {
    this.#ctrl = new Int32Array(handle.ctrl);
    this.#reason = new Uint8Array(handle.reason);
    this.#helpers = handle.ports.map((p) => connect<PoolThreadApi>(p));
    this.threads = handle.ports.length;
  }

  /** A ChunkRunner for this problem: usable as FitInput.runner / SelectInput.runner. */
  bind = (problem: LogisticProblem, chunks: Array<[number, number]>): ChunkRunner => {
    this.release();
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
    for (const h of this.#helpers) h.notify('bind', msg);
    this.#waitFor(ACK, this.threads);
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
        this.#waitFor(DONE, chunks.length);
        lossesOut.set(losses);
        partialsOut.set(partials);
      },
    };
  };

  /** Lets bound helpers leave their evaluation loop (to take a new bind, or to be closed). */
  release(): void {
    if (!this.#bound) return;
    Atomics.store(this.#ctrl, CMD, LEAVE);
    Atomics.add(this.#ctrl, GEN, 1);
    Atomics.notify(this.#ctrl, GEN);
    this.#bound = false;
  }

  /** Waits until ctrl[slot] reaches `target`; throws (retryable) if a helper died meanwhile. */
  #waitFor(slot: number, target: number): void {
    const ctrl = this.#ctrl;
    for (let v = Atomics.load(ctrl, slot); v < target; v = Atomics.load(ctrl, slot)) {
      if (Atomics.load(ctrl, DEAD) === 1) {
        const reason = new TextDecoder().decode(this.#reason.slice(0, Atomics.load(ctrl, REASON_LENGTH)));
        throw new InternalError(`the fit lost a helper thread: ${reason}`, { permanent: false });
      }
      // The owner notifies this slot on a death; the timeout is only a second line of defence.
      Atomics.wait(ctrl, slot, v, 1_000);
    }
  }
}

export class ObjectivePool {
  readonly threads: number;
  /** The helper threads (their owner's handles). */
  readonly helpers: ReadonlyArray<ThreadClient<object>>;
  readonly #ctrl: Int32Array;
  readonly #reason: Uint8Array;
  #ports: MessagePort[] | undefined;
  #binder: PoolBinder | undefined;

  private constructor(
    helpers: Array<ThreadClient<object>>,
    ports: MessagePort[],
    ctrl: Int32Array,
    reason: Uint8Array,
  ) {
    this.helpers = helpers;
    this.threads = helpers.length;
    this.#ports = ports;
    this.#ctrl = ctrl;
    this.#reason = reason;
    for (const h of helpers) h.onExit((why) => this.#markDead(`${h.name} ended (${why})`));
  }

  /** Starts `threads` helper threads (the caller computes chunks too). */
  static async create(threads: number): Promise<ObjectivePool> {
    const ctrl = new Int32Array(new SharedArrayBuffer(CTRL_SLOTS * Int32Array.BYTES_PER_ELEMENT));
    const reason = new Uint8Array(new SharedArrayBuffer(REASON_BYTES));
    const channels = Array.from({ length: threads }, () => new MessageChannel());
    const started = await Promise.allSettled(
      channels.map((ch, i) =>
        startThread<object>({
          name: `objective pool thread ${i + 1}`,
          module: new URL('./objective-pool-thread.ts', import.meta.url),
          data: { port: ch.port2 },
          transferList: [ch.port2],
        }),
      ),
    );
    const helpers = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      await Promise.all(helpers.map((h) => h.close()));
      throw failed.reason;
    }
    return new ObjectivePool(
      helpers,
      channels.map((ch) => ch.port1),
      ctrl,
      reason,
    );
  }

  /** Objective evaluations started on this pool so far (progress, tests). */
  get evaluations(): number {
    return Atomics.load(this.#ctrl, GEN);
  }

  /** A ChunkRunner for this problem, bound on this thread (see the file comment about deaths). */
  bind = (problem: LogisticProblem, chunks: Array<[number, number]>): ChunkRunner => {
    if (!this.#ports)
      throw new InternalError('objective pool: bind() after handOver(); bind in the thread it was handed to');
    this.#binder ??= new PoolBinder(this.#handle(this.#ports));
    return this.#binder.bind(problem, chunks);
  };

  /**
   * The pool for another thread to bind (pass `handle` with `transfer` in its transfer list);
   * this object keeps watching the helpers and can no longer bind.
   */
  handOver(): { handle: PoolHandle; transfer: Transferable[] } {
    const ports = this.#ports;
    if (!ports || this.#binder)
      throw new InternalError('objective pool: handOver() after bind() or a first handOver()');
    this.#ports = undefined;
    return { handle: this.#handle(ports), transfer: ports };
  }

  async close(): Promise<void> {
    this.#binder?.release();
    await Promise.all(this.helpers.map((h) => h.close()));
  }

  #handle(ports: MessagePort[]): PoolHandle {
    return { ctrl: this.#ctrl.buffer as SharedArrayBuffer, reason: this.#reason.buffer as SharedArrayBuffer, ports };
  }

  /** Tells a waiting binder, in any thread, that a helper is gone: its wait ends with an error. */
  #markDead(reason: string): void {
    if (Atomics.load(this.#ctrl, DEAD) === 1) return;
    const bytes = new TextEncoder().encode(reason).subarray(0, REASON_BYTES);
    this.#reason.set(bytes);
    Atomics.store(this.#ctrl, REASON_LENGTH, bytes.length);
    Atomics.store(this.#ctrl, DEAD, 1);
    Atomics.notify(this.#ctrl, ACK);
    Atomics.notify(this.#ctrl, DONE);
  }
}
