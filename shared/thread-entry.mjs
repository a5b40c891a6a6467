// The entry of every deepfeat worker thread (shared/thread-call.ts starts threads here). Worker
// threads do not inherit tsx's loader hooks, so register them, then load the TypeScript thread
// module the owner named; that module serves its calls (serveThread) as it loads.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.module);
