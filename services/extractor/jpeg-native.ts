/**
 * JPEGs decoded by libjpeg-turbo directly (native/jpeg, built at install when the host can), for
 * the case where decodeImage resamples a full-size decode itself (resize-plan.ts gives a window).
 * libvips decodes the same file with the same library and the same settings, the pixels are the
 * same byte for byte (test/jpeg-native.test.ts, and the decode-identity corpus through
 * decodeImage), but through its pipeline it costs about twice the CPU: measured on 640×480
 * photos, 2.2 ms per image for libjpeg-turbo alone against 4.5 ms for sharp's full-size raw
 * decode, in one process on one thread (issue 14). The addon also decodes only the rows and
 * columns the window reads.
 *
 * It takes only what it is sure to read as libvips does: 8-bit YCbCr or greyscale JPEGs without
 * an ICC profile (libvips would convert it to sRGB), without an EXIF orientation other than 1
 * (sharp rotates those first), of at most MAX_NATIVE_SCANS scans, ending in their end-of-image
 * marker. Everything else, every file libjpeg warns about (corrupt or cut-short data) and every
 * progressive file whose scans stop before its coefficients are complete (libjpeg's smoothing of
 * those differs between releases) goes to sharp, which decodes it or names the problem as
 * before: the native path can only ever give the pixels sharp would give, or step aside.
 *
 * DEEPFEAT_JPEG_DECODER=sharp turns it off (config.ts); without the addon built, sharp decodes
 * every JPEG.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** What the addon reads from a JPEG's header (native/jpeg/deepfeat_jpeg.c `header`). */
export interface JpegHeader {
  width: number;
  height: number;
  components: number;
  /** libjpeg's idea of the stored colour space: 'ycbcr', 'grey', 'rgb', 'cmyk', 'ycck', 'other'. */
  colorSpace: string;
  /** Bits per sample (8; 12 for the rare 12-bit JPEG). */
  precision: number;
  progressive: boolean;
  /** An APP2 ICC_PROFILE segment is present. */
  icc: boolean;
  /** The first APP1 Exif segment's TIFF data (after "Exif\0\0"), or null. */
  exif: Uint8Array | null;
  /** How many APP1 Exif segments there are. */
  exifSegments: number;
  /** Start-of-scan markers in the file (an embedded thumbnail's included). */
  scans: number;
}

export interface NativeJpeg {
  /** The header, or libjpeg's reason it cannot be read. */
  header(bytes: Uint8Array): JpegHeader | string;
  /** Decodes the w×h window at (x, y) into out as RGB; undefined, or libjpeg's reason it failed. */
  decode(bytes: Uint8Array, x: number, y: number, w: number, h: number, out: Uint8Array): string | undefined;
}

const ADDON_PATH = fileURLToPath(new URL('../../native/jpeg/build/Release/deepfeat_jpeg.node', import.meta.url));
let loaded: { addon: NativeJpeg | undefined } | undefined;

/** The addon, or undefined where it was not built (or does not load on this host). */
export function nativeJpeg(): NativeJpeg | undefined {
  if (!loaded) {
    try {
      loaded = { addon: createRequire(import.meta.url)(ADDON_PATH) as NativeJpeg };
    } catch {
      loaded = { addon: undefined };
    }
  }
  return loaded.addon;
}

/**
 * More scans than this and the file goes to sharp: encoders write 1 (baseline) or about 10
 * (progressive; mozjpeg's own choice of scans stays near that), a thumbnail a few more. A file
 * of thousands of tiny scans takes seconds to decode (a way to spend a decoder's time); decoding
 * it here, hitting a problem late and then decoding it again in sharp would take twice that.
 */
export const MAX_NATIVE_SCANS = 64;

/**
 * A JPEG header the native path may decode, or undefined: sharp's path then reads the file. The
 * EXIF orientation must be known to be 1 (or absent): one Exif segment whose first IFD is read
 * without doubt.
 */
export function nativeJpegHeader(addon: NativeJpeg, bytes: Uint8Array): JpegHeader | undefined {
  const h = addon.header(bytes);
  if (typeof h === 'string') return undefined;
  if (h.precision !== 8 || h.icc || !(h.colorSpace === 'ycbcr' || h.colorSpace === 'grey')) return undefined;
  if (h.exifSegments > 1 || h.scans > MAX_NATIVE_SCANS) return undefined;
  if (h.exif && exifOrientation(h.exif) !== 1) return undefined;
  return h;
}

/**
 * The Orientation tag (0x0112) of an Exif block's first IFD (where libvips reads it): 1 when the
 * IFD has none, undefined when the block cannot be read with certainty (a short SHORT-typed tag
 * of count 1 is the only form accepted).
 */
export function exifOrientation(tiff: Uint8Array): number | undefined {
  if (tiff.byteLength < 8) return undefined;
  const v = new DataView(tiff.buffer, tiff.byteOffset, tiff.byteLength);
  const order = v.getUint16(0);
  if (order !== 0x4949 && order !== 0x4d4d) return undefined; // "II" or "MM"
  const le = order === 0x4949;
  if (v.getUint16(2, le) !== 42) return undefined;
  const ifd = v.getUint32(4, le);
  if (ifd < 8 || ifd + 2 > tiff.byteLength) return undefined;
  const count = v.getUint16(ifd, le);
  if (ifd + 2 + count * 12 > tiff.byteLength) return undefined;
  let orientation = 1;
  let seen = false;
  for (let i = 0; i < count; i++) {
    const at = ifd + 2 + i * 12;
    if (v.getUint16(at, le) !== 0x0112) continue;
    if (seen || v.getUint16(at + 2, le) !== 3 || v.getUint32(at + 4, le) !== 1) return undefined;
    seen = true;
    orientation = v.getUint16(at + 8, le);
  }
  return orientation;
}
