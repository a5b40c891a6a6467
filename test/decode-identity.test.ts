/**
 * decodeImage's pixels are the published preprocessing (PREPROCESSING_VERSION): cached feature
 * vectors and classifier.onnx users depend on them byte for byte. This file keeps the pipeline as
 * it was before issue 14's decoder changes (`reference`: the header read, then one sharp pipeline
 * with every operation unconditional) and checks that decodeImage gives exactly the same bytes
 * for a varied generated corpus, and refuses the same damaged files.
 *
 * sharp is set up as in a decoder process (no operation cache, one libvips thread).
 */
import test from 'ava';
import sharp from 'sharp';
import { decodeImage } from '../services/extractor/image.js';
import { ImageError } from '../shared/errors.js';
import { twoFrameGif } from './helpers/images.js';
import { reference } from './helpers/reference-decode.js';

sharp.cache(false);
sharp.concurrency(1);

const MAX_PIXELS = 50_000_000;

/** A deterministic picture with structure in every direction and some grain (so JPEG is not trivial). */
function picture(width: number, height: number, channels: 3 | 4): Buffer {
  const out = Buffer.alloc(width * height * channels);
  let seed = width * 7919 + height * 104729 + channels;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed >>> 24;
  };
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * channels;
      const corner = x < width / 3 && y < height / 4;
      out[i] = corner ? 230 : (x * 255) / Math.max(1, width - 1);
      out[i + 1] = (y * 255) / Math.max(1, height - 1);
      out[i + 2] = ((x + y) * 37 + (rand() & 31)) & 255;
      // Partial transparency: opaque, clear and every step between, across the picture.
      if (channels === 4) out[i + 3] = (x * 7 + y * 3) % 3 === 0 ? 255 : (x * 255) / Math.max(1, width - 1);
    }
  }
  return out;
}

const raw = (w: number, h: number, channels: 3 | 4 = 3) =>
  sharp(picture(w, h, channels), { raw: { width: w, height: h, channels } });

interface Sample {
  name: string;
  bytes: Buffer;
  /** What the file should be, checked so the corpus really has the variety it claims. */
  expect?: {
    format?: string;
    channels?: number;
    depth?: string;
    space?: string;
    orientation?: number;
    hasAlpha?: boolean;
  };
}

// 1×1 to 37×101 are scaled up (upscale.ts), the rest down: 640×480 and 500×375 by about 2 to 3
// (downscale.ts), 300×300 by less than 2, 333×517 portrait, and 1000×700 by 3.1 to 4.4 (JPEGs
// shrunk on load by sharp unless EXIF-rotated, the rest past downscale.ts's range at 224×224).
const SIZES: Array<[number, number]> = [
  [1, 1],
  [32, 32],
  [37, 101],
  [640, 480],
  [500, 375],
  [300, 300],
  [333, 517],
  [1000, 700],
];
const TARGETS: Array<[number, number]> = [
  [224, 224],
  [299, 299],
  [160, 96],
];

