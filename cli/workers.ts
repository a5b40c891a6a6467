/**
 * `deepfeat worker KIND`: runs pipeline workers in this process (one handler per queue). The one
 * entry point of every worker process (docker-compose.yml and the Dockerfile start workers this
 * way too): the services have no main of their own; each exports its `start*Worker(ctx, n)`.
 */
import type { Worker } from 'bullmq';
import type { Config } from '../shared/config.js';
import { QUEUE_NAMES, type QueueName } from '../shared/queues.js';
import { KIND_QUEUES, closeOnSignal, createContext, type ServiceContext } from '../shared/worker-kit.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { startExtractorWorker } from '../services/extractor/worker.js';
import { startPredictWorker } from '../services/extractor/predict.js';
import { startTrainerWorker } from '../services/trainer/worker.js';
import { startEvaluatorWorker } from '../services/evaluator/worker.js';
import { startCollectWorker } from '../services/evaluator/collect.js';
import { BadRequestError } from '../shared/errors.js';

/** Exactly one handler per queue; the satisfies check makes a missing one a type error. */
const STARTERS = {
  plan: startPlannerWorker,
  extract: startExtractorWorker,
  train: startTrainerWorker,
  evaluate: startEvaluatorWorker,
  predict: startPredictWorker,
  collect: startCollectWorker,
} satisfies Record<QueueName, (ctx: ServiceContext, concurrency: number) => Worker>;

/**
 * Kind names users type, mapped to the queues a process of that kind serves (WORKER_KIND: an
 * extractor serves extract and predict, an evaluator evaluate and collect), and `all`.
 */
export const KINDS: Record<string, QueueName[]> = {
  ...Object.fromEntries([...KIND_QUEUES].map(([kind, queues]) => [kind, [...queues]])),
  all: [...QUEUE_NAMES],
};
export const KIND_NAMES = Object.keys(KINDS);

export function startWorkers(
  config: Config,
  kind: string,
  concurrency: number,
): { ctx: ServiceContext; workers: Worker[] } {
  const queues = KINDS[kind];
  if (!queues)
    throw new BadRequestError(`unknown worker kind ${JSON.stringify(kind)}: use one of ${KIND_NAMES.join(', ')}`);
  const ctx = createContext(config, kind);
  const workers = queues.map((q) => STARTERS[q](ctx, q === 'extract' ? concurrency : Math.max(1, concurrency)));
  closeOnSignal(ctx, workers);
  ctx.log.info({ kind, queues, concurrency }, 'workers started');
  return { ctx, workers };
}
