/**
 * The decoder's own cover downscale (services/extractor/downscale.ts) must give libvips's bytes:
 * the published preprocessing is what a program using sharp gets. Checked byte for byte against
 * sharp's own `resize(W, H, { fit: 'cover' })` on random images and geometries (noise, saturated
 * pixels, gradients; square and non-square targets), against an ideal floating-point lanczos3, on
 * the window decodeImage reads, and the SIMD passes against the JavaScript ones.
 */
import test from 'ava';
import sharp from 'sharp';
import { coverScale } from '../services/extractor/cover-geometry.js';
import {
  coverDownscaleFrom,
  coverDownscale,
  downscaleIsExact,
  downscaleRunsInSimd,
  downscaleWindow,
  MAX_SHRINK,
} from '../services/extractor/downscale.js';
import { decodeImage } from '../services/extractor/image.js';

sharp.cache(false);
sharp.concurrency(1);

function random(seed: number) {
  let s = seed >>> 0;
  return (n: number) => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s % n;
  };
}

/** w × h RGB pixels: noise, black and white only (the kernel's lobes overshoot both ends), or a grainy gradient. */
function pixels(w: number, h: number, rnd: (n: number) => number): Uint8Array {
  const kind = rnd(3);
  const src = new Uint8Array(w * h * 3);
  for (let i = 0; i < src.length; i++) {
    const x = (i / 3) % w;
    const y = Math.floor(i / 3 / w);
    src[i] = kind === 0 ? rnd(256) : kind === 1 ? rnd(2) * 255 : (x * 7 + y * 3 + rnd(20)) & 255;
  }
  return src;
}

const rawPng = (src: Uint8Array, w: number, h: number) =>
  sharp(src, { raw: { width: w, height: h, channels: 3 } })
    .png({ compressionLevel: 1 })
    .toBuffer();

/** The window's part of a w-wide RGB source. */
function cut(src: Uint8Array, w: number, win: { left: number; top: number; width: number; height: number }) {
  const part = new Uint8Array(win.width * win.height * 3);
  for (let y = 0; y < win.height; y++) {
    const from = ((win.top + y) * w + win.left) * 3;
    part.set(src.subarray(from, from + win.width * 3), y * win.width * 3);
  }
  return part;
}

const TARGETS = [
  [224, 224],
  [299, 299],
  [256, 256],
  [160, 96],
  [96, 160],
  [17, 33],
  [513, 511],
  [3, 200],
] as const;

test("gives libvips's bytes: random images and geometries, shrinks from 1 to 4, whole source and window", async (t) => {
  const rnd = random(7);
  let compared = 0;
  let refused = 0;
  for (let k = 0; compared < 240; k++) {
    const [W, H] = TARGETS[k % TARGETS.length]!;
    // Shrinks spread over 1..4, the other side sometimes longer (the crop then cuts it).
    const f = 1 + (rnd(10_000) / 10_000) * (MAX_SHRINK - 1);
    const w = Math.max(1, Math.round(W * f * (rnd(3) ? 1 : 1 + rnd(100) / 100)));
    const h = Math.max(1, Math.round(H * f * (rnd(3) ? 1 : 1 + rnd(100) / 100)));
    if (!downscaleIsExact(w, h, W, H)) {
      refused++;
      continue;
    }
    const src = pixels(w, h, rnd);
    // Raw input: the same vips_resize as from a decoded file, without encoding one.
    const lib = await sharp(src, { raw: { width: w, height: h, channels: 3 } })
      .resize(W, H, { fit: 'cover' })
      .raw()
      .toBuffer();
    const win = downscaleWindow(w, h, W, H);
    t.true(win.left >= 0 && win.top >= 0 && win.left + win.width <= w && win.top + win.height <= h);
    const whole = coverDownscale(src, w, h, W, H);
    const part = coverDownscale(cut(src, w, win), w, h, W, H, win);
    t.true(Buffer.from(whole).equals(lib), `${w}×${h} → ${W}×${H}`);
    t.true(Buffer.from(part).equals(lib), `${w}×${h} → ${W}×${H}, window`);
    compared++;
  }
  // Refusals are the rare geometries on a rounding boundary (and shrinks of MAX_SHRINK or more).
  t.true(refused < compared / 4, `${refused} refused, ${compared} compared`);
});

test('real photos, scaled down from their 640×480 and cropped sizes, give libvips bytes', async (t) => {
  const { loadDemoImages } = await import('../cli/demo-data.js');
  const demo = await loadDemoImages({ perClass: 2 });
  for (const d of demo) {
    for (const [w, h, W, H] of [
      [640, 480, 224, 224],
      [480, 640, 299, 299],
      [500, 375, 224, 224],
      [301, 299, 224, 224],
      [333, 517, 160, 96],
    ] as const) {
      const { data } = await sharp(d.png)
        .resize(w, h, { fit: 'fill', kernel: 'cubic' })
        .raw()
        .toBuffer({ resolveWithObject: true });
      t.true(downscaleIsExact(w, h, W, H), `${w}×${h} → ${W}×${H}`);
      const lib = await sharp(data, { raw: { width: w, height: h, channels: 3 } })
        .resize(W, H, { fit: 'cover' })
        .raw()
        .toBuffer();
      t.true(Buffer.from(coverDownscale(new Uint8Array(data), w, h, W, H)).equals(lib), `${w}×${h} → ${W}×${H}`);
    }
  }
});

