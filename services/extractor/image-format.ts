/**
 * What an image file really is, from its first bytes (never from its key's extension): the one
 * place that knows file signatures. Pure code, no decoder: the extractor decides from this which
 * files reach sharp at all, so a file the operator has not allowed is never parsed by a decoder.
 */
import type { ImageFormat } from '../../shared/config.js';

/** A format deepfeat can be told to decode (`DEEPFEAT_IMAGE_FORMATS`), as sharp names it. */
export interface DecodableFormat {
  readonly kind: 'decodable';
  /** The name in DEEPFEAT_IMAGE_FORMATS. */
  readonly format: ImageFormat;
  /**
   * HEIF holding HEVC pictures (HEIC, what phones write). Whether it decodes depends on how
   * libvips was built, which only the media code knows (see image.ts).
   */
  readonly heic?: true;
}

/** A real image (or document) format that no deepfeat setting makes decodable. */
export interface UnsupportedFormat {
  readonly kind: 'unsupported';
  /** The name people know it by: 'JPEG 2000', 'ICO', 'PDF document'. */
  readonly name: string;
  /** Why it cannot be decoded, when that is more than "deepfeat does not read it". */
  readonly note?: string;
}

export interface UnknownFormat {
  readonly kind: 'unknown';
  /** A short guess at what the bytes are ('looks like an HTML page'); '' when there is nothing useful to say. */
  readonly hint: string;
}

export type SniffedFormat = DecodableFormat | UnsupportedFormat | UnknownFormat;

const decodable = (format: ImageFormat): DecodableFormat => ({ kind: 'decodable', format });
const heic: DecodableFormat = { kind: 'decodable', format: 'heif', heic: true };
const unsupported = (name: string, note?: string): UnsupportedFormat => ({
  kind: 'unsupported',
  name,
  ...(note ? { note } : {}),
});

/** `bytes` starts with `sig` at `offset` (numbers are bytes, strings are latin1). */
function at(bytes: Uint8Array, offset: number, sig: string | readonly number[]): boolean {
  const want = typeof sig === 'string' ? [...sig].map((c) => c.charCodeAt(0)) : sig;
  if (bytes.length < offset + want.length) return false;
  for (let i = 0; i < want.length; i++) if (bytes[offset + i] !== want[i]) return false;
  return true;
}

