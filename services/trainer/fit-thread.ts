/**
 * Runs the L2 selection and fit in a worker thread. A fit takes seconds to minutes of pure CPU;
 * on the main thread it would stop BullMQ from renewing the job's lock, and the job would be
 * taken for stalled and run again elsewhere. Large fits spread each objective evaluation over
 * all cores (ObjectivePool), with the same result as on one.
 */
import { availableParallelism } from 'node:os';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { BadRequestError } from '../../shared/errors.js';
import { objectiveChunks, selectLambdaAndFit, type SelectInput, type SelectResult } from './logreg.js';
import { ObjectivePool } from './objective-pool.js';

/** Runs selectLambdaAndFit in a new thread. Feature buffers are shared (SharedArrayBuffer) or transferred (ArrayBuffer): do not change them meanwhile, nor use transferred ones after. */
export function fitInThread(input: SelectInput): Promise<SelectResult> {
  return new Promise((resolve, reject) => {
    // The entry registers tsx in the thread, then loads this module, which runs the fit below.
    // The feature matrices reach the thread without a copy: shared, or transferred (then the
    // caller must not use them afterwards).
    const buffers = [...new Set([input.train.X.buffer, input.val.X.buffer])].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
    const w = new Worker(new URL('./fit-thread-entry.mjs', import.meta.url), { workerData: { role: ROLE, input }, transferList: buffers });
    w.once('message', (m: { ok: true; result: SelectResult } | { ok: false; error: { message: string; name: string } }) => {
      if (m.ok === true) resolve(m.result);
      else if (m.ok !== false) reject(new Error(`fit thread sent an unexpected message: ${JSON.stringify(m).slice(0, 200)}`));
      // Errors cross the thread as plain data; keep "bad input" permanent (no retry).
      else reject(m.error.name === 'BadRequestError' ? new BadRequestError(m.error.message) : new Error(m.error.message));
    });
    w.once('error', reject);
    w.once('exit', (code) => {
      if (code !== 0) reject(new Error(`fit thread exited with code ${code}`));
    });
  });
}

/** Marks the fit thread, so other threads importing this module do nothing. */
const ROLE = 'deepfeat-fit';

/**
 * Below this much work per objective evaluation (rows × features × classes; 2·10⁶ is about 2 ms
 * on one core), waking the helper threads costs more than they save.
 */
const POOL_MIN_WORK = 2_000_000;

if (!isMainThread && parentPort && (workerData as { role?: string } | null)?.role === ROLE) {
  const port = parentPort;
  const input = (workerData as { input: SelectInput }).input;
  let pool: ObjectivePool | undefined;
  try {
    const cores = availableParallelism();
    if (cores > 1 && input.train.n * input.d * input.k >= POOL_MIN_WORK && objectiveChunks(input.train.n).length > 1) {
      // The caller computes chunks too: cores - 1 helpers (at most 7: there are at most 8 chunks).
      pool = await ObjectivePool.create(Math.min(cores - 1, 7)).catch(() => undefined);
    }
    const result = selectLambdaAndFit({ ...input, runner: pool?.bind });
    port.postMessage({ ok: true, result, threads: 1 + (pool?.threads ?? 0) });
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    port.postMessage({ ok: false, error: { message: e.message, name: e.name } });
  } finally {
    await pool?.close();
  }
}
