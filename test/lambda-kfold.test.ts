/**
 * L2 strength chosen by stratified k-fold cross-validation (services/trainer/lambda-selection.ts
 * selectLambdaByKFold): folds are stratified and seeded, the chosen lambda is the one with the
 * best mean held-out score, the final model is fitted on every row, and the result is the same
 * on every run.
 */
import test from 'ava';
import { fitInThread } from '../services/trainer/fit-thread.js';
import {
  KFOLD_FOLDS,
  KFOLD_MAX_ROWS,
  KFOLD_SEED,
  type LabelledMatrix,
  selectLambda,
  selectLambdaAndFit,
  selectLambdaByKFold,
  stratifiedFolds,
} from '../services/trainer/lambda-selection.js';
import { fitLogisticRegression, predictLabels } from '../services/trainer/logreg.js';
import { mulberry32 } from '../shared/random.js';

/** Two noisy Gaussian classes in d dimensions, only the first `signal` features informative. */
function noisy(seed: number, n: number, d: number, signal: number): LabelledMatrix {
  const rand = mulberry32(seed);
  const g = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
  const X = new Float32Array(n * d);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % 2;
    for (let j = 0; j < d; j++) X[i * d + j] = g() + (j < signal ? (y[i] ? 0.4 : -0.4) : 0);
  }
  return { X, n, y };
}

test('stratifiedFolds deals each class evenly over the folds, seeded', (t) => {
  const y = Int32Array.from({ length: 103 }, (_, i) => (i < 73 ? 0 : 1));
  const folds = stratifiedFolds(y, 2, 5, 7);
  for (let f = 0; f < 5; f++) {
    for (const c of [0, 1]) {
      const count = [...folds.keys()].filter((i) => folds[i] === f && y[i] === c).length;
      const total = c === 0 ? 73 : 30;
      t.true(count === Math.floor(total / 5) || count === Math.ceil(total / 5), `fold ${f} class ${c}: ${count}`);
    }
  }
  t.deepEqual(stratifiedFolds(y, 2, 5, 7), folds);
  t.notDeepEqual(stratifiedFolds(y, 2, 5, 8), folds);
  // Never more folds than the smallest class has rows, never fewer than two.
  t.is(Math.max(...stratifiedFolds(Int32Array.from([0, 0, 0, 1, 1, 1]), 2, 10, 1)) + 1, 3);
  t.is(Math.max(...stratifiedFolds(Int32Array.from([0, 1, 0, 1]), 2, 1, 1)) + 1, 2);
});

test('selectLambdaByKFold picks the lambda with the best mean held-out accuracy and fits on all rows', (t) => {
  const d = 60;
  const data = noisy(3, 240, d, 4);
  const lambdas = [1e-4, 1e-2, 1];
  const r = selectLambdaByKFold({ data, d, k: 2, seed: 11, lambdas });
  t.is(r.validation.length, lambdas.length);
  t.deepEqual(
    r.validation.map((v) => v.lambda),
    [1, 1e-2, 1e-4],
  );
  const best = Math.max(...r.validation.map((v) => v.accuracy));
  t.is(r.validation.find((v) => v.lambda === r.lambda)!.accuracy, best);
  // Many noise features and few rows: a strong penalty generalises better than almost none.
  t.true(r.lambda > 1e-4, `chose ${r.lambda}`);
  // The final model is the fit on every row at the chosen lambda.
  const direct = fitLogisticRegression({ ...data, d, k: 2, lambda: r.lambda });
  t.deepEqual(predictLabels(r.model, data.X, data.n, d), predictLabels(direct, data.X, data.n, d));
  // Deterministic.
  t.deepEqual(selectLambdaByKFold({ data, d, k: 2, seed: 11, lambdas }).model.W, r.model.W);
});

test('selectLambdaByKFold with the log-loss criterion picks the lowest mean held-out log loss', (t) => {
  const d = 40;
  const data = noisy(5, 160, d, 3);
  const r = selectLambdaByKFold({ data, d, k: 2, seed: 1, lambdas: [1e-3, 1e-1, 10], criterion: 'logLoss' });
  t.is(r.validation.find((v) => v.lambda === r.lambda)!.logLoss, Math.min(...r.validation.map((v) => v.logLoss)));
});

/** train and val as the trainer holds them: adjacent views of one buffer. */
function trainVal(data: LabelledMatrix, d: number, nTrain: number) {
  return {
    train: { X: data.X.subarray(0, nTrain * d), n: nTrain, y: data.y.subarray(0, nTrain) },
    val: { X: data.X.subarray(nTrain * d), n: data.n - nTrain, y: data.y.subarray(nTrain) },
  };
}

test('selectLambda: auto uses k-fold on train+val for small data; the default stays the validation split', (t) => {
  const d = 30;
  const data = noisy(9, 200, d, 3);
  const input = { ...trainVal(data, d, 170), d, k: 2, lambdas: [1e-3, 1e-1, 10] };
  const auto = selectLambda({ ...input, selection: 'auto' });
  const kfold = selectLambdaByKFold({ data, d, k: 2, folds: KFOLD_FOLDS, seed: KFOLD_SEED, lambdas: input.lambdas });
  t.is(auto.lambda, kfold.lambda);
  t.deepEqual(auto.validation, kfold.validation);
  t.deepEqual(auto.model.W, kfold.model.W);
  const plain = selectLambda(input);
  t.deepEqual(plain.validation, selectLambdaAndFit(input).validation);
  // No validation split: nothing to pool with, so the fixed default applies as before.
  const none = selectLambda({ ...trainVal(data, d, 200), d, k: 2, selection: 'auto' });
  t.deepEqual(none.validation, []);
});

test('selectLambda: auto keeps the validation split above KFOLD_MAX_ROWS rows', (t) => {
  const d = 2;
  const data = noisy(2, KFOLD_MAX_ROWS + 2, d, 1);
  const input = { ...trainVal(data, d, KFOLD_MAX_ROWS - 100), d, k: 2, lambdas: [1e-2, 1] };
  t.deepEqual(selectLambda({ ...input, selection: 'auto' }).validation, selectLambdaAndFit(input).validation);
});

test('fitInThread with selection auto gives the same model as selectLambda on this thread', async (t) => {
  const d = 20;
  const data = noisy(4, 150, d, 2);
  const input = { ...trainVal(data, d, 130), d, k: 2, lambdas: [1e-2, 1], selection: 'auto' as const };
  const here = selectLambda(input);
  const copy = { ...input, ...trainVal({ ...data, X: data.X.slice(), y: data.y.slice() }, d, 130) };
  const there = await fitInThread(copy, { thread: 'always' });
  t.is(there.lambda, here.lambda);
  t.deepEqual(Array.from(there.model.W), Array.from(here.model.W));
  t.deepEqual(there.validation, here.validation);
});

test('a small fit runs on the caller’s thread with the same result as in the fit thread', async (t) => {
  const d = 20;
  const data = noisy(5, 150, d, 2);
  const input = { ...trainVal(data, d, 130), d, k: 2, lambdas: [1e-2, 1] };
  const copy = () => ({ ...input, ...trainVal({ ...data, X: data.X.slice(), y: data.y.slice() }, d, 130) });
  const here = await fitInThread(copy());
  const there = await fitInThread(copy(), { thread: 'always' });
  t.is(here.lambda, there.lambda);
  t.deepEqual(Array.from(here.model.W), Array.from(there.model.W));
  t.deepEqual(here.validation, there.validation);
});
