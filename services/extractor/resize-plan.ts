/**
 * How decodeImage turns a decoded source into the engine's input: which part libvips decodes, and
 * whether libvips or the decoder's own code (upscale.ts, downscale.ts) does the cover resize.
 */
import { coverScale, type SourceWindow } from './cover-geometry.js';
import { downscaleIsExact, downscaleRunsInSimd, downscaleWindow } from './downscale.js';
import { upscaleIsExact, upscaleWindow } from './upscale.js';

/**
 * Largest side of the cover-scaled image before cropping. Past it, the crop is taken from the
 * source first: libvips coordinates stop at 10 million, and a 100000×1 strip scaled to cover
 * 224×224 would be 22.4 million pixels wide.
 */
const MAX_SCALED_SIDE = 65_535;

export interface ResizePlan {
  /** The part an extreme strip is cut to first (extremeCrop), in the oriented image. */
  strip: SourceWindow | undefined;
  /** The resize's source: the strip, or the whole oriented image. */
  sw: number;
  sh: number;
  /** Who scales: the decoder's own upscale or downscale, or (undefined) libvips. */
  resample: 'up' | 'down' | undefined;
  /** With `resample`: the part of the sw × sh source it reads. */
  window: SourceWindow | undefined;
  /** What libvips decodes, in the oriented image: the window (within the strip), or the strip. */
  region: SourceWindow | undefined;
}

/**
 * How an ow × oh source (after EXIF orientation) becomes width × height. An extreme strip is
 * first cut to the part cover-scaling keeps (`strip`, extremeCrop); that part, sw × sh, or the
 * whole image, is the source of the resize. For an 8-bit source, libvips decodes only the pixels
 * the crop reads (`region`: `window` in the whole image) and the decoder's own code does libvips's
 * arithmetic on them, byte for byte (test/decode-identity.test.ts): upscale.ts's bicubic, several
 * times the speed of libvips's generic affine, and downscale.ts's lanczos3 reduce, without
 * libvips's pipeline around it. Deeper sources (16-bit, float), geometries where rounding is too
 * close to call (upscaleIsExact, downscaleIsExact), downscales that would not run in SIMD
 * (downscaleRunsInSimd: the JavaScript passes are slower than libvips) and sources that sharp
 * would scale while loading (`loadScales`: JPEG and WebP shrink-on-load, SVG rendered to scale;
 * never once a strip is cut out first) are scaled by libvips: no `window`.
 */
export function resizePlan(
  ow: number,
  oh: number,
  eightBit: boolean,
  width: number,
  height: number,
  loadScales = false,
): ResizePlan {
  const strip = extremeCrop(ow, oh, width, height);
  const sw = strip?.width ?? ow;
  const sh = strip?.height ?? oh;
  const scale = coverScale(sw, sh, width, height);
  let resample: ResizePlan['resample'];
  let window: SourceWindow | undefined;
  // sharp scales while loading only what it resizes whole (no strip cut out first).
  const own = eightBit && (strip !== undefined || !loadScales);
  if (own && scale > 1 && upscaleIsExact(sw, sh, width, height)) {
    resample = 'up';
    window = upscaleWindow(sw, sh, width, height);
  } else if (
    own &&
    scale < 1 &&
    downscaleIsExact(sw, sh, width, height) &&
    downscaleRunsInSimd(sw, sh, width, height)
  ) {
    resample = 'down';
    window = downscaleWindow(sw, sh, width, height);
  }
  const region = window
    ? { ...window, left: window.left + (strip?.left ?? 0), top: window.top + (strip?.top ?? 0) }
    : strip;
  return { strip, sw, sh, resample, window, region };
}

/**
 * The source region that cover-resizing would keep, when the scaled image in between would be
 * too large to address (a 100000×1 strip); undefined for every ordinary shape, which libvips
 * crops itself. ow × oh is the size after EXIF orientation, which the pipeline applies before extracting.
 */
function extremeCrop(ow: number, oh: number, width: number, height: number) {
  const scale = Math.max(width / ow, height / oh);
  if (Math.max(ow, oh) * scale <= MAX_SCALED_SIDE) return undefined;
  const cw = Math.min(ow, Math.max(1, Math.round(width / scale)));
  const ch = Math.min(oh, Math.max(1, Math.round(height / scale)));
  return { left: Math.floor((ow - cw) / 2), top: Math.floor((oh - ch) / 2), width: cw, height: ch };
}
