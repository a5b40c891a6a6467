/**
 * The libjpeg-turbo addon (native/jpeg, services/extractor/jpeg-native.ts) must give exactly
 * sharp's pixels, or step aside: for every window of every kind of JPEG it decodes, for every
 * JPEG decodeImage hands it, and for damaged files (where sharp's answer, pixels or reason, must
 * stay the answer). The addon is built by `npm ci` where the host has a compiler and libjpeg-turbo's
 * headers; CI installs them and requires it. Elsewhere these tests are skipped, and sharp decodes.
 */
import test from 'ava';
import sharp from 'sharp';
import { type DecodeOptions, decodeImage, decodeJpegNatively } from '../services/extractor/image.js';
import { exifOrientation, MAX_NATIVE_SCANS, nativeJpeg, nativeJpegHeader } from '../services/extractor/jpeg-native.js';

sharp.cache(false);
sharp.concurrency(1);

const addon = nativeJpeg();
const withAddon = addon ? test : test.skip;
if (!addon) console.warn('jpeg-native.test: the addon is not built here (npm run build:native); its tests are skipped');

if (process.env.CI) {
  test('the JPEG addon is built where CI runs (.ci/run installs what it needs)', (t) => {
    t.truthy(addon, 'native/jpeg/build/Release/deepfeat_jpeg.node did not load: see npm ci output');
  });
}

function lcg(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s / 2 ** 32;
  };
}

/** A picture with edges, gradients and grain, so every block and chroma sample matters. */
function picture(w: number, h: number): Buffer {
  const rand = lcg(w * 31 + h);
  const out = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      const edge = (x >> 3) % 2 === (y >> 3) % 2 ? 60 : 0;
      out[i] = (x * 255) / Math.max(1, w - 1) - edge * 0.5 + rand() * 20;
      out[i + 1] = (y * 255) / Math.max(1, h - 1) + edge * 0.3;
      out[i + 2] = 128 + 100 * Math.sin((x + 2 * y) / 7) + rand() * 30 - edge;
    }
  return out;
}

const raw = (w: number, h: number) => sharp(picture(w, h), { raw: { width: w, height: h, channels: 3 } });

const KINDS: Array<[string, (s: sharp.Sharp) => sharp.Sharp]> = [
  ['baseline 4:2:0', (s) => s.jpeg({ quality: 90 })],
  ['progressive', (s) => s.jpeg({ quality: 80, progressive: true })],
  ['4:4:4', (s) => s.jpeg({ quality: 95, chromaSubsampling: '4:4:4' })],
  ['mozjpeg (trellis, progressive)', (s) => s.jpeg({ quality: 70, mozjpeg: true })],
  ['greyscale', (s) => s.toColourspace('b-w').jpeg({ quality: 85 })],
  ['quality 30, standard tables', (s) => s.jpeg({ quality: 30, optimiseCoding: false })],
];
const SIZES: Array<[number, number]> = [
  [640, 480],
  [333, 517],
  [257, 129],
  [17, 9],
  [1, 1],
];

async function corpus(): Promise<Array<{ name: string; bytes: Buffer; w: number; h: number }>> {
  const out = [];
  for (const [w, h] of SIZES)
    for (const [kind, encode] of KINDS)
      out.push({ name: `${kind} ${w}×${h}`, bytes: await encode(raw(w, h)).toBuffer(), w, h });
  return out;
}

withAddon('every window of every kind of JPEG is what sharp decodes there', async (t) => {
  const rand = lcg(5);
  let windows = 0;
  for (const { name, bytes, w, h } of await corpus()) {
    const shapes: Array<[number, number, number, number]> = [[0, 0, w, h]];
    for (let k = 0; k < 10; k++) {
      const ww = 1 + Math.floor(rand() * w);
      const wh = 1 + Math.floor(rand() * h);
      shapes.push([Math.floor(rand() * (w - ww + 1)), Math.floor(rand() * (h - wh + 1)), ww, wh]);
    }
    for (const [x, y, ww, wh] of shapes) {
      const out = new Uint8Array(ww * wh * 3);
      t.is(addon!.decode(bytes, x, y, ww, wh, out), undefined, `${name} (${x},${y}) ${ww}×${wh}`);
      const want = await sharp(bytes)
        .extract({ left: x, top: y, width: ww, height: wh })
        .toColourspace('srgb')
        .raw()
        .toBuffer();
      t.true(Buffer.from(out).equals(want), `${name}: window (${x},${y}) ${ww}×${wh} differs from sharp's`);
      windows++;
    }
  }
  t.is(windows, SIZES.length * KINDS.length * 11);
});

