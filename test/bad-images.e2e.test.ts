/**
 * Bad, awkward and hostile images end to end, on real parts (redis-server, S3 server, worker
 * processes): broken and hostile files are recorded per image with a specific reason and the run
 * goes on; valid but awkward files (alpha, grey, 16-bit, CMYK, EXIF-rotated, animated, very large,
 * 100000×1, an SVG drawing) get feature rows, equal (or close) to those of their plain twins; the
 * extractor and its decoder processes survive bombs, lies and a render that never ends, with
 * bounded memory. SVG is allowed here (DEEPFEAT_IMAGE_FORMATS), so its bounds are exercised too.
 */
import test from 'ava';
import { readFileSync, readdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { crc32, deflateSync } from 'node:zlib';
import sharp from 'sharp';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { RAW_PIXELS } from '../shared/features.js';
import { readFeatures } from '../shared/feature-store.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';
import {
  asymmetricRaw,
  bmp2x2,
  ftyp,
  gifWithFrame,
  icoWithPng,
  jp2Header,
  pngChunk,
  pngDeclaring,
  psd,
  svgDoc,
  svgImage,
  svgUseBomb,
  tiffPages,
  twoFrameGif,
  withPngChunks,
} from './helpers/images.js';

const PER_CLASS = 15;
const MAX_BYTES = 2 * 1024 * 1024;
const MAX_PIXELS = 30_000_000; // the 6000×4000 image (24 M) passes; the bomb (10^10) does not
const FORMATS = 'jpeg,png,webp,gif,tiff,avif,svg';
const DECODE_TIMEOUT = 3;
let dep: Deployment;
const workers: WorkerProcess[] = [];
let extractor: WorkerProcess;

const fromRaw = (px: Buffer, width: number, height: number, channels: 1 | 3 | 4 = 3) =>
  sharp(px, { raw: { width, height, channels } });

/** Bad files: key → the reason they must be recorded with. */
const BAD: Record<string, RegExp> = {};
/** Awkward but valid files: key → its plain twin's key and the largest mean |Δ| allowed (features are in [0, 1]). */
const TWINS: Record<string, { twin: string; tol: number }> = {};
const AWKWARD_ALONE = ['pets/dog/huge-6000x4000.jpg', 'pets/cat/strip-100000x1.png', 'pets/dog/drawing.svg'];

async function corpus(): Promise<Record<string, Uint8Array | string>> {
  const files: Record<string, Uint8Array | string> = {};
  const bad = (key: string, body: Uint8Array | string, reason: RegExp) => {
    files[key] = body;
    BAD[key] = reason;
  };
  const twin = (key: string, body: Uint8Array, twinKey: string, twinBody: Uint8Array, tol: number) => {
    files[key] = body;
    files[twinKey] = twinBody;
    TWINS[key] = { twin: twinKey, tol };
  };

  // Broken files.
  bad('pets/cat/empty.jpg', new Uint8Array(0), /^empty file \(0 bytes\)$/);
  const jpeg = await fromRaw(asymmetricRaw(64, 64).map((v, i) => (v + ((i * 7919) % 61)) & 0xff) as Buffer, 64, 64)
    .jpeg({ quality: 90 })
    .toBuffer();
  bad(
    'pets/cat/truncated.jpg',
    jpeg.subarray(0, Math.floor(jpeg.length / 2)),
    /^truncated jpeg image: the file ends \(at \d+ bytes\) before its end-of-image marker$/,
  );
  bad(
    'pets/dog/notes.jpg',
    'this is not an image, just some notes\n',
    /^not an image: unrecognised format \(looks like text: "this is not an image, ju…"\)$/,
  );
  // A 2×2 24-bit BMP: a real image format, but not one the decoder supports.
  bad('pets/dog/picture.bmp', bmp2x2(), /^unsupported format: BMP: convert it to PNG or JPEG$/);
  // Decompression bomb: a 4×4 PNG whose header declares 100000×100000.
  const bomb = Buffer.from(
    await sharp({ create: { width: 4, height: 4, channels: 3, background: { r: 0, g: 0, b: 0 } } })
      .png()
      .toBuffer(),
  );
  bomb.writeUInt32BE(100_000, 16);
  bomb.writeUInt32BE(100_000, 20);
  bomb.writeUInt32BE(crc32(bomb.subarray(12, 29)) >>> 0, 29);
  bad(
    'pets/cat/bomb.png',
    bomb,
    new RegExp(
      `^image too large: 100000×100000 pixels exceeds the limit of ${MAX_PIXELS} \\(DEEPFEAT_MAX_IMAGE_PIXELS\\)$`,
    ),
  );
  // Over DEEPFEAT_MAX_IMAGE_BYTES: never read.
  bad(
    'pets/dog/oversized.jpg',
    randomBytes(MAX_BYTES + 1),
    new RegExp(
      `^object too large: ${MAX_BYTES + 1} bytes exceeds the limit of ${MAX_BYTES} \\(DEEPFEAT_MAX_IMAGE_BYTES\\)$`,
    ),
  );

  // Hostile files: formats named from their bytes whatever the key says, lies about size, bombs.
  const png4 = await sharp({ create: { width: 4, height: 4, channels: 3, background: { r: 255, g: 0, b: 0 } } })
    .png()
    .toBuffer();
  bad(
    'pets/cat/photo.heic',
    ftyp('heic', ['mif1', 'heic'], Buffer.alloc(200)),
    /^unsupported format: HEIC \(no decoder installed\): convert it to PNG or JPEG$/,
  );
  bad('pets/dog/icon.png', icoWithPng(png4, 4), /^unsupported format: ICO: convert it to PNG or JPEG$/);
  bad('pets/cat/layers.jpg', psd(4, 4, [1, 2, 3]), /^unsupported format: PSD: convert it to PNG or JPEG$/);
  bad('pets/dog/scan.jp2', jp2Header(), /^unsupported format: JPEG 2000: convert it to PNG or JPEG$/);
  bad(
    'pets/cat/still.heif',
    ftyp('mif1', ['mif1'], Buffer.alloc(64)),
    new RegExp(`^format heif is not accepted here \\(DEEPFEAT_IMAGE_FORMATS=${FORMATS}\\): convert it to PNG or JPEG$`),
  );
  bad(
    'pets/dog/frame.gif',
    gifWithFrame(16, 16, 65535, 65535),
    /^image too large: 65535×65535 pixels exceeds the limit of \d+ \(DEEPFEAT_MAX_IMAGE_PIXELS\)$/,
  );
  bad(
    'pets/cat/ztxt.png',
    withPngChunks(png4, [pngChunk('zTXt', Buffer.concat([Buffer.from('c\0\0'), deflateSync(Buffer.alloc(60e6))]))]),
    /^unreadable png image: the decoder cannot read its header/,
  );
  bad(
    'pets/dog/tile.tif',
    tiffPages([{ width: 16, height: 16, data: Buffer.alloc(768), tile: 65536 }]),
    /^unreadable tiff image: the decoder cannot read its header/,
  );
  // The finding that started this: a 20000×20000 PNG hidden in a 100×100 drawing.
  bad(
    'pets/cat/embedded-bomb.svg',
    svgDoc(100, 100, svgImage(pngDeclaring(png4, 20000, 20000), 'image/png', 100)),
    /^image too large: an svg of 100×100 with 1 embedded image \(largest: png 20000×20000\)/,
  );
  bad(
    'pets/dog/external.svg',
    svgDoc(100, 100, '<image width="9" height="9" href="file:///etc/passwd"/>'),
    /^svg refused: it refers to "file:\/\/\/etc\/passwd"/,
  );
  // 1.2 KB that renders for a minute or more (10^5 blurred shapes through <use>), even at 32×32:
  // stopped at DEEPFEAT_DECODE_TIMEOUT by killing its decoder process.
  bad(
    'pets/cat/use-bomb.svg',
    svgUseBomb(5),
    new RegExp(`^decode timed out after ${DECODE_TIMEOUT} s \\(DEEPFEAT_DECODE_TIMEOUT\\)$`),
  );
  // Valid, extreme shapes: a row each.
  files['pets/cat/strip-100000x1.png'] = await sharp({
    create: { width: 100_000, height: 1, channels: 3, background: { r: 0, g: 90, b: 200 } },
  })
    .png()
    .toBuffer();
  files['pets/dog/drawing.svg'] = svgDoc(
    64,
    64,
    `<rect width="64" height="64" fill="#fa0"/>${svgImage(png4, 'image/png', 32)}`,
  );

  // Awkward but valid, each with a plain twin.
  const W = 48;
  const H = 32;
  const base = asymmetricRaw(W, H);
  // Alpha 0 in the corner block, 255 elsewhere: flattened on white it equals the RGB picture with a white block.
  const rgba = Buffer.alloc(W * H * 4);
  const whiteCorner = Buffer.from(base);
  for (let p = 0; p < W * H; p++) {
    const transparent = p % W < W / 3 && Math.floor(p / W) < H / 3;
    rgba[p * 4] = base[p * 3]!;
    rgba[p * 4 + 1] = base[p * 3 + 1]!;
    rgba[p * 4 + 2] = base[p * 3 + 2]!;
    rgba[p * 4 + 3] = transparent ? 0 : 255;
    if (transparent) whiteCorner.fill(255, p * 3, p * 3 + 3);
  }
  twin(
    'pets/cat/alpha.png',
    await fromRaw(rgba, W, H, 4).png().toBuffer(),
    'pets/cat/alpha-twin.png',
    await fromRaw(whiteCorner, W, H).png().toBuffer(),
    0,
  );
  const greyPx = Buffer.alloc(W * H);
  const greyRgb = Buffer.alloc(W * H * 3);
  for (let p = 0; p < W * H; p++) {
    greyPx[p] = (p * 5) % 256;
    greyRgb.fill(greyPx[p]!, p * 3, p * 3 + 3);
  }
  twin(
    'pets/dog/grey.png',
    await fromRaw(greyPx, W, H, 1).png().toBuffer(),
    'pets/dog/grey-twin.png',
    await fromRaw(greyRgb, W, H).png().toBuffer(),
    1 / 255,
  );
  const plainPng = await fromRaw(base, W, H).png().toBuffer();
  twin(
    'pets/cat/deep-16bit.png',
    await fromRaw(base, W, H).toColourspace('rgb16').png().toBuffer(),
    'pets/cat/deep-16bit-twin.png',
    plainPng,
    1 / 255,
  );
  twin(
    'pets/dog/cmyk.jpg',
    await fromRaw(base, W, H).toColourspace('cmyk').jpeg({ quality: 95 }).toBuffer(),
    'pets/dog/cmyk-twin.png',
    plainPng,
    0.06,
  );
  // Stored rotated 90° anticlockwise with orientation 6 ("rotate 90° clockwise to display").
  twin(
    'pets/cat/exif-rotated.jpg',
    await fromRaw(base, W, H).rotate(270).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer(),
    'pets/cat/exif-upright.jpg',
    await fromRaw(base, W, H).jpeg({ quality: 95 }).toBuffer(),
    0.02,
  );
  twin(
    'pets/dog/animated.gif',
    twoFrameGif(16, 16, [
      [200, 30, 60],
      [10, 220, 40],
    ]),
    'pets/dog/animated-first-frame.png',
    await sharp({ create: { width: 16, height: 16, channels: 3, background: { r: 200, g: 30, b: 60 } } })
      .png()
      .toBuffer(),
    0,
  );
  // Very large but within both limits: a smooth 6000×4000 JPEG (a few hundred KB, 24 M pixels).
  const huge = await sharp({
    create: { width: 6000, height: 4000, channels: 3, background: { r: 90, g: 140, b: 200 } },
  })
    .jpeg({ quality: 80 })
    .toBuffer();
  if (huge.length > MAX_BYTES) throw new Error(`huge test image is ${huge.length} bytes, over the byte limit`);
  files[AWKWARD_ALONE[0]!] = huge;
  return files;
}

test.before(async () => {
  dep = await deployment({
    DEEPFEAT_SHARD_SIZE: '16',
    DEEPFEAT_BATCH_SIZE: '4',
    DEEPFEAT_MAX_IMAGE_BYTES: String(MAX_BYTES),
    DEEPFEAT_MAX_IMAGE_PIXELS: String(MAX_PIXELS),
    DEEPFEAT_IMAGE_FORMATS: FORMATS,
    DEEPFEAT_DECODE_TIMEOUT: String(DECODE_TIMEOUT),
  });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  const files = await corpus();
  await Promise.all(Object.entries(files).map(([key, body]) => dep.put(key, body)));
  extractor = spawnWorker(dep.env, 'extractor');
  workers.push(
    spawnWorker(dep.env, 'planner'),
    spawnWorker(dep.env, 'trainer'),
    spawnWorker(dep.env, 'evaluator'),
    extractor,
  );
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await dep?.close();
});

function meanAbsDiff(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!);
  return s / a.length;
}

