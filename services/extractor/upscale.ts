/**
 * Cover-scaling a small image up to the engine's input size, in plain code (issue 14).
 *
 * Small sources (the lesson's 32×32 CIFAR images, thumbnails) are scaled up 7× to the backbone's
 * 224×224. libvips does that with its bicubic affine interpolator, 16 taps per output sample and
 * generic per-pixel set-up: about three quarters of a 32×32 PNG's decode CPU
 * (`npx tsx bench/decode-cost.ts`). The same Catmull-Rom cubic (a = −0.5) is separable, so here it
 * runs as two passes of 4 taps in fixed point over only the pixels the centre crop keeps.
 *
 * Geometry: a cover resize, one scale s = max(W/w, H/h) for both axes, the scaled image centred
 * on the output. Samples are placed as libvips's upscale places them, so the pixels stay what
 * they were before this module (PREPROCESSING_VERSION 1): output pixel x reads source coordinate
 * (x + left) / s − ½ with left = (w·s − W) / 2 — not the half-pixel convention (x + ½ + left) / s − ½
 * of PIL or OpenCV, which sits ½ / s of a source pixel further right. Measured on the demo (30 split
 * seeds, defaults): the centred convention gave 79.9% against 80.5% for this one (−0.6 ± 1.4),
 * and this one stays within 2 levels of libvips's bytes at whole scale factors (32 → 224), where
 * libvips's own affine set-up differs slightly at fractional ones. Taps beyond the source's edge
 * repeat its edge pixel. PREPROCESSING_VERSION 2 (image.ts) marks the change of bytes. Weights are rounded to 1/4096 and summed to exactly 4096 per output sample, and the
 * result is rounded and clamped to 0..255, so the output depends on nothing but the input bytes.
 */

/** Fixed-point precision of the weights: 12 bits per pass. */
const BITS = 12;
const ONE = 1 << BITS;

/** Catmull-Rom cubic (a = −0.5) at distance d. */
function cubic(d: number): number {
  const x = Math.abs(d);
  if (x <= 1) return 1.5 * x ** 3 - 2.5 * x ** 2 + 1;
  if (x < 2) return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2;
  return 0;
}

interface Taps {
  /** Source index of tap k of output i: index[4i + k], clamped to the source. */
  index: Int32Array;
  /** Its weight in 1/4096; the four of one output sum to 4096. */
  weight: Int32Array;
}

/** Source coordinate of output sample i's centre along an axis (see the file comment). */
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
  for (let i = 0; i < out; i++) {
    const x = sourceAt(i, scale, offset);
    const x0 = Math.floor(x);
    const t = x - x0;
    let sum = 0;
    for (let k = 0; k < 4; k++) {
      index[i * 4 + k] = Math.min(src - 1, Math.max(0, x0 - 1 + k)) - from;
      // The last weight takes the rounding remainder, so the four sum to ONE exactly.
      const w = k < 3 ? Math.round(cubic(t - (k - 1)) * ONE) : ONE - sum;
      weight[i * 4 + k] = w;
      sum += w;
    }
  }
  return { index, weight };
}

/** Cached taps per geometry: a run decodes many images of one size to one input size. */
const tapCache = new Map<string, Taps>();
function cachedTaps(src: number, out: number, scale: number, offset: number, from: number): Taps {
  const key = `${src} ${out} ${scale} ${offset} ${from}`;
  let t = tapCache.get(key);
  if (!t) {
    if (tapCache.size >= 64) tapCache.clear();
    t = taps(src, out, scale, offset, from);
    tapCache.set(key, t);
  }
  return t;
}

/** The one scale factor of a cover resize of w × h to width × height. */
export function coverScale(w: number, h: number, width: number, height: number): number {
  return Math.max(width / w, height / h);
}

/** The source pixels a cover upscale of w × h to width × height reads: a rectangle of the source. */
export interface SourceWindow {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * The part of a w × h source that coverUpscale reads for width × height (the centre crop's pixels
 * and the cubic's neighbours): decode only that, so a 100 × 100000 strip costs what its kept
 * square costs.
 */
export function upscaleWindow(w: number, h: number, width: number, height: number): SourceWindow {
  const scale = coverScale(w, h, width, height);
  const span = (src: number, out: number) => {
    const offset = (src * scale - out) / 2;
    const from = Math.max(0, Math.floor(sourceAt(0, scale, offset)) - 1);
    const to = Math.min(src - 1, Math.floor(sourceAt(out - 1, scale, offset)) + 2);
    return [from, to - from + 1] as const;
  };
  const [left, ww] = span(w, width);
  const [top, wh] = span(h, height);
  return { left, top, width: ww, height: wh };
}

/**
 * A w × h source scaled by coverScale to cover width × height and centre-cropped to it, with the
 * Catmull-Rom cubic; `src` holds the source's `window` (upscaleWindow's, the default being the
 * whole source) as RGB uint8, interleaved. Meant for scale > 1 (the taps of a downscale would
 * skip source pixels: libvips reduces instead).
 */
export function coverUpscale(
  src: Uint8Array,
  w: number,
  h: number,
  width: number,
  height: number,
  window: SourceWindow = { left: 0, top: 0, width: w, height: h },
): Uint8Array {
  const ww = window.width;
  if (src.length !== ww * window.height * 3) {
    throw new RangeError(`coverUpscale: ${src.length} bytes is not the window's ${ww}×${window.height}×3`);
  }
  const scale = coverScale(w, h, width, height);
  const tx = cachedTaps(w, width, scale, (w * scale - width) / 2, window.left);
  const ty = cachedTaps(h, height, scale, (h * scale - height) / 2, window.top);
  // Pass 1, along x: only the source rows some output row reads, kept at 2^12 scale in Int32.
  const rowLen = width * 3;
  const rows = window.height;
  const tmp = new Int32Array(rows * rowLen);
  const used = new Uint8Array(rows);
  for (let i = 0; i < ty.index.length; i++) used[ty.index[i]!] = 1;
  const { index: xi, weight: xw } = tx;
  for (let y = 0; y < rows; y++) {
    if (!used[y]) continue;
    const srow = y * ww * 3;
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
      tmp[o] = src[a]! * wa + src[b]! * wb + src[c]! * wc + src[d]! * wd;
      tmp[o + 1] = src[a + 1]! * wa + src[b + 1]! * wb + src[c + 1]! * wc + src[d + 1]! * wd;
      tmp[o + 2] = src[a + 2]! * wa + src[b + 2]! * wb + src[c + 2]! * wc + src[d + 2]! * wd;
    }
  }
  // Pass 2, along y: 2^24 scale, rounded half up, clamped (the cubic overshoots at edges).
  const out = new Uint8Array(height * rowLen);
  // Stores clamp to 0..255 (the cubic overshoots near edges); v is already a whole number.
  const clamped = new Uint8ClampedArray(out.buffer);
  const { index: yi, weight: yw } = ty;
  const half = 2 ** (2 * BITS - 1);
  const inv = 2 ** (-2 * BITS);
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
      // |tmp| < 2^21 and |w| ≤ 2^12: the sum (up to ~2^33, past int32) is exact in a double, and
      // scaling by a power of two is exact, so floor rounds it exactly.
      const v = Math.floor(
        (tmp[r0 + i]! * w0 + tmp[r1 + i]! * w1 + tmp[r2 + i]! * w2 + tmp[r3 + i]! * w3 + half) * inv,
      );
      clamped[o + i] = v;
    }
  }
  return out;
}