const OPTS = (width: number, height: number): DecodeOptions => ({ width, height, maxPixels: 50_000_000 });

withAddon(
  'decodeImage gives the same bytes with the addon as with sharp alone, and uses it where it can',
  async (t) => {
    const files: Array<{ name: string; bytes: Buffer; native: boolean }> = [];
    for (const { name, bytes } of await corpus()) files.push({ name, bytes, native: true });
    const photo = raw(640, 480);
    const add = async (name: string, s: sharp.Sharp, native: boolean) =>
      files.push({ name, bytes: await s.toBuffer(), native });
    await add('EXIF orientation 1', photo.clone().jpeg().withMetadata({ orientation: 1 }), true);
    for (const o of [2, 3, 4, 5, 6, 7, 8])
      await add(`EXIF orientation ${o}`, photo.clone().jpeg().withMetadata({ orientation: o }), false);
    await add('ICC profile', photo.clone().jpeg().withMetadata({ icc: 'p3' }), false);
    await add('CMYK', photo.clone().toColourspace('cmyk').jpeg(), false);
    await add('1000×700 (sharp shrinks it on load at 224² and 160×96, not at 299²)', raw(1000, 700).jpeg(), false);
    let nativeUsed = 0;
    for (const { name, bytes, native } of files) {
      for (const [w, h] of [
        [224, 224],
        [299, 299],
        [160, 96],
      ] as const) {
        const viaSharp = await decodeImage(bytes, { ...OPTS(w, h), jpegDecoder: 'sharp' });
        const auto = await decodeImage(bytes, OPTS(w, h));
        t.true(Buffer.from(auto).equals(Buffer.from(viaSharp)), `${name} at ${w}×${h}: the addon's pixels differ`);
        const direct = decodeJpegNatively(bytes, OPTS(w, h));
        if (direct) {
          nativeUsed++;
          t.true(Buffer.from(direct).equals(Buffer.from(viaSharp)), `${name} at ${w}×${h}`);
        }
        // Files the addon must leave to sharp: rotated, colour-managed, CMYK, and what sharp shrinks on load.
        if (!native && !(name.startsWith('1000×700') && w === 299))
          t.is(direct, undefined, `${name} at ${w}×${h} should be left to sharp`);
      }
      if (native && name.startsWith('baseline 4:2:0 640'))
        t.truthy(decodeJpegNatively(bytes, OPTS(224, 224)), `${name}: the common case must take the native path`);
    }
    // Most of the corpus is decoded natively (the rest: shapes whose resize libvips keeps).
    t.true(nativeUsed >= files.filter((f) => f.native).length, `native decodes: ${nativeUsed}`);
  },
);

withAddon('damaged JPEGs: the addon steps aside, and sharp gives its answer as before', async (t) => {
  const good = await raw(320, 240).jpeg({ quality: 90 }).toBuffer();
  const damaged: Array<[string, Buffer]> = [
    ['cut in its scan', good.subarray(0, Math.floor(good.length * 0.6))],
    ['without its end marker', good.subarray(0, good.length - 2)],
    ['header only', good.subarray(0, 600)],
  ];
  const rand = lcg(11);
  for (let k = 0; k < 30; k++) {
    const b = Buffer.from(good);
    const at = 700 + Math.floor(rand() * (b.length - 800));
    for (let j = 0; j < 1 + (k % 4); j++) b[at + j] = Math.floor(rand() * 256);
    damaged.push([`bytes changed at ${at}`, b]);
  }
  const outcome = async (bytes: Buffer, jpegDecoder: 'auto' | 'sharp') => {
    try {
      return Buffer.from(await decodeImage(bytes, { ...OPTS(224, 224), jpegDecoder })).toString('base64');
    } catch (err) {
      return `error: ${(err as Error).message}`;
    }
  };
  let refused = 0;
  for (const [name, bytes] of damaged) {
    const viaSharp = await outcome(bytes, 'sharp');
    t.is(await outcome(bytes, 'auto'), viaSharp, name);
    if (viaSharp.startsWith('error:')) {
      refused++;
      t.is(
        decodeJpegNatively(bytes, OPTS(224, 224)),
        undefined,
        `${name}: sharp refuses it, the addon must not decode it`,
      );
    }
  }
  t.true(refused >= 3, `refused: ${refused}`);
});

