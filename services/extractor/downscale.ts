/**
 * Cover-scaling an image down to the engine's input size, in plain code, giving libvips's bytes
 * (issue 14).
 *
 * A 640×480 photo is scaled down 2.14× to 224×224 by libvips's vips_resize: a lanczos3 reducev,
 * then a reduceh. The arithmetic is about 8 M multiply-adds, yet libvips's demand-driven pipeline
 * around it cost 1.0–1.7 ms of CPU beyond decoding the JPEG (bench/decode-cost.ts). Here the same
 * two passes run over only the pixels the centre crop keeps, with libvips's arithmetic, so the
 * bytes are the same and the published preprocessing does not change (PREPROCESSING_VERSION):
 * - geometry: one shrink factor f = 1 / coverScale (sharp passes 1/f to vips_resize, which passes
 *   1/(1/f) to each reduce); each axis of length n becomes ⌊n/f + ½⌋ long, and sharp crops that at
 *   ⌊(scaled − out + 1) / 2⌋; vertical first, rounded to whole levels, then horizontal;
 * - output sample i of an axis is centred at source index Y = (i + ½)·f − ½ − offset, offset =
 *   (1 + extra)/2 − 1 with extra = scaled·f − n (libvips splits the rounding of the side between
 *   both ends); its taps are the n_point = 2·rint(3f) + 1 source samples from ⌊Y⌋ − (⌈n_point/2⌉ − 1),
 *   beyond the edge repeating the edge sample;
 * - the fraction of Y is rounded (half up, from 1/128 steps) to 1/64, and each of the 65 masks is
 *   lanczos3 (sinc(x)·sinc(x/3), |x| ≤ 3) at the taps' distances / f, normalised to sum 1, then
 *   each weight × 4096 truncated toward zero (int16);
 * - each pass sums samples × weights exactly, adds 2048, shifts right by 12 and clamps to 0..255
 *   (libvips's C path and its Highway vector path, both used by sharp's build, agree).
 * Not reproduced, so decodeImage leaves them to libvips: shrinks of 4 and more (vips_resize first
 * box-shrinks by ⌊f/2⌋ there), sources sharp scales while loading (JPEG at f ≥ 3 and WebP, unless
 * rotated: image.ts sharpScalesOnLoad), and geometries where a position, a side or a weight falls
 * within a hair of a rounding boundary, where the last bit of libvips's own floating-point steps
 * (it accumulates positions region by region) decides: downscaleIsExact.
 * Found by measurement against sharp 0.33.5 / libvips 8.15.3 and held to it byte for byte:
 * test/downscale.test.ts (random images and geometries) and test/decode-identity.test.ts. A sharp
 * or libvips upgrade that changes libvips's arithmetic shows there first; then this follows it or
 * decodeImage stops using it.
 */

import { coverScale, cropOffset, remember, type SourceWindow } from './cover-geometry.js';
import { DOWNSCALE_WASM } from './downscale.wasm.js';
import { fitsSimdMemory, simdModule } from './wasm-simd.js';

/** Fixed-point precision of the weights (VIPS_INTERPOLATE_SHIFT). */
const BITS = 12;
const ONE = 1 << BITS;
const HALF = ONE >> 1;

/** Sub-pixel positions per source pixel (VIPS_TRANSFORM_SCALE): masks for 0/64 … 64/64. */
const POSITIONS = 64;

/** Shrinks from here on are box-shrunk by libvips first (vips_resize's gap of 2), which this does not do. */
export const MAX_SHRINK = 4;

