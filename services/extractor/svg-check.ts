/**
 * What an SVG may contain before it is rendered, for operators who allow SVG at all
 * (DEEPFEAT_IMAGE_FORMATS): the pixel limit must hold for the drawing and for every image
 * embedded in it, and the renderer must load nothing from outside the file.
 *
 * librsvg decodes each embedded `data:` image at its full size, whatever size it is drawn at, so a
 * 100×100 drawing can hold a 20000×20000 PNG. Every reference is therefore checked before the
 * renderer runs: `#fragment` references are fine, `data:` payloads are opened and their headers
 * read (nested SVG recursively, one level deep), and anything else — a file, a URL, XML entities,
 * XInclude, a CSS @import — is refused, because it cannot be checked. The time a drawing takes
 * (filters, thousands of shapes) is not bounded here but by the decoder process's deadline.
 */
import { ImageError } from '../../shared/errors.js';
import { quote } from '../../shared/text.js';
import { sniffImageFormat } from './image-format.js';

/** Width and height read from an image's header (never by decoding it). */
export interface ImageSize {
  width: number;
  height: number;
}

export interface SvgCheckOptions {
  /** Reads the size of an embedded PNG, JPEG or SVG from its header; throws ImageError if it cannot. */
  probe(bytes: Uint8Array, format: 'png' | 'jpeg' | 'svg'): Promise<ImageSize>;
}

/** Embedded SVG inside an SVG is allowed; an SVG inside that one is not. */
export const MAX_SVG_NESTING = 1;
/** More embedded images than this in one file is refused (each costs a header read). */
export const MAX_EMBEDDED_IMAGES = 100;

/** What an SVG embeds, once checked: images of known size, nothing else. */
export interface SvgContents {
  /** Pixels of every embedded image (nested SVG drawings count at their own size). */
  pixels: number;
  images: number;
  largest?: { format: string; width: number; height: number };
}

/**
 * Checks everything an SVG refers to, from its text and the headers of what it embeds, before any
 * renderer parses it; throws ImageError naming the first problem. The messages are recorded per
 * image, so they quote at most a short piece of the file.
 */
export async function checkSvg(bytes: Uint8Array, opts: SvgCheckOptions): Promise<SvgContents> {
  const contents: SvgContents = { pixels: 0, images: 0 };
  await checkDocument(
    Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'),
    0,
    contents,
    opts,
  );
  return contents;
}

/** The pixel limit over the drawing (rendered at `canvas`) and everything it embeds. */
export function checkSvgPixels(canvas: ImageSize, contents: SvgContents, maxPixels: number): void {
  const total = canvas.width * canvas.height + contents.pixels;
  if (total <= maxPixels) return;
  const n = contents.images;
  const l = contents.largest;
  const embedded = l
    ? ` with ${n} embedded image${n === 1 ? '' : 's'} (largest: ${l.format} ${l.width}×${l.height})`
    : '';
  throw new ImageError(
    `image too large: an svg of ${canvas.width}×${canvas.height}${embedded} needs ${total} pixels, ` +
      `over the limit of ${maxPixels} (DEEPFEAT_MAX_IMAGE_PIXELS)`,
  );
}

const refuse = (why: string) => new ImageError(`svg refused: ${why}`);

