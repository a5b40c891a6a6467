/**
 * The decoder's own PNG reading (services/extractor/png-simple.ts) must give libvips's bytes for
 * the files it takes, and leave every other file to libvips. PNGs are written here by an encoder
 * of the test's own (every filter type, IDAT split, inert and other chunks, damage), and each is
 * decoded by decodeImage and by sharp's pipeline as decodeImage ran it before: same bytes, or an
 * ImageError where sharp fails.
 */
import { deflateSync } from 'node:zlib';
import test from 'ava';
import sharp from 'sharp';
import { ImageError } from '../shared/errors.js';
import { decodeImage } from '../services/extractor/image.js';
import { decodeSimplePng, parseSimplePng } from '../services/extractor/png-simple.js';
import { pngChunk, withPngChunks } from './helpers/images.js';
import { reference } from './helpers/reference-decode.js';

function random(seed: number) {
  let s = seed >>> 0;
  return (n: number) => {
    s = (s * 1103515245 + 12345) >>> 0;
    return s % n;
  };
}

/** The PNG filter of one row (x: this row, u: the row above or zeros), written out here. */
function filterRow(type: number, x: Uint8Array, u: Uint8Array, bpp: number): Uint8Array {
  const out = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const a = i >= bpp ? x[i - bpp]! : 0;
    const b = u[i]!;
    const c = i >= bpp ? u[i - bpp]! : 0;
    let pred = 0;
    if (type === 1) pred = a;
    else if (type === 2) pred = b;
    else if (type === 3) pred = Math.floor((a + b) / 2);
    else if (type === 4) {
      const p = a + b - c;
      const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
      pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }
    out[i] = (x[i]! - pred + 256) & 255;
  }
  return out;
}

interface PngSpec {
  w: number;
  h: number;
  channels: 1 | 3;
  pixels: Uint8Array;
  filters: (y: number) => number;
  /** Chunks between IHDR and IDAT. */
  before?: Buffer[];
  idatParts?: number;
  /** Changes to the zlib stream or the filtered rows before compression. */
  mangleRows?: (rows: Buffer) => void;
  mangleZlib?: (z: Buffer) => Buffer;
  after?: Buffer;
  ihdr?: Partial<{ depth: number; colour: number; interlace: number }>;
}

function encodePng(s: PngSpec): Buffer {
  const stride = s.w * s.channels;
  const rows = Buffer.alloc(s.h * (stride + 1));
  let prev: Uint8Array = new Uint8Array(stride);
  for (let y = 0; y < s.h; y++) {
    const x = s.pixels.subarray(y * stride, (y + 1) * stride);
    const f = s.filters(y);
    rows[y * (stride + 1)] = f;
    rows.set(filterRow(f, x, prev, s.channels), y * (stride + 1) + 1);
    prev = x;
  }
  s.mangleRows?.(rows);
  let z: Buffer = deflateSync(rows);
  if (s.mangleZlib) z = s.mangleZlib(z);
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(s.w, 0);
  ihdr.writeUInt32BE(s.h, 4);
  ihdr[8] = s.ihdr?.depth ?? 8;
  ihdr[9] = s.ihdr?.colour ?? (s.channels === 3 ? 2 : 0);
  ihdr[12] = s.ihdr?.interlace ?? 0;
  const parts = s.idatParts ?? 1;
  const idat: Buffer[] = [];
  const step = Math.ceil(z.length / parts);
  for (let i = 0; i < z.length; i += step) idat.push(pngChunk('IDAT', z.subarray(i, i + step)));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    ...(s.before ?? []),
    ...idat,
    pngChunk('IEND', new Uint8Array(0)),
    s.after ?? Buffer.alloc(0),
  ]);
}

/** The same file with a text chunk after IHDR: png-simple.ts declines it, so libvips decodes it. */
function withText(png: Buffer): Buffer {
  return withPngChunks(png, [pngChunk('tEXt', Buffer.from('Comment\0via libvips', 'latin1'))]);
}

