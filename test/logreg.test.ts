import test from 'ava';
import { minimizeLbfgs } from '../services/trainer/lbfgs.js';
import { selectLambdaAndFit } from '../services/trainer/lambda-selection.js';
import { logisticObjective, objectiveChunks, type LogisticProblem } from '../services/trainer/logistic-objective.js';
import { fitLogisticRegression, predictLabels, predictProbaMatrix } from '../services/trainer/logreg.js';
import { applyStandardizer, fitStandardizer } from '../services/trainer/standardizer.js';
import { fitInThread } from '../services/trainer/fit-thread.js';
import { ObjectivePool } from '../services/trainer/objective-pool.js';
import { InternalError } from '../shared/errors.js';
import { mulberry32 as rng } from '../shared/random.js';

function gaussian(rand: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

/** Gaussian clusters around random centres; `spread` is the centre scale (signal strength). */
function clusters(seed: number, n: number, d: number, k: number, spread: number): { X: Float32Array; y: Int32Array } {
  const g = gaussian(rng(seed));
  const centres = Array.from({ length: k }, () => Array.from({ length: d }, () => g() * spread));
  const X = new Float32Array(n * d);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const c = i % k;
    y[i] = c;
    for (let j = 0; j < d; j++) X[i * d + j] = centres[c][j] + g();
  }
  return { X, y };
}

function accuracy(pred: Int32Array, y: Int32Array): number {
  let ok = 0;
  for (let i = 0; i < y.length; i++) if (pred[i] === y[i]) ok++;
  return ok / y.length;
}

