/**
 * Decoding the plainest PNGs without libvips (issue 14): 8-bit RGB or grey, not interlaced, with
 * no chunk that could change what libvips makes of the pixels. For such a file libvips's result is
 * the stored samples themselves (grey repeated in R, G and B), so decoding them here gives its
 * bytes, and saves a libvips pipeline's fixed cost: about 0.8 ms of CPU for a 32×32 PNG, five
 * times the decoding itself (`npx tsx bench/decode-cost.ts`).
 *
 * Only files whose structure is beyond doubt are decoded here; for anything else `parseSimplePng`
 * or `decodeSimplePng` return undefined and decodeImage goes on to libvips, which decides as it
 * always has (errors and their reasons included): a chunk outside the list below (iCCP, sRGB,
 * gAMA, cHRM, eXIf, tRNS, PLTE, sBIT, text, private chunks...), any bad CRC, IDAT data that is not one
 * complete zlib stream with its checksum, that inflates to other than exactly the rows' size, or
 * a row with an unknown filter, chunks after IEND, and every other colour type, depth or interlace.
 * test/png-simple.test.ts holds it to sharp's bytes, filter by filter.
 *
 * decodePlainPng (scaled up, or already at the input size) is called by decodeImage, in a decoder
 * process, and by DecoderPool.decode for files of at most 64 KiB, in the calling process: the
 * bounds here (rows, file size, chunk count) keep its cost to a few milliseconds.
 */
import { inflateSync } from 'node:zlib';
import { DEFAULT_IMAGE_FORMATS } from '../../shared/config.js';
import type { DecodeOptions } from './image.js';
import type { SourceWindow } from './cover-geometry.js';
import { resizePlan } from './resize-plan.js';
import { coverUpscale } from './upscale.js';

/**
 * Ancillary chunks that libvips's pixels do not depend on, and that its PNG reader (libspng) checks
 * only for the ranges tested here: physical size and modification time. Text chunks have rules of
 * their own there (keywords, encodings, compression) and go to libvips.
 */
const INERT = new Map<string, (body: Buffer) => boolean>([
  ['pHYs', (b) => b.length === 9 && b[8]! <= 1],
  [
    'tIME',
    (b) =>
      b.length === 7 &&
      b[2]! >= 1 &&
      b[2]! <= 12 &&
      b[3]! >= 1 &&
      b[3]! <= 31 &&
      b[4]! <= 23 &&
      b[5]! <= 59 &&
      b[6]! <= 60,
  ],
]);

/**
 * Largest decoded size taken here, in bytes of rows (about 290 × 290 RGB). Past about that, libvips
 * decodes as fast (its fixed cost, about 0.6 ms, matters less; `npx tsx bench/decode-cost.ts`
 * and a sweep of sizes: 200 × 200 RGB 1.3–1.7 ms here against 1.6–3.2 in libvips, 300 × 300
 * 3.4–4.2 against 3.0–3.4), and it decodes a few rows at a time where this inflates them whole.
 */
export const MAX_RAW_BYTES = 256 << 10;

/**
 * Most chunks a file taken here may have. Encoders write image data in chunks of 8 KiB or more
 * (a few dozen at most here); millions of empty ones are legal but would cost this parser memory
 * and time that libvips, reading them as a stream, does not spend.
 */
const MAX_CHUNKS = 4096;

/** CRC-32 of PNG chunks (ISO 3309, the zlib polynomial), by table. `node:zlib` has one only from Node 20.15. */
const CRC_TABLE = Int32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
export function crc32(b: Uint8Array): number {
  let c = -1;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** libvips's largest image side (VIPS_MAX_COORD). */
const MAX_SIDE = 10_000_000;

export interface SimplePng {
  width: number;
  height: number;
  /** 3 (RGB, colour type 2) or 1 (grey, colour type 0). */
  channels: 1 | 3;
  /** The IDAT chunks' data, in order. */
  idat: Uint8Array[];
}

/**
 * The header and image data of a PNG simple enough to decode here; undefined for any other file
 * (including damaged ones: libvips gets those). Reads the chunk structure only, no pixels.
 */
export function parseSimplePng(bytes: Uint8Array): SimplePng | undefined {
  const v = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.length < 8 + 25 || v.readUInt32BE(0) !== 0x89504e47 || v.readUInt32BE(4) !== 0x0d0a1a0a) return undefined;
  let off = 8;
  let header: { width: number; height: number; channels: 1 | 3 } | undefined;
  const idat: Uint8Array[] = [];
  let idatDone = false;
  for (let chunks = 0; off + 12 <= v.length; chunks++) {
    if (chunks >= MAX_CHUNKS) return undefined;
    const len = v.readUInt32BE(off);
    if (len > v.length - off - 12) return undefined;
    const type = v.toString('latin1', off + 4, off + 8);
    const body = v.subarray(off + 8, off + 8 + len);
    if (crc32(v.subarray(off + 4, off + 8 + len)) !== v.readUInt32BE(off + 8 + len)) return undefined;
    off += 12 + len;
    if (!header) {
      if (type !== 'IHDR' || len !== 13) return undefined;
      const [depth, colour, compression, filter, interlace] = body.subarray(8, 13);
      if (depth !== 8 || (colour !== 2 && colour !== 0) || compression !== 0 || filter !== 0 || interlace !== 0)
        return undefined;
      const width = body.readUInt32BE(0);
      const height = body.readUInt32BE(4);
      if (width === 0 || height === 0 || width > MAX_SIDE || height > MAX_SIDE) return undefined;
      header = { width, height, channels: colour === 2 ? 3 : 1 };
      // Only files whose rows are small are taken (decodeSimplePng): decide before reading further,
      // and refuse files far larger than such rows compressed at worst (stored blocks add 5 bytes
      // in 65,535; the rest is room for chunk headers and the inert chunks).
      const rows = height * (width * header.channels + 1);
      if (rows > MAX_RAW_BYTES || v.length > rows + (rows >> 10) + (64 << 10)) return undefined;
      continue;
    }
    if (type === 'IDAT') {
      if (idatDone) return undefined; // IDAT chunks must be consecutive
      idat.push(body);
      continue;
    }
    if (idat.length > 0) idatDone = true;
    if (type === 'IEND') return off === v.length && idat.length > 0 && len === 0 ? { ...header, idat } : undefined;
    if (!INERT.get(type)?.(body)) return undefined;
  }
  return undefined; // no IEND
}

