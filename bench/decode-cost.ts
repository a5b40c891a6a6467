/**
 * What one decode costs inside a decoder process (issue 14): CPU milliseconds per image of
 * `decodeImage` and of its parts, in ONE process set up as a decoder process is (sharp.cache(false),
 * sharp.concurrency(1); run it with UV_THREADPOOL_SIZE=1 to match exactly, as the pool does).
 *
 * Inputs: the demo's 32×32 CIFAR PNGs and 640×480 JPEGs made from them as bench/feed.ts makes
 * them, decoded to 224×224. Rows: decodeImage as a whole, then its sharp calls one by one
 * (metadata() alone, the pipeline alone, the pipeline without each of its operations) and, for
 * comparison only, other resize kernels (they change the pixels: not options for decodeImage).
 *
 * CPU is process.cpuUsage() (user + system, every thread of the process: libvips's and libuv's
 * included) over many images; each row is the median of several rounds, rows interleaved per
 * round so a busy moment on a shared host spreads over all of them.
 *
 * `npx tsx bench/decode-cost.ts [--tree DIR ...] [--rounds N] [--quick]`: with --tree, decodeImage
 * rows are also measured for each DIR's services/extractor/image.ts (a `git archive` of other code
 * with node_modules linked), in the same process and rounds, so the rows compare.
 */
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import sharp from 'sharp';
import { loadDemoImages } from '../cli/demo-data.js';
import type { DecodeOptions } from '../services/extractor/image.js';
import { median } from './stats.js';

sharp.cache(false);
sharp.concurrency(1);

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
type Decode = (bytes: Uint8Array, opts: DecodeOptions) => Promise<Uint8Array>;

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const trees: string[] = [];
for (let i = 0; i < args.length; i++) if (args[i] === '--tree' && args[i + 1]) trees.push(path.resolve(args[++i]!));
const roundsArg = args.indexOf('--rounds');
const ROUNDS = roundsArg >= 0 ? Number(args[roundsArg + 1]) : quick ? 3 : 15;
const OPTS: DecodeOptions = { width: 224, height: 224, maxPixels: 50_000_000 };

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** 640×480 JPEGs from the demo's images, as bench/feed.ts makes them (scaled up, with grain). */
async function makeJpegs(pngs: readonly Buffer[]): Promise<Buffer[]> {
  let seed = 1;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  const out: Buffer[] = [];
  for (const png of pngs) {
    const raw = await sharp(png).resize(640, 480, { fit: 'fill', kernel: 'cubic' }).raw().toBuffer();
    for (let i = 0; i < raw.length; i++) raw[i] = Math.max(0, Math.min(255, raw[i]! + Math.round((rand() - 0.5) * 24)));
    out.push(
      await sharp(raw, { raw: { width: 640, height: 480, channels: 3 } })
        .jpeg({ quality: 90 })
        .toBuffer(),
    );
  }
  return out;
}

const W = OPTS.width;
const H = OPTS.height;
const sharpIn = (b: Uint8Array, o: sharp.SharpOptions = {}) =>
  sharp(b, { limitInputPixels: OPTS.maxPixels, pages: 1, page: 0, ...o });
const white = { background: { r: 255, g: 255, b: 255 } };
const cover = { fit: 'cover', position: 'centre' } as const;

const STEPS = ['rotate', 'flatten', 'toColourspace', 'removeAlpha'] as const;
/** decodeImage's pipeline as it was (every step), or without `skip`, on one image's bytes. */
function pipeline(b: Uint8Array, skip?: (typeof STEPS)[number], o: sharp.SharpOptions = {}) {
  let p = sharpIn(b, o);
  if (skip !== 'rotate') p = p.rotate();
  if (skip !== 'flatten') p = p.flatten(white);
  if (skip !== 'toColourspace') p = p.toColourspace('srgb');
  p = p.resize(W, H, cover);
  if (skip !== 'removeAlpha') p = p.removeAlpha();
  return p.raw({ depth: 'uchar' }).toBuffer();
}