async function checkDocument(text: string, depth: number, budget: SvgContents, opts: SvgCheckOptions): Promise<void> {
  // Entities can spell anything (a reference, a billion copies of a string) out of sight of the
  // checks below; a drawing has no need for them.
  if (/<!ENTITY/i.test(text)) throw refuse('it declares XML entities (<!ENTITY>), which can hide what it loads');
  const decoded = decodeXmlReferences(text);
  if (/http:\/\/www\.w3\.org\/2001\/XInclude/i.test(decoded)) throw refuse('it uses XInclude, which loads other files');
  if (/@import/i.test(decoded)) throw refuse('its style sheet uses @import, which loads other files');
  // Given a base, librsvg would resolve relative references against it; without one it loads
  // nothing from outside (what the checks below rely on, on top of refusing such references).
  if (/\bxml:base\b/i.test(decoded)) throw refuse('it sets xml:base');

  const targets: string[] = [];
  // Every attribute named href, with or without a namespace prefix (xlink:href), also inside the
  // <?xml-stylesheet?> instruction. Values are read from the raw text, then their references decoded.
  for (const m of text.matchAll(/[\s"'](?:[A-Za-z_][\w.-]*:)?href\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
    targets.push(decodeXmlReferences(m[1] ?? m[2] ?? '').trim());
  }
  // CSS references, in style attributes, <style> elements and presentation attributes.
  for (const m of decoded.matchAll(/url\(\s*(?:"([^"]*)"|'([^']*)'|([^)]*))\s*\)/gi)) {
    targets.push((m[1] ?? m[2] ?? m[3] ?? '').trim());
  }
  for (const target of targets) {
    if (target.startsWith('#') || target === '') continue;
    if (!/^data:/i.test(target)) {
      throw refuse(`it refers to ${quote(target, 60)}; only #fragments and embedded data: images can be checked`);
    }
    await checkEmbedded(target, depth, budget, opts);
  }
}

async function checkEmbedded(uri: string, depth: number, budget: SvgContents, opts: SvgCheckOptions): Promise<void> {
  budget.images++;
  if (budget.images > MAX_EMBEDDED_IMAGES) throw refuse(`it embeds more than ${MAX_EMBEDDED_IMAGES} images`);
  const bytes = decodeDataUri(uri);
  if (!bytes) throw refuse(`an embedded data: URI cannot be decoded (${quote(uri, 40)})`);
  const sniffed = sniffImageFormat(bytes);
  const format = sniffed.kind === 'decodable' ? sniffed.format : undefined;
  if (format !== 'png' && format !== 'jpeg' && format !== 'svg') {
    const what =
      sniffed.kind === 'decodable' ? sniffed.format : sniffed.kind === 'unsupported' ? sniffed.name : 'unrecognised';
    throw refuse(`it embeds ${what} data; embedded images may be PNG, JPEG or SVG`);
  }
  if (format === 'svg' && depth >= MAX_SVG_NESTING)
    throw refuse(`it nests SVG images more than ${MAX_SVG_NESTING} level deep`);
  // A nested drawing's text is checked before its header is parsed, like the outer one's.
  if (format === 'svg') await checkDocument(Buffer.from(bytes).toString('utf8'), depth + 1, budget, opts);
  const size = await opts.probe(bytes, format);
  const pixels = size.width * size.height;
  budget.pixels += pixels;
  if (!budget.largest || pixels > budget.largest.width * budget.largest.height) budget.largest = { format, ...size };
}

/** The bytes of a `data:` URI (base64 or percent-encoded), or undefined if it is malformed. */
export function decodeDataUri(uri: string): Uint8Array | undefined {
  const comma = uri.indexOf(',');
  if (comma < 0) return undefined;
  const header = uri.slice(5, comma);
  const payload = uri.slice(comma + 1);
  if (/;\s*base64\s*$/i.test(header)) {
    const clean = payload.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(clean)) return undefined;
    return Buffer.from(clean, 'base64');
  }
  // Percent-escapes become bytes; other characters are UTF-8, as a URL's would be.
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = payload.indexOf('%'); i >= 0; i = payload.indexOf('%', from)) {
    const hex = payload.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) return undefined;
    parts.push(Buffer.from(payload.slice(from, i), 'utf8'), Buffer.from([parseInt(hex, 16)]));
    from = i + 3;
  }
  parts.push(Buffer.from(payload.slice(from), 'utf8'));
  return Buffer.concat(parts);
}

const NAMED: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/** XML character and predefined entity references resolved, as the renderer's parser sees them. */
export function decodeXmlReferences(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g, (whole, ref: string) => {
    if (ref[0] !== '#') return NAMED[ref]!;
    const code = ref[1] === 'x' ? parseInt(ref.slice(2), 16) : parseInt(ref.slice(1), 10);
    return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
  });
}
