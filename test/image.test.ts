import test from 'ava';
import { crc32 } from 'node:zlib';
import sharp from 'sharp';
import { decodeImage } from '../services/extractor/image.js';
import { ImageError } from '../shared/errors.js';
import { asymmetricRaw, tiffDirectoryFirst, twoFrameGif } from './helpers/images.js';

const SIZE = { width: 32, height: 24, maxPixels: 50_000_000 };
const OUT_BYTES = SIZE.width * SIZE.height * 3;

/** Mean absolute difference of two equal-length byte arrays. */
function meanAbsDiff(a: Uint8Array, b: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += Math.abs(a[i] - b[i]);
  return sum / a.length;
}

/** Mean of each RGB channel of an HWC buffer. */
function meanRgb(px: Uint8Array): [number, number, number] {
  const s = [0, 0, 0];
  for (let i = 0; i < px.length; i++) s[i % 3] += px[i];
  const n = px.length / 3;
  return [s[0] / n, s[1] / n, s[2] / n];
}

function solid(
  width: number,
  height: number,
  colour: { r: number; g: number; b: number; alpha?: number },
  channels: 3 | 4 = 3,
) {
  return sharp({ create: { width, height, channels, background: colour } });
}

/** The asymmetric test picture as PNG, so rotations are visible. */
function asymmetric(width: number, height: number): Promise<Buffer> {
  return sharp(asymmetricRaw(width, height), { raw: { width, height, channels: 3 } })
    .png()
    .toBuffer();
}

async function expectImageError(t: import('ava').ExecutionContext, bytes: Uint8Array, pattern: RegExp, opts = SIZE) {
  const err = await t.throwsAsync(decodeImage(bytes, opts), { instanceOf: ImageError });
  t.regex(err!.message, pattern);
  t.is((err as ImageError).code, 'IMAGE_INVALID');
  return err!;
}

test('a plain JPEG decodes to exactly width*height*3 RGB bytes', async (t) => {
  const jpeg = await solid(100, 80, { r: 200, g: 40, b: 90 }).jpeg().toBuffer();
  const px = await decodeImage(jpeg, SIZE);
  t.true(px instanceof Uint8Array);
  t.is(px.length, OUT_BYTES);
  const [r, g, b] = meanRgb(px);
  t.true(Math.abs(r - 200) < 4 && Math.abs(g - 40) < 4 && Math.abs(b - 90) < 4, `${r},${g},${b}`);
});

test('alpha is flattened onto white', async (t) => {
  // Fully transparent black must come out white; half-transparent red lies between red and white.
  const clear = await solid(40, 40, { r: 0, g: 0, b: 0, alpha: 0 }, 4).png().toBuffer();
  const px = await decodeImage(clear, SIZE);
  t.is(px.length, OUT_BYTES);
  t.deepEqual(meanRgb(px).map(Math.round), [255, 255, 255]);

  const half = await solid(40, 40, { r: 255, g: 0, b: 0, alpha: 0.5 }, 4).png().toBuffer();
  const [r, g, b] = meanRgb(await decodeImage(half, SIZE));
  t.true(r > 250 && g > 110 && g < 145 && Math.abs(g - b) < 2, `${r},${g},${b}`);
});

test('a one-channel greyscale PNG becomes three equal channels', async (t) => {
  const grey = await solid(50, 50, { r: 100, g: 100, b: 100 }).toColourspace('b-w').png().toBuffer();
  t.is((await sharp(grey).metadata()).channels as number, 1);
  const px = await decodeImage(grey, SIZE);
  t.is(px.length, OUT_BYTES);
  for (let i = 0; i < px.length; i += 3) {
    if (px[i] !== 100 || px[i + 1] !== 100 || px[i + 2] !== 100)
      return t.fail(`pixel ${i / 3}: ${px.subarray(i, i + 3)}`);
  }
  t.pass();
});

test('a 16-bit PNG becomes 8-bit', async (t) => {
  const png16 = await solid(30, 30, { r: 255, g: 128, b: 0 }).toColourspace('rgb16').png().toBuffer();
  t.is((await sharp(png16).metadata()).depth, 'ushort');
  const px = await decodeImage(png16, SIZE);
  t.is(px.length, OUT_BYTES);
  const [r, g, b] = meanRgb(px);
  t.true(r === 255 && Math.abs(g - 128) <= 1 && b === 0, `${r},${g},${b}`);
});

test('a CMYK JPEG becomes sRGB', async (t) => {
  const cmyk = await solid(40, 40, { r: 255, g: 0, b: 0 }).toColourspace('cmyk').jpeg().toBuffer();
  const meta = await sharp(cmyk).metadata();
  t.is(meta.space, 'cmyk');
  t.is(meta.channels, 4);
  const px = await decodeImage(cmyk, SIZE);
  t.is(px.length, OUT_BYTES);
  const [r, g, b] = meanRgb(px);
  t.true(r > 200 && g < 60 && b < 60, `reddish, got ${r},${g},${b}`); // round trip through a CMYK profile is not exact
});

