/**
 * What an SVG may contain before it is rendered, for operators who allow SVG at all
 * (DEEPFEAT_IMAGE_FORMATS): the pixel limit must hold for the drawing and for every image
 * embedded in it, and the renderer must load nothing from outside the file.
 *
 * librsvg decodes each embedded `data:` image at its full size, whatever size it is drawn at, so a
 * 100×100 drawing can hold a 20000×20000 PNG. Every reference is therefore checked before the
 * renderer runs: `#fragment` references are fine, `data:` payloads are opened and their headers
 * read (nested SVG recursively, one level deep), and anything else — a file, a URL, XML entities,
 * XInclude, a CSS @import, an <?xml-stylesheet?> — is refused, because it cannot be checked.
 *
 * The check reads text, not a parsed document, so it must see every reference however it is
 * spelled; where the renderer's parsers could read the text differently, it refuses instead of
 * guessing: CSS escapes (any backslash), encodings other than UTF-8/ASCII/Latin-1, url() it cannot
 * read exactly, markup inside <style>, <script> and <foreignObject>. It scans the whole text as
 * CSS (a superset of what the renderer reads as CSS), joins each <style> element's pieces as the
 * renderer does, and decodes `data:` URIs as a URL parser does. The time a drawing takes
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

/**
 * Encodings in which every ASCII byte is that ASCII character and no other byte makes one, so the
 * checks below, which read the text as UTF-8, see every keyword the XML parser sees. In others a
 * keyword can be spelled out of sight (UTF-7's `+AFw-` is a backslash). sharp's own libxml2 knows
 * only these and UTF-16 (whose bytes are not sniffed as SVG), but a system libvips may have iconv.
 */
const READABLE_ENCODINGS = /^(?:utf-?8|us-ascii|ascii|iso-8859-1|iso-latin-1|latin-?1)$/i;

/**
 * CSS functions other than url() that take a file's name: the renderer supports none of them
 * today, so refusing them costs nothing and keeps this check true if it learns one.
 */