function maxAbs(a: Float64Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

function pack(W: Float64Array, b: Float64Array): Float64Array {
  const theta = new Float64Array(W.length + b.length);
  theta.set(W);
  theta.set(b, W.length);
  return theta;
}

test('objective gradient matches central finite differences', (t) => {
  // Shapes chosen to hit both the 4-sample/2-class blocked kernels and their tails.
  for (const [n, d, k, lambda] of [
    [13, 5, 3, 0.1],
    [8, 3, 4, 0],
    [6, 1, 2, 0.5],
  ] as const) {
    const g = gaussian(rng(n * 100 + d * 10 + k));
    const X = Float32Array.from({ length: n * d }, g);
    const y = Int32Array.from({ length: n }, (_, i) => (i * 7) % k);
    const problem: LogisticProblem = { X, n, d, y, k, lambda };
    const theta = Float64Array.from({ length: k * d + k }, () => g() * 0.7);
    const grad = new Float64Array(theta.length);
    const f = logisticObjective(problem, theta, grad);
    t.true(Number.isFinite(f) && f > 0);
    const scratch = new Float64Array(theta.length);
    const h = 1e-6;
    for (let p = 0; p < theta.length; p++) {
      const plus = Float64Array.from(theta);
      const minus = Float64Array.from(theta);
      plus[p] += h;
      minus[p] -= h;
      const numeric =
        (logisticObjective(problem, plus, scratch) - logisticObjective(problem, minus, scratch)) / (2 * h);
      t.true(
        Math.abs(numeric - grad[p]) <= 1e-6 * Math.max(1, Math.abs(numeric)),
        `n=${n} d=${d} k=${k} param ${p}: analytic ${grad[p]} vs numeric ${numeric}`,
      );
    }
  }
});

test('objective is finite for extreme logits (stable softmax)', (t) => {
  const problem: LogisticProblem = {
    X: new Float32Array([1, -1]),
    n: 2,
    d: 1,
    y: new Int32Array([0, 0]),
    k: 2,
    lambda: 0,
  };
  const grad = new Float64Array(4);
  // Logit gap of 2000 for a wrong prediction: naive exp overflows / log(0) is -Infinity.
  const f = logisticObjective(problem, new Float64Array([-1000, 1000, 0, 0]), grad);
  t.true(Math.abs(f - 1000) < 1e-9, `loss ${f}`);
  t.true(grad.every(Number.isFinite));
});

test('L-BFGS minimises the Rosenbrock function to (1, 1)', (t) => {
  const rosen = (x: Float64Array, g: Float64Array): number => {
    const [a, b] = [x[0], x[1]];
    g[0] = -2 * (1 - a) - 400 * a * (b - a * a);
    g[1] = 200 * (b - a * a);
    return (1 - a) ** 2 + 100 * (b - a * a) ** 2;
  };
  const r = minimizeLbfgs(rosen, new Float64Array([-1.2, 1]), {
    gradientTolerance: 1e-10,
    functionTolerance: 0,
    maxIterations: 500,
  });
  t.true(r.converged, r.reason);
  t.is(r.reason, 'gradient tolerance');
  t.true(Math.abs(r.x[0] - 1) < 1e-8 && Math.abs(r.x[1] - 1) < 1e-8, `x = ${Array.from(r.x)}`);
  t.true(r.f < 1e-16);
  t.true(r.iterations < 100, `iterations ${r.iterations}`);
});

test('L-BFGS solves an ill-conditioned quadratic and respects maxIterations', (t) => {
  const n = 50;
  const diag = Float64Array.from({ length: n }, (_, i) => 10 ** ((2 * i) / (n - 1))); // condition number 100
  const quad = (x: Float64Array, g: Float64Array): number => {
    let f = 0;
    for (let i = 0; i < n; i++) {
      const r = x[i] - (i + 1);
      g[i] = diag[i] * r;
      f += 0.5 * diag[i] * r * r;
    }
    return f;
  };
  const x0 = new Float64Array(n);
  const r = minimizeLbfgs(quad, x0, { gradientTolerance: 1e-8, functionTolerance: 0, maxIterations: 1000 });
  t.true(r.converged, r.reason);
  t.true(r.iterations < 300, `iterations ${r.iterations}`); // scipy's L-BFGS-B (m=10) needs 118 here
  for (let i = 0; i < n; i++) t.true(Math.abs(r.x[i] - (i + 1)) < 1e-6, `x[${i}] = ${r.x[i]}`);
  t.deepEqual(Array.from(x0), new Array(n).fill(0), 'x0 is not modified');
  const capped = minimizeLbfgs(quad, x0, { gradientTolerance: 1e-12, functionTolerance: 0, maxIterations: 3 });
  t.false(capped.converged);
  t.is(capped.reason, 'max iterations');
  t.is(capped.iterations, 3);
});

test('standardizer: zero mean, unit std, constant feature maps to 0', (t) => {
  const n = 4,
    d = 3;
  const X = new Float32Array([1, 5, 10, 2, 5, 20, 3, 5, 30, 4, 5, 40]);
  const s = fitStandardizer(X, n, d);
  t.deepEqual(Array.from(s.mean), [2.5, 5, 25]);
  t.true(Math.abs(s.std[0] - Math.sqrt(1.25)) < 1e-12);
  t.is(s.std[1], 1);
  const Z = applyStandardizer(X, n, d, s);
  for (let j = 0; j < d; j++) {
    let m = 0,
      v = 0;
    for (let i = 0; i < n; i++) m += Z[i * d + j] / n;
    for (let i = 0; i < n; i++) v += (Z[i * d + j] - m) ** 2 / n;
    t.true(Math.abs(m) < 1e-6);
    t.true(Math.abs(v - (j === 1 ? 0 : 1)) < 1e-6);
  }
  t.not(Z, X);
});

test('separable data: 100% training accuracy, weights grow as lambda shrinks', (t) => {
  const n = 90,
    d = 4,
    k = 3;
  const { X, y } = clusters(7, n, d, k, 8);
  const norms: number[] = [];
  for (const lambda of [1e-1, 1e-2, 1e-3]) {
    const fit = fitLogisticRegression({ X, n, d, y, k, lambda, maxIterations: 1000 });
    t.is(accuracy(predictLabels(fit, X, n, d), y), 1, `lambda ${lambda}`);
    norms.push(Math.sqrt(fit.W.reduce((a, w) => a + w * w, 0)));
  }
  t.true(norms[0] < norms[1] && norms[1] < norms[2], `norms ${norms}`);
});

test('1-D binary problem with lambda=0 matches the closed-form logit solution', (t) => {
  // x = +1: 30 positives of 40; x = -1: 10 positives of 40. Two parameters fit two groups
  // exactly, so beta0 + beta1 = logit(0.75) and beta0 - beta1 = logit(0.25).
  const X = new Float32Array(80);
  const y = new Int32Array(80);
  for (let i = 0; i < 80; i++) {
    X[i] = i < 40 ? 1 : -1;
    y[i] = i < 40 ? (i < 30 ? 1 : 0) : i < 50 ? 1 : 0;
  }
  const fit = fitLogisticRegression({ X, n: 80, d: 1, y, k: 2, lambda: 0 });
  t.true(fit.converged);
  const beta1 = fit.W[1] - fit.W[0];
  const beta0 = fit.b[1] - fit.b[0];
  const logit = (p: number): number => Math.log(p / (1 - p));
  t.true(Math.abs(beta1 - (logit(0.75) - logit(0.25)) / 2) < 1e-4, `beta1 ${beta1}`);
  t.true(Math.abs(beta0) < 1e-4, `beta0 ${beta0}`);
  const expectedLoss = -(0.75 * Math.log(0.75) + 0.25 * Math.log(0.25));
  t.true(Math.abs(fit.loss - expectedLoss) < 1e-9, `loss ${fit.loss} vs ${expectedLoss}`);
});

test('non-separable problem with lambda>0: stationary point, local minimum, W rows sum to zero for k=2', (t) => {
  const n = 200,
    d = 6,
    k = 2;
  const { X, y } = clusters(11, n, d, k, 0.4); // heavily overlapping classes
  const lambda = 0.05;
  const fit = fitLogisticRegression({ X, n, d, y, k, lambda });
  t.true(fit.converged);
  const problem: LogisticProblem = { X, n, d, y, k, lambda };
  const theta = pack(fit.W, fit.b);
  const grad = new Float64Array(theta.length);
  const f = logisticObjective(problem, theta, grad);
  t.true(maxAbs(grad) < 1e-5, `gradient ${maxAbs(grad)}`);
  t.is(f, fit.loss);
  const acc = accuracy(predictLabels(fit, X, n, d), y);
  t.true(acc > 0.5 && acc < 1, `accuracy ${acc}`);
  const g = gaussian(rng(3));
  for (let trial = 0; trial < 20; trial++) {
    const perturbed = theta.map((v) => v + 1e-3 * g());
    t.true(logisticObjective(problem, perturbed, grad) >= f);
  }
  for (let j = 0; j < d; j++) t.true(Math.abs(fit.W[j] + fit.W[d + j]) < 1e-6, `W[0][${j}] + W[1][${j}]`);
});

test('fits are bit-for-bit deterministic', (t) => {
  const n = 150,
    d = 20,
    k = 5;
  const { X, y } = clusters(5, n, d, k, 1);
  const a = fitLogisticRegression({ X, n, d, y, k, lambda: 1e-3 });
  const b = fitLogisticRegression({ X, n, d, y, k, lambda: 1e-3 });
  t.deepEqual(Buffer.from(a.W.buffer), Buffer.from(b.W.buffer));
  t.deepEqual(Buffer.from(a.b.buffer), Buffer.from(b.b.buffer));
  t.is(a.loss, b.loss);
  t.is(a.iterations, b.iterations);
});

test('predictProbaMatrix rows are probability distributions consistent with predictLabels', (t) => {
  const n = 21,
    d = 3,
    k = 3;
  const { X, y } = clusters(9, n, d, k, 2);
  const fit = fitLogisticRegression({ X, n, d, y, k, lambda: 0.01 });
  const P = predictProbaMatrix(fit, X, n, d);
  const labels = predictLabels(fit, X, n, d);
  for (let i = 0; i < n; i++) {
    const row = Array.from(P.subarray(i * k, i * k + k));
    t.true(Math.abs(row.reduce((a, v) => a + v, 0) - 1) < 1e-12);
    t.is(labels[i], row.indexOf(Math.max(...row)));
  }
});

test('rejects labels out of range and mismatched sizes', (t) => {
  const X = new Float32Array(4);
  t.throws(() => fitLogisticRegression({ X, n: 2, d: 2, y: new Int32Array([0, 3]), k: 3, lambda: 0 }), {
    instanceOf: InternalError,
    message: /y\[1\]=3 is outside \[0, 3\)/,
  });
  t.throws(() => fitLogisticRegression({ X, n: 3, d: 2, y: new Int32Array(3), k: 2, lambda: 0 }), {
    message: /X has 4 values/,
  });
  t.throws(
    () =>
      fitLogisticRegression({
        X: new Float32Array([0, 1, Number.NaN, 0]),
        n: 2,
        d: 2,
        y: new Int32Array(2),
        k: 2,
        lambda: 0,
      }),
    {
      instanceOf: InternalError,
      message: /X\[1\]\[0\] is not finite/,
    },
  );
});

test('selectLambdaAndFit prefers regularisation on a noisy high-dimensional problem and refits on train+val', (t) => {
  // 60 noisy copies of one latent signal, fewer training samples than features, 10% label
  // noise. Regularisation averages the copies; a tiny lambda fits the noise between them.
  const d = 60,
    k = 2,
    nTrain = 50,
    nVal = 1000;
  const g = gaussian(rng(42));
  const rand = rng(43);
  const make = (n: number): { X: Float32Array; n: number; y: Int32Array } => {
    const X = new Float32Array(n * d);
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const s = g();
      for (let j = 0; j < d; j++) X[i * d + j] = s + 3 * g();
      y[i] = rand() < 0.1 !== s > 0 ? 1 : 0;
    }
    return { X, n, y };
  };
  const train = make(nTrain);
  const val = make(nVal);
  const result = selectLambdaAndFit({ train, val, d, k });
  t.deepEqual(
    result.validation.map((v) => v.lambda),
    [1, 1e-1, 1e-2, 1e-3, 1e-4],
  );
  const best = Math.max(...result.validation.map((v) => v.accuracy));
  const chosen = result.validation.find((v) => v.lambda === result.lambda);
  t.is(chosen?.accuracy, best);
  t.true(result.lambda >= 0.1, `chose ${result.lambda}: ${JSON.stringify(result.validation)}`);
  const weakest = result.validation.find((v) => v.lambda === 1e-4);
  t.true((weakest?.logLoss ?? 0) > (chosen?.logLoss ?? Infinity), 'overfit model has worse validation log-loss');
  t.true((weakest?.accuracy ?? 1) < (chosen?.accuracy ?? 0), 'overfit model has worse validation accuracy');

  // The returned model is the optimum of the train+val objective at the chosen lambda.
  const n = nTrain + nVal;
  const X = new Float32Array(n * d);
  X.set(train.X);
  X.set(val.X, nTrain * d);
  const y = new Int32Array(n);
  y.set(train.y);
  y.set(val.y, nTrain);
  const grad = new Float64Array(k * d + k);
  logisticObjective({ X, n, d, y, k, lambda: result.lambda }, pack(result.model.W, result.model.b), grad);
  t.true(maxAbs(grad) < 1e-5, `train+val gradient ${maxAbs(grad)}`);
});

