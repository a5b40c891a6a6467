import test from 'ava';
import {
  assertLinearSoftmaxModel,
  linearSoftmaxModelFromArrays,
  predictLabel,
  predictProba,
  type LinearSoftmaxModel,
} from '../shared/softmax-model.js';
import { fitLogisticRegression, predictProbaMatrix } from '../services/trainer/logreg.js';
import { applyStandardizer, fitStandardizer } from '../services/trainer/standardizer.js';
import { BadRequestError, ModelError } from '../shared/errors.js';

const model: LinearSoftmaxModel = {
  classes: ['cat', 'dog', 'bird'],
  mean: [1, 2],
  std: [2, 4],
  weights: [
    [1, 0],
    [0, 1],
    [0, 0],
  ],
  bias: [0, 0, 1],
};

test('predictProba standardises then applies softmax (hand-computed)', (t) => {
  // x = ((5-1)/2, (2-2)/4) = (2, 0) → logits (2, 0, 1)
  const p = predictProba(model, [5, 2]);
  const z = Math.exp(2) + Math.exp(0) + Math.exp(1);
  t.true(Math.abs(p[0] - Math.exp(2) / z) < 1e-15);
  t.true(Math.abs(p[1] - 1 / z) < 1e-15);
  t.true(Math.abs(p[2] - Math.exp(1) / z) < 1e-15);
  t.deepEqual(predictLabel(model, new Float32Array([5, 2])), { label: 'cat', index: 0, probability: p[0] });
  t.is(predictLabel(model, [1, 14]).label, 'dog'); // x = (0, 3)
});

test('the signed-sqrt transform applies before standardisation, sign kept; a bad transform is refused', (t) => {
  const sqrt: LinearSoftmaxModel = { ...model, featureTransform: 'signed-sqrt' };
  // x' = (√9, −√4) = (3, −2) → z = ((3−1)/2, (−2−2)/4) = (1, −1) → logits (1, −1, 1)
  const p = predictProba(sqrt, [9, -4]);
  const z = 2 * Math.exp(1) + Math.exp(-1);
  t.true(Math.abs(p[0] - Math.exp(1) / z) < 1e-15);
  t.true(Math.abs(p[1] - Math.exp(-1) / z) < 1e-15);
  t.is(assertLinearSoftmaxModel(JSON.parse(JSON.stringify(sqrt))).featureTransform, 'signed-sqrt');
  t.throws(() => assertLinearSoftmaxModel({ ...model, featureTransform: 'log' }), {
    instanceOf: ModelError,
    message: /'featureTransform' must be one of signed-sqrt/,
  });
});

test('softmax is stable for huge logits and ties go to the first class', (t) => {
  const big = { ...model, bias: [1000, -1000, 999] };
  const p = predictProba(big, [1, 2]);
  t.true(p.every(Number.isFinite));
  t.true(Math.abs(p[0] - 1 / (1 + Math.exp(-1))) < 1e-12);
  const tie = { ...model, bias: [1, 1, 1] };
  t.deepEqual(predictLabel(tie, [1, 2]).index, 0);
});

test('feature length mismatch is a clear error', (t) => {
  t.throws(() => predictProba(model, [1, 2, 3]), { instanceOf: BadRequestError, message: /length 3, model expects 2/ });
});

test('assertLinearSoftmaxModel accepts a JSON round trip and names bad fields', (t) => {
  t.deepEqual(assertLinearSoftmaxModel(JSON.parse(JSON.stringify(model))), model);
  const bad = (patch: Record<string, unknown>): unknown => ({ ...model, ...patch });
  const cases: Array<[unknown, RegExp]> = [
    [null, /expected an object/],
    [[1, 2], /expected an object/],
    [bad({ classes: ['only'] }), /'classes'/],
    [bad({ classes: ['a', 'a', 'b'] }), /duplicate/],
    [bad({ classes: ['a', 7, 'b'] }), /'classes\[1\]'/],
    [bad({ mean: [1, null] }), /'mean\[1\]'/],
    [bad({ mean: [] }), /'mean' is empty/],
    [bad({ std: [2] }), /'std' has length 1, expected 2/],
    [bad({ std: [2, 0] }), /'std\[1\]' must be > 0/],
    [
      bad({
        weights: [
          [1, 0],
          [0, 1],
        ],
      }),
      /'weights' must have one row per class \(3\)/,
    ],
    [
      bad({
        weights: [
          [1, 0],
          [0, 1, 2],
          [0, 0],
        ],
      }),
      /'weights\[1\]' has length 3, expected 2/,
    ],
    [
      bad({
        weights: [
          [1, 0],
          [0, 'x'],
          [0, 0],
        ],
      }),
      /'weights\[1\]\[1\]'/,
    ],
    [bad({ bias: [0, 0] }), /'bias' has length 2, expected 3/],
    [bad({ bias: 'nope' }), /'bias' must be an array/],
  ];
  for (const [value, message] of cases) {
    t.throws(() => assertLinearSoftmaxModel(value), { instanceOf: ModelError, message }, JSON.stringify(value));
  }
});

test('an artifact built from a trainer fit reproduces the trainer probabilities on raw features', (t) => {
  const n = 40,
    d = 3,
    k = 3;
  const X = Float32Array.from(
    { length: n * d },
    (_, i) => Math.sin(i * 1.7) * 5 + (i % d) * 10 + (Math.floor(i / d) % k) * 2,
  );
  const y = Int32Array.from({ length: n }, (_, i) => i % k);
  const std = fitStandardizer(X, n, d);
  const Xs = applyStandardizer(X, n, d, std);
  const fit = fitLogisticRegression({ X: Xs, n, d, y, k, lambda: 0.01 });
  const artifact = linearSoftmaxModelFromArrays(['a', 'b', 'c'], std.mean, std.std, fit.W, fit.b);
  const P = predictProbaMatrix(fit, Xs, n, d);
  for (let i = 0; i < n; i++) {
    const p = predictProba(artifact, X.subarray(i * d, i * d + d));
    // The trainer standardises into float32, the artifact in float64: agree to ~1e-6.
    for (let c = 0; c < k; c++) t.true(Math.abs(p[c] - P[i * k + c]) < 1e-5, `row ${i} class ${c}`);
  }
});