/**
 * decodeImage gives libvips's result: the bytes of the same file sent to libvips (with a text
 * chunk) and of the pipeline before issue 14 (`reference`), or the same ImageError.
 */
async function agree(t: import('ava').ExecutionContext, png: Buffer, W: number, H: number, what: string) {
  const opts = { width: W, height: H, maxPixels: 5e7 };
  const viaLibvips = await decodeImage(withText(png), opts).then(
    (bytes) => ({ bytes }),
    (error: unknown) => ({ error }),
  );
  if ('bytes' in viaLibvips) {
    const got = await decodeImage(png, opts);
    t.true(Buffer.from(got).equals(Buffer.from(viaLibvips.bytes)), `${what}: bytes differ from libvips's`);
    const before = await reference(png, W, H).catch(() => undefined);
    if (before) t.true(before.equals(Buffer.from(got)), `${what}: bytes differ from the pipeline before issue 14`);
  } else {
    t.true(viaLibvips.error instanceof ImageError, `${what}: ${viaLibvips.error}`);
    const error = await t.throwsAsync(decodeImage(png, opts), { instanceOf: ImageError }, `${what}: libvips fails`);
    t.is(error?.message, (viaLibvips.error as Error).message, what);
  }
}

const ramp = (w: number, h: number, channels: number, rnd: (n: number) => number) =>
  Uint8Array.from({ length: w * h * channels }, (_, i) => {
    const x = Math.floor(i / channels) % w;
    const y = Math.floor(i / channels / w);
    // Slopes of equal size and opposite sign across and down make Paeth's distances tie.
    const c = i % channels;
    return (x * (1 + c) - y * (c === 1 ? 3 : 1 + c) + 600 + rnd(2)) & 255;
  });

const noise = (n: number, rnd: (n: number) => number) =>
  Uint8Array.from({ length: n }, () => (rnd(4) ? rnd(256) : rnd(2) * 255));

test('every filter type, RGB and grey, split IDAT and inert chunks: the fast path is taken and gives libvips bytes', async (t) => {
  const rnd = random(7);
  const phys = pngChunk('pHYs', Buffer.from([0, 0, 0x0b, 0x13, 0, 0, 0x0b, 0x13, 1]));
  const time = pngChunk('tIME', Buffer.from([0x07, 0xea, 11, 30, 12, 0, 0]));
  let n = 0;
  for (const channels of [3, 1] as const) {
    for (let k = 0; k < 24; k++) {
      const w = 1 + rnd(k % 3 === 0 ? 5 : 60);
      const h = 1 + rnd(k % 4 === 0 ? 5 : 60);
      const spec: PngSpec = {
        w,
        h,
        channels,
        // Noise, and ramps (where the predictors' ties happen: Paeth's order of a, b, c matters).
        pixels: k % 3 === 2 ? ramp(w, h, channels, rnd) : noise(w * h * channels, rnd),
        // One filter for the whole image, then mixed per row.
        filters: k < 5 ? () => k : k % 3 === 2 ? () => 4 - (k % 2) : () => rnd(5),
        before: k % 2 ? [phys] : k % 3 ? [time, phys] : [],
        idatParts: 1 + (k % 4),
      };
      const png = encodePng(spec);
      const parsed = parseSimplePng(png);
      t.truthy(parsed, `${w}×${h}×${channels} should be simple`);
      if (parsed) {
        const whole = decodeSimplePng(parsed, { left: 0, top: 0, width: w, height: h });
        const raw = await sharp(png).toColourspace('srgb').raw().toBuffer();
        t.true(Buffer.from(whole!).equals(raw), `${w}×${h}×${channels} filter ${k}: decoded samples`);
      }
      for (const [W, H] of [
        [224, 224],
        [299, 299],
        [160, 96],
        [w, h], // already the input size (raw-pixel features): the samples, as libvips gives them
      ] as const) {
        await agree(t, png, W, H, `${w}×${h}×${channels} → ${W}×${H}`);
        n++;
      }
    }
  }
  t.true(n >= 144);
});

