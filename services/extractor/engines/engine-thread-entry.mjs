// Entry of the engine thread: worker threads do not inherit tsx's loader hooks, so register them
// here before loading the TypeScript module that serves the engine.
import { register } from 'tsx/esm/api';
register();
await import('./thread.ts');