withAddon('the pixel limit is checked before the addon decodes', async (t) => {
  const bytes = await raw(640, 480).jpeg().toBuffer();
  const limit = { width: 224, height: 224, maxPixels: 640 * 480 - 1 };
  const viaSharp = await t.throwsAsync(decodeImage(bytes, { ...limit, jpegDecoder: 'sharp' }));
  const auto = await t.throwsAsync(decodeImage(bytes, limit));
  t.is(auto?.message, viaSharp?.message);
  t.regex(auto?.message ?? '', /image too large: 640×480 pixels/);
});

withAddon('headers the addon cannot be sure of are left to sharp', async (t) => {
  const plain = await raw(64, 48).jpeg().toBuffer();
  t.truthy(nativeJpegHeader(addon!, plain));
  t.like(nativeJpegHeader(addon!, plain), { width: 64, height: 48, colorSpace: 'ycbcr', precision: 8, icc: false });
  t.is(nativeJpegHeader(addon!, Buffer.from('not a jpeg at all')), undefined);
  t.is(nativeJpegHeader(addon!, await raw(64, 48).jpeg().withMetadata({ orientation: 6 }).toBuffer()), undefined);
  t.is(nativeJpegHeader(addon!, await raw(64, 48).jpeg().withMetadata({ icc: 'p3' }).toBuffer()), undefined);
  t.is(nativeJpegHeader(addon!, await raw(64, 48).toColourspace('cmyk').jpeg().toBuffer()), undefined);
  t.is(typeof addon!.header(Buffer.alloc(0)), 'string');
  t.throws(() => addon!.decode(plain, 0, 0, 64, 48, new Uint8Array(10)), { instanceOf: RangeError });
  t.throws(() => addon!.decode(plain, 1, 0, 64, 48, new Uint8Array(64 * 48 * 3)), { instanceOf: RangeError });
});

/** Offsets of a JPEG's start-of-scan markers. */
function scanStarts(b: Buffer): number[] {
  const at: number[] = [];
  for (let i = 2; i + 1 < b.length; i++) if (b[i] === 0xff && b[i + 1] === 0xda) at.push(i);
  return at;
}

withAddon(
  'an ICC profile whose label lacks its NUL is still a profile (libvips converts it): left to sharp',
  async (t) => {
    const tagged = Buffer.from(await raw(320, 240).jpeg({ quality: 90 }).withIccProfile('p3').toBuffer());
    const label = tagged.indexOf('ICC_PROFILE\0', 0, 'latin1');
    t.true(label > 0);
    tagged[label + 11] = 0x58; // "ICC_PROFILEX"
    t.is(nativeJpegHeader(addon!, tagged), undefined);
    t.is(decodeJpegNatively(tagged, OPTS(224, 224)), undefined);
    const viaSharp = await decodeImage(tagged, { ...OPTS(224, 224), jpegDecoder: 'sharp' });
    t.true(Buffer.from(await decodeImage(tagged, OPTS(224, 224))).equals(Buffer.from(viaSharp)));
  },
);

withAddon(
  'a progressive JPEG that ends before its last scans is left to sharp (libjpeg smooths it, release by release)',
  async (t) => {
    for (const sub of ['4:2:0', '4:4:4'] as const) {
      const whole = await raw(640, 480).jpeg({ quality: 85, progressive: true, chromaSubsampling: sub }).toBuffer();
      const starts = scanStarts(whole);
      t.true(starts.length >= 6, `${sub}: ${starts.length} scans`);
      t.truthy(decodeJpegNatively(whole, OPTS(224, 224)), `${sub}: the whole file takes the native path`);
      for (const k of [1, 2, starts.length - 1]) {
        // Valid as it stands: the scans up to k, then the end-of-image marker.
        const early = Buffer.concat([whole.subarray(0, starts[k]), Buffer.from([0xff, 0xd9])]);
        t.is(decodeJpegNatively(early, OPTS(224, 224)), undefined, `${sub}, ${k} scans`);
        const viaSharp = await decodeImage(early, { ...OPTS(224, 224), jpegDecoder: 'sharp' });
        t.true(
          Buffer.from(await decodeImage(early, OPTS(224, 224))).equals(Buffer.from(viaSharp)),
          `${sub}, ${k} scans`,
        );
      }
    }
  },
);

