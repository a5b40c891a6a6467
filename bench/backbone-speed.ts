/**
 * How fast does each shipped backbone extract here, as an extractor runs it? Measured, never
 * asserted; the figures go into shared/backbones.ts (`measured.imagesPerSecond`).
 *
 *   npx tsx bench/backbone-speed.ts [--images 32] [--batch 8] [--reps 3] [--backbone ID]
 *
 * Real CIFAR-10 images from the demo data, decoded by the pipeline's decodeImage to each
 * backbone's input size, go through loadEngine (DEEPFEAT_ENGINE=auto, so ONNX Runtime on the CPU
 * here) at the default node, BATCH at a time; images/s is the median over `reps` timed passes
 * after a warm-up pass. Decoding is excluded (it is the same for every backbone but the size).
 */
import { availableParallelism, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { loadDemoImages } from '../cli/demo-data.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { decodeImage } from '../services/extractor/image.js';
import { BUILTIN_BACKBONES } from '../shared/backbones.js';
import { BUILTIN_MODELS, type BuiltinModelId } from '../shared/features.js';

const { values: args } = parseArgs({
  options: {
    images: { type: 'string', default: '32' },
    batch: { type: 'string', default: '8' },
    reps: { type: 'string', default: '3' },
    backbone: { type: 'string' },
  },
});
const IMAGES = Number(args.images);
const BATCH = Number(args.batch);
const REPS = Number(args.reps);
const ids = (args.backbone ? [args.backbone] : BUILTIN_MODELS) as BuiltinModelId[];
const cores = availableParallelism();

const demo = await loadDemoImages({ perClass: Math.ceil(IMAGES / 2) });
console.log(
  `${IMAGES} CIFAR-10 images, batch ${BATCH}, median of ${REPS} passes, ${cores} cores, load ${loadavg()[0].toFixed(1)}\n`,
);
console.log('| backbone | node | dim | input | engine | images/s |');
console.log('|---|---|---:|---:|---|---:|');
for (const id of ids) {
  const b = BUILTIN_BACKBONES[id];
  const images = await Promise.all(
    demo.slice(0, IMAGES).map((d) => decodeImage(d.png, { width: b.inputSize, height: b.inputSize, maxPixels: 1e7 })),
  );
  const engine = await loadEngine(
    { kind: 'builtin', id },
    {
      readObject: () => Promise.reject(new Error('builtin backbones read no objects')),
      threads: cores,
    },
  );
  const pass = async () => {
    for (let i = 0; i < images.length; i += BATCH) await engine.embed(images.slice(i, i + BATCH));
  };
  await pass();
  const rates: number[] = [];
  for (let r = 0; r < REPS; r++) {
    const t0 = performance.now();
    await pass();
    rates.push(images.length / ((performance.now() - t0) / 1000));
  }
  rates.sort((x, y) => x - y);
  console.log(
    `| ${id} | ${b.defaultNode} | ${engine.dim} | ${engine.input.width} | ${engine.backend} | ${rates[Math.floor(REPS / 2)]!.toFixed(1)} |`,
  );
  engine.dispose();
}
console.log(`\nload average after: ${loadavg()[0].toFixed(1)}`);
