/**
 * Flip averaging's pieces (services/extractor/engines/flip.ts) on a small fake engine: the mirror
 * of an image, and the wrapper's batch (originals then mirrors) and pairwise mean.
 */
import test from 'ava';
import type { FeatureEngine } from '../services/extractor/engines/engine.js';
import { mirrorImage, withFlipAveraging } from '../services/extractor/engines/flip.js';
import { featureSpec } from '../cli/flags.js';

test('mirrorImage reverses each row of pixels and keeps each pixel RGB together', (t) => {
  // 3×2 image, pixel (x, y) = [10x + y, 100 + x, 200 + y]
  const w = 3;
  const h = 2;
  const img = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) img.set([10 * x + y, 100 + x, 200 + y], (y * w + x) * 3);
  const m = mirrorImage(img, w, h);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const at = (y * w + x) * 3;
      t.deepEqual([...m.subarray(at, at + 3)], [10 * (w - 1 - x) + y, 100 + (w - 1 - x), 200 + y]);
    }
  t.deepEqual(mirrorImage(m, w, h), img);
});

test('withFlipAveraging sends originals then mirrors in one batch and averages each pair', async (t) => {
  const w = 2;
  const h = 1;
  const batches: Uint8Array[][] = [];
  // Feature row of an image: its first and last byte (left and right pixel's red).
  const fake: FeatureEngine = {
    id: 'fake@node',
    backend: 'js',
    input: { width: w, height: h },
    preferredBatch: 8,
    dim: 2,
    async embed(images) {
      batches.push([...images]);
      const out = new Float32Array(images.length * 2);
      for (const [i, img] of images.entries()) out.set([img[0]!, img[3]!], i * 2);
      return out;
    },
    dispose() {},
  };
  const e = withFlipAveraging(fake);
  t.is(e.id, 'fake@node+flip');
  t.is(e.preferredBatch, 4);
  const a = Uint8Array.from([1, 0, 0, 7, 0, 0]);
  const b = Uint8Array.from([10, 0, 0, 20, 0, 0]);
  const out = await e.embed([a, b]);
  t.is(batches.length, 1);
  t.is(batches[0]!.length, 4);
  t.deepEqual([...batches[0]![2]!], [7, 0, 0, 1, 0, 0]);
  // a: (1 + 7) / 2 both ways; b: (10 + 20) / 2.
  t.deepEqual([...out], [4, 4, 15, 15]);
  t.is((await e.embed([])).length, 0);
});

test('the CLI turns flip averaging on for backbones unless --no-flip, and never for raw pixels', (t) => {
  t.like(featureSpec({ features: 'backbone' }), { kind: 'builtin', flip: true });
  t.like(featureSpec({ features: 'backbone', flip: false }), { kind: 'builtin', flip: false });
  t.like(featureSpec({ features: 'backbone', flip: true }), { kind: 'builtin', flip: true });
  t.like(featureSpec({ features: 'backbone', backbone: 'inception_v3' }), { id: 'inception_v3', flip: true });
  t.deepEqual(featureSpec({ features: 'raw-pixels' }), { kind: 'raw-pixels', size: 32 });
  t.deepEqual(featureSpec({ features: 'raw-pixels', flip: true }), { kind: 'raw-pixels', size: 32 });
});