test('selectLambdaAndFit breaks accuracy ties by validation log-loss', (t) => {
  const d = 3,
    k = 3;
  const all = clusters(17, 120, d, k, 10); // well separated: every lambda is 100% accurate
  const train = { X: all.X.subarray(0, 60 * d), n: 60, y: all.y.subarray(0, 60) };
  const val = { X: all.X.subarray(60 * d), n: 60, y: all.y.subarray(60) };
  const result = selectLambdaAndFit({ train, val, d, k, lambdas: [1e-2, 1, 1e-1] });
  t.true(result.validation.every((v) => v.accuracy === 1));
  const minLoss = Math.min(...result.validation.map((v) => v.logLoss));
  t.is(result.validation.find((v) => v.lambda === result.lambda)?.logLoss, minLoss);
  t.is(result.lambda, 1e-2);
});

test('selectLambdaAndFit without validation data uses the default lambda', (t) => {
  const d = 2,
    k = 2;
  const { X, y } = clusters(3, 40, d, k, 2);
  const empty = { X: new Float32Array(0), n: 0, y: new Int32Array(0) };
  const r = selectLambdaAndFit({ train: { X, n: 40, y }, val: empty, d, k });
  t.is(r.lambda, 1e-2);
  t.deepEqual(r.validation, []);
  const direct = fitLogisticRegression({ X, n: 40, d, y, k, lambda: 1e-2 });
  t.deepEqual(Array.from(r.model.W), Array.from(direct.W));
  t.is(selectLambdaAndFit({ train: { X, n: 40, y }, val: empty, d, k, lambdas: [0.5] }).lambda, 0.5);
  t.throws(() => selectLambdaAndFit({ train: { X, n: 40, y }, val: empty, d, k, lambdas: [] }), {
    instanceOf: InternalError,
  });
});

