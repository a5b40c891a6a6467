import { SLOW, base } from './ava.config.mjs';

export default { ...base, files: ['test/**/*.test.ts', ...SLOW.map((f) => `!${f}`)] };