const u32be = (b: Uint8Array, o: number) => ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
const u32le = (b: Uint8Array, o: number) => (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
/** Bytes `from`..`to` as latin1 text, clamped to the file. */
function latin1(b: Uint8Array, from: number, to: number): string {
  const start = Math.min(Math.max(0, from), b.length);
  return Buffer.from(b.buffer, b.byteOffset + start, Math.max(0, Math.min(to, b.length) - start)).toString('latin1');
}

/**
 * The format of `bytes`. Signatures are checked strictly enough that text which happens to start
 * with the same letters ("BM…", "P6…") is not taken for an image.
 */
export function sniffImageFormat(bytes: Uint8Array): SniffedFormat {
  const b = bytes;
  if (at(b, 0, [0xff, 0xd8, 0xff])) return decodable('jpeg');
  if (at(b, 0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return decodable('png');
  if (at(b, 0, 'GIF87a') || at(b, 0, 'GIF89a')) return decodable('gif');
  if (at(b, 0, 'RIFF') && at(b, 8, 'WEBP')) return decodable('webp');
  // Classic TIFF (42) and BigTIFF (43), both byte orders. Camera raw files built on TIFF (CR2,
  // NEF, ARW, DNG) are TIFF to libvips too: it reads their first image.
  if (at(b, 0, [0x49, 0x49, 0x2a, 0x00]) || at(b, 0, [0x4d, 0x4d, 0x00, 0x2a])) return decodable('tiff');
  if (at(b, 0, [0x49, 0x49, 0x2b, 0x00]) || at(b, 0, [0x4d, 0x4d, 0x00, 0x2b])) return decodable('tiff');
  if (at(b, 4, 'ftyp')) return isoMediaFormat(b);

  if (at(b, 0, [0x00, 0x00, 0x00, 0x0c, 0x6a, 0x50, 0x20, 0x20, 0x0d, 0x0a, 0x87, 0x0a]))
    return unsupported('JPEG 2000');
  if (at(b, 0, [0xff, 0x4f, 0xff, 0x51])) return unsupported('JPEG 2000'); // bare codestream (.j2k)
  if (at(b, 0, [0x00, 0x00, 0x00, 0x0c, 0x4a, 0x58, 0x4c, 0x20, 0x0d, 0x0a, 0x87, 0x0a])) return unsupported('JPEG XL');
  if (at(b, 0, [0xff, 0x0a])) return unsupported('JPEG XL'); // bare codestream
  if (at(b, 0, 'BM') && b.length >= 18 && [12, 16, 40, 52, 56, 64, 108, 124].includes(u32le(b, 14)))
    return unsupported('BMP');
  if (at(b, 0, [0x00, 0x00, 0x01, 0x00]) && b.length >= 6 && (b[4]! | (b[5]! << 8)) > 0) return unsupported('ICO');
  if (at(b, 0, [0x00, 0x00, 0x02, 0x00]) && b.length >= 6 && (b[4]! | (b[5]! << 8)) > 0)
    return unsupported('CUR (Windows cursor)');
  if (at(b, 0, '8BPS') && b.length >= 6 && b[4] === 0 && (b[5] === 1 || b[5] === 2))
    return unsupported(b[5] === 1 ? 'PSD' : 'PSB');
  if (at(b, 0, '%PDF-')) return unsupported('PDF document');
  if (at(b, 0, '%!PS')) return unsupported(/EPSF/.test(latin1(b, 0, 40)) ? 'EPS' : 'PostScript');
  if (at(b, 0, [0xc5, 0xd0, 0xd3, 0xc6])) return unsupported('EPS');
  if (at(b, 0, [0x76, 0x2f, 0x31, 0x01])) return unsupported('OpenEXR');
  if (at(b, 0, '#?RADIANCE') || at(b, 0, '#?RGBE')) return unsupported('Radiance HDR');
  if (at(b, 0, 'DDS ')) return unsupported('DDS');
  if (at(b, 0, 'qoif')) return unsupported('QOI');
  if (at(b, 0, 'gimp xcf')) return unsupported('XCF (GIMP)');
  if (at(b, 0, [0x8a, 0x4d, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return unsupported('MNG');
  if (at(b, 0, 'FORM') && at(b, 8, 'ILBM')) return unsupported('IFF ILBM');
  if (at(b, 128, 'DICM')) return unsupported('DICOM');
  if (at(b, 0, 'SIMPLE  =')) return unsupported('FITS');
  if (/^P[1-7]\s+\d/.test(latin1(b, 0, 16))) return unsupported('PNM (PBM/PGM/PPM)');
  if (b.length >= 26 && latin1(b, b.length - 18, b.length) === 'TRUEVISION-XFILE.\0') return unsupported('TGA');
  if (isSvg(b)) return decodable('svg');
  return { kind: 'unknown', hint: describeNonImage(b) };
}

/**
 * ISO base media files (`ftyp` box): AVIF, HEIC and other HEIF images, but also JPEG XL, Canon
 * CR3 and plain MP4/QuickTime video. The major brand decides, else the compatible brands.
 */
function isoMediaFormat(b: Uint8Array): SniffedFormat {
  const size = u32be(b, 0);
  const end = Math.min(b.length, Math.max(size, 16), 4096);
  const major = latin1(b, 8, 12);
  const brands = [major];
  for (let o = 16; o + 4 <= end; o += 4) brands.push(latin1(b, o, o + 4));
  const has = (...names: string[]) => names.some((n) => brands.includes(n));
  if (major === 'avif' || major === 'avis') return decodable('avif');
  if (major === 'crx ') return unsupported('Canon CR3 raw');
  if (major === 'jxl ') return unsupported('JPEG XL');
  if (['heic', 'heix', 'heim', 'heis', 'hevc', 'hevx'].includes(major)) return heic;
  if (has('avif', 'avis')) return decodable('avif');
  if (has('heic', 'heix', 'heim', 'heis', 'hevc', 'hevx')) return heic;
  if (has('mif1', 'msf1')) return decodable('heif'); // HEIF with another codec (JPEG, uncompressed...)
  if (has('qt  ')) return unsupported('QuickTime video');
  if (has('isom', 'iso2', 'mp41', 'mp42', 'M4V ', 'dash', '3gp4', '3gp5')) return unsupported('MP4 video');
  return unsupported(`ISO media file (brand ${JSON.stringify(major)})`);
}

/**
 * SVG: XML text whose first element is `<svg`, after an optional BOM, XML declaration, comments
 * and doctype. HTML with inline SVG is not SVG.
 */
function isSvg(b: Uint8Array): boolean {
  let s = latin1(b, 0, 4096);
  if (s.startsWith('\xef\xbb\xbf')) s = s.slice(3);
  for (;;) {
    s = s.trimStart();
    if (s.startsWith('<?')) {
      const end = s.indexOf('?>');
      if (end < 0) return false;
      s = s.slice(end + 2);
    } else if (s.startsWith('<!--')) {
      const end = s.indexOf('-->');
      if (end < 0) return false;
      s = s.slice(end + 3);
    } else if (/^<!DOCTYPE\s+svg\b/i.test(s)) {
      // The internal subset may hold '>' inside brackets: skip to the ']>' when there is one.
      const bracket = s.indexOf('[');
      const close = s.indexOf('>');
      const end = bracket >= 0 && bracket < close ? s.indexOf(']>', bracket) + 1 : close;
      if (end <= 0) return false;
      s = s.slice(end + 1);
    } else {
      return /^<(?:[A-Za-z_][\w.-]*:)?svg[\s>/]/.test(s);
    }
  }
}

/** A short guess at what a non-image file is, from its first bytes; '' when there is nothing useful to say. */
export function describeNonImage(bytes: Uint8Array): string {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 64));
  if (head.length === 0) return '';
  if (at(head, 0, [0x50, 0x4b, 0x03, 0x04]) || at(head, 0, [0x50, 0x4b, 0x05, 0x06])) return 'looks like a ZIP archive';
  if (at(head, 0, [0x1f, 0x8b])) return 'looks like gzip-compressed data';
  if (at(head, 0, 'RIFF'))
    return `looks like a RIFF ${JSON.stringify(latin1(head, 8, 12)).replace(/[^\x20-\x7e]/g, '?')} file, not WebP`;
  const text = head.toString('utf8');
  const printable = [...text].filter(
    (c) => (c >= ' ' && c !== '\uFFFD') || c === '\n' || c === '\r' || c === '\t',
  ).length;
  if (text.length > 0 && printable / text.length > 0.95) {
    const start = text.replace(/\s+/g, ' ').trim().slice(0, 24);
    if (/^<(!doctype html|html)/i.test(start)) return 'looks like an HTML page';
    if (/^<\?xml/i.test(start)) return 'looks like an XML document, not SVG';
    // Control characters were counted out above, but a few may remain: keep the quote printable.
    const shown = start.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
    return `looks like text: "${shown}${start.length === 24 ? '…' : ''}"`;
  }
  return `first bytes ${head.subarray(0, 8).toString('hex')}`;
}
