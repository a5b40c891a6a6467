/**
 * Runs the L2 selection and fit in a worker thread. A fit takes seconds to minutes of pure CPU;
 * on the main thread it would stop BullMQ from renewing the job's lock, and the job would be
 * taken for stalled and run again elsewhere. Large fits spread each objective evaluation over
 * all cores (ObjectivePool), with the same result as on one.
 *
 * Bounded like the extractor's engine: if the fit thread or one of its helpers dies (a crash,
 * out of memory) the fit fails at once, and if it has no answer within `timeoutMs`
 * (DEEPFEAT_FIT_TIMEOUT) its threads are ended; either way with a retryable error, so BullMQ
 * runs the job again instead of it holding its lock forever. The pool's helpers are started
 * here, on the caller's thread, whose event loop stays free to see them die (objective-pool.ts).
 * The fit thread's side is fit-thread-main.ts.
 */
import { availableParallelism } from 'node:os';
import type { Transferable } from 'node:worker_threads';
import { startThread, type ThreadClient } from '../../shared/thread-call.js';
import { DEFAULT_LAMBDAS, selectLambda, type SelectInput, type SelectResult } from './lambda-selection.js';
import { objectiveChunks } from './logistic-objective.js';
import { ObjectivePool, type PoolHandle } from './objective-pool.js';

/** Calls the fit thread serves. */
export interface FitThreadApi {
  /** selectLambdaAndFit, its objective spread over the pool's helpers when `pool` is given. */
  fit(req: { input: Omit<SelectInput, 'runner'>; pool?: PoolHandle }): SelectResult;
}

export interface FitOptions {
  /** Longest time the fit may take, in milliseconds; past it its threads are ended. Default: no limit. */
  timeoutMs?: number;
  /** Named in the timeout message (DEEPFEAT_FIT_TIMEOUT). */
  timeoutSetting?: string;
  /**
   * Helpers to use instead of the ones this function would start (and close) for a large fit;
   * the caller closes it. The pool is handed over to the fit thread, so it serves one fit.
   */
  pool?: ObjectivePool;
  /**
   * 'auto' (default): a small fit runs on the caller's thread (IN_PROCESS_MAX_WORK); 'always':
   * in the fit thread whatever its size (tests of the thread itself).
   */
  thread?: 'auto' | 'always';
}

/**
 * Most work (rows × features × classes × fits, where fits = candidate lambdas + the refit, five
 * times that for k-fold selection) run on the caller's thread instead of a new fit thread.
 * Measured: a selection over 717 + 102 rows × 816 features × 2 classes × 6 fits (8·10⁶ units)
 * takes about 0.8 s on one core, so this bound blocks the event loop for about a second at most —
 * well inside the 15 s job lock — and saves starting a thread and loading its modules for the
 * small fits that dominate reruns served from the feature cache.
 */
const IN_PROCESS_MAX_WORK = 10_000_000;

function fitWork(input: SelectInput): number {
  const fits = ((input.lambdas?.length ?? DEFAULT_LAMBDAS.length) + 1) * (input.selection === 'auto' ? 5 : 1);
  return (input.train.n + input.val.n) * input.d * input.k * fits;
}

/**
 * Below this much work per objective evaluation (rows × features × classes; 2·10⁶ is about 2 ms
 * on one core), waking the helper threads costs more than they save.
 */
const POOL_MIN_WORK = 2_000_000;

/** Helpers for a fit of this size: cores - 1 (the fit thread computes chunks too), at most 7 (8 chunks). */
function helpersFor(input: SelectInput): number {
  const cores = availableParallelism();
  const worthIt = input.train.n * input.d * input.k >= POOL_MIN_WORK && objectiveChunks(input.train.n).length > 1;
  return cores > 1 && worthIt ? Math.min(cores - 1, 7) : 0;
}

/**
 * Runs selectLambdaAndFit in a new thread. Feature buffers are shared (SharedArrayBuffer) or
 * transferred (ArrayBuffer): do not change them meanwhile, nor use transferred ones after.
 */
export async function fitInThread(input: SelectInput, options: FitOptions = {}): Promise<SelectResult> {
  if (!options.pool && options.thread !== 'always' && fitWork(input) <= IN_PROCESS_MAX_WORK) {
    return selectLambda(input);
  }
  const helpers = options.pool ? 0 : helpersFor(input);
  // Started alongside the fit thread. Without its helpers a fit still runs, on one thread:
  // slower, never wrong.
  const ownPoolStart = helpers > 0 ? ObjectivePool.create(helpers).catch(() => undefined) : Promise.resolve(undefined);
  let thread: ThreadClient<FitThreadApi> | undefined;
  try {
    thread = await startThread<FitThreadApi>({
      name: 'fit thread',
      module: new URL('./fit-thread-main.ts', import.meta.url),
    });
    const pool = options.pool ?? (await ownPoolStart);
    const handed = pool?.handOver();
    // The feature matrices reach the thread without a copy: shared, or transferred.
    const buffers = [...new Set([input.train.X.buffer, input.val.X.buffer])].filter(
      (b): b is ArrayBuffer => b instanceof ArrayBuffer,
    );
    const { runner: _local, ...plain } = input;
    return await thread.call(
      'fit',
      { input: plain, pool: handed?.handle },
      {
        transfer: [...buffers, ...(handed?.transfer ?? [])] as Transferable[],
        timeoutMs: options.timeoutMs,
        timeoutSetting: options.timeoutSetting,
        what: `the fit (${input.train.n} + ${input.val.n} rows × ${input.d} features, ${input.k} classes)`,
      },
    );
  } finally {
    await thread?.close();
    await (await ownPoolStart)?.close();
  }
}