test('objective chunks depend on n only and cover every row once', (t) => {
  for (const n of [1, 100, 2047, 4096, 5000, 20000, 1_000_000]) {
    const chunks = objectiveChunks(n);
    t.is(chunks[0]![0], 0);
    t.is(chunks.at(-1)![1], n);
    for (let c = 1; c < chunks.length; c++) t.is(chunks[c]![0], chunks[c - 1]![1]);
    t.true(chunks.length >= 1 && chunks.length <= 8);
  }
  t.is(objectiveChunks(300).length, 1);
  t.is(objectiveChunks(1400).length, 4);
  t.is(objectiveChunks(20000).length, 8);
  for (const n of [1, 511, 512, 1400, 4096, 5000, 20000]) t.true([1, 2, 4, 8].includes(objectiveChunks(n).length));
});

test.serial('fits on the objective thread pool give the same bits as on one thread', async (t) => {
  const n = 6000;
  const d = 24;
  const k = 4;
  const { X, y } = clusters(11, n, d, k, 0.4);
  const pool = await ObjectivePool.create(2);
  try {
    t.true(objectiveChunks(n).length > 1);
    const one = fitLogisticRegression({ X, n, d, y, k, lambda: 1e-3 });
    const many = fitLogisticRegression({ X, n, d, y, k, lambda: 1e-3, runner: pool.bind });
    t.true(one.iterations > 3);
    t.deepEqual(many.W, one.W);
    t.deepEqual(many.b, one.b);
    t.is(many.loss, one.loss);
    // Lambda search and the refit rebind the pool to new problems (train, then train+val).
    const val = clusters(12, 1500, d, k, 0.4);
    const input = { train: { X, n, y }, val: { X: val.X, n: 1500, y: val.y }, d, k, lambdas: [1e-2, 1e-3] };
    const a = selectLambdaAndFit(input);
    const b = selectLambdaAndFit({ ...input, runner: pool.bind });
    t.is(b.lambda, a.lambda);
    t.deepEqual(b.model.W, a.model.W);
    t.deepEqual(b.validation, a.validation);
  } finally {
    await pool.close();
  }
});