test('EXIF orientation is applied before resizing', async (t) => {
  const plain = await asymmetric(60, 40);
  const tagged = await sharp(plain).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
  t.is((await sharp(tagged).metadata()).orientation, 6);
  // Orientation 6 means "rotate 90° clockwise to display": the displayed image is 40 wide, 60 tall.
  const upright = await sharp(plain).rotate(90).jpeg({ quality: 95 }).toBuffer();
  const opts = { width: 20, height: 30, maxPixels: 1e6 };
  const fromTagged = await decodeImage(tagged, opts);
  const fromUpright = await decodeImage(upright, opts);
  const fromIgnored = await decodeImage(await sharp(plain).jpeg({ quality: 95 }).toBuffer(), opts);
  t.true(meanAbsDiff(fromTagged, fromUpright) < 3, `tagged vs upright ${meanAbsDiff(fromTagged, fromUpright)}`);
  t.true(meanAbsDiff(fromTagged, fromIgnored) > 20, 'the tag must make a difference');
});

test('resize covers the target and crops the centre', async (t) => {
  // 300×100: left third red, middle third green, right third blue. A square output keeps the middle.
  const w = 300;
  const h = 100;
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < w * h; i++) px[i * 3 + Math.floor(((i % w) * 3) / w)] = 255;
  const png = await sharp(px, { raw: { width: w, height: h, channels: 3 } })
    .png()
    .toBuffer();
  const out = await decodeImage(png, { width: 10, height: 10, maxPixels: 1e6 });
  t.is(out.length, 300);
  const [r, g, b] = meanRgb(out);
  t.true(g > 240 && r < 10 && b < 10, `${r},${g},${b}`);
});

test('an animated GIF gives its first frame', async (t) => {
  const gif = twoFrameGif(16, 16, [
    [255, 0, 0],
    [0, 0, 255],
  ]);
  const meta = await sharp(gif).metadata();
  t.is(meta.format, 'gif');
  t.is(meta.pages, 2);
  const px = await decodeImage(gif, SIZE);
  t.is(px.length, OUT_BYTES);
  t.deepEqual(meanRgb(px).map(Math.round), [255, 0, 0]);
});

test('an animated WebP gives its first frame', async (t) => {
  const gif = twoFrameGif(16, 16, [
    [0, 255, 0],
    [255, 0, 255],
  ]);
  const webp = await sharp(gif, { pages: -1 }).webp({ lossless: true }).toBuffer();
  t.is((await sharp(webp).metadata()).pages, 2);
  const [r, g, b] = meanRgb(await decodeImage(webp, SIZE));
  t.true(g > 250 && r < 5 && b < 5, `${r},${g},${b}`);
});

test('a zero-byte file is reported as empty', async (t) => {
  await expectImageError(t, new Uint8Array(0), /^empty file \(0 bytes\)$/);
});

