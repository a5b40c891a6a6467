/**
 * Cover-scaling a small image up to the engine's input size, in plain code, giving libvips's bytes
 * (issue 14).
 *
 * Small sources (the lesson's 32×32 CIFAR images, thumbnails) are scaled up 7× to the backbone's
 * 224×224. libvips does that with its bicubic affine (vips_resize upsizes with vips_affine and
 * its "bicubic" interpolator for every kernel but nearest and linear): 16 taps and generic set-up
 * per output sample, about three quarters of a 32×32 PNG's decode CPU (`npx tsx
 * bench/decode-cost.ts`). That interpolation is separable, so here it runs as two passes of 4 taps
 * over only the pixels the centre crop keeps — with libvips's arithmetic, so the bytes are the
 * same and the published preprocessing does not change (a program using sharp still gets exactly
 * the pipeline's pixels: examples/classify.mjs, test/portable-classifier.e2e.test.ts):
 * - geometry: one scale s = 1 / min(w/W, h/H) (sharp's); libvips's scaled image is round(w·s) long and sharp
 *   crops it at left = ⌊(round(w·s) − W + 1) / 2⌋; output pixel x reads source coordinate
 *   (x + left) / s − ½, taps beyond the edge repeat the edge pixel;
 * - the fraction of that coordinate is rounded (half up, from 1/128 steps) to 1/64 of a pixel;
 * - Catmull-Rom weights (a = −0.5) in 1/4096, each truncated toward zero;
 * - the horizontal pass is rounded to a whole level, the vertical pass rounded and clamped.
 * - where a position or a scaled side falls within a hair of a rounding boundary, the last bit of
 *   libvips's own floating-point steps decides: upscaleIsExact says so and decodeImage leaves that
 *   geometry to libvips (rare at 224 or 299; common for targets with a large power of two, 256).
 * Found by measurement against sharp 0.33 / libvips 8.15 and held to it byte for byte:
 * test/decode-identity.test.ts (its corpus at three output sizes) and test/upscale.test.ts (random
 * images and geometries). A sharp or libvips upgrade that changes libvips's arithmetic shows
 * there first; then this follows it or decodeImage stops using it.
 */

import { coverScale, cropOffset, remember, type SourceWindow } from './cover-geometry.js';
import { VPASS_WASM } from './upscale-vpass.wasm.js';
import { simdModule } from './wasm-simd.js';

/** Fixed-point precision of the weights: 12 bits per pass. */
const BITS = 12;
const ONE = 1 << BITS;
const HALF = ONE >> 1;

/** Sub-pixel positions per source pixel: the fraction of a sample's position is rounded to 1/64. */
const POSITIONS = 64;

/**
 * The Catmull-Rom weights (a = −0.5) of the 4 taps at fraction t, in 1/4096, each truncated toward
 * zero (they need not sum to 4096: this is libvips's table, and the bytes must be its bytes).
 */
function catmullRom(t: number): [number, number, number, number] {
  const dt = 1 - t;
  const tdt = dt * t;
  const m = -0.5 * tdt;
  const c0 = m * dt;
  const c3 = m * t;
  const c1 = tdt * (-1.5 * t + 1) + dt;
  const c2 = 1 - (c0 + c1 + c3);
  return [Math.trunc(c0 * ONE), Math.trunc(c1 * ONE), Math.trunc(c2 * ONE), Math.trunc(c3 * ONE)];
}

interface Taps {
  /** Source index of tap k of output i: index[4i + k], clamped to the source, minus the window's start. */
  index: Int32Array;
  /** Its weight in 1/4096. */
  weight: Int32Array;
  /** The same per output, as the SIMD pass reads them: its 4 indices, then their 4 weights. */
  packed: Int32Array;
}

/** Source coordinate of output sample i along an axis (see the file comment). */
function sourceAt(i: number, scale: number, offset: number): number {
  return (i + offset) / scale - 0.5;
}

/**
 * The 4 taps of each of `out` outputs along an axis of `src` samples scaled by `scale` from
 * `offset`, as indices into the window of the source that starts at `from`.
 */
function taps(src: number, out: number, scale: number, offset: number, from: number): Taps {
  const index = new Int32Array(out * 4);
  const weight = new Int32Array(out * 4);
  const packed = new Int32Array(out * 8);
  for (let i = 0; i < out; i++) {
    // Positions are taken one pixel to the right (so never negative: x ≥ -1 here), as libvips's
    // interpolator sees them; the fraction is rounded half up to 1/64 from 1/128 steps.
    const shifted = sourceAt(i, scale, offset) + 1;
    const whole = Math.trunc(shifted);
    const step = Math.trunc(shifted * 2 * POSITIONS) & (2 * POSITIONS - 1);
    const w = catmullRom(((step + 1) >> 1) / POSITIONS);
    for (let k = 0; k < 4; k++) {
      index[i * 4 + k] = Math.min(src - 1, Math.max(0, whole - 2 + k)) - from;
      weight[i * 4 + k] = w[k]!;
      packed[i * 8 + k] = index[i * 4 + k]!;
      packed[i * 8 + 4 + k] = w[k]!;
    }
  }
  return { index, weight, packed };
}