test('files outside the simple kind are left to libvips, with its bytes or its failure', async (t) => {
  const rnd = random(11);
  const base = (over: Partial<PngSpec> = {}): PngSpec => ({
    w: 20,
    h: 17,
    channels: 3,
    pixels: noise(20 * 17 * 3, rnd),
    filters: (y) => y % 5,
    ...over,
  });
  const text = pngChunk('tEXt', Buffer.from('Comment\0hello', 'latin1'));
  const iccp = pngChunk('gAMA', Buffer.from([0, 0, 0xb1, 0x8f]));
  const srgb = pngChunk('sRGB', Buffer.from([0]));
  const cases: Array<[string, Buffer, boolean]> = [
    ['text chunk', encodePng(base({ before: [text] })), false],
    ['gAMA', encodePng(base({ before: [iccp] })), false],
    ['sRGB', encodePng(base({ before: [srgb] })), false],
    ['private chunk', encodePng(base({ before: [pngChunk('prIv', Buffer.from('x'))] })), false],
    ['pHYs with a bad unit', encodePng(base({ before: [pngChunk('pHYs', Buffer.alloc(9, 7))] })), false],
    ['bytes after IEND', encodePng(base({ after: Buffer.from('trailing') })), false],
    ['grey with alpha', encodePng(base({ channels: 3, ihdr: { colour: 4 } })), false],
  ];
  // A bad CRC in an IDAT chunk.
  const badCrc = encodePng(base());
  badCrc[badCrc.length - 12 - 5] ^= 0xff;
  cases.push(['bad CRC', badCrc, false]);
  for (const [what, png, simple] of cases) {
    t.is(parseSimplePng(png) !== undefined, simple, what);
    await agree(t, png, 224, 224, what);
  }
  // Parsed as simple, but the data is not beyond doubt: decodeSimplePng declines, libvips decides.
  const window = { left: 0, top: 0, width: 20, height: 17 };
  const data: Array<[string, Buffer]> = [
    [
      'filter type 5',
      encodePng(
        base({
          mangleRows: (r) => {
            r[3 * 61] = 5;
          },
        }),
      ),
    ],
    [
      'filter type 9 in the last row',
      encodePng(
        base({
          mangleRows: (r) => {
            r[16 * 61] = 9;
          },
        }),
      ),
    ],
    ['zlib stream cut short', encodePng(base({ mangleZlib: (z) => z.subarray(0, z.length - 9) }))],
    ['data after the zlib stream', encodePng(base({ mangleZlib: (z) => Buffer.concat([z, Buffer.from([1, 2, 3])]) }))],
    [
      'bad Adler-32',
      encodePng(base({ mangleZlib: (z) => Buffer.concat([z.subarray(0, -1), Buffer.from([z.at(-1)! ^ 1])]) })),
    ],
    ['one row too many', encodePng(base({ mangleZlib: () => deflateSync(Buffer.alloc(18 * 61)) }))],
    ['one row too few', encodePng(base({ mangleZlib: () => deflateSync(Buffer.alloc(16 * 61)) }))],
  ];
  for (const [what, png] of data) {
    const parsed = parseSimplePng(png);
    t.truthy(parsed, `${what}: the structure is simple`);
    if (parsed) t.is(decodeSimplePng(parsed, window), undefined, what);
    await agree(t, png, 224, 224, what);
  }
});