/** The rows besides decodeImage: each a function of one image's bytes. */
const PARTS: Array<[string, (b: Uint8Array) => Promise<unknown>]> = [
  ['metadata() alone', (b) => sharp(b, { limitInputPixels: false, pages: 1, page: 0 }).metadata()],
  ['pipeline alone (today: rotate, flatten, toColourspace, resize, removeAlpha)', (b) => pipeline(b)],
  ...STEPS.map((step): [string, (b: Uint8Array) => Promise<unknown>] => [
    `  without ${step}`,
    (b) => pipeline(b, step),
  ]),
  ['  resize + raw only', (b) => sharpIn(b).resize(W, H, cover).raw().toBuffer()],
  [
    '  with one sharp instance for metadata() and pipeline',
    async (b) => {
      const s = sharpIn(b);
      await s.metadata();
      return s.resize(W, H, cover).raw({ depth: 'uchar' }).toBuffer();
    },
  ],
  [
    '  with random access (sequentialRead: false; true is the default)',
    (b) => pipeline(b, undefined, { sequentialRead: false }),
  ],
  ['decode only (no resize), raw', (b) => sharpIn(b).raw().toBuffer()],
  ['sharp(bytes) constructor alone (JS)', async (b) => sharpIn(b)],
  [
    'compare: kernel nearest',
    (b) =>
      sharpIn(b)
        .resize(W, H, { ...cover, kernel: 'nearest' })
        .raw()
        .toBuffer(),
  ],
  [
    'compare: kernel lanczos2',
    (b) =>
      sharpIn(b)
        .resize(W, H, { ...cover, kernel: 'lanczos2' })
        .raw()
        .toBuffer(),
  ],
  [
    'compare: kernel cubic',
    (b) =>
      sharpIn(b)
        .resize(W, H, { ...cover, kernel: 'cubic' })
        .raw()
        .toBuffer(),
  ],
  [
    'compare: kernel mitchell',
    (b) =>
      sharpIn(b)
        .resize(W, H, { ...cover, kernel: 'mitchell' })
        .raw()
        .toBuffer(),
  ],
];

async function main() {
  const count = quick ? 32 : 64;
  const demo = await loadDemoImages({ perClass: count / 2 });
  const pngs = demo.map((d) => d.png);
  const jpegs = await makeJpegs(pngs.slice(0, quick ? 8 : 24));
  const decoders: Array<[string, Decode]> = [
    ['decodeImage (this tree)', (await import('../services/extractor/image.js')).decodeImage],
  ];
  for (const tree of trees) {
    const mod = (await import(pathToFileURL(path.join(tree, 'services/extractor/image.ts')).href)) as {
      decodeImage: Decode;
    };
    decoders.push([`decodeImage (${path.relative(ROOT, tree) || tree})`, mod.decodeImage]);
  }
  const rows: Array<[string, (b: Uint8Array) => Promise<unknown>]> = [
    ...decoders.map(([name, fn]): [string, (b: Uint8Array) => Promise<unknown>] => [name, (b) => fn(b, OPTS)]),
    ...PARTS,
  ];
  console.log(
    `decode cost: CPU ms per image (median of ${ROUNDS} rounds), sharp ${sharp.versions.sharp}, libvips ${sharp.versions.vips}, ` +
      `UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '(default)'}, target ${W}×${H}`,
  );
  for (const [setName, set, passes] of [
    [`CIFAR PNG 32×32 (${pngs.length} images)`, pngs, 1],
    [`JPEG 640×480 (${jpegs.length} images, ${Math.round(jpegs[0]!.length / 1024)} KiB)`, jpegs, quick ? 1 : 2],
  ] as const) {
    const samples = rows.map(() => [] as number[]);
    // Warm-up: every row once over the set (loads codecs, JIT).
    for (const [, fn] of rows) for (const b of set) await fn(b);
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < rows.length; i++) {
        const fn = rows[i]![1];
        const t0 = cpuMs();
        for (let p = 0; p < passes; p++) for (const b of set) await fn(b);
        samples[i]!.push((cpuMs() - t0) / (passes * set.length));
      }
    }
    console.log(`\n${setName}`);
    console.log(`${'row'.padEnd(78)} ${'ms/image'.padStart(9)} ${'min'.padStart(7)} ${'max'.padStart(7)}`);
    // Each other tree against this one: the ratio within each round (same moment on the host), median.
    for (let k = 1; k < decoders.length; k++) {
      const ratios = samples[0]!.map((v, r) => v / samples[k]![r]!);
      console.log(
        `this tree / ${decoders[k]![0].replace(/^decodeImage /, '')}: ${median(ratios).toFixed(3)} ` +
          `(median of ${ratios.length} per-round ratios; range ${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)})`,
      );
    }
    for (let i = 0; i < rows.length; i++) {
      const s = samples[i]!;
      console.log(
        `${rows[i]![0].padEnd(78)} ${median(s).toFixed(3).padStart(9)} ${Math.min(...s)
          .toFixed(3)
          .padStart(7)} ${Math.max(...s)
          .toFixed(3)
          .padStart(7)}`,
      );
    }
  }
}

await main();
