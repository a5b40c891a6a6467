/**
 * What each feature option costs in extraction time, measured interleaved so that a shared host's
 * changing load hits every variant alike: the default backbone plain, with flip averaging, with
 * multi-scale features, and with both (the defaults), each loaded as the pipeline loads it
 * (loadEngine with the spec), run over the same decoded images round after round in turn; the
 * figure is the median over rounds of ms per image, and its ratio to plain's median. Decode is
 * excluded (it is the same for every variant: multi-scale halves the decoded pixels in the engine).
 *
 *   npx tsx bench/lever-costs.ts [--images 64] [--rounds 7] [--batch 8] [--threads N]
 *
 * bench/accuracy.ts reports accuracy per lever; this script gives the cost column the README
 * quotes for the options that are defaults.
 */
import { availableParallelism, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { loadDemoImages } from '../cli/demo-data.js';
import type { FeatureEngine, FeatureSpec } from '../services/extractor/engines/engine.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { decodeImage } from '../services/extractor/image.js';
import { BUILTIN_BACKBONES } from '../shared/backbones.js';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: '64' },
    rounds: { type: 'string', default: '7' },
    batch: { type: 'string', default: '8' },
    threads: { type: 'string' },
  },
});
const IMAGES = Number(args.images);
const ROUNDS = Number(args.rounds);
const BATCH = Number(args.batch);
const threads = args.threads ? Number(args.threads) : availableParallelism();

const variants: Array<{ name: string; spec: FeatureSpec }> = [
  { name: 'plain (--no-flip --no-multi-scale)', spec: { kind: 'builtin', id: 'mobilenet_v2_mid' } },
  { name: 'flip averaging', spec: { kind: 'builtin', id: 'mobilenet_v2_mid', flip: true } },
  { name: 'multi-scale (224 ‖ 112, the default)', spec: { kind: 'builtin', id: 'mobilenet_v2_mid', multiScale: true } },
  {
    name: 'flip + multi-scale (--flip)',
    spec: { kind: 'builtin', id: 'mobilenet_v2_mid', flip: true, multiScale: true },
  },
];

const side = BUILTIN_BACKBONES.mobilenet_v2_mid.inputSize;
const demo = await loadDemoImages({ perClass: Math.ceil(IMAGES / 2) });
const images = await Promise.all(
  demo.slice(0, IMAGES).map((d) => decodeImage(d.png, { width: side, height: side, maxPixels: 1e7 })),
);
const engines: FeatureEngine[] = [];
for (const v of variants) {
  engines.push(
    await loadEngine(v.spec, {
      readObject: () => Promise.reject(new Error('builtin backbones read no objects')),
      threads,
    }),
  );
}
const pass = async (e: FeatureEngine) => {
  const t0 = performance.now();
  for (let i = 0; i < images.length; i += BATCH) await e.embed(images.slice(i, i + BATCH));
  return (performance.now() - t0) / images.length;
};
for (const e of engines) await pass(e); // warm-up
const ms: number[][] = variants.map(() => []);
for (let r = 0; r < ROUNDS; r++) {
  // A different variant goes first each round, so none always runs right after another.
  for (let k = 0; k < engines.length; k++) {
    const i = (r + k) % engines.length;
    ms[i]!.push(await pass(engines[i]!));
  }
}
for (const e of engines) e.dispose();

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const base = median(ms[0]!);
console.log(
  `${IMAGES} CIFAR-10 images at ${side}×${side}, batch ${BATCH}, ${threads} ONNX Runtime threads, ` +
    `median of ${ROUNDS} interleaved rounds; ${availableParallelism()} cores, load ${loadavg()[0].toFixed(1)} at the end\n`,
);
console.log('| features | dim | ms/image | cost × | images/s |');
console.log('|---|---:|---:|---:|---:|');
variants.forEach((v, i) => {
  const m = median(ms[i]!);
  console.log(
    `| ${v.name} | ${engines[i]!.dim} | ${m.toFixed(1)} | ${(m / base).toFixed(2)} | ${(1000 / m).toFixed(1)} |`,
  );
});
