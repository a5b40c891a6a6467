/** Entry point of one evaluator process: load config, start the worker, close cleanly on SIGTERM. */
import { loadConfig } from '../../shared/config.js';
import { closeOnSignal, createContext } from '../../shared/worker-kit.js';
import { startEvaluatorWorker } from './worker.js';

const ctx = createContext(loadConfig(), 'evaluator');
const concurrency = ctx.config.workerConcurrency;
const worker = startEvaluatorWorker(ctx, concurrency);
closeOnSignal(ctx, [worker]);
ctx.log.info({ concurrency }, 'evaluator worker started');