const tapCache = new Map<string, Taps>();
function cachedTaps(src: number, out: number, scale: number, offset: number, from: number): Taps {
  return remember(tapCache, `${src} ${out} ${scale} ${offset} ${from}`, () => taps(src, out, scale, offset, from));
}

/** Where the centre crop starts along an axis, in scaled pixels (the scaled side is round(src·s)). */
function upCrop(src: number, out: number, scale: number): number {
  return cropOffset(Math.round(src * scale), out);
}

/** How close to a rounding boundary a position may come before the geometry counts as ambiguous. */
const TIE = 1e-7;

/**
 * Whether coverUpscale gives libvips's bytes for this geometry for certain. libvips computes
 * sample positions with its own floating-point steps; where a position (in 1/128 of a pixel) or a
 * scaled side (round(w·s)) falls within TIE of a boundary where rounding flips, the last bit of
 * that arithmetic decides, and ours may round the other way (it happens when a side of the
 * target has a large power of two in it, e.g. 150×150 → 256×256). decodeImage then leaves the
 * resize to libvips.
 */
export function upscaleIsExact(w: number, h: number, width: number, height: number): boolean {
  return remember(exactCache, `${w} ${h} ${width} ${height}`, () => checkExact(w, h, width, height));
}
const exactCache = new Map<string, boolean>();

function checkExact(w: number, h: number, width: number, height: number): boolean {
  const scale = coverScale(w, h, width, height);
  const axis = (src: number, out: number) => {
    const scaled = src * scale;
    if (Math.abs(scaled - Math.floor(scaled) - 0.5) < TIE) return false;
    const offset = upCrop(src, out, scale);
    for (let i = 0; i < out; i++) {
      const a = (sourceAt(i, scale, offset) + 1) * 2 * POSITIONS;
      const n = Math.round(a);
      // Only odd steps change the rounded 1/64 (see taps).
      if (n % 2 !== 0 && Math.abs(a - n) < TIE) return false;
    }
    return true;
  };
  return axis(w, width) && axis(h, height);
}

/**
 * The part of a w × h source that coverUpscale reads for width × height (the centre crop's pixels
 * and the cubic's neighbours): decode only that, so a 100 × 100000 strip costs what its kept
 * square costs.
 */
export function upscaleWindow(w: number, h: number, width: number, height: number): SourceWindow {
  const scale = coverScale(w, h, width, height);
  const span = (src: number, out: number) => {
    const offset = upCrop(src, out, scale);
    const from = Math.max(0, Math.floor(sourceAt(0, scale, offset)) - 1);
    const to = Math.min(src - 1, Math.floor(sourceAt(out - 1, scale, offset)) + 2);
    return [from, to - from + 1] as const;
  };
  const [left, ww] = span(w, width);
  const [top, wh] = span(h, height);
  return { left, top, width: ww, height: wh };
}

/** How the vertical pass runs: WebAssembly SIMD (the default where available) or plain JavaScript. */
export type VerticalPass = 'wasm' | 'js';

/**
 * A w × h source scaled by coverScale to cover width × height and centre-cropped to it, with the
 * Catmull-Rom cubic; `src` holds the source's `window` (upscaleWindow's, the default being the
 * whole source) as RGB uint8, interleaved. Meant for scale > 1 (the taps of a downscale would
 * skip source pixels: libvips reduces instead). `pass` chooses the vertical pass's code (the same
 * bytes either way; tests compare them).
 */
