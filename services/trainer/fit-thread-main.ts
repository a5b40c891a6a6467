/**
 * The fit thread (started by fit-thread.ts through shared/thread-call.ts): one selectLambda
 * (lambda-selection.ts: the validation split, or k-fold when the input asks for 'auto'), its
 * objective spread over the pool's helper threads when it has some.
 */
import { serveThread, transfer } from '../../shared/thread-call.js';
import type { FitThreadApi } from './fit-thread.js';
import { selectLambda } from './lambda-selection.js';
import { PoolBinder } from './objective-pool.js';

serveThread<FitThreadApi>({
  fit({ input, pool }) {
    const binder = pool ? new PoolBinder(pool) : undefined;
    try {
      const result = selectLambda({ ...input, runner: binder?.bind });
      return transfer(result, [result.model.W.buffer as ArrayBuffer, result.model.b.buffer as ArrayBuffer]);
    } finally {
      binder?.release();
    }
  },
});
