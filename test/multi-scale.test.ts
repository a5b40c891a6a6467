/**
 * The half-size view of multi-scale features (services/extractor/engines/multi-scale.ts): 2×2
 * block means rounded half up, odd sides dropping their last row and column, and the topology
 * edit that lets a model run at that size.
 */
import test from 'ava';
import { atInputSide, halfSide, halveImage } from '../services/extractor/engines/multi-scale.js';
import { runRequestSchema } from '../shared/queues.js';
import { runRequestWith } from './helpers/run-request.js';

test('halveImage averages each 2×2 block per channel and rounds half up', (t) => {
  // 2×2 RGB → 1×1: R mean 1.5 → 2, G mean 2.25 → 2, B mean 254.75 → 255.
  const img = Uint8Array.from([1, 0, 255, 2, 9, 254, 1, 0, 255, 2, 0, 255]);
  t.deepEqual(Array.from(halveImage(img, 2, 2)), [2, 2, 255]);
  // Every byte value at once, brute force against the definition.
  const w = 4;
  const h = 2;
  const big = Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * 37 + 11) % 256);
  const out = halveImage(big, w, h);
  for (let x = 0; x < 2; x++) {
    for (let c = 0; c < 3; c++) {
      const at = (yy: number, xx: number) => big[(yy * w + xx) * 3 + c]!;
      const sum = at(0, 2 * x) + at(0, 2 * x + 1) + at(1, 2 * x) + at(1, 2 * x + 1);
      t.is(out[x * 3 + c], Math.floor(sum / 4 + 0.5));
    }
  }
});

test('an odd side drops its last row and column', (t) => {
  t.is(halfSide(299), 149);
  t.is(halfSide(224), 112);
  const img = new Uint8Array(3 * 3 * 3).fill(100);
  img.fill(0, 2 * 3 * 3); // the last row is dark: it must not count
  for (let y = 0; y < 3; y++) img.fill(0, (y * 3 + 2) * 3, (y * 3 + 3) * 3); // and the last column
  t.deepEqual(Array.from(halveImage(img, 3, 3)), [100, 100, 100]);
});

test('atInputSide sets the declared input of graph and layers models, and refuses a topology without one', (t) => {
  const graph = {
    format: 'graph-model',
    modelTopology: {
      node: [
        {
          name: 'x',
          op: 'Placeholder',
          attr: { shape: { shape: { dim: [{ size: '-1' }, { size: '224' }, { size: '224' }, { size: '3' }] } } },
        },
      ],
    },
  };
  const g = atInputSide(graph, 112, 'g') as { modelTopology: typeof graph.modelTopology };
  t.deepEqual(
    g.modelTopology.node[0]!.attr.shape.shape.dim.map((d) => d.size),
    ['-1', '112', '112', '3'],
  );
  t.is(graph.modelTopology.node[0]!.attr.shape.shape.dim[1]!.size, '224', 'the original is not changed');
  const layers = {
    format: 'layers-model',
    modelTopology: {
      class_name: 'Functional',
      config: { layers: [{ class_name: 'InputLayer', config: { batch_input_shape: [null, 299, 299, 3] } }] },
    },
  };
  const l = atInputSide(layers, 149, 'l') as typeof layers;
  t.deepEqual(l.modelTopology.config.layers[0]!.config.batch_input_shape, [null, 149, 149, 3]);
  const keras = {
    modelTopology: {
      keras_version: '2.1.6',
      model_config: {
        class_name: 'Sequential',
        config: [{ class_name: 'Conv2D', config: { input_shape: [32, 32, 3] } }],
      },
    },
  };
  const k = atInputSide(keras, 16, 'k') as typeof keras;
  t.deepEqual(k.modelTopology.model_config.config[0]!.config.input_shape, [16, 16, 3]);
  const err = t.throws(() => atInputSide({ format: 'graph-model', modelTopology: { node: [] } }, 8, 'empty'));
  t.regex(err!.message, /declares no image input \[N, H, W, C\] whose size could be set to 8×8/);
});

test('a run request asking multi-scale features of an ONNX model or raw pixels is refused before it is queued', (t) => {
  const request = (features: unknown) => runRequestSchema.safeParse(runRequestWith(features));
  const onnx = request({ kind: 'onnx', model: 's3://b/m.onnx', node: 'n', multiScale: true });
  t.false(onnx.success);
  t.regex(
    JSON.stringify(onnx.error?.issues),
    /an ONNX model runs at the input size it was written for: drop multiScale \(or set it to false\)/,
  );
  const raw = request({ kind: 'raw-pixels', size: 32, multiScale: true });
  t.false(raw.success);
  t.regex(JSON.stringify(raw.error?.issues), /raw pixels have one scale/);
  t.true(request({ kind: 'onnx', model: 's3://b/m.onnx', node: 'n', multiScale: false }).success);
  t.true(request({ kind: 'builtin', id: 'mobilenet_v2_mid', multiScale: true }).success);
  t.true(request({ kind: 'tfjs', model: 's3://b/m.json', node: 'n', multiScale: true }).success);
  t.false(request({ kind: 'builtin', id: 'mobilenet_v2_mid', multiScale: 'yes' }).success);
});