export function coverUpscale(
  src: Uint8Array,
  w: number,
  h: number,
  width: number,
  height: number,
  window: SourceWindow = { left: 0, top: 0, width: w, height: h },
  pass: VerticalPass = vpassModule() ? 'wasm' : 'js',
): Uint8Array {
  const ww = window.width;
  if (src.length !== ww * window.height * 3) {
    throw new RangeError(`coverUpscale: ${src.length} bytes is not the window's ${ww}×${window.height}×3`);
  }
  const scale = coverScale(w, h, width, height);
  const tx = cachedTaps(w, width, scale, upCrop(w, width, scale), window.left);
  const ty = cachedTaps(h, height, scale, upCrop(h, height, scale), window.top);
  const rowLen = width * 3;
  const rows = window.height;
  // The horizontal pass's rows as int16, with 16 spare samples after the last (the SIMD pass
  // reads whole steps of 16), and the output with 16 spare bytes (it writes them).
  const tmpLength = rows * rowLen + 16;
  const outLength = height * rowLen;
  const vm = pass === 'wasm' ? vpassModule() : null;
  if (pass === 'wasm' && !vm) throw new Error('coverUpscale: WebAssembly SIMD is not available here');
  const at = vm?.reserve([height * 32, tmpLength * 2, outLength + 16]);
  if (!vm || !at) {
    const tmp = new Int16Array(tmpLength);
    horizontalPass(src, ww * 3, tx, rows, rowLen, ty.index, tmp);
    return verticalPass(tmp, rowLen, ty, height);
  }
  const [taps, tmp, out] = at as [number, number, number];
  horizontalPass(src, ww * 3, tx, rows, rowLen, ty.index, new Int16Array(vm.memory.buffer, tmp, tmpLength));
  new Int32Array(vm.memory.buffer, taps, height * 8).set(ty.packed);
  (vm.exports.vpass as (tmp: number, rowLen: number, taps: number, height: number, out: number) => void)(
    tmp,
    rowLen,
    taps,
    height,
    out,
  );
  // A copy: the module's memory is reused by the next call.
  return new Uint8Array(vm.memory.buffer, out, outLength).slice();
}

/**
 * Pass 1, along x: only the source rows some output row reads (`rowsRead`), each rounded to a
 * whole level (as libvips rounds between its two passes), into `tmp` (rowLen samples a row).
 */
function horizontalPass(
  src: Uint8Array,
  srcRowLen: number,
  tx: Taps,
  rows: number,
  rowLen: number,
  rowsRead: Int32Array,
  tmp: Int16Array,
): void {
  const used = new Uint8Array(rows);
  for (let i = 0; i < rowsRead.length; i++) used[rowsRead[i]!] = 1;
  const { index: xi, weight: xw } = tx;
  const width = rowLen / 3;
  for (let y = 0; y < rows; y++) {
    if (!used[y]) continue;
    const srow = y * srcRowLen;
    const trow = y * rowLen;
    for (let x = 0; x < width; x++) {
      const a = srow + xi[x * 4]! * 3;
      const b = srow + xi[x * 4 + 1]! * 3;
      const c = srow + xi[x * 4 + 2]! * 3;
      const d = srow + xi[x * 4 + 3]! * 3;
      const wa = xw[x * 4]!;
      const wb = xw[x * 4 + 1]!;
      const wc = xw[x * 4 + 2]!;
      const wd = xw[x * 4 + 3]!;
      const o = trow + x * 3;
      tmp[o] = (src[a]! * wa + src[b]! * wb + src[c]! * wc + src[d]! * wd + HALF) >> BITS;
      tmp[o + 1] = (src[a + 1]! * wa + src[b + 1]! * wb + src[c + 1]! * wc + src[d + 1]! * wd + HALF) >> BITS;
      tmp[o + 2] = (src[a + 2]! * wa + src[b + 2]! * wb + src[c + 2]! * wc + src[d + 2]! * wd + HALF) >> BITS;
    }
  }
}

/**
 * Pass 2, along y, in JavaScript: rounded half up, clamped (the cubic overshoots at edges).
 * upscale-vpass.wat is the same arithmetic in SIMD.
 */
function verticalPass(tmp: Int16Array, rowLen: number, ty: Taps, height: number): Uint8Array {
  const out = new Uint8Array(height * rowLen);
  // Stores clamp to 0..255; v is already a whole number.
  const clamped = new Uint8ClampedArray(out.buffer);
  const { index: yi, weight: yw } = ty;
  for (let y = 0; y < height; y++) {
    const r0 = yi[y * 4]! * rowLen;
    const r1 = yi[y * 4 + 1]! * rowLen;
    const r2 = yi[y * 4 + 2]! * rowLen;
    const r3 = yi[y * 4 + 3]! * rowLen;
    const w0 = yw[y * 4]!;
    const w1 = yw[y * 4 + 1]!;
    const w2 = yw[y * 4 + 2]!;
    const w3 = yw[y * 4 + 3]!;
    const o = y * rowLen;
    for (let i = 0; i < rowLen; i++) {
      // |tmp| < 2^9 and |w| ≤ 2^12: the sum fits an int32, and >> rounds it down, half up.
      clamped[o + i] = (tmp[r0 + i]! * w0 + tmp[r1 + i]! * w1 + tmp[r2 + i]! * w2 + tmp[r3 + i]! * w3 + HALF) >> BITS;
    }
  }
  return out;
}

/** The SIMD vertical pass; null where WebAssembly SIMD is missing. */
function vpassModule() {
  return simdModule(VPASS_WASM);
}
