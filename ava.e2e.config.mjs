import { SLOW, base } from './ava.config.mjs';

export default { ...base, files: SLOW };