test.serial(
  'bad images are recorded with specific reasons; awkward ones give the features of their plain twins',
  async (t) => {
    t.timeout(110_000);
    const runId = await enqueueRun(dep.client, {
      source: `s3://${dep.dataBucket}/pets/`,
      name: 'awkward',
      features: RAW_PIXELS,
    });
    const s = await waitForRun(dep.client, runId);
    if (s.stage !== 'published') t.log(workers.map((w) => w.output()).join('\n'));
    t.is(s.stage, 'published', s.error?.message);

    const badKeys = Object.keys(BAD).sort();
    const validExtra = Object.keys(TWINS).length * 2 + AWKWARD_ALONE.length;
    for (const f of s.failures) t.log(`${f.key}: ${f.reason}`);
    t.deepEqual(s.failures.map((f) => f.key).sort(), badKeys);
    t.is(s.total, 2 * PER_CLASS + badKeys.length + validExtra);
    t.is(s.failed, badKeys.length);
    t.is(s.done, 2 * PER_CLASS + validExtra);
    for (const f of s.failures) t.regex(f.reason, BAD[f.key]!, f.key);

    // Every valid file has a row; compare the awkward ones with their twins.
    const all = await readFeatures(dep.client.s3, dep.config.bucket, runId, s.shards, ['train', 'val', 'test']);
    t.is(all.n, s.done);
    const row = (key: string) => {
      const i = all.keys.indexOf(key);
      if (i < 0) throw new Error(`no feature row for ${key}`);
      return all.X.subarray(i * all.d, (i + 1) * all.d);
    };
    for (const key of AWKWARD_ALONE) t.notThrows(() => row(key), key);
    for (const [key, { twin, tol }] of Object.entries(TWINS)) {
      const d = meanAbsDiff(row(key), row(twin));
      t.log(`${key} vs ${twin}: mean |Δ| = ${d.toFixed(4)} (allowed ${tol.toFixed(4)})`);
      t.true(d <= tol, `${key} vs ${twin}: ${d} > ${tol}`);
    }
    // The orientation tag mattered: the rotated file read as stored would be far from its twin.
    const asStored = await sharp(
      await sharp(asymmetricRaw(48, 32), { raw: { width: 48, height: 32, channels: 3 } })
        .rotate(270)
        .png()
        .toBuffer(),
    )
      .resize(32, 32, { fit: 'cover' })
      .raw()
      .toBuffer();
    const asStoredRow = Float32Array.from(asStored, (v) => v / 255);
    t.true(meanAbsDiff(asStoredRow, row('pets/cat/exif-upright.jpg')) > 0.1, 'the EXIF tag must make a difference');

    // The extractor survived the large image, the bombs and the endless render, with bounded memory;
    // so did its decoder processes (each under DEEPFEAT_DECODE_MEMORY, 1024 MiB by default).
    t.is(extractor.child.exitCode, null, extractor.output());
    t.is(extractor.child.signalCode, null);
    const hwm = (pid: number) =>
      Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) * 1024;
    try {
      const peak = hwm(extractor.child.pid!);
      t.log(`extractor peak RSS ${(peak / 2 ** 20).toFixed(0)} MiB`);
      t.true(peak < 1024 * 2 ** 20, `extractor peak RSS ${peak} bytes`);
      const decoders = readdirSync(`/proc/${extractor.child.pid}/task`).flatMap((tid) =>
        readFileSync(`/proc/${extractor.child.pid}/task/${tid}/children`, 'utf8')
          .split(' ')
          .filter(Boolean)
          .map(Number),
      );
      t.true(decoders.length >= 1, 'decoder processes run beside the extractor');
      for (const pid of decoders) {
        const p = hwm(pid);
        t.log(`decoder process ${pid} peak RSS ${(p / 2 ** 20).toFixed(0)} MiB`);
        t.true(p < 1200 * 2 ** 20, `decoder ${pid} peak RSS ${p} bytes`);
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err; // no /proc: not Linux
    }
  },
);
