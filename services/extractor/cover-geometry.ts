/**
 * The geometry of sharp's cover resize, shared by the decoder's own upscale (upscale.ts) and
 * downscale (downscale.ts): one scale factor for both axes, and the centre crop of the scaled image.
 */

/** The one scale factor of a cover resize of w × h to width × height. */
export function coverScale(w: number, h: number, width: number, height: number): number {
  // As sharp computes it (the smaller shrink, inverted), not max(W/w, H/h): the two can differ in
  // the last bit, and that bit decides round(w·s) when w·s is a whole number and a half.
  return 1 / Math.min(w / width, h / height);
}

/**
 * Where sharp's centre crop starts along an axis, in scaled pixels, given the scaled length
 * (round(src·scale) for an upscale, libvips's round(src / shrink) for a downscale).
 */
export function cropOffset(scaled: number, out: number): number {
  return Math.floor((scaled - out + 1) / 2);
}

/** The source pixels a cover resize reads: a rectangle of the source. */
export interface SourceWindow {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * Per-geometry results, kept for the last few geometries: a run decodes many images of one size
 * to one input size.
 */
export function remember<T>(cache: Map<string, T>, key: string, make: () => T): T {
  let v = cache.get(key);
  if (v === undefined) {
    if (cache.size >= 64) cache.clear();
    v = make();
    cache.set(key, v);
  }
  return v;
}
