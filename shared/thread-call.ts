/**
 * The one way deepfeat runs work in a worker thread: typed calls in both directions over a
 * message port, errors carried as `shared/errors.ts` data (class, code, `permanent`, stack), and
 * a thread's end — crash, out of memory, a call with no answer in time — handled once: every
 * pending call rejects with a retryable InternalError naming the thread and the reason, later
 * calls fail at once, and the owner hears about it (`onExit`) to start a new thread.
 *
 * The caller side is `startThread(…)`; the thread side is `serveThread(…)`, called by a thread
 * module when it is loaded. Thread modules run only inside their thread (through
 * `thread-entry.mjs`), so importing a client module starts nothing and serves nothing.
 * Nothing here imports more than node:worker_threads and the error classes.
 */
import {
  Worker,
  parentPort,
  workerData,
  type MessagePort,
  type ResourceLimits,
  type Transferable,
} from 'node:worker_threads';
import { InternalError, fromWireError, toWireError, type WireError } from './errors.js';

/**
 * The calls one side serves, as an interface of one-argument methods, e.g.
 * `interface EngineApi { embed(req: { pixels: Uint8Array }): Float32Array }`. Results are the
 * plain values; handlers may return them wrapped in a promise or in `transfer(…)`.
 */
export type Api = object;
type Method<A> = { [M in keyof A]: A[M] extends (req: never) => unknown ? M : never }[keyof A] & string;
export type Req<A, M extends keyof A> = A[M] extends (req: infer R) => unknown ? R : never;
export type Res<A, M extends keyof A> = A[M] extends (req: never) => infer R ? Awaited<R> : never;
export type Handlers<A> = {
  [M in Method<A>]: (
    req: Req<A, M>,
  ) => Res<A, M> | Transferred<Res<A, M>> | Promise<Res<A, M> | Transferred<Res<A, M>>>;
};

/** A result whose buffers move to the other thread instead of being copied. */
export class Transferred<T> {
  constructor(
    readonly value: T,
    readonly list: readonly Transferable[],
  ) {}
}
export const transfer = <T>(value: T, list: readonly Transferable[]): Transferred<T> => new Transferred(value, list);

type Wire =
  | { t: 'ready' }
  | { t: 'call'; id: number; method: string; req: unknown }
  | { t: 'ok'; id: number; res: unknown }
  | { t: 'err'; id: number; error: WireError };

/** A worker, the thread's parentPort, or either end of a MessageChannel. */
export interface PortLike {
  postMessage(message: unknown, transferList?: readonly Transferable[]): void;
  on(event: 'message', listener: (message: unknown) => void): unknown;
}

/** What is not marked for transfer is copied (structured clone); one that cannot move is copied too. */
function post(port: PortLike, message: Wire, list: readonly Transferable[] = []): void {
  if (list.length === 0) {
    port.postMessage(message);
    return;
  }
  try {
    port.postMessage(message, list);
  } catch {
    // A buffer owned by native code (ONNX Runtime's output, say) cannot be transferred.
    port.postMessage(message);
  }
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer?: NodeJS.Timeout;
}

/**
 * One side of a call channel: serves `Local` to the other side and calls `Remote` on it. It knows
 * nothing of threads; `ThreadClient` adds what a thread's end means for its calls.
 */
export class Channel<Remote extends Api, Local extends Api = object> {
  readonly #port: PortLike;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #closed: Error | undefined;
  /** Told when the number of unanswered calls changes between zero and more. */
  onBusyChange: (busy: boolean) => void = () => undefined;

