/**
 * Image decoding for the extractor: the only module that runs sharp on pipeline images.
 *
 * Accepted input (the formats the operator allows, JPEG, PNG, WebP, GIF, TIFF and AVIF by default)
 * becomes interleaved 8-bit sRGB (HWC, exactly width × height × 3 bytes) at the backbone's input
 * size, or an `ImageError` whose message says what is wrong with the file in words a person can
 * act on. Those messages are recorded per image in the run's row metadata.
 *
 * Image bytes are untrusted. Before any decoder sees them: the real format is read from the
 * signature (image-format.ts) and must be allowed; the header's size must be within the pixel
 * limit, and an SVG's embedded images too (svg-check.ts). Decoding itself is bounded in time and
 * memory by running it in a decoder process (decoder-pool.ts) — except small plain PNGs, which
 * the pool decodes itself (png-simple.ts: files of at most 64 KiB, rows of at most 256 KiB).
 * sharp's own `.timeout()` is not used: it is checked as output tiles complete, and a 224×224
 * output is one tile, so it stopped neither a 9 s SVG render nor a 1.6 s 100-megapixel PNG decode
 * when set to 1-2 s (measured).
 *
 * Reasons are deterministic: they are built from the bytes (signature, header, structure) and
 * from which step failed, never from libvips's error text. libvips keeps one error buffer per
 * process, so under concurrent decodes its text can belong to another image, or be empty; it is
 * kept as the error's `cause`, for logs.
 */
import sharp from 'sharp';
import { DEFAULT_IMAGE_FORMATS, type ImageFormat, type JpegDecoder } from '../../shared/config.js';
import { ImageError } from '../../shared/errors.js';
import { outOfMemoryReason } from './decode-limits.js';
import { decodePlainPng } from './png-simple.js';
import { sniffImageFormat } from './image-format.js';
import { checkSvg, checkSvgPixels } from './svg-check.js';
import { coverDownscale, coverDownscaleFrom } from './downscale.js';
import { nativeJpeg, nativeJpegHeader } from './jpeg-native.js';
import { type ResizePlan, resizePlan } from './resize-plan.js';
import type { SourceWindow } from './cover-geometry.js';
import { coverUpscale } from './upscale.js';

export interface DecodeOptions {
  /** Output width in pixels (the engine's input width). */
  width: number;
  /** Output height in pixels (the engine's input height). */
  height: number;
  /** Largest input width × height accepted (decompression-bomb guard; DEEPFEAT_MAX_IMAGE_PIXELS). */
  maxPixels: number;
  /** Formats decoded (DEEPFEAT_IMAGE_FORMATS); default DEFAULT_IMAGE_FORMATS (no SVG, no HEIF). */
  formats?: readonly string[];
  /** The decoder process's memory limit in MiB (DEEPFEAT_DECODE_MEMORY), named when decoding runs out. */
  memoryLimitMiB?: number;
  /** 'auto' (default): libjpeg-turbo directly where it gives sharp's pixels (jpeg-native.ts); 'sharp': always sharp (DEEPFEAT_JPEG_DECODER). */
  jpegDecoder?: JpegDecoder;
}

/**
 * sharp's prebuilt libvips (the npm package's; it reports its bundled libraries, AV1's 'aom'
 * among them) has no HEVC decoder, so HEIC cannot be read there whatever the settings. A libvips
 * built by the operator may have one (libde265): then HEIC is decoded as 'heif'.
 */
const HEVC_DECODER = !('aom' in sharp.versions) || 'de265' in sharp.versions;

/**
 * Version of what `decodeImage` makes of a file's bytes. The feature cache keys every vector by it
 * (services/extractor/feature-cache/): bump it with any change that can alter the decoded pixels
 * (orientation, colour conversion, alpha, frame choice, resize kernel or crop, a sharp or libvips
 * upgrade that changes pixels), so no vector made by the old decoding is reused.
 */
export const PREPROCESSING_VERSION = 1;

/**
 * Decode `bytes` to RGB uint8 HWC at `width` × `height`.
 *
 * EXIF orientation is applied, animated and multi-page images give their first frame (only that
 * frame is decoded), alpha is flattened onto white, grey / CMYK / 16-bit / ICC-tagged inputs
 * become 8-bit sRGB, and the image is resized to cover the target and centre-cropped (the aspect
 * ratio is kept, nothing is letterboxed), however extreme its aspect ratio.
 *
 * @throws ImageError for every problem with the bytes themselves.
 */
