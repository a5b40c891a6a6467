/**
 * Reader/writer locks by name, granted in arrival order, for the embedded S3 server's store. s3rver
 * keeps an object as three files (data, MD5, metadata), so a writer holds its key exclusively while
 * it moves them into place, and a reader shares the key while it reads the metadata and opens the
 * data file. Neither holds it while bytes move to or from a client: a client that stalls must not
 * keep others from a key. Arrival order means a steady stream of readers cannot starve a writer.
 */

export type LockMode = 'shared' | 'exclusive';

interface Waiter {
  readonly mode: LockMode;
  readonly grant: () => void;
}

interface LockState {
  readers: number;
  writer: boolean;
  readonly queue: Waiter[];
}

export class KeyLocks {
  private readonly states = new Map<string, LockState>();

  /** Names with a holder or a waiter; 0 when idle (nothing is kept for names no one uses). */
  get size(): number {
    return this.states.size;
  }

  /**
   * Resolves with `release` once `id` is held in `mode`. If `signal` aborts first the wait ends
   * with its reason and nothing is held. `release` may be called more than once; only the first
   * counts.
   */
  acquire(id: string, mode: LockMode, signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    let state = this.states.get(id);
    if (!state) {
      state = { readers: 0, writer: false, queue: [] };
      this.states.set(id, state);
    }
    const held = state;
    return new Promise((resolve, reject) => {
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        if (mode === 'exclusive') held.writer = false;
        else held.readers -= 1;
        this.drain(id, held);
      };
      const onAbort = () => {
        const index = held.queue.indexOf(waiter);
        if (index < 0) return; // already granted: the caller releases
        held.queue.splice(index, 1);
        this.drain(id, held); // a writer leaving the head may let readers behind it in
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        mode,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(release);
        },
      };
      held.queue.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.drain(id, held);
    });
  }

  /** Runs `work` while holding `id` in `mode`; the lock is released however `work` ends. */
  async run<T>(id: string, mode: LockMode, work: () => Promise<T>): Promise<T> {
    const release = await this.acquire(id, mode);
    try {
      return await work();
    } finally {
      release();
    }
  }

  /** Grants waiters from the head of the queue while they are compatible with the holders. */
  private drain(id: string, state: LockState): void {
    while (state.queue.length > 0) {
      const head = state.queue[0]!;
      if (head.mode === 'exclusive') {
        if (state.writer || state.readers > 0) break;
        state.writer = true;
      } else {
        if (state.writer) break;
        state.readers += 1;
      }
      state.queue.shift();
      head.grant();
    }
    if (!state.writer && state.readers === 0 && state.queue.length === 0 && this.states.get(id) === state) {
      this.states.delete(id);
    }
  }
}