const OTHER_CSS_LOADERS = /(?<![\w-])(-webkit-image-set|image-set|image|src|attr)\(/i;

/** Elements that draw nothing in librsvg and can hold references in forms this check does not read. */
const FOREIGN_ELEMENTS = /<(?:[^\s<>/="']*:)?(script|foreignObject)(?=[\s/>])/i;

async function checkDocument(text: string, depth: number, budget: SvgContents, opts: SvgCheckOptions): Promise<void> {
  const encoding = /^\ufeff?\s*<\?xml\s[^>]*?\bencoding\s*=\s*(?:"([^"]*)"|'([^']*)')/.exec(text);
  const declared = encoding ? (encoding[1] ?? encoding[2] ?? '') : 'utf-8';
  if (!READABLE_ENCODINGS.test(declared.trim())) {
    throw refuse(
      `it declares the encoding ${quote(declared, 20)}; only UTF-8, ASCII and ISO-8859-1 text can be checked`,
    );
  }
  // Entities can spell anything (a reference, a billion copies of a string) out of sight of the
  // checks below; a drawing has no need for them.
  if (/<!ENTITY/i.test(text)) throw refuse('it declares XML entities (<!ENTITY>), which can hide what it loads');
  if (/<\?xml-stylesheet/i.test(text))
    throw refuse('it has an <?xml-stylesheet?> instruction, which loads a style sheet');
  const decoded = decodeXmlReferences(text);
  // CSS escapes spell any name: `\75 rl(`, `u\rl(` and `\000075rl(` are all url( to the renderer,
  // in style attributes, <style> elements and presentation attributes alike (fill, filter...).
  // Decoding them here would mean keeping a second CSS tokenizer in step with the renderer's;
  // refusing them cannot be wrong, and a drawing needs no backslash (one in a text label or a
  // Windows path in editor metadata is refused too: the way out is to convert the file to PNG).
  // With no escapes, url( and @import can only be written as themselves (in any letter case),
  // and every url( is read below. CSS comments need no rule of their own: one cannot split a
  // name, and one inside a url() makes it one this check refuses as not well formed.
  if (decoded.includes('\\')) {
    throw refuse(
      'it contains a backslash: CSS reads one as an escape, which can spell a hidden reference (\\75 rl is url)',
    );
  }
  if (/http:\/\/www\.w3\.org\/2001\/XInclude/i.test(decoded)) throw refuse('it uses XInclude, which loads other files');
  // Given a base, librsvg would resolve relative references against it; without one it loads
  // nothing from outside (what the checks below rely on, on top of refusing such references).
  if (/\bxml:base\b/i.test(decoded)) throw refuse('it sets xml:base');
  const foreign = FOREIGN_ELEMENTS.exec(text);
  if (foreign) {
    throw refuse(`it has a <${foreign[1]}> element; scripts and foreign content draw nothing and are not checked`);
  }

  const { sheets, rest } = styleSheets(text);
  // Everything outside <style> elements is scanned as CSS too (style and presentation attributes,
  // but also text and comments: a false alarm there costs a refusal, a miss would cost the check).
  const css = [decodeXmlReferences(rest), ...sheets];
  const targets: string[] = [];
  // Every attribute named href (or src), with or without a namespace prefix (xlink:href, any
  // prefix bound to XLink), also inside instructions. Values are read from the raw text, then
  // their character references decoded, as the XML parser does.
  for (const m of text.matchAll(/[\s"'](?:[^\s<>/="']*:)?(?:href|src)\s*=\s*(?:"([^"]*)"|'([^']*)')/gi)) {
    targets.push(decodeXmlReferences(m[1] ?? m[2] ?? ''));
  }
  for (const sheet of css) {
    if (/@import/i.test(sheet)) throw refuse('its style sheet uses @import, which loads other files');
    const loader = OTHER_CSS_LOADERS.exec(sheet);
    if (loader) throw refuse(`its CSS uses ${loader[1]}(), which can name a file without url()`);
    targets.push(...cssUrls(sheet));
  }
  for (const raw of targets) {
    // As the renderer's URL parser reads it: tabs and line breaks dropped, ends trimmed.
    const target = raw.replace(/[\t\n\r]/g, '').replace(/^[\u0000-\u0020]+|[\u0000-\u0020]+$/g, '');
    // A fragment of this document. (`%23` is a fragment written inside an embedded document's
    // percent-encoded text, which the scan of this one reads too; to the renderer here it would
    // be a relative reference, which it cannot resolve without a base.)
    if (target === '' || target.startsWith('#') || /^%23/i.test(target)) continue;
    if (!/^data:/i.test(target)) {
      throw refuse(`it refers to ${quote(target, 60)}; only #fragments and embedded data: images can be checked`);
    }
    await checkEmbedded(target, depth, budget, opts);
  }
}

/**
 * The text of each <style> element as the renderer reads it — its text and CDATA sections joined,
 * comments and instructions dropped, so `u<![CDATA[rl(` and `u<!---->rl(` are both `url(` — and
 * the document with those elements' content taken out (it is scanned in its own right). An
 * element inside a <style> is refused: the renderer skips it, but where it ends is a parser's
 * business, and a style sheet is text.
 */
function styleSheets(text: string): { sheets: string[]; rest: string } {
  const sheets: string[] = [];
  const kept: string[] = [];
  let from = 0;
  const open = /<((?:[^\s<>/="']*:)?style)(?=[\s/>])/gi;
  for (let m = open.exec(text); m; m = open.exec(text)) {
    const name = m[1]!;
    const attrs = /(?:\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*'))*\s*(\/?)>/y;
    attrs.lastIndex = open.lastIndex;
    const tag = attrs.exec(text);
    if (!tag) throw refuse('its <style> tag cannot be read');
    let at = attrs.lastIndex;
    if (tag[1]) {
      open.lastIndex = at; // <style/>: no content
      continue;
    }
    kept.push(text.slice(from, at));
    let sheet = '';
    for (;;) {
      const lt = text.indexOf('<', at);
      if (lt < 0) throw refuse('its <style> element is not closed');
      sheet += decodeXmlReferences(text.slice(at, lt));
      const section = SECTIONS.find((s) => text.startsWith(s.open, lt));
      if (section) {
        const end = text.indexOf(section.close, lt + section.open.length);
        if (end < 0) throw refuse('its <style> element is not closed');
        if (section.text) sheet += text.slice(lt + section.open.length, end);
        at = end + section.close.length;
        continue;
      }
      const close = /<\/([^\s>]+)\s*>/y;
      close.lastIndex = lt;
      const c = close.exec(text);
      if (!c || c[1]!.toLowerCase() !== name.toLowerCase()) {
        throw refuse('its <style> element holds markup other than text, CDATA and comments');
      }
      from = lt;
      at = close.lastIndex;
      break;
    }
    sheets.push(sheet);
    open.lastIndex = at;
  }
  kept.push(text.slice(from));
  return { sheets, rest: kept.join('') };
}

/** What may sit inside a <style> element besides text: CDATA is text, the others are dropped. */
const SECTIONS = [
  { open: '<![CDATA[', close: ']]>', text: true },
  { open: '<!--', close: '-->', text: false },
  { open: '<?', close: '?>', text: false },
] as const;

/**
 * The argument of every `url(` in `css` (any letter case), read as a CSS tokenizer reads it with
 * no escapes (refused before): a quoted string, or a run of characters up to `)` or a space, then
 * `)`. Anything else is a url() the renderer would read as broken or differently (a comment or a
 * quote inside, no closing parenthesis before the end of the attribute): refused, not guessed.
 */
function cssUrls(css: string): string[] {
  const urls: string[] = [];
  const space = (c: string | undefined) => c === ' ' || c === '\t' || c === '\n' || c === '\r' || c === '\f';
  for (const m of css.matchAll(/url\(/gi)) {
    let i = m.index + m[0].length;
    while (space(css[i])) i++;
    const q = css[i];
    let value: string;
    let ok: boolean;
    if (q === '"' || q === "'") {
      const end = css.indexOf(q, i + 1);
      value = end < 0 ? css.slice(i + 1) : css.slice(i + 1, end);
      ok = end >= 0 && !/[\n\r\f]/.test(value); // a CSS string cannot hold a line break
      i = end < 0 ? css.length : end + 1;
    } else {
      // Stops at the first character a URL token cannot hold, so the scan stays linear.
      const start = i;
      while (i < css.length && !/[)\s"'(\u0000-\u0008\u000b\u000e-\u001f\u007f]/.test(css[i]!)) i++;
      value = css.slice(start, i);
      ok = css[i] === undefined || css[i] === ')' || space(css[i]);
    }
    while (space(css[i])) i++;
    if (!ok || css[i] !== ')') {
      throw refuse(`its CSS has a url() that is not well formed or not closed (${quote(css.slice(m.index), 40)})`);
    }
    urls.push(value);
  }
  return urls;
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

/**
 * The bytes of a `data:` URI (base64 or percent-encoded), or undefined if it is malformed. Read as
 * the renderer reads it (the URL parser, then the fetch standard's data: URL processor): tabs and
 * line breaks anywhere are dropped, and a `#fragment` names an element inside the document, so it
 * is not part of the data.
 */
export function decodeDataUri(uri: string): Uint8Array | undefined {
  const clean = uri.replace(/[\t\n\r]/g, '');
  const hash = clean.indexOf('#');
  const url = hash < 0 ? clean : clean.slice(0, hash);
  const comma = url.indexOf(',');
  if (comma < 0) return undefined;
  const header = url.slice(5, comma);
  const payload = url.slice(comma + 1);
  if (/;\s*base64\s*$/i.test(header)) {
    const b64 = payload.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(b64)) return undefined;
    return Buffer.from(b64, 'base64');
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
