/**
 * An objective pool helper thread (started by objective-pool.ts through shared/thread-call.ts):
 * takes a problem on its port (bind), acknowledges it through the shared control array, then
 * computes chunks of each evaluation until the binder lets it go.
 */
import type { MessagePort } from 'node:worker_threads';
import { connect, serveThread, threadData } from '../../shared/thread-call.js';
import { objectiveChunk } from './logistic-objective.js';
import { LEAVE, SLOTS, type BindMessage, type PoolThreadApi } from './objective-pool.js';

const { GEN, NEXT, DONE, CMD, ACK } = SLOTS;

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

connect<object, PoolThreadApi>(threadData<{ port: MessagePort }>().port, { bind: serveBind });
serveThread({});
