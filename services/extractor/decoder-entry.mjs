// Entry of a decoder process (decoder-pool.ts starts them). A child process does not inherit the
// parent's tsx loader, so register it, then load the TypeScript module that serves decodes.
import { register } from 'tsx/esm/api';

register();
await import('./decoder-process.ts');