/** lanczos3 at distance d. */
function lanczos3(d: number): number {
  if (d === 0) return 1;
  if (Math.abs(d) >= 3) return 0;
  const p = Math.PI * d;
  return (3 * Math.sin(p) * Math.sin(p / 3)) / (p * p);
}

test('stays within 3 levels of an ideal floating-point lanczos3 downscale (same placement, edges repeated)', (t) => {
  const rnd = random(13);
  let worst = 0;
  for (let k = 0; k < 12; k++) {
    const [W, H] = TARGETS[k % TARGETS.length]!;
    const f = 1.05 + (rnd(1000) / 1000) * 2.5;
    const w = Math.round(W * f);
    const h = Math.round(H * f * (1 + rnd(30) / 100));
    if (!downscaleIsExact(w, h, W, H)) continue;
    // Levels 48..207: lanczos3's lobes overshoot less than 48, so neither pass clamps (libvips
    // clamps between its passes, which a one-step ideal does not).
    const src = Uint8Array.from({ length: w * h * 3 }, () => 48 + rnd(160));
    const got = coverDownscale(src, w, h, W, H);
    // Each axis's samples centred at source index (i + ½)·f − ½ − offset − ½ (libvips's Y counts
    // from a pixel's edge), offset as libvips splits the rounding of the side, weights normalised,
    // the crop centred.
    const s = 1 / coverScale(w, h, W, H);
    const along = (len: number, out: number) => {
      const scaled = Math.floor(len / s + 0.5);
      const off = (1 + scaled * s - len) / 2 - 1;
      const crop = Math.floor((scaled - out + 1) / 2);
      return Array.from({ length: out }, (_, i) => {
        const c = (i + crop + 0.5) * s - 0.5 - off - 0.5;
        const taps: Array<[number, number]> = [];
        let sum = 0;
        for (let j = Math.floor(c - 3 * s); j <= Math.ceil(c + 3 * s); j++) {
          const wt = lanczos3((j - c) / s);
          taps.push([Math.min(len - 1, Math.max(0, j)), wt]);
          sum += wt;
        }
        return taps.map(([j, wt]) => [j, wt / sum] as [number, number]);
      });
    };
    const ax = along(w, W);
    const ay = along(h, H);
    // Separable, in doubles: columns first, then rows, rounded only at the end.
    const mid = new Float64Array(w * 3);
    for (let y = 0; y < H; y++) {
      mid.fill(0);
      for (const [j, wy] of ay[y]!) for (let i = 0; i < w * 3; i++) mid[i] += src[j * w * 3 + i]! * wy;
      for (let x = 0; x < W; x++) {
        for (let c = 0; c < 3; c++) {
          let v = 0;
          for (const [i, wx] of ax[x]!) v += mid[i * 3 + c]! * wx;
          worst = Math.max(worst, Math.abs(got[(y * W + x) * 3 + c]! - v));
        }
      }
    }
  }
  // libvips rounds positions to 1/64, truncates its weights to 1/4096 and rounds between passes.
  t.true(worst <= 3, `worst difference ${worst}`);
});

test('the SIMD passes are the JavaScript ones: same bytes on random images, geometries and extremes', (t) => {
  const rnd = random(17);
  let cases = 0;
  for (let k = 0; k < 300; k++) {
    // Output widths that are and are not multiples of 16 samples, 1-pixel sides, wide targets.
    const W = k % 7 === 0 ? 1 + rnd(6) : 1 + rnd(k % 5 === 0 ? 600 : 260);
    const H = k % 11 === 0 ? 1 + rnd(4) : 1 + rnd(200);
    const f = 1 + rnd(2900) / 1000;
    const w = Math.max(1, Math.round(W * f * (rnd(2) ? 1 : 1 + rnd(50) / 100)));
    const h = Math.max(1, Math.round(H * f * (rnd(2) ? 1 : 1 + rnd(50) / 100)));
    if (!(coverScale(w, h, W, H) < 1) || !downscaleIsExact(w, h, W, H)) continue;
    const win = downscaleWindow(w, h, W, H);
    const src = pixels(win.width, win.height, rnd);
    const js = coverDownscale(src, w, h, W, H, win, 'js');
    const simd = coverDownscale(src, w, h, W, H, win, 'wasm');
    t.is(simd.length, W * H * 3);
    t.true(Buffer.from(simd).equals(Buffer.from(js)), `${w}×${h} → ${W}×${H}`);
    cases++;
  }
  t.true(cases > 200, `${cases} geometries`);
  t.throws(() => coverDownscale(new Uint8Array(10), 40, 40, 8, 8), { instanceOf: RangeError });
  t.throws(() => coverDownscale(new Uint8Array(4 * 4 * 3), 4, 4, 8, 8), { instanceOf: RangeError });
});