test('a text file is reported as not an image, with a hint', async (t) => {
  const err = await expectImageError(
    t,
    Buffer.from('label,key\ncat,cats/1.jpg\n'),
    /^not an image: unrecognised format/,
  );
  t.regex(err.message, /looks like text: "label,key cat/);
  await expectImageError(t, Buffer.from('<!DOCTYPE html><html><body>Access denied</body></html>'), /HTML page/);
  await expectImageError(
    t,
    Buffer.from([1, 2, 3, 4, 5, 250, 251, 252, 0, 0, 9]),
    /^not an image: unrecognised format \(first bytes 0102030405fafbfc\)$/,
  );
});

test('a truncated file is reported as truncated, from its structure', async (t) => {
  const noise = Buffer.alloc(200 * 150 * 3);
  for (let i = 0; i < noise.length; i++) noise[i] = (i * 7919) % 251;
  const jpeg = await sharp(noise, { raw: { width: 200, height: 150, channels: 3 } })
    .jpeg()
    .toBuffer();
  const half = Math.floor(jpeg.length / 2);
  // (Not libvips's text, "Premature end of input file": that is lost under concurrent decodes.)
  await expectImageError(
    t,
    jpeg.subarray(0, half),
    new RegExp(`^truncated jpeg image: the file ends \\(at ${half} bytes\\) before its end-of-image marker$`),
  );
  // Cut inside the header: sharp cannot even read the size, but the cut still shows.
  await expectImageError(
    t,
    jpeg.subarray(0, 40),
    /^truncated jpeg image: the file ends \(at 40 bytes\) before its end-of-image marker$/,
  );
  // A truncated PNG, too.
  const png = await sharp(noise, { raw: { width: 200, height: 150, channels: 3 } })
    .png()
    .toBuffer();
  await expectImageError(
    t,
    png.subarray(0, Math.floor(png.length / 2)),
    /^truncated png image: the file ends \(at \d+ bytes\) before its IEND chunk$/,
  );
});

test('a truncated TIFF is reported as truncated, wherever its directory is', async (t) => {
  const noise = Buffer.alloc(64 * 48 * 3);
  for (let i = 0; i < noise.length; i++) noise[i] = (i * 7919) % 251;
  const raw = { raw: { width: 64, height: 48, channels: 3 as const } };
  // libvips writes the directory last: a cut file has none, and sharp cannot read even its size.
  const tiff = await sharp(noise, raw).tiff().toBuffer();
  const half = Math.floor(tiff.length / 2);
  await expectImageError(
    t,
    tiff.subarray(0, half),
    new RegExp(
      `^truncated tiff image: the file ends \\(at ${half} bytes\\) before the directory its header points to \\(at byte ${tiff.readUInt32LE(4)}\\)$`,
    ),
  );
  // Cameras and scanners write it first: a cut file has a whole directory pointing past its end.
  for (const [order, big] of [
    ['II', false],
    ['MM', false],
    ['II', true],
    ['MM', true],
  ] as const) {
    const what = `${order}${big ? ' BigTIFF' : ''}`;
    const whole = tiffDirectoryFirst(64, 48, noise, { order, big });
    t.is((await decodeImage(whole, SIZE)).length, OUT_BYTES, `the whole ${what} file decodes`);
    const cut = whole.length - 1000;
    await expectImageError(
      t,
      whole.subarray(0, cut),
      new RegExp(
        `^truncated tiff image: the file ends \\(at ${cut} bytes\\) before the end of the image data its directory points to \\(at byte ${whole.length}\\)$`,
      ),
    );
  }
});

test('a whole file with damaged data is reported as unreadable, not truncated', async (t) => {
  const noise = Buffer.alloc(200 * 150 * 3);
  for (let i = 0; i < noise.length; i++) noise[i] = (i * 7919) % 251;
  const jpeg = Buffer.from(
    await sharp(noise, { raw: { width: 200, height: 150, channels: 3 } })
      .jpeg()
      .toBuffer(),
  );
  // Overwrite the middle of the entropy-coded data with marker bytes the decoder must reject.
  jpeg.fill(0xff, Math.floor(jpeg.length / 2), Math.floor(jpeg.length / 2) + 64);
  jpeg.writeUInt8(0xd0, Math.floor(jpeg.length / 2) + 64);
  await expectImageError(
    t,
    jpeg,
    /^unreadable jpeg image: the decoder rejected its data \(damaged, or a variant it does not support\)$/,
  );
});

test('a decompression bomb is refused before decoding', async (t) => {
  // A real 2000×2000 PNG (a few KB, 4 megapixels) against a 1-megapixel limit.
  const big = await solid(2000, 2000, { r: 1, g: 2, b: 3 }).png().toBuffer();
  t.true(big.length < 100_000);
  await expectImageError(
    t,
    big,
    /^image too large: 2000×2000 pixels exceeds the limit of 1000000 \(DEEPFEAT_MAX_IMAGE_PIXELS\)$/,
    { width: 8, height: 8, maxPixels: 1_000_000 },
  );

  // A tiny PNG whose header declares 20000×20000: never allocated, refused from the header alone.
  const small = Buffer.from(await solid(4, 4, { r: 0, g: 0, b: 0 }).png().toBuffer());
  // IHDR data starts at byte 16 (8 signature + 4 length + 4 type); its CRC covers type + data.
  small.writeUInt32BE(20000, 16);
  small.writeUInt32BE(20000, 20);
  small.writeUInt32BE(crc32(small.subarray(12, 29)) >>> 0, 29);
  t.is((await sharp(small, { limitInputPixels: false }).metadata()).width, 20000);
  await expectImageError(
    t,
    small,
    /^image too large: 20000×20000 pixels exceeds the limit of 100000000 \(DEEPFEAT_MAX_IMAGE_PIXELS\)$/,
    { width: 8, height: 8, maxPixels: 100_000_000 },
  );
});

test('output size is exact for many shapes and formats', async (t) => {
  const inputs = [
    await solid(1, 1, { r: 9, g: 9, b: 9 }).png().toBuffer(),
    await solid(7, 500, { r: 9, g: 9, b: 9 }).webp().toBuffer(),
    await solid(500, 7, { r: 9, g: 9, b: 9 }).tiff().toBuffer(),
    await solid(33, 17, { r: 9, g: 9, b: 9 }).avif().toBuffer(),
  ];
  for (const bytes of inputs) {
    for (const size of [
      { width: 224, height: 224 },
      { width: 3, height: 5 },
    ]) {
      const px = await decodeImage(bytes, { ...size, maxPixels: 1e6 });
      t.is(px.length, size.width * size.height * 3);
    }
  }
});