/**
 * The `window` of a simple PNG as RGB uint8, interleaved (what libvips decodes, cropped), or
 * undefined where the image data is not beyond doubt. The caller has checked width × height
 * against its pixel limit.
 */
export function decodeSimplePng(png: SimplePng, window: SourceWindow): Uint8Array | undefined {
  const { width, height, channels } = png;
  const stride = width * channels;
  const size = height * (stride + 1);
  // Inflated whole (libvips streams rows): small files only (parseSimplePng checked it too).
  if (size > MAX_RAW_BYTES) return undefined;
  let raw: Buffer;
  try {
    const data = png.idat.length === 1 ? png.idat[0]! : Buffer.concat(png.idat);
    // One complete zlib stream (its Adler-32 checked by zlib) of exactly the rows' size: inflating
    // stops at one byte more, so a bomb costs nothing, and input left over means it is not ours.
    const out = inflateSync(data, { maxOutputLength: size + 1, info: true }) as unknown as {
      buffer: Buffer;
      engine: { bytesWritten: number };
    };
    if (out.buffer.length !== size || out.engine.bytesWritten !== data.length) return undefined;
    raw = out.buffer;
  } catch {
    return undefined;
  }
  // Undo the filters in place, row by row, up to the window's last row (rows below it are unused).
  const bpp = channels;
  const last = window.top + window.height;
  for (let y = 0; y < last; y++) {
    const row = y * (stride + 1) + 1;
    const prev = row - (stride + 1); // the previous row's samples (y > 0)
    const filter = raw[row - 1]!;
    switch (filter) {
      case 0:
        break;
      case 1:
        for (let i = bpp; i < stride; i++) raw[row + i] = raw[row + i]! + raw[row + i - bpp]!;
        break;
      case 2:
        if (y > 0) for (let i = 0; i < stride; i++) raw[row + i] = raw[row + i]! + raw[prev + i]!;
        break;
      case 3:
        for (let i = 0; i < stride; i++) {
          const left = i >= bpp ? raw[row + i - bpp]! : 0;
          const up = y > 0 ? raw[prev + i]! : 0;
          raw[row + i] = raw[row + i]! + ((left + up) >> 1);
        }
        break;
      case 4:
        for (let i = 0; i < stride; i++) {
          const a = i >= bpp ? raw[row + i - bpp]! : 0;
          const b = y > 0 ? raw[prev + i]! : 0;
          const c = i >= bpp && y > 0 ? raw[prev + i - bpp]! : 0;
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          raw[row + i] = raw[row + i]! + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
        }
        break;
      default:
        return undefined;
    }
  }
  // Every row's filter byte must be valid, also below the window: libvips reads them all.
  for (let y = last; y < height; y++) if (raw[y * (stride + 1)]! > 4) return undefined;
  const out = new Uint8Array(window.width * window.height * 3);
  let o = 0;
  for (let y = window.top; y < last; y++) {
    const row = y * (stride + 1) + 1;
    if (channels === 3) {
      const from = row + window.left * 3;
      out.set(raw.subarray(from, from + window.width * 3), o);
      o += window.width * 3;
    } else {
      for (let x = window.left; x < window.left + window.width; x++) {
        const g = raw[row + x]!;
        out[o++] = g;
        out[o++] = g;
        out[o++] = g;
      }
    }
  }
  return out;
}

/**
 * decodeImage's result for the plainest PNGs — 8-bit RGB or grey with nothing that could change
 * their pixels — scaled up or already at the input size, computed without libvips (whose
 * pipeline's fixed cost is most of a small PNG's decode) and synchronously; undefined for every
 * other file and request (decodeImage then decides, with libvips). The same bytes as libvips's
 * (test/png-simple.test.ts). Its cost is bounded by MAX_RAW_BYTES and the output size.
 */
export function decodePlainPng(bytes: Uint8Array, opts: DecodeOptions): Uint8Array | undefined {
  const { width, height, maxPixels } = opts;
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) return undefined;
  if (!(opts.formats ?? DEFAULT_IMAGE_FORMATS).includes('png')) return undefined;
  const simple = parseSimplePng(bytes);
  if (!simple || simple.width * simple.height > maxPixels) return undefined;
  // Already the input size (raw-pixel features of 32×32 images): no resize, the samples themselves.
  if (simple.width === width && simple.height === height)
    return decodeSimplePng(simple, { left: 0, top: 0, width, height });
  const plan = resizePlan(simple.width, simple.height, true, width, height);
  if (plan.resample !== 'up' || !plan.window || !plan.region) return undefined;
  const src = decodeSimplePng(simple, plan.region);
  return src && coverUpscale(src, plan.sw, plan.sh, width, height, plan.window);
}
