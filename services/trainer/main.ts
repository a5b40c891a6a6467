/** Entry point of one trainer process: load config, start the worker, close cleanly on SIGTERM. */
import { loadConfig } from '../../shared/config.js';
import { closeOnSignal, createContext } from '../../shared/worker-kit.js';
import { startTrainerWorker } from './worker.js';

const ctx = createContext(loadConfig(), 'trainer');
const concurrency = ctx.config.workerConcurrency;
const worker = startTrainerWorker(ctx, concurrency);
closeOnSignal(ctx, [worker]);
ctx.log.info({ concurrency }, 'trainer worker started');
