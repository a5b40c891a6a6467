// Entry of an objective-pool thread: register tsx's loader hooks (threads do not inherit them),
// then load the TypeScript module that serves chunks.
import { register } from 'tsx/esm/api';
register();
await import('./objective-pool.ts');
