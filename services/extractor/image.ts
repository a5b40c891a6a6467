/**
 * Image decoding for the extractor: the only module that runs sharp on pipeline images.
 *
 * Any input sharp can read (JPEG, PNG, WebP, GIF, TIFF, AVIF, ...) becomes interleaved 8-bit sRGB
 * (HWC, exactly width × height × 3 bytes) at the backbone's input size, or an `ImageError` whose
 * message says what is wrong with the file in words a person can act on. Those messages are
 * recorded per image in the run's row metadata, so they are kept short and stable.
 */
import sharp from 'sharp';
import { ImageError } from '../../shared/errors.js';

export interface DecodeOptions {
  /** Output width in pixels (the engine's input width). */
  width: number;
  /** Output height in pixels (the engine's input height). */
  height: number;
  /** Largest input width × height accepted (decompression-bomb guard; MAX_IMAGE_PIXELS). */
  maxPixels: number;
}

/**
 * Decode `bytes` to RGB uint8 HWC at `width` × `height`.
 *
 * EXIF orientation is applied, animated images give their first frame, alpha is flattened onto
 * white, grey / CMYK / 16-bit / ICC-tagged inputs become 8-bit sRGB, and the image is resized to
 * cover the target and centre-cropped (the aspect ratio is kept, nothing is letterboxed).
 *
 * @throws ImageError for every problem with the bytes themselves.
 */
export async function decodeImage(bytes: Uint8Array, opts: DecodeOptions): Promise<Uint8Array> {
  const { width, height, maxPixels } = opts;
  if (!(Number.isInteger(width) && width > 0 && Number.isInteger(height) && height > 0)) {
    // A caller bug, not a property of the image: fail loudly with a plain error.
    throw new RangeError(`decodeImage: width and height must be positive integers, got ${width}×${height}`);
  }
  if (bytes.byteLength === 0) throw new ImageError('empty file (0 bytes)');

  // Read the header first: it is cheap, and it lets the reasons below name the format and size.
  let meta: sharp.Metadata;
  try {
    meta = await sharp(bytes, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw imageErrorFrom(err, bytes);
  }
  const w = meta.width ?? 0;
  const h = meta.pageHeight ?? meta.height ?? 0;
  if (w > 0 && h > 0 && w * h > maxPixels) {
    throw new ImageError(
      `image too large: ${w}×${h} pixels exceeds the limit of ${maxPixels} (MAX_IMAGE_PIXELS)`,
    );
  }

  let out: { data: Buffer; info: sharp.OutputInfo };
  try {
    out = await sharp(bytes, {
      limitInputPixels: maxPixels, // enforced again by libvips while decoding
      pages: 1, // first frame of an animated GIF/WebP, first page of a TIFF
      page: 0,
    })
      .rotate() // apply EXIF orientation, then drop the tag
      .flatten({ background: { r: 255, g: 255, b: 255 } })
      .toColourspace('srgb')
      .resize(width, height, { fit: 'cover', position: 'centre' })
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
  } catch (err) {
    throw imageErrorFrom(err, bytes, { format: meta.format, width: w, height: h, maxPixels });
  }

  const { info, data } = out;
  const expected = width * height * 3;
  if (info.channels !== 3 || info.width !== width || info.height !== height || data.byteLength !== expected) {
    throw new ImageError(
      `could not convert ${meta.format ?? 'image'} to RGB: got ${info.width}×${info.height}×${info.channels} ` +
        `(${data.byteLength} bytes), expected ${width}×${height}×3`,
    );
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

/**
 * Turn a sharp/libvips failure into an ImageError with a reason a person can act on.
 *
 * sharp throws plain `Error`s with no code, so the only way to tell "not an image at all" and
 * "over the pixel limit" from damage is the message text. This function is the one place that
 * reads it; anything unrecognised is reported as damage with sharp's own words attached.
 */
function imageErrorFrom(
  err: unknown,
  bytes: Uint8Array,
  known: { format?: string; width?: number; height?: number; maxPixels?: number } = {},
): ImageError {
  const msg = err instanceof Error ? err.message : String(err);
  if (/unsupported image format/i.test(msg)) {
    const known = unsupportedImageFormat(bytes);
    if (known) return new ImageError(`unsupported image format: ${known} (convert it to PNG or JPEG)`, { cause: err });
    const hint = describeNonImage(bytes);
    return new ImageError(`not an image: unrecognised format${hint ? ` (${hint})` : ''}`, { cause: err });
  }
  if (/exceeds pixel limit/i.test(msg)) {
    const size = known.width && known.height ? `${known.width}×${known.height} pixels` : 'pixel count';
    const limit = known.maxPixels === undefined ? '' : ` of ${known.maxPixels}`;
    return new ImageError(`image too large: ${size} exceeds the limit${limit} (MAX_IMAGE_PIXELS)`, { cause: err });
  }
  const what = known.format ? `${known.format} image` : 'image';
  // libvips keeps one error buffer per process; under concurrent decodes sharp sometimes gets it
  // empty and says only "Unknown error", which is no use to anyone reading the run's failures.
  const detail = /^unknown error$/i.test(msg.trim()) ? 'the decoder gave no details' : msg;
  return new ImageError(`corrupt or truncated ${what}: ${detail}`, { cause: err });
}

/** Image formats sharp's prebuilt libvips cannot read, recognised by their magic bytes. */
function unsupportedImageFormat(bytes: Uint8Array): string | undefined {
  const b = Buffer.from(bytes.subarray(0, 4));
  if (b.length >= 2 && b[0] === 0x42 && b[1] === 0x4d) return 'BMP';
  return undefined;
}

/** A short guess at what a non-image file is, from its first bytes; '' when there is nothing useful to say. */
function describeNonImage(bytes: Uint8Array): string {
  const head = Buffer.from(bytes.subarray(0, 64));
  if (head.subarray(0, 5).toString('latin1') === '%PDF-') return 'looks like a PDF document';
  if (head[0] === 0x50 && head[1] === 0x4b) return 'looks like a ZIP archive';
  const text = head.toString('utf8');
  const printable = [...text].filter((c) => (c >= ' ' && c !== '\uFFFD') || c === '\n' || c === '\r' || c === '\t').length;
  if (text.length > 0 && printable / text.length > 0.95) {
    const start = text.replace(/\s+/g, ' ').trim().slice(0, 24);
    if (/^<(!doctype html|html)/i.test(start)) return 'looks like an HTML page';
    return `looks like text: "${start}${start.length === 24 ? '…' : ''}"`;
  }
  return `first bytes ${head.subarray(0, 8).toString('hex')}`;
}
