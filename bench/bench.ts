/**
 * npm run bench [-- --quick]: speed of each stage on this machine, measured, never asserted.
 * Each figure is the median of several timed repetitions after a warm-up; ratios are taken
 * within this one run. Prints a table and writes bench/results.json.
 *
 * Measured here: forward-pass throughput of the default backbone on every available TF.js
 * backend, sharp decode+resize throughput, and trainer fit time on a realistic feature matrix.
 * Not yet measured (issue: pipeline end-to-end throughput and BullMQ per-job overhead).
 */
import { writeFile } from 'node:fs/promises';
import sharp from 'sharp';
import { loadEngine } from '../services/extractor/engines/index.js';
import { decodeImage } from '../services/extractor/image.js';
import { fitLogisticRegression } from '../services/trainer/logreg.js';
import { DEFAULT_FEATURES } from '../shared/features.js';
import { mulberry32 } from '../shared/random.js';

const quick = process.argv.includes('--quick');
const reps = quick ? 1 : 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function timeIt(fn: () => Promise<unknown> | unknown, n = reps): Promise<number> {
  await fn(); // warm-up
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

const rows: Array<{ stage: string; figure: number; unit: string; detail: string }> = [];

// sharp: a 640×480 JPEG to the backbone's 224×224 RGB.
const jpeg = await sharp({ create: { width: 640, height: 480, channels: 3, background: { r: 90, g: 140, b: 200 } } })
  .composite([{ input: Buffer.from('<svg width="640" height="480"><circle cx="320" cy="240" r="150" fill="orange"/></svg>') }])
  .jpeg()
  .toBuffer();
const decodeN = quick ? 8 : 64;
const decodeMs = await timeIt(async () => {
  for (let i = 0; i < decodeN; i++) await decodeImage(jpeg, { width: 224, height: 224, maxPixels: 1e8 });
});
rows.push({ stage: 'sharp decode+resize 640x480 JPEG -> 224x224', figure: (decodeN * 1000) / decodeMs, unit: 'images/s', detail: `${(decodeMs / decodeN).toFixed(2)} ms/image, sequential` });

// Backbone forward pass on each backend that loads here.
const batch = 16;
const images = Array.from({ length: batch }, (_, i) => new Uint8Array(224 * 224 * 3).fill(i * 7));
const engineRates: Record<string, number> = {};
for (const backend of ['auto', 'wasm', 'cpu'] as const) {
  if (quick && backend !== 'auto') continue;
  let engine;
  try {
    engine = await loadEngine(DEFAULT_FEATURES, { backend, readObject: async () => new Uint8Array() });
  } catch (err) {
    rows.push({ stage: `backbone forward pass (${backend})`, figure: NaN, unit: 'images/s', detail: `not available: ${(err as Error).message.split('\n')[0]}` });
    continue;
  }
  if (engineRates[engine.backend] !== undefined) {
    engine.dispose();
    continue;
  }
  const ms = await timeIt(() => engine.embed(images), backend === 'cpu' ? 1 : reps);
  engineRates[engine.backend] = (batch * 1000) / ms;
  rows.push({ stage: `backbone forward pass (${engine.backend})`, figure: engineRates[engine.backend]!, unit: 'images/s', detail: `${engine.id}, batch ${batch}, ${(ms / batch).toFixed(1)} ms/image, 1 thread` });
  engine.dispose();
}

// Trainer: 20,000 × 816 features, 10 classes, one lambda (a full run fits 5 plus a refit).
const n = quick ? 2000 : 20000;
const d = 816;
const k = 10;
const rand = mulberry32(1);
const X = new Float32Array(n * d);
const y = new Int32Array(n);
for (let i = 0; i < n; i++) {
  y[i] = i % k;
  for (let j = 0; j < d; j++) X[i * d + j] = rand() * 2 - 1 + (j % k === y[i] ? 0.5 : 0);
}
const fitMs = await timeIt(() => fitLogisticRegression({ X, n, d, y, k, lambda: 1e-2 }), quick ? 1 : 3);
rows.push({ stage: `trainer fit ${n}x${d}, ${k} classes, one lambda`, figure: fitMs / 1000, unit: 's', detail: 'L-BFGS, main thread' });
const wasmRate = engineRates['wasm'];
if (wasmRate) {
  rows.push({ stage: 'trainer fit ÷ extraction time of the same images (wasm)', figure: (fitMs / 1000) / (n / wasmRate), unit: 'ratio', detail: 'target ≤ 0.05' });
}

const width = Math.max(...rows.map((r) => r.stage.length));
console.log(`deepfeat bench${quick ? ' (quick)' : ''}: median of ${reps} after a warm-up\n`);
for (const r of rows) console.log(`${r.stage.padEnd(width)}  ${Number.isNaN(r.figure) ? '-'.padStart(10) : r.figure.toFixed(3).padStart(10)} ${r.unit.padEnd(8)} ${r.detail}`);
await writeFile(new URL('./results.json', import.meta.url), JSON.stringify({ date: new Date().toISOString(), quick, rows }, null, 2) + '\n');
console.log('\nwritten: bench/results.json');