async function corpus(): Promise<Sample[]> {
  const out: Sample[] = [];
  const add = async (name: string, image: sharp.Sharp, expect?: Sample['expect']) => {
    out.push({ name, bytes: await image.toBuffer(), ...(expect ? { expect } : {}) });
  };
  for (const [w, h] of SIZES) {
    const at = `${w}×${h}`;
    await add(`png rgb ${at}`, raw(w, h).png(), { format: 'png', channels: 3, hasAlpha: false });
    await add(`png rgba ${at}`, raw(w, h, 4).png(), { format: 'png', channels: 4, hasAlpha: true });
    await add(`png grey ${at}`, raw(w, h).toColourspace('b-w').png(), { format: 'png', channels: 1 });
    await add(`png grey+alpha ${at}`, raw(w, h, 4).toColourspace('b-w').png(), {
      format: 'png',
      channels: 2,
      hasAlpha: true,
    });
    await add(`png palette ${at}`, raw(w, h).png({ palette: true }), { format: 'png' });
    await add(`png 16-bit ${at}`, raw(w, h).toColourspace('rgb16').png(), { format: 'png', depth: 'ushort' });
    await add(`jpeg rgb ${at}`, raw(w, h).jpeg({ quality: 90 }), { format: 'jpeg', channels: 3 });
    await add(`jpeg grey ${at}`, raw(w, h).toColourspace('b-w').jpeg(), { format: 'jpeg', channels: 1 });
    await add(`jpeg cmyk ${at}`, raw(w, h).toColourspace('cmyk').jpeg(), { format: 'jpeg', space: 'cmyk' });
    for (let orientation = 1; orientation <= 8; orientation++) {
      await add(`jpeg orientation ${orientation} ${at}`, raw(w, h).jpeg().withMetadata({ orientation }), {
        format: 'jpeg',
        orientation,
      });
    }
    await add(`gif ${at}`, raw(w, h).gif(), { format: 'gif' });
    // A 1×1 picture is opaque (its one pixel is), and the WebP encoder then drops the alpha.
    await add(`webp alpha ${at}`, raw(w, h, 4).webp(), { format: 'webp', hasAlpha: w > 1 });
    await add(`tiff ${at}`, raw(w, h).tiff(), { format: 'tiff' });
  }
  await add('png rgba orientation 6 37×101', raw(37, 101, 4).png().withMetadata({ orientation: 6 }), {
    orientation: 6,
    hasAlpha: true,
  });
  await add('webp orientation 8 37×101', raw(37, 101).webp().withMetadata({ orientation: 8 }), { orientation: 8 });
  await add('tiff orientation 5 37×101', raw(37, 101).tiff().withMetadata({ orientation: 5 }), { orientation: 5 });
  await add('jpeg with an ICC profile 37×101', raw(37, 101).jpeg().withMetadata({ icc: 'p3' }));
  await add('jpeg with an ICC profile 640×480', raw(640, 480).jpeg().withMetadata({ icc: 'p3' }));
  await add('webp orientation 6 640×480', raw(640, 480).webp().withMetadata({ orientation: 6 }), { orientation: 6 });
  await add('avif 37×101', raw(37, 101).avif({ effort: 0 }), { format: 'heif' });
  await add('tiff grey 37×101', raw(37, 101).toColourspace('b-w').tiff(), { format: 'tiff', channels: 1 });
  out.push({
    name: 'gif, two frames 20×12',
    bytes: twoFrameGif(20, 12, [
      [255, 0, 0],
      [0, 0, 255],
    ]),
  });
  // Shapes whose cover scale passes 65535 px: decodeImage crops the source first (extremeCrop).
  await add('png strip 3000×1', raw(3000, 1).png());
  await add('jpeg strip 1×3000, orientation 6', raw(1, 3000).jpeg().withMetadata({ orientation: 6 }));
  await add('jpeg strip 3000×2, orientation 3', raw(3000, 2).jpeg().withMetadata({ orientation: 3 }));
  return out;
}

const samples = corpus();

test('the corpus has the variety it claims', async (t) => {
  for (const s of await samples) {
    if (!s.expect) continue;
    const meta = await sharp(s.bytes).metadata();
    for (const [k, v] of Object.entries(s.expect))
      t.is(meta[k as keyof sharp.Metadata] as unknown, v, `${s.name}: ${k}`);
  }
});

for (const [width, height] of TARGETS) {
  test(`decodeImage gives the reference's bytes at ${width}×${height}`, async (t) => {
    const list = await samples;
    t.true(list.length > 80);
    for (const s of list) {
      const expected = await reference(s.bytes, width, height);
      const got = await decodeImage(s.bytes, { width, height, maxPixels: MAX_PIXELS });
      t.is(got.byteLength, expected.byteLength, s.name);
      if (!Buffer.from(got.buffer, got.byteOffset, got.byteLength).equals(expected)) {
        let at = 0;
        while (got[at] === expected[at]) at++;
        t.fail(`${s.name} at ${width}×${height}: bytes differ first at ${at} (${got[at]} vs ${expected[at]})`);
      }
    }
  });
}

test('damaged files are refused as before: the reference fails on them too', async (t) => {
  const jpeg = await raw(64, 48).jpeg().toBuffer();
  const png = await raw(64, 48).png().toBuffer();
  const webp = await raw(64, 48).webp().toBuffer();
  const damaged: Array<[string, Buffer]> = [
    ['jpeg cut in its scan', jpeg.subarray(0, Math.floor(jpeg.length * 0.6))],
    ['jpeg without its end marker', jpeg.subarray(0, jpeg.length - 2)],
    ['png cut before IEND', png.subarray(0, png.length - 20)],
    ['webp cut short', webp.subarray(0, Math.floor(webp.length / 2))],
  ];
  for (const [name, bytes] of damaged) {
    await t.throwsAsync(reference(bytes, 224, 224), undefined, `reference accepts ${name}`);
    await t.throwsAsync(decodeImage(bytes, { width: 224, height: 224, maxPixels: MAX_PIXELS }), {
      instanceOf: ImageError,
    });
  }
});
