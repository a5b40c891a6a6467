/** Entry point of one planner process: load config, start the worker, close cleanly on SIGTERM. */
import { loadConfig } from '../../shared/config.js';
import { closeOnSignal, createContext } from '../../shared/worker-kit.js';
import { startPlannerWorker } from './worker.js';

const ctx = createContext(loadConfig(), 'planner');
const concurrency = ctx.config.workerConcurrency;
const worker = startPlannerWorker(ctx, concurrency);
closeOnSignal(ctx, [worker]);
ctx.log.info({ concurrency }, 'planner worker started');
