/**
 * decodeImage as it was before issue 14's decoder changes (the header read, then one sharp
 * pipeline with every operation unconditional): the published preprocessing that decodeImage and
 * its fast paths must still give byte for byte (test/decode-identity.test.ts, test/png-simple.test.ts).
 */
import sharp from 'sharp';

/** decodeImage's cover crop of an extreme aspect ratio, as it was (image.ts extremeCrop). */
function referenceCrop(orientation: number | undefined, w: number, h: number, width: number, height: number) {
  const [ow, oh] = (orientation ?? 1) >= 5 ? [h, w] : [w, h];
  const scale = Math.max(width / ow, height / oh);
  if (Math.max(ow, oh) * scale <= 65_535) return undefined;
  const cw = Math.min(ow, Math.max(1, Math.round(width / scale)));
  const ch = Math.min(oh, Math.max(1, Math.round(height / scale)));
  return { left: Math.floor((ow - cw) / 2), top: Math.floor((oh - ch) / 2), width: cw, height: ch };
}

/** The decoding before issue 14's changes: what decodeImage must still give, byte for byte. */
export async function reference(bytes: Uint8Array, width: number, height: number): Promise<Buffer> {
  const meta = await sharp(bytes, { limitInputPixels: false, pages: 1, page: 0 }).metadata();
  const w = meta.width ?? 0;
  const h = meta.pageHeight ?? meta.height ?? 0;
  let pipeline = sharp(bytes, { limitInputPixels: 50_000_000, pages: 1, page: 0 }).rotate();
  const crop = referenceCrop(meta.orientation, w, h, width, height);
  if (crop) pipeline = pipeline.extract(crop);
  const { data, info } = await pipeline
    .flatten({ background: { r: 255, g: 255, b: 255 } })
    .toColourspace('srgb')
    .resize(width, height, { fit: 'cover', position: 'centre' })
    .removeAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 || info.width !== width || info.height !== height) throw new Error('reference: not RGB');
  return data;
}