test('geometries it does not reproduce are refused, and decodeImage still gives libvips bytes there', async (t) => {
  // Shrinks of 4 and more (libvips box-shrinks first), and a side of k + ½ after the shrink (449 / 2).
  const rnd = random(19);
  for (const [w, h, W, H] of [
    [900, 900, 224, 224],
    [1000, 700, 160, 96],
    [449, 448, 224, 224],
  ] as const) {
    t.false(downscaleIsExact(w, h, W, H), `${w}×${h} → ${W}×${H} should be left to libvips`);
    const png = await rawPng(pixels(w, h, rnd), w, h);
    const lib = await sharp(png).resize(W, H, { fit: 'cover', position: 'centre' }).raw().toBuffer();
    const got = await decodeImage(png, { width: W, height: H, maxPixels: 5e7 });
    t.true(Buffer.from(got).equals(lib), `${w}×${h} → ${W}×${H}`);
  }
  // The common cases keep the fast path.
  for (const [w, h, W, H] of [
    [640, 480, 224, 224],
    [640, 480, 299, 299],
    [500, 375, 224, 224],
    [1000, 700, 299, 299],
    [300, 300, 224, 224],
  ] as const) {
    t.true(downscaleIsExact(w, h, W, H), `${w}×${h} → ${W}×${H}`);
  }
});

test('sources sharp scales while loading, and buffers past the SIMD memory cap, go to libvips; rotated sources do not', async (t) => {
  const { reference } = await import('./helpers/reference-decode.js');
  const rnd = random(23);
  const opts = { width: 224, height: 224, maxPixels: 5e7, formats: ['jpeg', 'webp', 'svg'] };
  const raw = (w: number, h: number) =>
    sharp(Buffer.from(pixels(w, h, rnd)), { raw: { width: w, height: h, channels: 3 } });
  const svg = Buffer.from(
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><circle cx="20" cy="15" r="12" fill="red"/></svg>',
  );
  const cases: Array<[string, Buffer]> = [
    // JPEG shrink-on-load from a shrink of 3 (1000×700 → 224²: 3.1), WebP at any downscale, SVG
    // rendered at the target's scale (here up): sharp's pixels are not a full-size decode.
    ['jpeg 1000×700', await raw(1000, 700).jpeg().toBuffer()],
    ['webp 640×480', await raw(640, 480).webp().toBuffer()],
    ['svg 40×30', svg],
    // EXIF-rotated: sharp rotates first and decodes whole, so decodeImage's own downscale serves.
    ['jpeg 1000×700, orientation 6', await raw(1000, 700).jpeg().withMetadata({ orientation: 6 }).toBuffer()],
    ['webp 640×480, orientation 3', await raw(640, 480).webp().withMetadata({ orientation: 3 }).toBuffer()],
  ];
  for (const [name, bytes] of cases) {
    const got = await decodeImage(bytes, opts);
    t.true(Buffer.from(got).equals(await reference(bytes, 224, 224)), name);
  }
  const { resizePlan } = await import('../services/extractor/resize-plan.js');
  t.is(resizePlan(1000, 700, true, 224, 224, true).resample, undefined);
  t.is(resizePlan(700, 1000, true, 224, 224, false).resample, 'down');
  t.is(resizePlan(40, 30, true, 224, 224, true).resample, undefined);
  // Buffers past the SIMD memory cap (a 6000² source for a 2048² input): libvips, not the slower
  // JavaScript passes.
  t.true(downscaleIsExact(6000, 6000, 2048, 2048));
  t.false(downscaleRunsInSimd(6000, 6000, 2048, 2048));
  t.is(resizePlan(6000, 6000, true, 2048, 2048).resample, undefined);
  t.true(downscaleRunsInSimd(640, 480, 224, 224));
});

test("coverDownscaleFrom: a window written in place gives coverDownscale's bytes; a failed fill gives undefined", (t) => {
  const rnd = random(23);
  for (const [w, h, W, H] of [
    [640, 480, 224, 224],
    [500, 375, 299, 299],
    [333, 517, 160, 96],
  ] as const) {
    const win = downscaleWindow(w, h, W, H);
    const src = pixels(win.width, win.height, rnd);
    const want = Buffer.from(coverDownscale(src, w, h, W, H, win));
    for (const pass of ['wasm', 'js'] as const) {
      let given = 0;
      const got = coverDownscaleFrom(
        (into) => {
          given = into.length;
          into.set(src);
          return true;
        },
        w,
        h,
        W,
        H,
        win,
        pass,
      );
      t.is(given, src.length, `${pass}: the fill is given exactly the window`);
      t.true(got !== undefined && Buffer.from(got).equals(want), `${pass} ${w}×${h} → ${W}×${H}`);
      t.is(
        coverDownscaleFrom(() => false, w, h, W, H, win, pass),
        undefined,
      );
    }
  }
});
