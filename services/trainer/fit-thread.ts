/**
 * Runs the L2 selection and fit in a worker thread. A fit takes seconds to minutes of pure CPU;
 * on the main thread it would stop BullMQ from renewing the job's lock, and the job would be
 * taken for stalled and run again elsewhere.
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { BadRequestError } from '../../shared/errors.js';
import { selectLambdaAndFit, type SelectInput, type SelectResult } from './logreg.js';

/** Runs selectLambdaAndFit in a new thread. Transfers `input`'s feature buffers: do not use them after. */
export function fitInThread(input: SelectInput): Promise<SelectResult> {
  return new Promise((resolve, reject) => {
    // The entry registers tsx in the thread, then loads this module, which runs the fit below.
    // The feature matrices move to the thread (transferred, not copied): the caller must not use
    // them afterwards.
    const buffers = [...new Set([input.train.X.buffer, input.val.X.buffer])].filter((b): b is ArrayBuffer => b instanceof ArrayBuffer);
    const w = new Worker(new URL('./fit-thread-entry.mjs', import.meta.url), { workerData: input, transferList: buffers });
    w.once('message', (m: { ok: true; result: SelectResult } | { ok: false; error: { message: string; name: string } }) => {
      if (m.ok) resolve(m.result);
      // Errors cross the thread as plain data; keep "bad input" permanent (no retry).
      else reject(m.error.name === 'BadRequestError' ? new BadRequestError(m.error.message) : new Error(m.error.message));
    });
    w.once('error', reject);
    w.once('exit', (code) => {
      if (code !== 0) reject(new Error(`fit thread exited with code ${code}`));
    });
  });
}

if (!isMainThread && parentPort) {
  try {
    const result = selectLambdaAndFit(workerData as SelectInput);
    parentPort.postMessage({ ok: true, result });
  } catch (err) {
    const e = err instanceof Error ? err : new Error(String(err));
    parentPort.postMessage({ ok: false, error: { message: e.message, name: e.name } });
  }
}