function sinc(x: number): number {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos3(x: number): number {
  return x >= -3 && x <= 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** libvips's reduce masks for one shrink factor: n taps at each of the 65 positions. */
interface Kernel {
  n: number;
  /** Mask of position t (0..64): weights[t·n + k], in 1/4096. */
  weights: Int16Array;
  /** False when a weight sits within a hair of the truncation's step (libm's last bit decides). */
  exact: boolean;
}

const kernelCache = new Map<string, Kernel>();

/** vips_reduce_make_mask for lanczos3, then libvips's int16 copy (truncated toward zero). */
function kernel(shrink: number): Kernel {
  return remember(kernelCache, String(shrink), () => {
    const n = 2 * Math.round(3 * shrink) + 1;
    const weights = new Int16Array((POSITIONS + 1) * n);
    const c = new Float64Array(n);
    let exact = true;
    for (let t = 0; t <= POSITIONS; t++) {
      const half = t / POSITIONS + n / 2 - 1;
      let sum = 0;
      for (let k = 0; k < n; k++) {
        c[k] = lanczos3((k - half) / shrink);
        sum += c[k]!;
      }
      for (let k = 0; k < n; k++) {
        const v = (c[k]! / sum) * ONE;
        const r = Math.round(v);
        if (r !== 0 && Math.abs(v - r) < 1e-9) exact = false;
        weights[t * n + k] = Math.trunc(v);
      }
    }
    return { n, weights, exact };
  });
}

/** One axis of the downscale: the kept outputs' taps. */
interface Axis {
  /** libvips's length of the axis before the crop. */
  scaled: number;
  /** Per kept output: source index of its first tap (may lie before the source: edges repeat). */
  first: Int32Array;
  /** Per kept output: its mask's position, 0..64. */
  position: Int32Array;
  /** False where rounding is too close to call (see downscaleIsExact). */
  exact: boolean;
}

/** How close (in 1/128 pixel) a position may come to a step before it counts as ambiguous. */
function tieBound(len: number, scaled: number): number {
  // libvips adds f row after row from each region's first row: a few ulps of len per output.
  return 1e-9 + 128 * scaled * (len + 1) * 2 ** -48;
}

/** The kept outputs' taps along an axis of `len` samples, shrunk by `shrink`, cropped to `out`. */
function axis(len: number, out: number, shrink: number): Axis {
  const scaled = Math.floor(len / shrink + 0.5);
  const extra = scaled * shrink - len;
  const offset = (1 + extra) / 2 - 1;
  const { n } = kernel(shrink);
  const before = Math.ceil(n / 2) - 1;
  const crop = cropOffset(scaled, out);
  const first = new Int32Array(out);
  const position = new Int32Array(out);
  const tie = tieBound(len, scaled);
  const whole = len / shrink;
  let exact = Math.abs(whole - Math.floor(whole) - 0.5) > 1e-9 && scaled >= out;
  for (let i = 0; i < out; i++) {
    const y = (i + crop + 0.5) * shrink - 0.5 - offset;
    const a = y * 2 * POSITIONS;
    const step = Math.trunc(a);
    first[i] = Math.trunc(y) - before;
    position[i] = ((step & (2 * POSITIONS - 1)) + 1) >> 1;
    // Only odd 1/128 steps change the rounded 1/64. A whole pixel is no boundary: just below it,
    // mask 64/64 from the pixel before has the same weights on the same source samples as mask 0
    // from it (its first tap and the other's last lie beyond lanczos3's reach, at weight 0).
    const near = Math.round(a);
    if (near % 2 !== 0 && Math.abs(a - near) < tie) exact = false;
  }
  return { scaled, first, position, exact };
}

const axisCache = new Map<string, Axis>();
function cachedAxis(len: number, out: number, shrink: number): Axis {
  return remember(axisCache, `${len} ${out} ${shrink}`, () => axis(len, out, shrink));
}

/** libvips's shrink factor of a cover downscale of w × h to width × height. */
function coverShrink(w: number, h: number, width: number, height: number): number {
  return 1 / coverScale(w, h, width, height);
}

/**
 * Whether coverDownscale gives libvips's bytes for this geometry for certain: a downscale by less
 * than MAX_SHRINK, with no position, scaled side or weight within a hair of a rounding boundary
 * (there the last bit of libvips's floating-point steps decides, and ours may round the other way).
 * decodeImage leaves every other geometry to libvips.
 */
export function downscaleIsExact(w: number, h: number, width: number, height: number): boolean {
  return remember(exactCache, `${w} ${h} ${width} ${height}`, () => {
    const scale = coverScale(w, h, width, height);
    if (!(scale < 1)) return false;
    const shrink = 1 / scale;
    if (!(shrink < MAX_SHRINK)) return false; // checked first: the masks of a large shrink are long
    const taps = 3 * shrink;
    if (Math.abs(taps - Math.floor(taps) - 0.5) < 1e-9) return false; // rint's tie: 2·rint(3f) + 1 taps
    // vips_resize box-shrinks by ⌊n / scaled / 2⌋ first where that is 2 or more.
    for (const [len, out] of [
      [w, width],
      [h, height],
    ] as const) {
      const a = cachedAxis(len, out, shrink);
      if (!a.exact || Math.floor(len / a.scaled / 2) > 1) return false;
    }
    return kernel(shrink).exact;
  });
}
const exactCache = new Map<string, boolean>();

/** The part of a w × h source that coverDownscale reads for width × height (the crop's taps). */
export function downscaleWindow(w: number, h: number, width: number, height: number): SourceWindow {
  const shrink = coverShrink(w, h, width, height);
  const { n } = kernel(shrink);
  const span = (len: number, out: number) => {
    const { first } = cachedAxis(len, out, shrink);
    const from = Math.max(0, first[0]!);
    const to = Math.min(len - 1, first[out - 1]! + n - 1);
    return [from, to - from + 1] as const;
  };
  const [left, ww] = span(w, width);
  const [top, wh] = span(h, height);
  return { left, top, width: ww, height: wh };
}

/** How the passes run: WebAssembly SIMD (the default where available) or plain JavaScript. */
export type DownscalePass = 'wasm' | 'js';

/** The tap tables of one geometry, as both passes read them. */
interface Plan {
  n: number;
  /** Blocks of 16 taps per output pixel of the horizontal pass. */
  blocks: number;
  /** Taps of the vertical pass: n rounded up to even. */
  m: number;
  /**
   * Vertical: per output row, m byte offsets into the window (row start + first column), then m
   * int16 weights.
   */
  vtaps: Int32Array;
  /** Bytes of each source row the vertical pass reads (the columns the horizontal pass needs). */
  len: number;
  /** Columns of the intermediate rows: the horizontal taps' span, edges included. */
  midColumns: number;
  /** Edge columns repeated before and after the computed ones. */
  padLeft: number;
  padRight: number;
  /**
   * Horizontal: per output pixel, its first tap's column in an intermediate row (then 3 unused
   * int32), then its weights in blocks of 16 int16, zero-padded.
   */
  htaps: Int32Array;
}

function makePlan(w: number, h: number, width: number, height: number, window: SourceWindow): Plan {
  const shrink = coverShrink(w, h, width, height);
  const { n, weights } = kernel(shrink);
  const ax = cachedAxis(w, width, shrink);
  const ay = cachedAxis(h, height, shrink);
  const stride = window.width * 3;
  // Columns the horizontal pass reads, edges beyond the source included.
  const minS = ax.first[0]!;
  const maxS = ax.first[width - 1]! + n - 1;
  const lo = Math.max(0, minS);
  const hi = Math.min(w - 1, maxS);
  // Per output row: m offsets, then m int16 weights (m/2 int32), m = n rounded up to even: the
  // SIMD pass takes taps two at a time, the padding tap (the last row again) weighing 0.
  const m = n + (n % 2);
  const vtaps = new Int32Array(height * m * 1.5);
  const vw = new Int16Array(vtaps.buffer);
  for (let y = 0; y < height; y++) {
    const at = ay.position[y]! * n;
    for (let k = 0; k < m; k++) {
      const row = Math.min(h - 1, Math.max(0, ay.first[y]! + Math.min(k, n - 1))) - window.top;
      vtaps[y * m * 1.5 + k] = row * stride + (lo - window.left) * 3;
      vw[(y * m * 1.5 + m) * 2 + k] = k < n ? weights[at + k]! : 0;
    }
  }
  const blocks = Math.ceil(n / 16);
  const per = 4 + 8 * blocks;
  const htaps = new Int32Array(width * per);
  const hw = new Int16Array(htaps.buffer);
  for (let x = 0; x < width; x++) {
    htaps[x * per] = ax.first[x]! - minS;
    const at = ax.position[x]! * n;
    for (let k = 0; k < n; k++) hw[(x * per + 4) * 2 + k] = weights[at + k]!;
  }
  return {
    n,
    m,
    blocks,
    vtaps,
    len: (hi - lo + 1) * 3,
    midColumns: maxS - minS + 1,
    padLeft: lo - minS,
    padRight: maxS - hi,
    htaps,
  };
}

const planCache = new Map<string, Plan>();

function cachedPlan(w: number, h: number, width: number, height: number, window: SourceWindow): Plan {
  const key = `${w} ${h} ${width} ${height} ${window.left} ${window.top} ${window.width}`;
  return remember(planCache, key, () => makePlan(w, h, width, height, window));
}

/** Sizes of the SIMD passes' buffers for a plan. */
function buffers(plan: Plan, width: number, height: number) {
  // Intermediate rows hold the horizontal taps' columns, then room for the SIMD passes' reads and
  // writes (16 bytes, or 16 pixels, at a time; whole blocks of 16 taps).
  const columns = plan.midColumns + 16 * plan.blocks + 11;
  const midStride = columns * 3;
  return {
    columns,
    midStride,
    midLength: height * midStride + 64,
    planeLength: height * columns,
    outLength: width * height * 3,
  };
}

/** The WebAssembly memory regions of one call: source, taps, rows between the passes, planes, output. */
function regions(plan: Plan, srcLength: number, width: number, height: number): number[] {
  const { midLength, planeLength, outLength } = buffers(plan, width, height);
  return [
    srcLength + 32,
    plan.vtaps.byteLength,
    plan.htaps.byteLength,
    midLength,
    3 * planeLength + 64,
    outLength + 16,
  ];
}

/**
 * Whether coverDownscale runs in WebAssembly SIMD for this geometry (the runtime has it, and the
 * buffers fit its memory cap). Its JavaScript passes give the same bytes but cost several times
 * libvips's resize: decodeImage uses coverDownscale only where this holds.
 */
export function downscaleRunsInSimd(w: number, h: number, width: number, height: number): boolean {
  if (!downscaleModule()) return false;
  const window = downscaleWindow(w, h, width, height);
  const plan = cachedPlan(w, h, width, height, window);
  return fitsSimdMemory(regions(plan, window.width * window.height * 3, width, height));
}

/**
 * A w × h source scaled down by libvips's factor to cover width × height and centre-cropped to
 * it, with libvips's lanczos3 reduce; `src` holds the source's `window` (downscaleWindow's, the
 * default being the whole source) as RGB uint8, interleaved. Meant for the geometries
 * downscaleIsExact accepts. `pass` chooses the passes' code (the same bytes either way; tests
 * compare them).
 */
export function coverDownscale(
  src: Uint8Array,
  w: number,
  h: number,
  width: number,
  height: number,
  window: SourceWindow = { left: 0, top: 0, width: w, height: h },
  pass: DownscalePass = downscaleModule() ? 'wasm' : 'js',
): Uint8Array {
  if (src.length !== window.width * window.height * 3) {
    throw new RangeError(`coverDownscale: ${src.length} bytes is not the window's ${window.width}×${window.height}×3`);
  }
  return downscale(src, w, h, width, height, window, pass)!;
}

/**
 * coverDownscale of a window that `fill` writes (RGB, interleaved, window.width × window.height)
 * into the buffer it is given: with WebAssembly, the passes' own memory, so a decoder writes the
 * window where the passes read it, with no buffer of its own and no copy (issue 14: a 640×480
 * JPEG's window is 0.7 MB; 0.92–0.97× the CPU of decoding into a buffer and copying it, measured in
 * one process). undefined when `fill` returns false (it could not decode).
 */
export function coverDownscaleFrom(
  fill: (window: Uint8Array) => boolean,
  w: number,
  h: number,
  width: number,
  height: number,
  window: SourceWindow,
  pass: DownscalePass = downscaleModule() ? 'wasm' : 'js',
): Uint8Array | undefined {
  return downscale(fill, w, h, width, height, window, pass);
}

function downscale(
  source: Uint8Array | ((window: Uint8Array) => boolean),
  w: number,
  h: number,
  width: number,
  height: number,
  window: SourceWindow,
  pass: DownscalePass,
): Uint8Array | undefined {
  if (!(coverScale(w, h, width, height) < 1)) throw new RangeError('coverDownscale: not a downscale');
  const length = window.width * window.height * 3;
  const plan = cachedPlan(w, h, width, height, window);
  const { columns, midStride, midLength, planeLength, outLength } = buffers(plan, width, height);
  const vm = pass === 'wasm' ? downscaleModule() : null;
  if (pass === 'wasm' && !vm) throw new Error('coverDownscale: WebAssembly SIMD is not available here');
  const at = vm?.reserve(regions(plan, length, width, height));
  if (!vm || !at) {
    let src = source as Uint8Array;
    if (typeof source === 'function') {
      src = new Uint8Array(length);
      if (!source(src)) return undefined;
    }
    const mid = new Uint8Array(midLength);
    verticalPass(src, plan, height, mid, midStride);
    padEdges(mid, midStride, plan, height);
    return horizontalPass(mid, midStride, plan, width, height);
  }
  const [s, vt, ht, mid, planes, out] = at as [number, number, number, number, number, number];
  const mem = vm.memory.buffer;
  const into = new Uint8Array(mem, s, length);
  if (typeof source !== 'function') into.set(source);
  else if (!source(into)) return undefined;
  new Int32Array(mem, vt, plan.vtaps.length).set(plan.vtaps);
  new Int32Array(mem, ht, plan.htaps.length).set(plan.htaps);
  const passes = vm.exports as unknown as WasmPasses;
  passes.reducev(s, plan.len, vt, plan.m, height, mid + plan.padLeft * 3, midStride);
  padEdges(new Uint8Array(mem, mid, midLength), midStride, plan, height);
  passes.planes(mid, midStride, plan.midColumns, height, planes, planeLength, columns);
  passes.reduceh(planes, planeLength, columns, ht, plan.blocks, width, height, out);
  // A copy: the module's memory is reused by the next call.
  return new Uint8Array(mem, out, outLength).slice();
}

interface WasmPasses {
  reducev(src: number, len: number, taps: number, m: number, rows: number, out: number, outStride: number): void;
  planes(
    mid: number,
    stride: number,
    pixels: number,
    rows: number,
    planes: number,
    plane: number,
    planeStride: number,
  ): void;
  reduceh(
    planes: number,
    plane: number,
    planeStride: number,
    taps: number,
    blocks: number,
    width: number,
    rows: number,
    out: number,
  ): void;
}

/** The SIMD passes; null where WebAssembly SIMD is missing. */
function downscaleModule() {
  return simdModule(DOWNSCALE_WASM);
}

/**
 * Pass 1, along y (reducev), in JavaScript: each output row's columns `plan.len` bytes long, into
 * `mid` after the left edge's room. downscale.wat's reducev is the same arithmetic in SIMD.
 */
function verticalPass(src: Uint8Array, plan: Plan, height: number, mid: Uint8Array, midStride: number): void {
  const { n, m, vtaps, len } = plan;
  const vw = new Int16Array(vtaps.buffer);
  const clamped = new Uint8ClampedArray(mid.buffer, mid.byteOffset, mid.byteLength);
  for (let y = 0; y < height; y++) {
    const t = y * m * 1.5;
    const o = y * midStride + plan.padLeft * 3;
    for (let i = 0; i < len; i++) {
      let sum = HALF;
      for (let k = 0; k < n; k++) sum += src[vtaps[t + k]! + i]! * vw[(t + m) * 2 + k]!;
      // Stores clamp to 0..255; >> rounds down, after the half added.
      clamped[o + i] = sum >> BITS;
    }
  }
}

/** The edge columns beyond the source, as libvips's reduceh sees them: copies of the edge pixel. */
function padEdges(mid: Uint8Array, midStride: number, plan: Plan, height: number): void {
  const { padLeft, padRight } = plan;
  if (padLeft === 0 && padRight === 0) return;
  const last = padLeft * 3 + plan.len - 3;
  for (let y = 0; y < height; y++) {
    const row = y * midStride;
    for (let c = 0; c < padLeft; c++) mid.copyWithin(row + c * 3, row + padLeft * 3, row + padLeft * 3 + 3);
    for (let c = 1; c <= padRight; c++) mid.copyWithin(row + last + c * 3, row + last, row + last + 3);
  }
}

/**
 * Pass 2, along x (reduceh), in JavaScript: RGB pixels from the intermediate rows, rounded and
 * clamped. downscale.wat's reduceh is the same arithmetic in SIMD.
 */
function horizontalPass(mid: Uint8Array, midStride: number, plan: Plan, width: number, height: number): Uint8Array {
  const { n, htaps, blocks } = plan;
  const out = new Uint8Array(width * height * 3);
  const clamped = new Uint8ClampedArray(out.buffer);
  const hw = new Int16Array(htaps.buffer);
  const per = 4 + 8 * blocks;
  for (let y = 0; y < height; y++) {
    const row = y * midStride;
    for (let x = 0; x < width; x++) {
      const p = row + htaps[x * per]! * 3;
      const wt = (x * per + 4) * 2;
      let r = HALF;
      let g = HALF;
      let b = HALF;
      for (let k = 0; k < n; k++) {
        const wk = hw[wt + k]!;
        r += mid[p + k * 3]! * wk;
        g += mid[p + k * 3 + 1]! * wk;
        b += mid[p + k * 3 + 2]! * wk;
      }
      const o = (y * width + x) * 3;
      clamped[o] = r >> BITS;
      clamped[o + 1] = g >> BITS;
      clamped[o + 2] = b >> BITS;
    }
  }
  return out;
}