test.serial('fitInThread gives the same model as a fit on this thread, with its own helper threads', async (t) => {
  const n = 6000;
  const d = 24;
  const k = 4;
  const train = clusters(21, n, d, k, 0.4);
  const val = clusters(22, 1500, d, k, 0.4);
  const input = {
    train: { X: train.X, n, y: train.y },
    val: { X: val.X, n: 1500, y: val.y },
    d,
    k,
    lambdas: [1e-2, 1e-3],
  };
  const here = selectLambdaAndFit(input);
  const pool = await ObjectivePool.create(1);
  try {
    const there = await fitInThread(
      { ...input, train: { ...input.train, X: train.X.slice() }, val: { ...input.val, X: val.X.slice() } },
      { pool },
    );
    t.is(there.lambda, here.lambda);
    t.deepEqual(Array.from(there.model.W), Array.from(here.model.W));
    t.true(pool.evaluations > 0, 'the fit used the helper thread');
  } finally {
    await pool.close();
  }
});

/** A fit that takes many seconds on any machine: thousands of rows, hundreds of features, many classes. */
function slowFitInput() {
  const n = 40_000;
  const d = 200;
  const k = 10;
  const { X, y } = clusters(31, n, d, k, 0.05);
  const val = clusters(32, 2000, d, k, 0.05);
  return {
    train: { X, n, y },
    val: { X: val.X, n: 2000, y: val.y },
    d,
    k,
    lambdas: [1e-1, 1e-2, 1e-3, 1e-4],
    maxIterations: 1000,
  };
}

test.serial('a helper thread dying mid-fit fails the fit at once with a retryable error', async (t) => {
  t.timeout(120_000);
  const pool = await ObjectivePool.create(1);
  try {
    const t0 = Date.now();
    const fit = fitInThread(slowFitInput(), { pool });
    fit.catch(() => undefined);
    // Mid-fit: the fit thread has bound the pool and evaluations are under way.
    while (pool.evaluations < 3) await new Promise((r) => setTimeout(r, 20));
    pool.helpers[0]!.kill('killed by the test'); // as a crash or running out of memory would end it
    const err = await t.throwsAsync(fit, { instanceOf: InternalError });
    t.log(`the fit failed ${Date.now() - t0} ms after it started: ${err!.message}`);
    t.false(err!.permanent, 'retried by BullMQ, not a failed run');
    t.regex(err!.message, /the fit lost a helper thread: objective pool thread 1 ended \(killed by the test\)$/);
  } finally {
    await pool.close();
  }
});

test.serial('a fit with no answer within its timeout is ended with a retryable error naming the setting', async (t) => {
  t.timeout(120_000);
  const err = await t.throwsAsync(
    fitInThread(slowFitInput(), { timeoutMs: 300, timeoutSetting: 'DEEPFEAT_FIT_TIMEOUT' }),
    { instanceOf: InternalError },
  );
  t.false(err!.permanent);
  t.regex(
    err!.message,
    /^fit thread ended: no answer to the fit \(40000 \+ 2000 rows × 200 features, 10 classes\) within 0\.3 s \(DEEPFEAT_FIT_TIMEOUT\)$/,
  );
});
