import { readFile } from 'node:fs/promises';
import test from 'ava';
import sharp from 'sharp';
import { DEMO_MAX_PER_CLASS, demoDataPath, loadDemoImages } from '../cli/demo-data.js';

test('two classes, cats then dogs, perClass honoured, unique names', async (t) => {
  const images = await loadDemoImages({ perClass: 4 });
  t.is(images.length, 8);
  t.deepEqual(
    images.map((image) => image.label),
    ['cat', 'cat', 'cat', 'cat', 'dog', 'dog', 'dog', 'dog'],
  );
  t.deepEqual(
    images.map((image) => image.name),
    [
      'cat-0000.png',
      'cat-0001.png',
      'cat-0002.png',
      'cat-0003.png',
      'dog-0000.png',
      'dog-0001.png',
      'dog-0002.png',
      'dog-0003.png',
    ],
  );
});

test('PNGs decode to 32×32×3 and hold the package pixels (rounded float32 → uint8)', async (t) => {
  const images = await loadDemoImages({ perClass: 2 });
  const json = JSON.parse(await readFile(demoDataPath(), 'utf8')) as { cats: string; dogs: string };
  for (const image of images) {
    const { data, info } = await sharp(image.png).raw().toBuffer({ resolveWithObject: true });
    t.is(info.width, 32);
    t.is(info.height, 32);
    t.is(info.channels, 3);
    t.is(data.length, 32 * 32 * 3);

    const index = Number(image.name.slice(4, 8));
    const floats = Buffer.from(image.label === 'cat' ? json.cats : json.dogs, 'base64');
    const expected = Buffer.alloc(32 * 32 * 3);
    for (let i = 0; i < expected.length; i++) {
      expected[i] = Math.min(255, Math.max(0, Math.round(floats.readFloatLE((index * expected.length + i) * 4))));
    }
    t.true(data.equals(expected), `${image.name} pixels differ from the package data`);
  }
});

test('deterministic: same bytes on every call, and a smaller perClass is a prefix of a larger one', async (t) => {
  const first = await loadDemoImages({ perClass: 3 });
  const second = await loadDemoImages({ perClass: 3 });
  const larger = await loadDemoImages({ perClass: 5 });
  t.deepEqual(
    first.map((image) => image.png),
    second.map((image) => image.png),
  );
  const largerByName = new Map(larger.map((image) => [image.name, image.png]));
  for (const image of first) t.true(image.png.equals(largerByName.get(image.name)!), image.name);
  // Different images really differ (not one image repeated).
  t.is(new Set(first.map((image) => image.png.toString('base64'))).size, first.length);
});

test('default is every image: 1000 per class', async (t) => {
  const images = await loadDemoImages();
  t.is(images.length, 2 * DEMO_MAX_PER_CLASS);
  t.is(images.filter((image) => image.label === 'dog').length, DEMO_MAX_PER_CLASS);
});

test('perClass outside 1..1000 is refused with the valid range', async (t) => {
  for (const perClass of [0, 1001, 2.5, -1]) {
    const err = await t.throwsAsync(loadDemoImages({ perClass }), { instanceOf: RangeError });
    t.regex(err!.message, /from 1 to 1000/);
  }
});
