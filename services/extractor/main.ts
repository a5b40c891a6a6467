/** Entry point of one extractor process: load config, start the worker, close cleanly on SIGTERM. */
import { loadConfig } from '../../shared/config.js';
import { closeOnSignal, createContext } from '../../shared/worker-kit.js';
import { startExtractorWorker } from './worker.js';

const ctx = createContext(loadConfig(), 'extractor');
const concurrency = ctx.config.workerConcurrency;
const worker = startExtractorWorker(ctx, concurrency);
closeOnSignal(ctx, [worker]);
ctx.log.info({ concurrency }, 'extractor worker started');