  constructor(port: PortLike, handlers: Partial<Handlers<Local>> = {}) {
    this.#port = port;
    port.on('message', (m) => this.#receive(m as Wire, handlers as Record<string, (req: unknown) => unknown>));
  }

  get pending(): number {
    return this.#pending.size;
  }

  /**
   * Calls `method` on the other side. `transfer` moves buffers instead of copying them;
   * `onTimeout` runs if no answer came within `timeoutMs` (the call stays pending: the owner
   * decides what a late answer means, usually by closing the channel).
   */
  call<M extends Method<Remote>>(
    method: M,
    req: Req<Remote, M>,
    options: { transfer?: readonly Transferable[]; timeoutMs?: number; onTimeout?: () => void } = {},
  ): Promise<Res<Remote, M>> {
    if (this.#closed) return Promise.reject(this.#closed);
    const id = this.#nextId++;
    return new Promise<Res<Remote, M>>((resolve, reject) => {
      const pending: Pending = { resolve: resolve as (v: unknown) => void, reject };
      if (options.timeoutMs !== undefined && options.onTimeout) {
        pending.timer = setTimeout(options.onTimeout, options.timeoutMs);
        pending.timer.unref(); // a deadline alone must not keep a process alive
      }
      this.#pending.set(id, pending);
      if (this.#pending.size === 1) this.onBusyChange(true);
      post(this.#port, { t: 'call', id, method, req }, options.transfer);
    });
  }

  /** Calls `method` and expects no answer (a log line, a signal); id 0 means "do not reply". */
  notify<M extends Method<Remote>>(method: M, req: Req<Remote, M>, transferList: readonly Transferable[] = []): void {
    if (!this.#closed) post(this.#port, { t: 'call', id: 0, method, req }, transferList);
  }

  /** Rejects every pending call and every later one with `err`. */
  close(err: Error): void {
    this.#closed ??= err;
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    if (pending.length > 0) this.onBusyChange(false);
  }

  #settle(id: number): Pending | undefined {
    const p = this.#pending.get(id);
    if (!p) return undefined;
    this.#pending.delete(id);
    clearTimeout(p.timer);
    if (this.#pending.size === 0) this.onBusyChange(false);
    return p;
  }

  #receive(m: Wire, handlers: Record<string, (req: unknown) => unknown>): void {
    switch (m?.t) {
      case 'ok':
        this.#settle(m.id)?.resolve(m.res);
        break;
      case 'err':
        this.#settle(m.id)?.reject(fromWireError(m.error));
        break;
      case 'call': {
        const { id, method } = m;
        const handler = Object.hasOwn(handlers, method) ? handlers[method] : undefined;
        const answer = async () => {
          if (!handler) throw new InternalError(`no handler for thread call "${method}"`);
          return handler(m.req);
        };
        answer().then(
          (res) => {
            if (id === 0) return;
            if (res instanceof Transferred) post(this.#port, { t: 'ok', id, res: res.value }, res.list);
            else post(this.#port, { t: 'ok', id, res });
          },
          (err) => {
            if (id !== 0) post(this.#port, { t: 'err', id, error: toWireError(err) });
          },
        );
        break;
      }
    }
  }
}

/** The bootstrap every thread starts from: it registers tsx, then imports the thread module. */
const THREAD_ENTRY = new URL('./thread-entry.mjs', import.meta.url);

export interface StartOptions<Host extends Api> {
  /** What the thread is called in messages and logs, e.g. 'feature engine thread'. */
  name: string;
  /** The thread module (it calls `serveThread`); runs only inside the new thread. */
  module: URL;
  /** Data the thread module reads with `threadData()`. */
  data?: unknown;
  /** Buffers or ports in `data` that move to the thread. */
  transferList?: readonly Transferable[];
  /** Calls the thread may make to this side (reading storage, logging). */
  host?: Partial<Handlers<Host>>;
  /** Heap limits of the thread: past them it dies (out of memory) and its calls fail, not the process. */
  resourceLimits?: ResourceLimits;
  /**
   * Let the process exit while the thread has no call to answer: an idle engine must not keep a
   * worker process (or a test) alive.
   */
  unrefWhenIdle?: boolean;
}

export interface CallOptions {
  /** Buffers in the request that move to the thread instead of being copied. */
  transfer?: readonly Transferable[];
  /**
   * Longest wait for the answer, in milliseconds (including calls queued ahead of it in the
   * thread). Past it the thread is terminated: work that overran its bound is not trusted to
   * end, and the next caller gets a fresh thread.
   */
  timeoutMs?: number;
  /** The setting that sets `timeoutMs`, named in the message so the reader knows what to change. */
  timeoutSetting?: string;
  /** The work, in the timeout message: 'a batch of 24'. Default: the method name. */
  what?: string;
}

/** The caller's handle on one worker thread; `startThread` makes one and waits until it serves. */
export class ThreadClient<Remote extends Api, Host extends Api = object> {
  readonly name: string;
  /** Settles when the thread serves (resolves) or ends first (rejects, retryable). */
  readonly ready: Promise<void>;
  readonly #worker: Worker;
  readonly #channel: Channel<Remote, Host>;
  readonly #exitListeners: Array<(reason: string) => void> = [];
  #ended: string | undefined;
  #closing = false;

  constructor(options: StartOptions<Host>) {
    this.name = options.name;
    const worker = new Worker(THREAD_ENTRY, {
      workerData: { module: options.module.href, data: options.data },
      transferList: options.transferList as Transferable[] | undefined,
      ...(options.resourceLimits ? { resourceLimits: options.resourceLimits } : {}),
    });
    this.#worker = worker;
    this.#channel = new Channel<Remote, Host>(worker, options.host);
    if (options.unrefWhenIdle) this.#channel.onBusyChange = (busy) => (busy ? worker.ref() : worker.unref());
    worker.on('error', (err) => this.#end(err.message));
    worker.on('exit', (code) => this.#end(`exit code ${code}`));
    this.ready = new Promise((resolve, reject) => {
      const onMessage = (m: Wire) => {
        if (m?.t !== 'ready') return;
        worker.off('message', onMessage);
        if (options.unrefWhenIdle && this.#channel.pending === 0) worker.unref();
        resolve();
      };
      worker.on('message', onMessage);
      this.onExit((reason) =>
        reject(new InternalError(`${this.name} ended before it was ready: ${reason}`, { permanent: false })),
      );
    });
    this.ready.catch(() => undefined); // observed by startThread; never an unhandled rejection
  }

  /** Why the thread ended, once it has ('closed' after close()). */
  get ended(): string | undefined {
    return this.#ended;
  }

  call<M extends Method<Remote>>(method: M, req: Req<Remote, M>, options: CallOptions = {}): Promise<Res<Remote, M>> {
    const { timeoutMs } = options;
    const onTimeout = () => {
      const setting = options.timeoutSetting ? ` (${options.timeoutSetting})` : '';
      this.kill(`no answer to ${options.what ?? method} within ${timeoutMs! / 1000} s${setting}`);
    };
    return this.#channel.call(method, req, { transfer: options.transfer, timeoutMs, onTimeout });
  }

  notify<M extends Method<Remote>>(method: M, req: Req<Remote, M>, transferList?: readonly Transferable[]): void {
    this.#channel.notify(method, req, transferList);
  }

  /** Called once if the thread ends other than by close(): crash, out of memory, kill(). */
  onExit(listener: (reason: string) => void): void {
    this.#exitListeners.push(listener);
  }

  /** Ends the thread as a failure: pending calls reject (retryable), exit listeners hear `reason`. */
  kill(reason: string): void {
    this.#end(reason);
    void this.#worker.terminate();
  }

  /** Ends the thread as planned: pending calls reject, exit listeners are not told. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#end('closed');
    await this.#worker.terminate();
  }

  /** The thread is gone (or going) for `reason`; only the first reason counts. */
  #end(reason: string): void {
    if (this.#ended !== undefined) return;
    this.#ended = reason;
    this.#channel.close(new InternalError(`${this.name} ended: ${reason}`, { permanent: false }));
    if (!this.#closing) for (const l of this.#exitListeners) l(reason);
  }
}

/**
 * Starts `options.module` in a new worker thread and resolves once it serves (its
 * `serveThread` ran); rejects with a retryable InternalError if the thread ends first.
 */
export async function startThread<Remote extends Api, Host extends Api = object>(
  options: StartOptions<Host>,
): Promise<ThreadClient<Remote, Host>> {
  const client = new ThreadClient<Remote, Host>(options);
  await client.ready;
  return client;
}

// ─────────────────────────────── the thread side ───────────────────────────────

/** `data` given to startThread, read inside the thread. */
export function threadData<T>(): T {
  return (workerData as { data: T }).data;
}

/**
 * Serves `handlers` to the thread's owner and tells it the thread is ready; returns the channel
 * for calls back to the owner (`Host`). Only for thread modules (it needs a parent port).
 */
export function serveThread<Local extends Api, Host extends Api = object>(
  handlers: Handlers<Local>,
): Channel<Host, Local> {
  if (!parentPort) throw new InternalError('serveThread() called outside a worker thread');
  const channel = new Channel<Host, Local>(parentPort, handlers);
  parentPort.postMessage({ t: 'ready' } satisfies Wire);
  return channel;
}

/** A channel over one end of a MessageChannel (threads talking to each other, not to their owner). */
export function connect<Remote extends Api, Local extends Api = object>(
  port: MessagePort,
  handlers: Partial<Handlers<Local>> = {},
): Channel<Remote, Local> {
  return new Channel<Remote, Local>(port, handlers);
}
