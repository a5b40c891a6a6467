/**
 * The embedded WebAssembly of the decoder's own resampling (upscale-vpass.wasm.ts,
 * downscale.wasm.ts) must be its .wat compiled: after editing a .wat, `npm run build:wasm`.
 */
import { readFile } from 'node:fs/promises';
import test from 'ava';
import { compileWat, WAT_MODULES, type WatModule, wasmModuleText } from '../services/extractor/wasm-build.js';

for (const name of Object.keys(WAT_MODULES) as WatModule[]) {
  const { wat, ts } = WAT_MODULES[name];
  test(`the embedded WebAssembly is ${wat} compiled (npm run build:wasm)`, async (t) => {
    const compiled = await compileWat(name);
    const file = await readFile(new URL(`../services/extractor/${ts}`, import.meta.url), 'utf8');
    t.is(file, wasmModuleText(name, compiled), 'run `npm run build:wasm` after editing the .wat');
  });
}
