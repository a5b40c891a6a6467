/**
 * The feature cache's rerun alone (the "feature cache" section of `npm run bench`, without the
 * rest): the same 1,024 images twice through planner, extractor, trainer and evaluator processes,
 * the second run with a new seed and name; prints each pair's times and the ratio.
 *
 *   npx tsx bench/cache-rerun.ts [--pairs 2]
 */
import { parseArgs } from 'node:util';
import { pruneCache } from '../services/extractor/feature-cache/maintenance.js';
import { copyImages, startStack, startWorkers, timeWholeRun } from './stack.js';

const { values } = parseArgs({
  options: { pairs: { type: 'string', default: '2' }, images: { type: 'string', default: '1024' } },
});
const stack = await startStack(Number(values.images));
const procs = [
  await startWorkers(stack, 'planner', 1),
  await startWorkers(stack, 'evaluator', 1),
  await startWorkers(stack, 'extractor', 1, { DEEPFEAT_FEATURE_CACHE: 'on' }),
  await startWorkers(stack, 'trainer', 1),
];
const deps = {
  redis: stack.client.redis!,
  prefix: stack.client.config.queuePrefix,
  s3: stack.client.s3,
  bucket: stack.client.config.bucket,
};
try {
  await timeWholeRun(stack, await copyImages(stack, 'cache-warm-up', 16), 'warm-up', 1);
  for (let i = 0; i < Number(values.pairs); i++) {
    await pruneCache(deps, { all: true });
    const first = await timeWholeRun(stack, stack.source, `first-${i}`, 100 + i);
    const rerun = await timeWholeRun(stack, stack.source, `rerun-${i}`, 200 + i);
    const stages = (t: typeof first) =>
      `plan ${t.plan.toFixed(2)}, extract ${t.extract.toFixed(2)}, train ${t.train.toFixed(2)} (work ${t.trainWork.toFixed(2)}), evaluate ${t.evaluate.toFixed(2)} (work ${t.evaluateWork.toFixed(2)})`;
    console.log(`  first: ${stages(first)}\n  rerun: ${stages(rerun)}`);
    console.log(
      `pair ${i}: first ${first.seconds.toFixed(2)} s, rerun ${rerun.seconds.toFixed(2)} s (train job ${rerun.trainWork.toFixed(2)} s, hits ${rerun.cache?.hits}), ratio ${(rerun.seconds / first.seconds).toFixed(3)}`,
    );
  }
} finally {
  for (const p of procs) await p.stop();
  await stack.close();
}