test('a strip and a large PNG: only the window is unfiltered, and the bytes are libvips', async (t) => {
  const rnd = random(13);
  for (const [w, h] of [
    [3, 4000],
    [4000, 2],
    [150, 90],
  ] as const) {
    const png = encodePng({ w, h, channels: 3, pixels: noise(w * h * 3, rnd), filters: (y) => (y * 7) % 5 });
    t.truthy(parseSimplePng(png));
    await agree(t, png, 224, 224, `${w}×${h}`);
  }
  // More than 256 KiB of rows (a 400 × 300 image): libvips decodes it a few rows at a time; the
  // parser gives up at its header, before reading any further.
  const big = encodePng({ w: 400, h: 300, channels: 3, pixels: noise(360_000, rnd), filters: () => 1 });
  t.is(parseSimplePng(big), undefined);
  // Thousands of empty IDAT chunks (legal), and a file far larger than its rows could need: to libvips.
  const small = encodePng({ w: 32, h: 32, channels: 3, pixels: noise(3072, rnd), filters: () => 1 });
  const empties = Buffer.concat(Array.from({ length: 5000 }, () => pngChunk('IDAT', new Uint8Array(0))));
  const manyChunks = Buffer.concat([small.subarray(0, 33), empties, small.subarray(33)]);
  const padded = Buffer.concat([
    small.subarray(0, 33),
    pngChunk('tIME', Buffer.from([7, 234, 1, 1, 0, 0, 0])),
    small.subarray(33),
  ]);
  t.truthy(parseSimplePng(padded), 'one inert chunk is fine');
  t.is(parseSimplePng(manyChunks), undefined, '5,000 empty IDAT chunks');
  await agree(t, manyChunks, 224, 224, '5,000 empty IDAT chunks');
  const bulky = Buffer.concat([
    small.subarray(0, 33),
    Buffer.concat(Array.from({ length: 300 }, () => pngChunk('IDAT', new Uint8Array(700)))),
    small.subarray(33),
  ]);
  t.is(parseSimplePng(bulky), undefined, 'a 210 KB file for 3 KB of rows');
  await agree(t, bulky, 224, 224, 'bulky');
  // Over the pixel limit: decodeImage's own error, as before.
  const png = encodePng({ w: 40, h: 40, channels: 1, pixels: noise(1600, rnd), filters: () => 0 });
  await t.throwsAsync(decodeImage(png, { width: 224, height: 224, maxPixels: 1000 }), { message: /image too large/ });
});

test('the decoder pool decodes small plain PNGs in its own process, and sends every other file to a decoder process', async (t) => {
  const { DecoderPool } = await import('../services/extractor/decoder-pool.js');
  const pool = new DecoderPool({ processes: 1, timeoutSeconds: 60, memoryLimitMiB: 1024 });
  t.teardown(() => pool.close());
  const rnd = random(17);
  const opts = { width: 224, height: 224, maxPixels: 5e7 };
  const small = encodePng({ w: 32, h: 32, channels: 3, pixels: noise(32 * 32 * 3, rnd), filters: (y) => y % 5 });
  const got = await pool.decode(small, opts);
  t.true(Buffer.from(got).equals(Buffer.from(await decodeImage(withText(small), opts))));
  t.deepEqual(pool.pids, [], 'no decoder process was needed');
  // Not plain (a text chunk), and plain but past the in-process bounds (a 300 × 300 RGB ramp: a
  // small file of 270 KB of rows; 300 × 200 RGB noise: a 180 KB file): decoded by a decoder
  // process, with the same bytes as decodeImage.
  const large = encodePng({ w: 300, h: 300, channels: 3, pixels: ramp(300, 300, 3, rnd), filters: () => 4 });
  t.true(large.length < 64 << 10);
  const large3 = encodePng({ w: 300, h: 200, channels: 3, pixels: noise(300 * 200 * 3, rnd), filters: () => 2 });
  for (const png of [withText(small), large3, large]) {
    const want = await decodeImage(png, { ...opts, width: 320, height: 320 });
    t.true(Buffer.from(await pool.decode(png, { ...opts, width: 320, height: 320 })).equals(Buffer.from(want)));
  }
  t.is(pool.pids.length, 1, 'a decoder process decoded the others');
});