withAddon('files of many scans, and files cut short, go to sharp before the addon spends time on them', async (t) => {
  const baseline = await raw(320, 240).jpeg().toBuffer();
  const progressive = await raw(320, 240).jpeg({ progressive: true }).toBuffer();
  t.is(nativeJpegHeader(addon!, baseline)?.scans, 1);
  t.is(nativeJpegHeader(addon!, progressive)?.scans, scanStarts(progressive).length);
  // The count is of FF DA in the bytes: past MAX_NATIVE_SCANS, the file is sharp's (here the
  // markers sit in an APP15 segment, which libjpeg skips: the image itself is plain).
  const filler = Buffer.alloc(2 * (MAX_NATIVE_SCANS + 1));
  for (let i = 0; i < filler.length; i += 2) filler.writeUInt16BE(0xffda, i);
  const app15 = Buffer.concat([Buffer.from([0xff, 0xef]), Buffer.from([0, 0]), filler]);
  app15.writeUInt16BE(app15.length - 2, 2);
  const many = Buffer.concat([baseline.subarray(0, 2), app15, baseline.subarray(2)]);
  t.is(nativeJpegHeader(addon!, many), undefined);
  t.is(decodeJpegNatively(many, OPTS(224, 224)), undefined);
  t.true(
    Buffer.from(await decodeImage(many, OPTS(224, 224))).equals(
      Buffer.from(await decodeImage(baseline, OPTS(224, 224))),
    ),
  );
  // No end-of-image marker in its last bytes: sharp at once (it names the truncation).
  t.is(decodeJpegNatively(baseline.subarray(0, baseline.length - 2), OPTS(224, 224)), undefined);
});

/** A TIFF block (Exif payload) with one IFD of the given entries: [tag, type, count, value]. */
function tiff(order: 'II' | 'MM', entries: Array<[number, number, number, number]>): Uint8Array {
  const le = order === 'II';
  const b = new DataView(new ArrayBuffer(8 + 2 + entries.length * 12 + 4));
  b.setUint16(0, le ? 0x4949 : 0x4d4d);
  b.setUint16(2, 42, le);
  b.setUint32(4, 8, le);
  b.setUint16(8, entries.length, le);
  entries.forEach(([tag, type, count, value], i) => {
    const at = 10 + i * 12;
    b.setUint16(at, tag, le);
    b.setUint16(at + 2, type, le);
    b.setUint32(at + 4, count, le);
    if (type === 3) b.setUint16(at + 8, value, le);
    else b.setUint32(at + 8, value, le);
  });
  return new Uint8Array(b.buffer);
}

test('exifOrientation reads the first IFD, and gives up on anything it cannot be sure of', (t) => {
  t.is(exifOrientation(tiff('II', [[0x0112, 3, 1, 6]])), 6);
  t.is(exifOrientation(tiff('MM', [[0x0112, 3, 1, 3]])), 3);
  t.is(exifOrientation(tiff('II', [[0x010f, 2, 4, 0]])), 1, 'no Orientation tag: as stored');
  t.is(exifOrientation(tiff('II', [])), 1);
  t.is(exifOrientation(tiff('II', [[0x0112, 4, 1, 6]])), undefined, 'LONG instead of SHORT');
  t.is(exifOrientation(tiff('II', [[0x0112, 3, 2, 6]])), undefined, 'two values');
  t.is(
    exifOrientation(
      tiff('II', [
        [0x0112, 3, 1, 1],
        [0x0112, 3, 1, 6],
      ]),
    ),
    undefined,
    'two Orientation tags',
  );
  const bad = tiff('II', [[0x0112, 3, 1, 1]]);
  t.is(exifOrientation(bad.subarray(0, 12)), undefined, 'cut short');
  const noMagic = Uint8Array.from(bad);
  noMagic[2] = 0;
  t.is(exifOrientation(noMagic), undefined);
  t.is(exifOrientation(new Uint8Array([0x49, 0x49])), undefined);
});
