/**
 * Which TensorFlow.js backend this process runs on. The choice is process-wide (TensorFlow.js
 * has one active backend), so every TF.js engine in a process goes through `useBackend`.
 */
import { tf } from './tf.js';
import type { TfjsBackendChoice } from '../../../shared/config.js';
import { ModelError, errorMessage } from '../../../shared/errors.js';

type Log = (msg: string, extra?: object) => void;

/** Native TensorFlow bindings, best first. Optional packages: absent on most hosts. */
const NATIVE_PACKAGES = [
  { pkg: '@tensorflow/tfjs-node-gpu', label: 'tensorflow (GPU)' },
  { pkg: '@tensorflow/tfjs-node', label: 'tensorflow (CPU)' },
] as const;

/** One promise per choice, so concurrent loads initialise a backend once. */
const chosen = new Map<TfjsBackendChoice, Promise<string>>();

/**
 * Make TensorFlow.js run on the chosen backend and return its label for logs
 * ('tensorflow (GPU)', 'tensorflow (CPU)', 'wasm' or 'cpu').
 *
 * 'auto' tries @tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node, then WebAssembly, then plain
 * JS; an explicit choice fails with a ModelError rather than silently running somewhere slower.
 * TensorFlow.js has one active backend per process: the last call wins, so a process should use
 * one choice for all its engines.
 */
export function useBackend(choice: TfjsBackendChoice = 'auto', log?: Log): Promise<string> {
  let p = chosen.get(choice);
  if (!p) {
    p = pickBackend(choice, log);
    chosen.set(choice, p);
    p.catch(() => chosen.delete(choice)); // a failed choice may be retried
  }
  return p;
}

async function pickBackend(choice: TfjsBackendChoice, log?: Log): Promise<string> {
  if (choice === 'auto' || choice === 'tensorflow') {
    const label = await tryNative(log);
    if (label) return label;
    if (choice === 'tensorflow') {
      throw new ModelError(
        "backend 'tensorflow' was asked for but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node " +
          "can be loaded here; install one of them, or use backend 'wasm'",
      );
    }
  }
  if (choice === 'auto' || choice === 'wasm') {
    let ok = false;
    let cause: unknown;
    try {
      await import('@tensorflow/tfjs-backend-wasm');
      ok = await tf.setBackend('wasm');
    } catch (err) {
      cause = err;
    }
    if (ok) return 'wasm';
    if (choice === 'wasm') {
      throw new ModelError(`backend 'wasm' could not start: ${cause ? errorMessage(cause) : 'initialisation failed'}`, {
        cause,
      });
    }
    log?.("WebAssembly backend could not start; falling back to the plain JS 'cpu' backend (much slower)", {
      reason: cause ? errorMessage(cause) : 'initialisation failed',
    });
  }
  if (!(await tf.setBackend('cpu'))) throw new ModelError("TensorFlow.js backend 'cpu' could not start");
  return 'cpu';
}

async function tryNative(log?: Log): Promise<string | undefined> {
  for (const { pkg, label } of NATIVE_PACKAGES) {
    try {
      await importOptional(pkg);
    } catch (err) {
      log?.(`${pkg} not loaded`, { reason: errorMessage(err).split('\n')[0] });
      continue;
    }
    // The package registers 'tensorflow' with the copy of @tensorflow/tfjs-core it resolves;
    // if that is not ours (version mismatch), we cannot use it.
    if (tf.findBackendFactory('tensorflow') && (await tf.setBackend('tensorflow'))) {
      // tfjs-node-gpu runs on the CPU when it finds no usable GPU; say so rather than claim a GPU.
      const usingGpu = (tf.backend() as { isUsingGpuDevice?: boolean }).isUsingGpuDevice;
      if (label === 'tensorflow (GPU)' && usingGpu === false) {
        log?.(`${pkg} loaded but TensorFlow found no usable GPU; running on CPU`);
        return 'tensorflow (CPU)';
      }
      return label;
    }
    log?.(`${pkg} loaded but registered no usable 'tensorflow' backend (different @tensorflow/tfjs-core copy?)`);
  }
  return undefined;
}

/** Import a package that may not be installed, without TypeScript needing its types. */
function importOptional(specifier: string): Promise<unknown> {
  return import(specifier);
}
