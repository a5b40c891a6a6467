// Entry of the fit thread: worker threads do not inherit tsx's loader hooks, so register them
// here before loading the TypeScript module that does the work.
import { register } from 'tsx/esm/api';
register();
await import('./fit-thread.ts');
