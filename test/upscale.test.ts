/**
 * The decoder's own cover upscale (services/extractor/upscale.ts): checked against an independent
 * floating-point evaluation of the same Catmull-Rom cubic and geometry, on the window it decodes,
 * and against libvips's bicubic upscale on real photos' scale (the demo's CIFAR images).
 */
import test from 'ava';
import sharp from 'sharp';
import { loadDemoImages } from '../cli/demo-data.js';
import { coverScale, coverUpscale, upscaleWindow } from '../services/extractor/upscale.js';

function random(seed: number) {
  let s = seed >>> 0;
  return (n: number) => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s % n;
  };
}

/** Catmull-Rom at distance d, written out again here (not imported). */
function catmullRom(d: number): number {
  const x = Math.abs(d);
  if (x <= 1) return (1.5 * x - 2.5) * x * x + 1;
  if (x < 2) return ((-0.5 * x + 2.5) * x - 4) * x + 2;
  return 0;
}

/** Output (x, y, c) as a 2-D sum in doubles: libvips's sample placement, edges repeated, the crop centred. */
function expected(src: Uint8Array, w: number, h: number, W: number, H: number): Float64Array {
  const s = Math.max(W / w, H / h);
  const offX = (w * s - W) / 2;
  const offY = (h * s - H) / 2;
  const out = new Float64Array(W * H * 3);
  for (let y = 0; y < H; y++) {
    const sy = (y + offY) / s - 0.5;
    for (let x = 0; x < W; x++) {
      const sx = (x + offX) / s - 0.5;
      for (let c = 0; c < 3; c++) {
        let v = 0;
        for (let j = Math.floor(sy) - 1; j <= Math.floor(sy) + 2; j++) {
          for (let i = Math.floor(sx) - 1; i <= Math.floor(sx) + 2; i++) {
            const px = src[(Math.min(h - 1, Math.max(0, j)) * w + Math.min(w - 1, Math.max(0, i))) * 3 + c]!;
            v += px * catmullRom(sx - i) * catmullRom(sy - j);
          }
        }
        out[(y * W + x) * 3 + c] = Math.min(255, Math.max(0, v));
      }
    }
  }
  return out;
}

test('matches a direct floating-point evaluation within one level, at many sizes and targets', (t) => {
  const rnd = random(11);
  let worst = 0;
  let samples = 0;
  for (let k = 0; k < 24; k++) {
    const [W, H] = (
      [
        [224, 224],
        [160, 96],
        [299, 299],
        [17, 33],
      ] as const
    )[k % 4]!;
    const w = 1 + rnd(Math.min(W, H) + 40);
    const h = 1 + rnd(Math.min(W, H) + 40);
    if (coverScale(w, h, W, H) <= 1) continue;
    const src = Uint8Array.from({ length: w * h * 3 }, () => rnd(256));
    const got = coverUpscale(src, w, h, W, H);
    const want = expected(src, w, h, W, H);
    t.is(got.length, W * H * 3);
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    samples++;
  }
  t.true(samples >= 15, `only ${samples} upscale cases`);
  t.true(worst <= 1, `worst difference ${worst}`);
});

test('a flat image stays flat and a ramp stays a ramp (the weights sum to one, samples where libvips puts them)', (t) => {
  const flat = new Uint8Array(7 * 5 * 3).fill(200);
  t.true(coverUpscale(flat, 7, 5, 64, 48).every((v) => v === 200));
  // A horizontal ramp 0, 10, ... 90 scaled 4×: interior outputs at x sit at x / 4 - 0.5.
  const w = 10;
  const ramp = new Uint8Array(w * 1 * 3);
  for (let x = 0; x < w; x++) ramp.fill(10 * x, x * 3, x * 3 + 3);
  const out = coverUpscale(ramp, w, 1, 40, 4);
  for (let x = 8; x < 32; x++) t.is(out[x * 3], Math.round(10 * (x / 4 - 0.5)), `x = ${x}`);
  // Whole scale factors put every s-th output on a source pixel: 0, 4, 8, ... give the pixels.
  for (let x = 4; x < 36; x += 4) t.is(out[(x + 2) * 3], 10 * (x / 4), `x = ${x + 2}`);
});

test('the window decodeImage reads gives the same bytes as the whole source', (t) => {
  const rnd = random(5);
  for (const [w, h, W, H] of [
    [100, 5000, 224, 224],
    [3000, 40, 224, 224],
    [50, 50, 160, 96],
    [1, 700, 299, 299],
  ] as const) {
    const src = Uint8Array.from({ length: w * h * 3 }, () => rnd(256));
    const win = upscaleWindow(w, h, W, H);
    t.true(win.left >= 0 && win.top >= 0 && win.left + win.width <= w && win.top + win.height <= h);
    const part = new Uint8Array(win.width * win.height * 3);
    for (let y = 0; y < win.height; y++) {
      const from = ((win.top + y) * w + win.left) * 3;
      part.set(src.subarray(from, from + win.width * 3), y * win.width * 3);
    }
    t.deepEqual(coverUpscale(part, w, h, W, H, win), coverUpscale(src, w, h, W, H), `${w}×${h} → ${W}×${H}`);
    // A strip keeps only what covers the target: a few pixels around the crop, not the strip.
    t.true(
      win.width * win.height <=
        (Math.ceil(W / coverScale(w, h, W, H)) + 4) * (Math.ceil(H / coverScale(w, h, W, H)) + 4),
    );
  }
  t.throws(() => coverUpscale(new Uint8Array(10), 4, 4, 8, 8), { instanceOf: RangeError });
});

test("stays close to libvips's bicubic upscale on the demo's 32×32 photos", async (t) => {
  const demo = await loadDemoImages({ perClass: 10 });
  let sum = 0;
  let n = 0;
  for (const d of demo) {
    const lib = await sharp(d.png).removeAlpha().resize(224, 224, { fit: 'cover' }).raw().toBuffer();
    const src = await sharp(d.png).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    const ours = coverUpscale(new Uint8Array(src.data), src.info.width, src.info.height, 224, 224);
    for (let i = 0; i < ours.length; i++) sum += Math.abs(ours[i]! - lib[i]!);
    n += ours.length;
  }
  // The same samples and cubic as libvips's at a whole factor (7): only rounding differs (about
  // 0.2 levels on average), where a transposed or misplaced image differs by tens.
  t.true(sum / n < 0.5, `mean absolute difference ${(sum / n).toFixed(2)} levels`);
});