export async function decodeImage(bytes: Uint8Array, opts: DecodeOptions): Promise<Uint8Array> {
  const { width, height, maxPixels } = opts;
  const formats: readonly string[] = opts.formats ?? DEFAULT_IMAGE_FORMATS;
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) {
    // A caller bug, not a property of the image: fail loudly with a plain error.
    throw new RangeError(`decodeImage: width and height must be positive integers, got ${width}×${height}`);
  }
  if (bytes.byteLength === 0) throw new ImageError('empty file (0 bytes)');

  const sniffed = sniffImageFormat(bytes);
  if (sniffed.kind === 'unknown') {
    throw new ImageError(`not an image: unrecognised format${sniffed.hint ? ` (${sniffed.hint})` : ''}`);
  }
  const convert = 'convert it to PNG or JPEG';
  if (sniffed.kind === 'unsupported') {
    throw new ImageError(`unsupported format: ${sniffed.name}${sniffed.note ? ` (${sniffed.note})` : ''}: ${convert}`);
  }
  if (sniffed.heic && !HEVC_DECODER)
    throw new ImageError(`unsupported format: HEIC (no decoder installed): ${convert}`);
  const { format } = sniffed;
  if (!formats.includes(format)) {
    throw new ImageError(
      `format ${format} is not accepted here (DEEPFEAT_IMAGE_FORMATS=${formats.join(',')}): ${convert}`,
    );
  }

  // libspng decodes a PNG that stops inside its pixel data, filling the rest, and calls it good:
  // a broken upload would become a feature row of mostly nothing. No IEND anywhere: it stopped.
  if (
    format === 'png' &&
    Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf('IEND', 8, 'latin1') < 0
  ) {
    throw new ImageError(`truncated png image: the file ends (at ${bytes.byteLength} bytes) before its IEND chunk`);
  }
  // An SVG's references are checked from its text before any parser reads it (svg-check.ts).
  const svg = format === 'svg' ? await checkSvg(bytes, { probe: probeEmbedded }) : undefined;

  // The plainest PNGs, scaled up or at the input size, are decoded without libvips (decodePlainPng).
  const plain = format === 'png' ? decodePlainPng(bytes, opts) : undefined;
  if (plain) return plain;

  // JPEGs that decodeImage resamples itself, read by libjpeg-turbo without libvips around it.
  if (format === 'jpeg' && opts.jpegDecoder !== 'sharp') {
    const pixels = decodeJpegNatively(bytes, opts);
    if (pixels) return pixels;
  }

  // The header only: cheap, and it gives the size the limits are checked against.
  let meta: sharp.Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false, pages: 1, page: 0 }).metadata();
  } catch (err) {
    const cut = truncation(format, bytes);
    if (cut) throw new ImageError(`truncated ${format} image: ${cut}`, { cause: err });
    const why = "the decoder cannot read its header (damaged, or past the decoder's limits)";
    throw new ImageError(`unreadable ${format} image: ${why}`, { cause: err });
  }
  // libvips picks its loader from the bytes too; both must agree, or the allow-list means nothing.
  const loader = format === 'avif' ? 'heif' : format;
  if (meta.format !== loader) {
    const as = String(meta.format);
    throw new ImageError(`unreadable ${format} image: its signature says ${format} but the decoder reads it as ${as}`);
  }
  // With pages: 1, height is the first page's (a GIF's canvas, a TIFF's first directory).
  const w = meta.width ?? 0;
  const h = meta.pageHeight ?? meta.height ?? 0;
  if (!(w > 0 && h > 0)) throw new ImageError(`unreadable ${format} image: its header gives no size`);
  if (w * h > maxPixels) throw tooLarge(w, h, maxPixels);
  if (svg) checkSvgPixels({ width: w, height: h }, svg, maxPixels);

  const [ow, oh] = (meta.orientation ?? 1) >= 5 ? [h, w] : [w, h];
  const rotated = meta.orientation !== undefined && meta.orientation !== 1;
  const loadScales = sharpScalesOnLoad(format, rotated, Math.min(w / width, h / height));
  const { sw, sh, resample, window, region } = resizePlan(ow, oh, meta.depth === 'uchar', width, height, loadScales);

  let out: { data: Buffer; info: sharp.OutputInfo };
  try {
    let pipeline = sharp(bytes, {
      limitInputPixels: maxPixels, // checked again by libvips itself
      pages: 1, // first frame of an animated GIF/WebP, first page of a TIFF: the others are never decoded
      page: 0,
    });
    // Apply EXIF orientation. Without a tag, or with 1 (as stored), sharp would only copy the image
    // to drop the tag, which raw output never carries: the same pixels, one libvips operation less.
    // The header read above is the same loader on the same bytes, so it sees the tag the pipeline would.
    if (rotated) pipeline = pipeline.rotate();
    if (region) pipeline = pipeline.extract(region);
    // flatten, toColourspace and removeAlpha cost nothing when there is nothing to do (sharp checks
    // for alpha and colourspace itself, measured: bench/decode-cost.ts), so they stay unconditional.
    pipeline = pipeline.flatten({ background: { r: 255, g: 255, b: 255 } }).toColourspace('srgb');
    if (!window) pipeline = pipeline.resize(width, height, { fit: 'cover', position: 'centre' });
    pipeline = pipeline.removeAlpha().raw({ depth: 'uchar' });
    out = await pipeline.toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw decodeFailure(err, bytes, format, opts);
  }

  if (window) {
    const { info, data } = out;
    if (info.channels !== 3 || info.width !== window.width || info.height !== window.height) {
      throw new ImageError(
        `could not convert ${format} to RGB: got ${info.width}×${info.height}×${info.channels}, ` +
          `expected ${window.width}×${window.height}×3 before scaling`,
      );
    }
    const src = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return resampleWindow(src, { sw, sh, resample, window }, width, height);
  }
  const { info, data } = out;
  const expected = width * height * 3;
  if (info.channels !== 3 || info.width !== width || info.height !== height || data.byteLength !== expected) {
    throw new ImageError(
      `could not convert ${format} to RGB: got ${info.width}×${info.height}×${info.channels} ` +
        `(${data.byteLength} bytes), expected ${width}×${height}×3`,
    );
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/** The cover resize of a decoded window, by decodeImage's own code (resizePlan's `resample`). */
function resampleWindow(
  src: Uint8Array,
  plan: Pick<ResizePlan, 'sw' | 'sh' | 'resample'> & { window: SourceWindow },
  width: number,
  height: number,
): Uint8Array {
  const { sw, sh, window } = plan;
  return plan.resample === 'down'
    ? coverDownscale(src, sw, sh, width, height, window)
    : coverUpscale(src, sw, sh, width, height, window);
}

function tooLarge(w: number, h: number, maxPixels: number): ImageError {
  return new ImageError(
    `image too large: ${w}×${h} pixels exceeds the limit of ${maxPixels} (DEEPFEAT_MAX_IMAGE_PIXELS)`,
  );
}

/**
 * decodeImage for a JPEG that libjpeg-turbo can decode as libvips would (jpeg-native.ts) and that
 * decodeImage resamples itself (a `window`): the window's rows and columns only, then the same
 * resampling as after sharp's decode. undefined: sharp's path decodes it (or names its problem).
 */
export function decodeJpegNatively(bytes: Uint8Array, opts: DecodeOptions): Uint8Array | undefined {
  const addon = nativeJpeg();
  // A file cut short goes to sharp at once: it would fail late here and be decoded twice.
  const header = addon && !truncation('jpeg', bytes) && nativeJpegHeader(addon, bytes);
  if (!addon || !header) return undefined;
  const { width, height, maxPixels } = opts;
  const { width: w, height: h } = header;
  if (w * h > maxPixels) throw tooLarge(w, h, maxPixels);
  const loadScales = sharpScalesOnLoad('jpeg', false, Math.min(w / width, h / height));
  const { sw, sh, resample, window, region } = resizePlan(w, h, true, width, height, loadScales);
  if (!window || !region) return undefined;
  const decodeInto = (out: Uint8Array): boolean => {
    try {
      return addon.decode(bytes, region.left, region.top, region.width, region.height, out) === undefined;
    } catch {
      return false; // an argument the addon refuses (it cannot happen: header and plan agree): sharp decides
    }
  };
  // A downscale's window is decoded straight into the passes' memory (no 0.7 MB buffer and copy
  // per 640×480 photo). Otherwise every byte is written by the decode (or the decode failed and
  // the buffer is dropped): no zero-filling.
  if (resample === 'down') return coverDownscaleFrom(decodeInto, sw, sh, width, height, window);
  const src = Buffer.allocUnsafe(region.width * region.height * 3);
  return decodeInto(src) ? resampleWindow(src, { sw, sh, resample, window }, width, height) : undefined;
}

/**
 * Whether sharp (0.33.5, pipeline.cc) would load this source already scaled, given the cover's
 * shrink (source ÷ target on the side that decides): then its pixels are not a full-size decode
 * scaled afterwards, and decodeImage's own resampling must not stand in for its resize. sharp does
 * that only when nothing rotates or crops the image before the resize: JPEGs decoded at 1/2, 1/4
 * or 1/8 by libjpeg from a shrink of 3 on (below 2 none, and from 2 to 3 sharp keeps the full
 * size: "known libjpeg rounding errors"), WebP at any downscale, SVG rendered at the target's
 * scale, up or down.
 */
function sharpScalesOnLoad(format: ImageFormat, rotated: boolean, shrink: number): boolean {
  if (rotated) return false;
  if (format === 'jpeg') return shrink >= 3;
  if (format === 'webp') return shrink > 1;
  return format === 'svg' && shrink !== 1;
}

/** Size of an image embedded in an SVG, from its header; throws ImageError if that cannot be read. */
async function probeEmbedded(bytes: Uint8Array, format: 'png' | 'jpeg' | 'svg') {
  try {
    const m = await sharp(bytes, { limitInputPixels: false }).metadata();
    if (m.format === format && (m.width ?? 0) > 0 && (m.height ?? 0) > 0) return { width: m.width!, height: m.height! };
  } catch (err) {
    throw new ImageError(`svg refused: the header of an embedded ${format} image cannot be read`, { cause: err });
  }
  throw new ImageError(`svg refused: an embedded image is not the ${format} its signature says, or gives no size`);
}

/**
 * The reason for a failed decode, from facts about the bytes, never from libvips's text (see the
 * file comment): out of memory, cut short, or a decoder that rejected the data.
 */
function decodeFailure(err: unknown, bytes: Uint8Array, format: ImageFormat, opts: DecodeOptions): ImageError {
  const msg = err instanceof Error ? err.message : String(err);
  // sharp's own words, not libvips's buffer: safe to read. Unexpected after the header check, but
  // a loader may see a larger size than the header said.
  if (/^Input image exceeds pixel limit$/.test(msg)) {
    const why = `decoding found more than ${opts.maxPixels} pixels (DEEPFEAT_MAX_IMAGE_PIXELS)`;
    return new ImageError(`image too large: ${why}`, { cause: err });
  }
  // The one guess from text: running out of memory fails an allocation somewhere in a codec, and
  // each says so in its own words. In a decoder process (one image at a time) the text is this
  // image's; the worst a mixed-up buffer can do elsewhere is call a damaged file out of memory.
  if (/out of memory|memory allocation|insufficient memory|failed to allocate|cannot allocate/i.test(msg)) {
    return new ImageError(outOfMemoryReason(opts.memoryLimitMiB), { cause: err });
  }
  const cut = truncation(format, bytes);
  if (cut) return new ImageError(`truncated ${format} image: ${cut}`, { cause: err });
  const why = 'the decoder rejected its data (damaged, or a variant it does not support)';
  return new ImageError(`unreadable ${format} image: ${why}`, { cause: err });
}

/** How the file is cut short, if its structure shows that; undefined when it looks whole. */
export function truncation(format: ImageFormat, b: Uint8Array): string | undefined {
  const tail = Buffer.from(b.buffer, b.byteOffset + Math.max(0, b.byteLength - 64), Math.min(64, b.byteLength));
  const endsBefore = (what: string) => `the file ends (at ${b.byteLength} bytes) before its ${what}`;
  switch (format) {
    case 'jpeg':
      // Writers may pad after the marker; anything else in the last bytes means it never came.
      return tail.includes(Buffer.from([0xff, 0xd9])) ? undefined : endsBefore('end-of-image marker');
    case 'png':
      return tail.includes(Buffer.from('IEND', 'latin1')) ? undefined : endsBefore('IEND chunk');
    case 'gif':
      return b[b.byteLength - 1] === 0x3b ? undefined : endsBefore('trailer');
    case 'webp': {
      const declared = Buffer.from(b.buffer, b.byteOffset, b.byteLength).readUInt32LE(4) + 8;
      if (declared <= b.byteLength) return undefined;
      return `the file has ${b.byteLength} of the ${declared} bytes its header declares`;
    }
    case 'avif':
    case 'heif': {
      // Top-level boxes (ftyp, meta, mdat...) must all fit in the file.
      const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
      let off = 0;
      while (off + 8 <= v.length) {
        let size = v.readUInt32BE(off);
        if (size === 1 && off + 16 <= v.length) size = Number(v.readBigUInt64BE(off + 8));
        if (size === 0) return undefined; // runs to the end of the file
        if (size < 8) return undefined; // not boxes at all: damage, not truncation
        if (off + size > v.length)
          return `the file ends (at ${v.length} bytes) inside a box running to byte ${off + size}`;
        off += size;
      }
      return undefined;
    }
    case 'tiff':
      return tiffTruncation(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    default:
      return undefined;
  }
}

/** Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL... LONG8, IFD8). */
const TIFF_TYPE_SIZE: Readonly<Record<number, number>> = {
  1: 1,
  2: 1,
  3: 2,
  4: 4,
  5: 8,
  6: 1,
  7: 1,
  8: 2,
  9: 4,
  10: 8,
  11: 4,
  12: 8,
  13: 4,
  16: 8,
  17: 8,
  18: 8,
};

/**
 * Where a TIFF points past its own end: its first directory, that directory's values, the strips
 * or tiles of the first page (the only one decoded), or the next directory. A writer puts all of
 * them inside the file, so a pointer past the end means the file was cut. Classic and BigTIFF,
 * either byte order; undefined when every pointer lands inside the file.
 */
function tiffTruncation(v: Buffer): string | undefined {
  const le = v[0] === 0x49;
  const big = (le ? v.readUInt16LE(2) : v.readUInt16BE(2)) === 43;
  const u16 = (o: number) => (le ? v.readUInt16LE(o) : v.readUInt16BE(o));
  const u32 = (o: number) => (le ? v.readUInt32LE(o) : v.readUInt32BE(o));
  const u64 = (o: number) => Number(le ? v.readBigUInt64LE(o) : v.readBigUInt64BE(o));
  const word = big ? 8 : 4; // offsets, and the room for a value inside its entry
  const endsBefore = (what: string, at: number) =>
    `the file ends (at ${v.length} bytes) before ${what} (at byte ${at})`;
  if (v.length < (big ? 16 : 8)) return `the file ends (at ${v.length} bytes) inside its header`;
  const ifd = big ? u64(8) : u32(4);
  const head = big ? 8 : 2; // the directory's entry count
  if (ifd + head > v.length) return endsBefore('the directory its header points to', ifd);
  const count = big ? u64(ifd) : u16(ifd);
  const entrySize = big ? 20 : 12;
  const dirEnd = ifd + head + count * entrySize + word;
  if (dirEnd > v.length) return endsBefore('the end of its first directory', dirEnd);
  // Strip (273, 279) and tile (324, 325) offsets and byte counts: where the pixels are.
  const arrays: Record<number, { at: number; n: number; read: (o: number) => number; size: number }> = {};
  for (let e = ifd + head; e < dirEnd - word; e += entrySize) {
    const tag = u16(e);
    const size = TIFF_TYPE_SIZE[u16(e + 2)];
    if (size === undefined) continue; // a type libtiff skips
    const n = big ? u64(e + 4) : u32(e + 4);
    const at = n * size <= word ? e + (big ? 12 : 8) : big ? u64(e + 12) : u32(e + 8);
    if (at + n * size > v.length) return endsBefore('the end of a value its directory points to', at + n * size);
    const read = size === 2 ? u16 : size === 4 ? u32 : size === 8 ? u64 : undefined;
    if (read && [273, 279, 324, 325].includes(tag)) arrays[tag] = { at, n, read, size };
  }
  for (const [where, counts] of [
    [arrays[273], arrays[279]],
    [arrays[324], arrays[325]],
  ]) {
    if (!where || !counts) continue;
    for (let i = 0; i < Math.min(where.n, counts.n); i++) {
      const end = where.read(where.at + i * where.size) + counts.read(counts.at + i * counts.size);
      if (end > v.length) return endsBefore('the end of the image data its directory points to', end);
    }
  }
  const next = big ? u64(dirEnd - word) : u32(dirEnd - word);
  if (next !== 0 && next + head > v.length) return endsBefore('the next directory', next);
  return undefined;
}
