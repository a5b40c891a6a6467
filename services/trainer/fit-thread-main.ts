/**
 * The fit thread (started by fit-thread.ts through shared/thread-call.ts): one
 * selectLambdaAndFit, its objective spread over the pool's helper threads when it has some.
 */
import { serveThread, transfer } from '../../shared/thread-call.js';
import type { FitThreadApi } from './fit-thread.js';
import { selectLambdaAndFit } from './lambda-selection.js';
import { PoolBinder } from './objective-pool.js';

serveThread<FitThreadApi>({
  fit({ input, pool }) {
    const binder = pool ? new PoolBinder(pool) : undefined;
    try {
      const result = selectLambdaAndFit({ ...input, runner: binder?.bind });
      return transfer(result, [result.model.W.buffer as ArrayBuffer, result.model.b.buffer as ArrayBuffer]);
    } finally {
      binder?.release();
    }
  },
});
