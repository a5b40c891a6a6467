/**
 * Hostile and unusual image bytes, made by the test itself, against the real decoder (sharp) and
 * real decoder processes: every bad file gets a true reason, the same one every time at any
 * concurrency; the pixel limit holds for every format and every embedded image; a decode is
 * bounded in time and memory by its process; only the first page of a file is ever decoded.
 */
import test, { type ExecutionContext } from 'ava';
import { deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { mapLimit } from '../shared/concurrency.js';
import { ImageError } from '../shared/errors.js';
import { DecoderPool } from '../services/extractor/decoder-pool.js';
import { decodeImage, type DecodeOptions } from '../services/extractor/image.js';
import {
  bmp2x2,
  ftyp,
  gifWithFrame,
  icoWithPng,
  jp2Header,
  jpegDeclaring,
  jpegWithExifSegments,
  pngChunk,
  pngDeclaring,
  psd,
  svgDoc,
  svgFilterBomb,
  svgImage,
  tiffDirectoryFirst,
  tiffPages,
  withPngChunks,
} from './helpers/images.js';

const OUT = { width: 224, height: 224 };
const LIMIT = 100_000_000; // DEEPFEAT_MAX_IMAGE_PIXELS's default
const SVG_OK: DecodeOptions = { ...OUT, maxPixels: LIMIT, formats: ['svg', 'png', 'jpeg'] };

const solid = (width: number, height: number, background: { r: number; g: number; b: number }) =>
  sharp({ create: { width, height, channels: 3, background }, limitInputPixels: false });
const RED = { r: 255, g: 0, b: 0 };
const GREEN = { r: 0, g: 255, b: 0 };
const BLUE = { r: 0, g: 0, b: 255 };

async function reason(bytes: Uint8Array, opts: DecodeOptions = { ...OUT, maxPixels: LIMIT }): Promise<string> {
  try {
    await decodeImage(bytes, opts);
  } catch (err) {
    if (err instanceof ImageError) return err.message;
    throw err;
  }
  return 'decoded';
}

/** Fails unless the pixels are all within `tol` of `rgb`. */
function allNear(t: ExecutionContext, px: Uint8Array, rgb: { r: number; g: number; b: number }, what: string, tol = 3) {
  for (let i = 0; i < px.length; i += 3) {
    if (Math.abs(px[i]! - rgb.r) > tol || Math.abs(px[i + 1]! - rgb.g) > tol || Math.abs(px[i + 2]! - rgb.b) > tol) {
      return t.fail(`${what}: pixel ${i / 3} is ${[...px.subarray(i, i + 3)]}`);
    }
  }
  t.pass();
}

const png4 = () => solid(4, 4, RED).png().toBuffer();

test('real formats with no decoder are named from their bytes, whatever the file is called', async (t) => {
  const cases: Array<[string, Uint8Array, string]> = [
    ['a valid ICO (holding a PNG)', icoWithPng(await png4(), 4), 'unsupported format: ICO: convert it to PNG or JPEG'],
    ['a valid PSD', psd(4, 4, [1, 2, 3]), 'unsupported format: PSD: convert it to PNG or JPEG'],
    ['a valid BMP', bmp2x2(), 'unsupported format: BMP: convert it to PNG or JPEG'],
    ['a JP2 header', jp2Header(), 'unsupported format: JPEG 2000: convert it to PNG or JPEG'],
    [
      'a JPEG 2000 codestream',
      Buffer.from([0xff, 0x4f, 0xff, 0x51, 0, 0x2f, 0, 0]),
      'unsupported format: JPEG 2000: convert it to PNG or JPEG',
    ],
    [
      'a JPEG XL codestream',
      Buffer.from([0xff, 0x0a, 0xfa, 0x7f, 0x01, 0x90]),
      'unsupported format: JPEG XL: convert it to PNG or JPEG',
    ],
    [
      'a JPEG XL container',
      Buffer.from([0, 0, 0, 0x0c, 0x4a, 0x58, 0x4c, 0x20, 0x0d, 0x0a, 0x87, 0x0a, 0, 0]),
      'unsupported format: JPEG XL: convert it to PNG or JPEG',
    ],
    // sharp's prebuilt libvips has no HEVC decoder (this test runs on it): HEIC can never be read.
    [
      'a HEIC file',
      ftyp('heic', ['mif1', 'heic'], Buffer.alloc(200)),
      'unsupported format: HEIC (no decoder installed): convert it to PNG or JPEG',
    ],
    [
      'a HEIF with heic among its brands',
      ftyp('mif1', ['mif1', 'heic'], Buffer.alloc(200)),
      'unsupported format: HEIC (no decoder installed): convert it to PNG or JPEG',
    ],
    [
      'a PDF',
      Buffer.from('%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n', 'latin1'),
      'unsupported format: PDF document: convert it to PNG or JPEG',
    ],
    [
      'an EPS',
      Buffer.from('%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n'),
      'unsupported format: EPS: convert it to PNG or JPEG',
    ],
    [
      'an MP4 video',
      ftyp('isom', ['isom', 'mp41'], Buffer.alloc(64)),
      'unsupported format: MP4 video: convert it to PNG or JPEG',
    ],
  ];
  for (const [what, bytes, expected] of cases) t.is(await reason(bytes), expected, what);
  // Text that merely starts with a signature's letters is not taken for that format.
  t.is(
    await reason(Buffer.from('BM is a nice set of initials\n')),
    'not an image: unrecognised format (looks like text: "BM is a nice set of init…")',
  );
});

test('a format outside DEEPFEAT_IMAGE_FORMATS is refused before any decoder reads it', async (t) => {
  const svg = svgDoc(10, 10, '<rect width="10" height="10"/>', '<?xml version="1.0"?>\n<!-- drawn by hand -->\n');
  t.is(
    await reason(svg),
    'format svg is not accepted here (DEEPFEAT_IMAGE_FORMATS=jpeg,png,webp,gif,tiff,avif): convert it to PNG or JPEG',
  );
  // A PNG whose metadata chunk would stop the decoder: with PNG off, that decoder never sees it.
  const ztxt = withPngChunks(await png4(), [
    pngChunk('zTXt', Buffer.concat([Buffer.from('Comment\0\0', 'latin1'), deflateSync(Buffer.alloc(60e6))])),
  ]);
  t.is(
    await reason(ztxt, { ...OUT, maxPixels: LIMIT, formats: ['jpeg'] }),
    'format png is not accepted here (DEEPFEAT_IMAGE_FORMATS=jpeg): convert it to PNG or JPEG',
  );
  // HEIF (non-HEVC) is off by default too.
  t.is(
    await reason(ftyp('mif1', ['mif1'], Buffer.alloc(64))),
    'format heif is not accepted here (DEEPFEAT_IMAGE_FORMATS=jpeg,png,webp,gif,tiff,avif): convert it to PNG or JPEG',
  );
});

test('headers that claim a huge size are refused by DEEPFEAT_MAX_IMAGE_PIXELS before decoding, in every format', async (t) => {
  const jpeg = await solid(64, 48, RED).jpeg().toBuffer();
  const cases: Array<[string, Uint8Array, string]> = [
    ['a 60000×60000 JPEG of 1 KB', jpegDeclaring(jpeg, 60000, 60000), '60000×60000'],
    ['a 20000×20000 PNG of 100 bytes', pngDeclaring(await png4(), 20000, 20000), '20000×20000'],
    // The frame is larger than the GIF's 16×16 screen: the decoder grows the canvas to fit it.
    ['a 16×16 GIF whose frame is 65535×65535', gifWithFrame(16, 16, 65535, 65535), '65535×65535'],
    [
      'a 100000×100000 TIFF of 200 bytes',
      tiffPages([{ width: 100000, height: 100000, data: Buffer.alloc(48) }]),
      '100000×100000',
    ],
  ];
  for (const [what, bytes, size] of cases) {
    t.is(
      await reason(bytes),
      `image too large: ${size} pixels exceeds the limit of ${LIMIT} (DEEPFEAT_MAX_IMAGE_PIXELS)`,
      what,
    );
  }
});

test('a 100000×1 strip (and a 1×100000 one) is resized like any image: cover and centre crop', async (t) => {
  // Cover-scaling 100000×1 to 224×224 keeps the one source pixel in the middle: make only it green.
  const n = 100_000;
  const row = Buffer.alloc(n * 3);
  for (let i = 0; i < n; i++)
    row.set(i === (n - 1) / 2 || i === Math.floor((n - 1) / 2) ? [0, 255, 0] : [255, 0, 0], i * 3);
  const wide = await sharp(row, { raw: { width: n, height: 1, channels: 3 } })
    .png()
    .toBuffer();
  const tall = await sharp(row, { raw: { width: 1, height: n, channels: 3 } })
    .png()
    .toBuffer();
  allNear(t, await decodeImage(wide, { ...OUT, maxPixels: LIMIT }), GREEN, '100000×1');
  allNear(t, await decodeImage(tall, { ...OUT, maxPixels: LIMIT }), GREEN, '1×100000');
  // EXIF orientation 6 stands a 60000×1 JPEG upright (1×60000) before the crop is taken; its
  // middle (a green band, wide enough to survive JPEG's 8×8 blocks) still fills the output.
  const m = 60_000;
  const jrow = Buffer.alloc(m * 3);
  for (let i = 0; i < m; i++) jrow.set(Math.abs(i - m / 2) < 32 ? [0, 255, 0] : [255, 0, 0], i * 3);
  const tagged = await sharp(jrow, { raw: { width: m, height: 1, channels: 3 } })
    .jpeg({ quality: 100, chromaSubsampling: '4:4:4' })
    .withMetadata({ orientation: 6 })
    .toBuffer();
  t.is((await sharp(tagged).metadata()).orientation, 6);
  allNear(t, await decodeImage(tagged, { ...OUT, maxPixels: LIMIT }), GREEN, 'rotated strip', 12);
  // A non-square target keeps its own aspect: 100000×1 into 32×24 still comes from the middle.
  const px = await decodeImage(wide, { width: 32, height: 24, maxPixels: LIMIT });
  t.is(px.length, 32 * 24 * 3);
  allNear(t, px, GREEN, '100000×1 into 32×24');
});

test('only the first page of a multi-page file is decoded', async (t) => {
  // Page 0 is a real 16×16 grey picture; 2000 more pages each claim 50000×50000 with 2 bytes of
  // data. Decoding any of them would fail (or hit the pixel limit); the file decodes to grey.
  const grey = tiffPages([
    { width: 16, height: 16, data: Buffer.alloc(16 * 16 * 3, 128) },
    ...Array.from({ length: 2000 }, () => ({ width: 50000, height: 50000, data: Buffer.alloc(2) })),
  ]);
  t.is((await sharp(grey).metadata()).pages, 2001);
  allNear(t, await decodeImage(grey, { ...OUT, maxPixels: LIMIT }), { r: 128, g: 128, b: 128 }, 'first page');
});

test('metadata bombs: inflating text and ICC chunks are refused, an EXIF flood decodes', async (t) => {
  const inflating = (type: string, keyword: string) =>
    pngChunk(type, Buffer.concat([Buffer.from(`${keyword}\0\0`, 'latin1'), deflateSync(Buffer.alloc(60e6))]));
  const png = await png4();
  const unreadable = "unreadable png image: the decoder cannot read its header (damaged, or past the decoder's limits)";
  t.is(await reason(withPngChunks(png, [inflating('zTXt', 'Comment')])), unreadable, 'zTXt inflating to 60 MB');
  t.is(await reason(withPngChunks(png, [inflating('iCCP', 'icc')])), unreadable, 'iCCP inflating to 60 MB');
  t.is(
    await reason(
      withPngChunks(
        png,
        Array.from({ length: 100_000 }, () => pngChunk('tEXt', Buffer.from('k\0v'))),
      ),
    ),
    unreadable,
    '100000 text chunks',
  );
  // 300 APP1 segments of 64 KB whose EXIF directories claim 65535 entries each: read and dropped.
  const exif = jpegWithExifSegments(await solid(64, 48, BLUE).jpeg().toBuffer(), 300);
  t.true(exif.length > 19_000_000);
  allNear(t, await decodeImage(exif, { ...OUT, maxPixels: LIMIT }), BLUE, 'EXIF flood');
});

test('a TIFF tile past the decoder limits is refused from its header', async (t) => {
  const tiled = tiffPages([{ width: 16, height: 16, data: Buffer.alloc(16 * 16 * 3), tile: 65536 }]);
  t.is(
    await reason(tiled),
    "unreadable tiff image: the decoder cannot read its header (damaged, or past the decoder's limits)",
  );
});

test('SVG, when allowed: every embedded image counts against DEEPFEAT_MAX_IMAGE_PIXELS, however it is written', async (t) => {
  // A 100-byte PNG whose header says 20000×20000: librsvg would decode it at full size.
  const big = pngDeclaring(await png4(), 20000, 20000);
  const b64 = big.toString('base64');
  const tooLarge = `image too large: an svg of 100×100 with 1 embedded image (largest: png 20000×20000) needs 400010000 pixels, over the limit of ${LIMIT} (DEEPFEAT_MAX_IMAGE_PIXELS)`;
  const bodies: Array<[string, string]> = [
    ['<image href>', svgImage(big, 'image/png', 100)],
    ['<image xlink:href>', svgImage(big, 'image/png', 100, 'xlink:href')],
    ['declared as another type', svgImage(big, 'application/octet-stream', 100)],
    [
      '<feImage>',
      `<filter id="f"><feImage href="data:image/png;base64,${b64}"/></filter><rect width="100" height="100" filter="url(#f)"/>`,
    ],
    [
      'spelled with character references',
      `<image width="100" height="100" href="&#100;&#x61;ta:image/png;base64,${b64}"/>`,
    ],
    [
      'with line breaks in the base64',
      `<image width="100" height="100" href="data:image/png;base64,${b64.replace(/(.{60})/g, '$1\n')}"/>`,
    ],
  ];
  for (const [what, body] of bodies) t.is(await reason(svgDoc(100, 100, body), SVG_OK), tooLarge, what);
  // Inside a nested SVG, and many small ones adding up.
  const nested = svgDoc(50, 50, svgImage(big, 'image/png', 50));
  t.regex(
    await reason(svgDoc(100, 100, svgImage(nested, 'image/svg+xml', 100)), SVG_OK),
    /^image too large: an svg of 100×100 with 2 embedded images \(largest: png 20000×20000\)/,
  );
  const fiveK = pngDeclaring(await png4(), 5000, 5000); // 25 M pixels each: five of them pass the limit
  const many = svgDoc(100, 100, Array.from({ length: 5 }, () => svgImage(fiveK, 'image/png', 20)).join(''));
  t.regex(
    await reason(many, SVG_OK),
    /^image too large: an svg of 100×100 with 5 embedded images \(largest: png 5000×5000\) needs 125010000 pixels/,
  );
  // And the drawing's own size.
  t.is(
    await reason(svgDoc(100000, 100000, '<rect width="1" height="1"/>'), SVG_OK),
    `image too large: 100000×100000 pixels exceeds the limit of ${LIMIT} (DEEPFEAT_MAX_IMAGE_PIXELS)`,
  );
});

test('SVG, when allowed: anything that cannot be checked is refused', async (t) => {
  const png = (await png4()).toString('base64');
  const S = (body: string, prolog = '') => svgDoc(100, 100, body, prolog);
  const inner = svgDoc(10, 10, '<rect width="10" height="10"/>');
  const doubly = svgDoc(10, 10, svgImage(inner, 'image/svg+xml', 10));
  const cases: Array<[string, Uint8Array, string]> = [
    [
      'an entity',
      S(
        '<image width="9" height="9" href="&img;"/>',
        `<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY img "data:image/png;base64,${png}">]>`,
      ),
      'svg refused: it declares XML entities (<!ENTITY>), which can hide what it loads',
    ],
    [
      'a local file',
      S('<image width="9" height="9" href="file:///etc/passwd"/>'),
      'svg refused: it refers to "file:///etc/passwd"; only #fragments and embedded data: images can be checked',
    ],
    [
      'a relative file',
      S("<image width='9' height='9' xlink:href='../secret.png'/>"),
      'svg refused: it refers to "../secret.png"; only #fragments and embedded data: images can be checked',
    ],
    [
      'a URL in CSS',
      S('<rect width="9" height="9" style="fill: url(\'http://example.com/p.svg#g\')"/>'),
      'svg refused: it refers to "http://example.com/p.svg#g"; only #fragments and embedded data: images can be checked',
    ],
    [
      'a style sheet instruction',
      S('<rect width="9" height="9"/>', '<?xml version="1.0"?><?xml-stylesheet href="https://example.com/s.css"?>'),
      'svg refused: it has an <?xml-stylesheet?> instruction, which loads a style sheet',
    ],
    [
      'a style sheet instruction with a data: style sheet',
      S(
        '<rect width="9" height="9"/>',
        '<?xml version="1.0"?><?xml-stylesheet type="text/css" href="data:text/css,rect%7Bfill:red%7D"?>',
      ),
      'svg refused: it has an <?xml-stylesheet?> instruction, which loads a style sheet',
    ],
    [
      'XInclude',
      S('<text xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="#x" parse="text"/></text>'),
      'svg refused: it uses XInclude, which loads other files',
    ],
    [
      '@import',
      S('<style>@import url(#x);</style>'),
      'svg refused: its style sheet uses @import, which loads other files',
    ],
    ['xml:base', S('<g xml:base="file:///etc/"><rect width="9" height="9"/></g>'), 'svg refused: it sets xml:base'],
    [
      'SVG in SVG in SVG',
      S(svgImage(doubly, 'image/svg+xml', 100)),
      'svg refused: it nests SVG images more than 1 level deep',
    ],
    [
      'an embedded GIF',
      S(svgImage(gifWithFrame(4, 4, 4, 4), 'image/gif', 100)),
      'svg refused: it embeds gif data; embedded images may be PNG, JPEG or SVG',
    ],
    [
      'embedded junk',
      S(svgImage(Buffer.from('hello'), 'image/png', 100)),
      'svg refused: it embeds unrecognised data; embedded images may be PNG, JPEG or SVG',
    ],
    [
      'broken base64',
      S('<image width="9" height="9" href="data:image/png;base64,@@@@"/>'),
      'svg refused: an embedded data: URI cannot be decoded ("data:image/png;base64,@@@@")',
    ],
    [
      'an embedded PNG with a broken header',
      S(svgImage(Buffer.concat([(await png4()).subarray(0, 20)]), 'image/png', 100)),
      'svg refused: the header of an embedded png image cannot be read',
    ],
  ];
  for (const [what, bytes, expected] of cases) t.is(await reason(bytes, SVG_OK), expected, what);
});

/** References into a nested drawing: the filter #f, the group #g or the pattern #p, each of which shows `png`. */
interface Hidden {
  f: string;
  g: string;
  p: string;
}

/** Three small drawings, each holding `png` once, as `data:` URIs with the fragment that shows it. */
function hidden(png: Uint8Array): Hidden {
  const image = svgImage(png, 'image/png', 100).replace('<image', '<image preserveAspectRatio="none"');
  const ref = (id: string, body: string) =>
    `data:image/svg+xml;base64,${svgDoc(100, 100, `<defs>${body}</defs>`).toString('base64')}#${id}`;
  return {
    f: ref('f', `<filter id="f" x="0" y="0" width="1" height="1">${image.replace('<image', '<feImage')}</filter>`),
    g: ref('g', `<g id="g">${image}</g>`),
    p: ref('p', `<pattern id="p" width="100" height="100" patternUnits="userSpaceOnUse">${image}</pattern>`),
  };
}

/** Red under whatever a case adds: green on top means the renderer followed the hidden reference. */
const onRed = (body: string, prolog = '') =>
  svgDoc(100, 100, `<rect width="100" height="100" fill="red"/>${body}`, prolog);

test('SVG, when allowed: a reference is seen however CSS or XML spells it (escapes, comments, <style> pieces, prefixes)', async (t) => {
  // A 100-byte PNG whose header says 12000×12000 (144 M pixels, over the limit), inside a nested
  // drawing; a green 4×4 PNG in the same drawing shows which spellings librsvg itself follows.
  const big = hidden(pngDeclaring(await png4(), 12000, 12000));
  const green = hidden(await solid(4, 4, GREEN).png().toBuffer());
  const tooLarge =
    'image too large: an svg of 100×100 with 2 embedded images (largest: png 12000×12000) needs ' +
    `${100 * 100 + 100 * 100 + 12000 * 12000} pixels, over the limit of ${LIMIT} (DEEPFEAT_MAX_IMAGE_PIXELS)`;
  const backslash =
    'svg refused: it contains a backslash: CSS reads one as an escape, which can spell a hidden reference (\\75 rl is url)';
  const malformed = /^svg refused: its CSS has a url\(\) that is not well formed or not closed \("url\(/;
  const rect = (attrs: string) => `<rect width="100" height="100" ${attrs}/>`;
  const styled = (css: string) => `<style>${css}</style>${rect('class="x"')}`;
  const cases: Array<{ what: string; doc: (h: Hidden) => Uint8Array; reason: string | RegExp; follows: boolean }> = [
    // Seen, so the nested drawing and its PNG are checked: the pixel limit holds.
    {
      what: 'url() with a #fragment',
      doc: (h) => onRed(rect(`style="filter: url(${h.f})"`)),
      reason: tooLarge,
      follows: true,
    },
    {
      what: 'URL() in capitals, quoted, with spaces',
      doc: (h) => onRed(rect(`style="filter: URL(  '${h.f}'  )"`)),
      reason: tooLarge,
      follows: true,
    },
    {
      what: 'url written with character references',
      doc: (h) => onRed(rect(`style="filter: &#117;&#x52;l(${h.f})"`)),
      reason: tooLarge,
      follows: true,
    },
    { what: 'the filter attribute', doc: (h) => onRed(rect(`filter="url(${h.f})"`)), reason: tooLarge, follows: true },
    { what: 'the fill attribute', doc: (h) => onRed(rect(`fill="url(${h.p})"`)), reason: tooLarge, follows: true },
    { what: '<use href>', doc: (h) => onRed(`<use href="${h.g}"/>`), reason: tooLarge, follows: true },
    { what: '<use xlink:href>', doc: (h) => onRed(`<use xlink:href="${h.g}"/>`), reason: tooLarge, follows: true },
    {
      what: '<pattern xlink:href>',
      doc: (h) => onRed(`<pattern id="q" xlink:href="${h.p}"/>${rect('fill="url(#q)"')}`),
      reason: tooLarge,
      follows: true,
    },
    {
      what: 'an XLink prefix that is not ASCII',
      doc: (h) => onRed(`<use xmlns:ö="http://www.w3.org/1999/xlink" ö:href="${h.g}"/>`),
      reason: tooLarge,
      follows: true,
    },
    {
      what: 'a line break inside "data:" (the URL parser drops it)',
      doc: (h) => onRed(`<use href="da&#10;ta${h.g.slice(4)}"/>`),
      reason: tooLarge,
      follows: true,
    },
    {
      what: '<style> split by a CDATA section',
      doc: (h) => onRed(styled(`.x{filter:u<![CDATA[rl(${h.f})}]]>`)),
      reason: tooLarge,
      follows: true,
    },
    {
      what: '<style> split by a comment',
      doc: (h) => onRed(styled(`.x{filter:u<!-- -->rl(${h.f})}`)),
      reason: tooLarge,
      follows: true,
    },
    {
      what: '<style> split by an instruction',
      doc: (h) => onRed(styled(`.x{filter:u<?pi x?>rl(${h.f})}`)),
      reason: tooLarge,
      follows: true,
    },
    // Refused: spellings the check cannot read exactly (escapes, broken url()), or that only
    // other renderers follow.
    {
      what: 'a CSS escape \\75',
      doc: (h) => onRed(rect(`style="filter: \\75 rl(${h.f})"`)),
      reason: backslash,
      follows: true,
    },
    {
      what: 'a six-digit escape with no space',
      doc: (h) => onRed(rect(`style="filter: \\000075rl(${h.f})"`)),
      reason: backslash,
      follows: true,
    },
    {
      what: 'an escaped letter u\\rl',
      doc: (h) => onRed(rect(`style="filter: u\\rl(${h.f})"`)),
      reason: backslash,
      follows: true,
    },
    { what: '\\url', doc: (h) => onRed(rect(`style="filter: \\url(${h.f})"`)), reason: backslash, follows: true },
    {
      what: 'an escaped line break inside a quoted url()',
      doc: (h) => onRed(rect(`style="filter: url('${h.f.slice(0, 30)}\\\n${h.f.slice(30)}')"`)),
      reason: backslash,
      follows: true,
    },
    {
      what: 'an escape in the filter attribute',
      doc: (h) => onRed(rect(`filter="\\75 rl(${h.f})"`)),
      reason: backslash,
      follows: true,
    },
    {
      what: 'an escape in a <style> CDATA section',
      doc: (h) => onRed(styled(`<![CDATA[.x{filter:\\75 rl(${h.f})}]]>`)),
      reason: backslash,
      follows: true,
    },
    {
      what: 'a backslash written as a character reference',
      doc: (h) => onRed(rect(`style="filter: &#92;75 rl(${h.f})"`)),
      reason: backslash,
      follows: true,
    },
    {
      what: 'url( not closed before its attribute ends',
      doc: (h) => onRed(rect(`style="filter: url(${h.f}"`)),
      reason: malformed,
      follows: true,
    },
    {
      what: 'a quoted url( not closed before its attribute ends',
      doc: (h) => onRed(rect(`style='filter: url("${h.f}'`)),
      reason: malformed,
      follows: true,
    },
    {
      what: 'a comment after the quoted URL',
      doc: (h) => onRed(rect(`style="filter: url('${h.f}'/**/)"`)),
      reason: malformed,
      follows: true,
    },
    {
      what: 'an element inside <style>',
      doc: (h) => onRed(styled(`.x{filter:u<b/>rl(${h.f})}`)),
      reason: 'svg refused: its <style> element holds markup other than text, CDATA and comments',
      follows: true,
    },
    {
      what: 'a nested drawing whose url( is split by a line break in the data: URI',
      doc: (h) => {
        const nested = svgDoc(100, 100, rect(`fill="red" style="filter: u@@rl(${h.f})"`)).toString();
        const uri = `data:image/svg+xml,${encodeURIComponent(nested).replace('%40%40', '&#10;')}`;
        return onRed(`<image width="100" height="100" href="${uri}"/>`);
      },
      reason: 'svg refused: it nests SVG images more than 1 level deep',
      follows: true,
    },
    {
      what: 'image-set()',
      doc: (h) => onRed(rect(`style="filter: image-set('${h.f}' 1x)"`)),
      reason: 'svg refused: its CSS uses image-set(), which can name a file without url()',
      follows: false,
    },
    {
      what: 'src()',
      doc: (h) => onRed(rect(`style="filter: src('${h.f}')"`)),
      reason: 'svg refused: its CSS uses src(), which can name a file without url()',
      follows: false,
    },
    {
      what: '<script>',
      doc: () => onRed('<script>document.title = 1</script>'),
      reason: 'svg refused: it has a <script> element; scripts and foreign content draw nothing and are not checked',
      follows: false,
    },
    {
      what: '<foreignObject>',
      doc: (h) =>
        onRed(
          `<foreignObject width="9" height="9"><img xmlns="http://www.w3.org/1999/xhtml" src="${h.g}"/></foreignObject>`,
        ),
      reason:
        'svg refused: it has a <foreignObject> element; scripts and foreign content draw nothing and are not checked',
      follows: false,
    },
    {
      what: 'an encoding that spells ASCII otherwise (UTF-7: +AFw- is a backslash)',
      doc: (h) => onRed(rect(`style="filter: +AFw-75 rl(${h.f})"`), '<?xml version="1.0" encoding="UTF-7"?>'),
      reason: 'svg refused: it declares the encoding "UTF-7"; only UTF-8, ASCII and ISO-8859-1 text can be checked',
      follows: false,
    },
  ];
  for (const c of cases) {
    const got = await reason(c.doc(big), SVG_OK);
    if (typeof c.reason === 'string') t.is(got, c.reason, c.what);
    else t.regex(got, c.reason, c.what);
    if (!c.follows) continue;
    // The same spelling, pointing at the green drawing and rendered with no check at all: librsvg
    // follows it, so missing it would let the PNG through.
    const { data } = await sharp(c.doc(green))
      .flatten({ background: '#fff' })
      .resize(4, 4)
      .raw()
      .toBuffer({ resolveWithObject: true });
    allNear(t, data.subarray(15, 18), GREEN, `librsvg follows ${c.what}`, 16); // pixel (1, 1), clear of the edges
  }
});

test('SVG, when allowed: an ordinary drawing with embedded PNG, JPEG and nested SVG renders', async (t) => {
  const half = (x: number, body: string) =>
    `<svg x="${x}" width="50" height="100" viewBox="0 0 50 100" preserveAspectRatio="none">${body}</svg>`;
  const nested = svgDoc(10, 10, '<rect width="10" height="10" fill="#0000ff"/>');
  const pngDoc = svgDoc(100, 100, svgImage(await png4(), 'image/png', 100));
  allNear(
    t,
    await decodeImage(pngDoc, { width: 8, height: 8, maxPixels: LIMIT, formats: ['svg'] }),
    RED,
    'embedded PNG',
  );
  const jpeg = await solid(8, 8, GREEN).jpeg({ quality: 100 }).toBuffer();
  const jpegDoc = svgDoc(100, 100, svgImage(jpeg, 'image/jpeg', 100, 'xlink:href'));
  allNear(
    t,
    await decodeImage(jpegDoc, { width: 8, height: 8, maxPixels: LIMIT, formats: ['svg'] }),
    GREEN,
    'embedded JPEG',
    6,
  );
  // Left half an embedded PNG (red), right half a nested SVG (blue).
  const both = svgDoc(
    100,
    100,
    half(0, svgImage(await png4(), 'image/png', 100)) + half(50, svgImage(nested, 'image/svg+xml', 100)),
  );
  const px = await decodeImage(both, { width: 2, height: 1, maxPixels: LIMIT, formats: ['svg'] });
  t.true(px[0]! > 200 && px[2]! < 60 && px[3]! < 60 && px[5]! > 200, `${[...px]}`);
  // A style sheet in CDATA with a CSS comment, filling by url(#fragment), and a nested drawing
  // written percent-encoded whose own url(%23b) is a fragment of that drawing: all ordinary.
  const styled = svgDoc(
    100,
    100,
    '<defs><linearGradient id="b"><stop offset="0" stop-color="#00f"/><stop offset="1" stop-color="#00f"/></linearGradient></defs>' +
      '<style type="text/css"><![CDATA[ /* blue */ .a { fill: URL( "#b" ) } ]]></style><rect class="a" width="100" height="100"/>',
  );
  allNear(t, await decodeImage(styled, { width: 8, height: 8, maxPixels: LIMIT, formats: ['svg'] }), BLUE, '<style>');
  const inner = svgDoc(
    10,
    10,
    "<linearGradient id='b'><stop stop-color='#0f0'/></linearGradient><rect width='10' height='10' fill='url(#b)'/>",
  );
  const percent = svgDoc(
    100,
    100,
    `<image width="100" height="100" preserveAspectRatio="none" href="data:image/svg+xml,${encodeURIComponent(inner.toString())}"/>`,
  );
  allNear(
    t,
    await decodeImage(percent, { width: 8, height: 8, maxPixels: LIMIT, formats: ['svg'] }),
    GREEN,
    'url(%23b)',
  );
});

/**
 * A mix of bad files, each with the reason it must get. Built once; the determinism tests below
 * decode it many times.
 */
async function badCorpus(): Promise<Array<{ name: string; bytes: Uint8Array; reason: RegExp }>> {
  const noise = Buffer.alloc(160 * 120 * 3);
  for (let i = 0; i < noise.length; i++) noise[i] = (i * 7919) % 251;
  const raw = { raw: { width: 160, height: 120, channels: 3 as const } };
  const jpeg = await sharp(noise, raw).jpeg().toBuffer();
  const png = await sharp(noise, raw).png().toBuffer();
  const webp = await sharp(noise, raw).webp().toBuffer();
  const tiff = await sharp(noise, raw).tiff().toBuffer(); // directory last
  const tiffFirst = tiffDirectoryFirst(160, 120, noise, { order: 'MM' });
  const damaged = Buffer.from(jpeg);
  damaged.fill(0xff, 600, 700);
  damaged[700] = 0xd3;
  const small = await png4();
  const U = (f: string) => new RegExp(`^unsupported format: ${f}`);
  return [
    {
      name: 'truncated.jpg',
      bytes: jpeg.subarray(0, jpeg.length >> 1),
      reason: new RegExp(`^truncated jpeg image: the file ends \\(at ${jpeg.length >> 1} bytes\\)`),
    },
    { name: 'header-cut.jpg', bytes: jpeg.subarray(0, 30), reason: /^truncated jpeg image/ },
    { name: 'damaged.jpg', bytes: damaged, reason: /^unreadable jpeg image: the decoder rejected its data/ },
    {
      name: 'truncated.png',
      bytes: png.subarray(0, png.length >> 1),
      reason: /^truncated png image: the file ends \(at \d+ bytes\) before its IEND chunk$/,
    },
    {
      name: 'truncated.webp',
      bytes: webp.subarray(0, webp.length >> 1),
      reason: new RegExp(`^truncated webp image: the file has ${webp.length >> 1} of the ${webp.length} bytes`),
    },
    {
      name: 'truncated.tif',
      bytes: tiff.subarray(0, tiff.length >> 1),
      reason: /^truncated tiff image: the file ends \(at \d+ bytes\) before the directory its header points to/,
    },
    {
      name: 'truncated-scan.tif',
      bytes: tiffFirst.subarray(0, tiffFirst.length >> 1),
      reason: /^truncated tiff image: the file ends \(at \d+ bytes\) before the end of the image data its directory/,
    },
    {
      name: 'junk.avif',
      bytes: ftyp('avif', ['mif1', 'avif'], Buffer.alloc(100)),
      reason: /^unreadable avif image: the decoder cannot read its header/,
    },
    {
      name: 'lying.png',
      bytes: pngDeclaring(small, 5000, 5000),
      reason: /^unreadable png image: the decoder rejected its data/,
    },
    {
      name: 'lying.jpg',
      bytes: jpegDeclaring(jpeg, 9000, 9000),
      reason: /^unreadable jpeg image: the decoder rejected its data/,
    },
    { name: 'bomb.png', bytes: pngDeclaring(small, 20000, 20000), reason: /^image too large: 20000×20000/ },
    { name: 'frame.gif', bytes: gifWithFrame(16, 16, 65535, 65535), reason: /^image too large: 65535×65535/ },
    {
      name: 'tile.tif',
      bytes: tiffPages([{ width: 16, height: 16, data: Buffer.alloc(768), tile: 65536 }]),
      reason: /^unreadable tiff image: the decoder cannot read its header/,
    },
    {
      name: 'ztxt.png',
      bytes: withPngChunks(small, [
        pngChunk('zTXt', Buffer.concat([Buffer.from('c\0\0'), deflateSync(Buffer.alloc(60e6))])),
      ]),
      reason: /^unreadable png image: the decoder cannot read its header/,
    },
    {
      name: 'photo.heic',
      bytes: ftyp('heic', ['mif1', 'heic'], Buffer.alloc(100)),
      reason: U('HEIC \\(no decoder installed\\)'),
    },
    { name: 'icon.ico', bytes: icoWithPng(small, 4), reason: U('ICO') },
    { name: 'scan.jp2', bytes: jp2Header(), reason: U('JPEG 2000') },
    { name: 'layers.psd', bytes: psd(4, 4, [9, 9, 9]), reason: U('PSD') },
    { name: 'old.bmp', bytes: bmp2x2(), reason: U('BMP') },
    {
      name: 'drawing.svg',
      bytes: svgDoc(10, 10, '<rect width="1" height="1"/>'),
      reason: /^format svg is not accepted here/,
    },
    {
      name: 'notes.jpg',
      bytes: Buffer.from('these are my notes\n'),
      reason: /^not an image: unrecognised format \(looks like text/,
    },
    {
      name: 'error.png',
      bytes: Buffer.from('<!DOCTYPE html><html><body>403</body></html>'),
      reason: /^not an image: unrecognised format \(looks like an HTML page\)$/,
    },
    { name: 'empty.png', bytes: new Uint8Array(0), reason: /^empty file \(0 bytes\)$/ },
  ];
}

test('reasons are deterministic: a mixed bad corpus decoded 5 times at concurrency 8 gets the same reasons', async (t) => {
  const corpus = await badCorpus();
  const rounds: string[][] = [];
  for (let round = 0; round < 5; round++) {
    // Shuffle the order each round, so each file meets different neighbours in flight.
    const order = corpus
      .map((_, i) => i)
      .sort((a, b) => ((a * 7 + round * 13) % corpus.length) - ((b * 7 + round * 13) % corpus.length));
    const got = await mapLimit(order, 8, (i) => reason(corpus[i]!.bytes));
    const byFile: string[] = [];
    for (const [k, i] of order.entries()) byFile[i] = got[k]!;
    rounds.push(byFile);
  }
  for (const [i, c] of corpus.entries()) t.regex(rounds[0]![i]!, c.reason, c.name);
  for (let r = 1; r < rounds.length; r++) t.deepEqual(rounds[r], rounds[0], `round ${r}`);
});

test('decoder processes give the same reasons as decoding in-process, every time', async (t) => {
  const corpus = await badCorpus();
  const pool = new DecoderPool({ processes: 2, timeoutSeconds: 60, memoryLimitMiB: 1024 });
  t.teardown(() => pool.close());
  const expected = await Promise.all(corpus.map((c) => reason(c.bytes)));
  for (let round = 0; round < 3; round++) {
    const got = await mapLimit(corpus, 8, (c) =>
      pool.decode(c.bytes, { ...OUT, maxPixels: LIMIT }).then(
        () => 'decoded',
        (err: unknown) => (err instanceof ImageError ? err.message : `not an ImageError: ${String(err)}`),
      ),
    );
    t.deepEqual(got, expected, `round ${round}`);
  }
});

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test('a drawing that renders too long is stopped at DEEPFEAT_DECODE_TIMEOUT; its process is killed, the others go on', async (t) => {
  // 5 s: the bomb renders for a minute or so, and the PNG decoded beside it must beat the deadline
  // too — at 2 s it did not once, on a 2-core CI host loaded by the rest of the suite.
  const pool = new DecoderPool({ processes: 2, timeoutSeconds: 5, memoryLimitMiB: 1024 });
  t.teardown(() => pool.close());
  // A text chunk sends the PNG to a decoder process (the pool decodes small plain PNGs itself).
  const ok = withPngChunks(await png4(), [pngChunk('tEXt', Buffer.from('Comment\0to a decoder process', 'latin1'))]);
  // Both processes up, so the deadline below is spent decoding, not starting.
  await Promise.all([pool.decode(ok, { ...OUT, maxPixels: LIMIT }), pool.decode(ok, { ...OUT, maxPixels: LIMIT })]);
  const before = pool.pids;
  t.is(before.length, 2);
  // sharp's own timeout cannot interrupt librsvg: only the kill ends this render (a minute or so).
  const bomb = pool.decode(svgFilterBomb(3000), SVG_OK);
  allNear(t, await pool.decode(ok, { ...OUT, maxPixels: LIMIT }), RED, 'a PNG decoded beside the bomb');
  const err = await t.throwsAsync(bomb, { instanceOf: ImageError });
  t.is(err!.message, 'decode timed out after 5 s (DEEPFEAT_DECODE_TIMEOUT)');
  const gone = before.filter((pid) => !pool.pids.includes(pid));
  t.is(gone.length, 1, 'exactly one process was killed');
  // Killed at once; gone as soon as the kernel has reaped it.
  while (pidAlive(gone[0]!)) await new Promise((r) => setTimeout(r, 20));
  t.pass('the killed process is gone');
  // The next decodes get a fresh process.
  allNear(t, await pool.decode(ok, { ...OUT, maxPixels: LIMIT }), RED, 'after the kill');
});

test('an image needing more than DEEPFEAT_DECODE_MEMORY is recorded as such; the pool goes on', async (t) => {
  const pool = new DecoderPool({ processes: 1, timeoutSeconds: 60, memoryLimitMiB: 256 });
  t.teardown(() => pool.close());
  const tooMuch = "decoding needs more memory than the decoder's limit of 256 MiB (DEEPFEAT_DECODE_MEMORY)";
  // A 40-byte GIF whose frame is 9000×9000: within the pixel limit, but the canvas takes 324 MB.
  // The codec aborts on the failed allocation (the process dies, having said why on stderr).
  const gif = gifWithFrame(16, 16, 9000, 9000);
  await t.throwsAsync(pool.decode(gif, { ...OUT, maxPixels: LIMIT }), { instanceOf: ImageError, message: tooMuch });
  // A real 100-megapixel progressive JPEG (at the pixel limit) needs ~380 MB of coefficients;
  // libjpeg fails cleanly here, and the process survives.
  const progressive = await solid(10000, 10000, GREEN).jpeg({ progressive: true }).toBuffer();
  await t.throwsAsync(pool.decode(progressive, { ...OUT, maxPixels: LIMIT }), {
    instanceOf: ImageError,
    message: tooMuch,
  });
  allNear(t, await pool.decode(await png4(), { ...OUT, maxPixels: LIMIT }), RED, 'the next image');
  // With the default limit, the same JPEG decodes.
  const roomy = new DecoderPool({ processes: 1, timeoutSeconds: 60, memoryLimitMiB: 1024 });
  t.teardown(() => roomy.close());
  allNear(
    t,
    await roomy.decode(progressive, { width: 8, height: 8, maxPixels: LIMIT }),
    { r: 0, g: 255, b: 1 },
    'at 1024 MiB',
  );
});

test('a decoder process killed from outside is replaced and the image retried once; a second death is recorded', async (t) => {
  const pool = new DecoderPool({ processes: 1, timeoutSeconds: 120, memoryLimitMiB: 1024 });
  t.teardown(() => pool.close());
  const ok = await png4();
  await pool.decode(ok, { ...OUT, maxPixels: LIMIT });
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  let killed = 0;
  /** Kills the process decoding now (not the one killed before), a moment into its work. */
  const killWhileDecoding = async () => {
    while (pool.busyPids.length === 0 || pool.busyPids[0] === killed) await sleep(20);
    killed = pool.busyPids[0]!;
    await sleep(200);
    process.kill(killed, 'SIGKILL');
  };
  // Killed twice (as the host's OOM killer might): recorded as a crash.
  const slow = pool.decode(svgFilterBomb(3000), SVG_OK);
  await killWhileDecoding();
  await killWhileDecoding();
  const err = await t.throwsAsync(slow, { instanceOf: ImageError });
  t.is(
    err!.message,
    "the decoder crashed on this svg image (signal SIGKILL), twice: it may need more memory than the decoder's limit of 1024 MiB (DEEPFEAT_DECODE_MEMORY)",
  );
  // Killed once: the retry decodes it (a render of some seconds, so the kill lands during it).
  const once = pool.decode(svgFilterBomb(200), SVG_OK);
  await killWhileDecoding();
  t.is((await once).length, OUT.width * OUT.height * 3);
});
