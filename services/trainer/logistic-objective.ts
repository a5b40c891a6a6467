/**
 * The objective of multinomial (softmax) logistic regression with L2 penalty, and its gradient,
 * as the optimiser (lbfgs.ts, through logreg.ts) and the objective threads (objective-pool.ts)
 * evaluate it.
 *
 * Objective: (1/n) * sum_i -log softmax(W x_i + b)[y_i] + (lambda/2) * ||W||^2
 * (the bias is not penalised). W is k×d row-major, b has length k. Parameters are
 * packed as theta = [W (k*d values), b (k values)] for the optimiser.
 *
 * Float64 arithmetic in a fixed order (rows in fixed chunks summed in chunk order) with zero
 * initial parameters, so a fit is bit-for-bit reproducible, on one thread or several.
 */
import { InternalError } from '../../shared/errors.js';

/** A training problem: X is n×d row-major (standardised), labels y in [0, k). */
export interface LogisticProblem {
  X: Float32Array;
  n: number;
  d: number;
  y: Int32Array;
  k: number;
  lambda: number;
}

/**
 * Invariants, not input checks: user data is checked before it gets here (labels come from the
 * plan, lambdas from the run request schema, non-finite features are refused by the train job
 * with a ModelError), so a failure here is a bug: InternalError, never "bad request".
 */
function checkProblem(p: LogisticProblem): void {
  const { X, n, d, y, k, lambda } = p;
  if (!Number.isInteger(n) || n < 1)
    throw new InternalError(`logistic regression: need at least one sample, got n=${n}`);
  if (!Number.isInteger(d) || d < 1)
    throw new InternalError(`logistic regression: feature dimension must be >= 1, got d=${d}`);
  if (!Number.isInteger(k) || k < 2)
    throw new InternalError(`logistic regression: need at least 2 classes, got k=${k}`);
  if (X.length !== n * d)
    throw new InternalError(`logistic regression: X has ${X.length} values, expected n*d = ${n}*${d} = ${n * d}`);
  if (y.length !== n) throw new InternalError(`logistic regression: y has ${y.length} labels, expected n = ${n}`);
  if (!(lambda >= 0) || !Number.isFinite(lambda))
    throw new InternalError(`logistic regression: lambda must be a finite number >= 0, got ${lambda}`);
  for (let i = 0; i < n; i++) {
    if (y[i] < 0 || y[i] >= k)
      throw new InternalError(`logistic regression: label y[${i}]=${y[i]} is outside [0, ${k})`);
  }
  // One NaN/Infinity would silently poison every gradient; name it instead (O(nd), cheap next to a fit).
  for (let i = 0; i < X.length; i++) {
    if (!Number.isFinite(X[i])) {
      throw new InternalError(`logistic regression: feature X[${Math.floor(i / d)}][${i % d}] is not finite (${X[i]})`);
    }
  }
}

/**
 * Z[i*k + c] = bias[c] + X_i · W_c for every sample i and class c (W, bias inside theta).
 *
 * Register-blocked over 4 samples × 2 classes: each loaded X value feeds two products
 * and each W value four, which is ~2.5x faster in V8 than one dot product at a time
 * (loads, bounds checks and float32→float64 conversion dominate, not the multiplies).
 * The summation order is fixed, so results are deterministic.
 */
export function computeLogits(
  X: Float32Array,
  n: number,
  d: number,
  theta: Float64Array,
  k: number,
  Z: Float64Array,
): void {
  const kd = k * d;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o0 = i * d,
      o1 = o0 + d,
      o2 = o1 + d,
      o3 = o2 + d;
    const z0 = i * k,
      z1 = z0 + k,
      z2 = z1 + k,
      z3 = z2 + k;
    let c = 0;
    for (; c + 2 <= k; c += 2) {
      const u0 = c * d,
        v0 = u0 + d;
      let a0 = 0,
        a1 = 0,
        a2 = 0,
        a3 = 0,
        b0 = 0,
        b1 = 0,
        b2 = 0,
        b3 = 0;
      for (let j = 0; j < d; j++) {
        const u = theta[u0 + j],
          v = theta[v0 + j];
        const x0 = X[o0 + j],
          x1 = X[o1 + j],
          x2 = X[o2 + j],
          x3 = X[o3 + j];
        a0 += x0 * u;
        a1 += x1 * u;
        a2 += x2 * u;
        a3 += x3 * u;
        b0 += x0 * v;
        b1 += x1 * v;
        b2 += x2 * v;
        b3 += x3 * v;
      }
      const bu = theta[kd + c],
        bv = theta[kd + c + 1];
      Z[z0 + c] = a0 + bu;
      Z[z1 + c] = a1 + bu;
      Z[z2 + c] = a2 + bu;
      Z[z3 + c] = a3 + bu;
      Z[z0 + c + 1] = b0 + bv;
      Z[z1 + c + 1] = b1 + bv;
      Z[z2 + c + 1] = b2 + bv;
      Z[z3 + c + 1] = b3 + bv;
    }
    if (c < k) {
      const u0 = c * d;
      let a0 = 0,
        a1 = 0,
        a2 = 0,
        a3 = 0;
      for (let j = 0; j < d; j++) {
        const u = theta[u0 + j];
        a0 += X[o0 + j] * u;
        a1 += X[o1 + j] * u;
        a2 += X[o2 + j] * u;
        a3 += X[o3 + j] * u;
      }
      const bu = theta[kd + c];
      Z[z0 + c] = a0 + bu;
      Z[z1 + c] = a1 + bu;
      Z[z2 + c] = a2 + bu;
      Z[z3 + c] = a3 + bu;
    }
  }
  for (; i < n; i++) {
    const o = i * d;
    for (let c = 0; c < k; c++) {
      const u0 = c * d;
      let a = 0;
      for (let j = 0; j < d; j++) a += X[o + j] * theta[u0 + j];
      Z[i * k + c] = a + theta[kd + c];
    }
  }
}

/**
 * G[c*d + j] += sum_i R[i*k + c] * X[i*d + j], i.e. G += Rᵀ X, blocked like computeLogits
 * so each gradient row is read and written once per 4 samples instead of once per sample.
 */
function accumulateGradient(X: Float32Array, n: number, d: number, R: Float64Array, k: number, G: Float64Array): void {
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const o0 = i * d,
      o1 = o0 + d,
      o2 = o1 + d,
      o3 = o2 + d;
    const z0 = i * k,
      z1 = z0 + k,
      z2 = z1 + k,
      z3 = z2 + k;
    let c = 0;
    for (; c + 2 <= k; c += 2) {
      const u0 = c * d,
        v0 = u0 + d;
      const r0 = R[z0 + c],
        r1 = R[z1 + c],
        r2 = R[z2 + c],
        r3 = R[z3 + c];
      const q0 = R[z0 + c + 1],
        q1 = R[z1 + c + 1],
        q2 = R[z2 + c + 1],
        q3 = R[z3 + c + 1];
      for (let j = 0; j < d; j++) {
        const x0 = X[o0 + j],
          x1 = X[o1 + j],
          x2 = X[o2 + j],
          x3 = X[o3 + j];
        G[u0 + j] += r0 * x0 + r1 * x1 + r2 * x2 + r3 * x3;
        G[v0 + j] += q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3;
      }
    }
    if (c < k) {
      const u0 = c * d;
      const r0 = R[z0 + c],
        r1 = R[z1 + c],
        r2 = R[z2 + c],
        r3 = R[z3 + c];
      for (let j = 0; j < d; j++) G[u0 + j] += r0 * X[o0 + j] + r1 * X[o1 + j] + r2 * X[o2 + j] + r3 * X[o3 + j];
    }
  }
  for (; i < n; i++) {
    const o = i * d;
    for (let c = 0; c < k; c++) {
      const u0 = c * d;
      const r = R[i * k + c];
      for (let j = 0; j < d; j++) G[u0 + j] += r * X[o + j];
    }
  }
}

/**
 * Rows are cut into a fixed number of chunks that depends on n only (never on the machine):
 * each chunk's loss and gradient are computed separately and summed in chunk order, so a fit
 * gives the same bits whether the chunks run on one thread or on several (ObjectivePool).
 */
export function objectiveChunks(n: number): Array<[start: number, end: number]> {
  // 1, 2, 4 or 8 chunks of at least 256 rows: even shares for 2, 4 or 8 threads, and a chunk's
  // own cost (summing its k·d gradient) stays small next to its rows' work.
  let count = 1;
  while (count < 8 && n / (count * 2) >= 256) count *= 2;
  const per = Math.ceil(n / count);
  const out: Array<[number, number]> = [];
  for (let s = 0; s < n; s += per) out.push([s, Math.min(n, s + per)]);
  return out;
}

/**
 * One chunk of the objective: rows [start, end) of X. Writes the chunk's data-term gradient
 * (without the penalty) into G (length k*d + k, overwritten) and returns the chunk's summed
 * loss. Z is scratch of at least (end - start) * k values; invN is 1 / (all rows).
 */
export function objectiveChunk(
  X: Float32Array,
  y: Int32Array,
  start: number,
  end: number,
  d: number,
  k: number,
  theta: Float64Array,
  invN: number,
  Z: Float64Array,
  G: Float64Array,
): number {
  const kd = k * d;
  const m = end - start;
  const Xc = X.subarray(start * d, end * d);
  computeLogits(Xc, m, d, theta, k, Z);
  G.fill(0);
  let lossSum = 0;
  for (let i = 0; i < m; i++) {
    const zo = i * k;
    // Stable log-sum-exp: shift by the row max so exp never overflows.
    let zMax = -Infinity;
    for (let c = 0; c < k; c++) if (Z[zo + c] > zMax) zMax = Z[zo + c];
    const yi = y[start + i];
    // Use the shifted logit, not log(p_y): p_y can underflow to 0 for a confident mistake.
    const zy = Z[zo + yi] - zMax;
    let sumExp = 0;
    for (let c = 0; c < k; c++) {
      const e = Math.exp(Z[zo + c] - zMax);
      Z[zo + c] = e;
      sumExp += e;
    }
    lossSum += Math.log(sumExp) - zy;
    // Residual r_c = (p_c - [c = y_i]) / n overwrites the logits; db_c = sum_i r_c.
    const scale = invN / sumExp;
    for (let c = 0; c < k; c++) {
      const r = Z[zo + c] * scale - (c === yi ? invN : 0);
      Z[zo + c] = r;
      G[kd + c] += r;
    }
  }
  accumulateGradient(Xc, m, d, Z, k, G);
  return lossSum;
}

/**
 * Computes every chunk's partial results for one theta: `losses[c]` and the gradient in
 * `partials` at offset c * (k*d + k). An ObjectivePool runs them on several threads.
 */
export interface ChunkRunner {
  run(theta: Float64Array, losses: Float64Array, partials: Float64Array): void;
}

/** Makes a ChunkRunner for a problem (ObjectivePool.bind); see createLogisticObjective. */
export type RunnerFactory = (problem: LogisticProblem, chunks: Array<[number, number]>) => ChunkRunner;

/** The chunks one after the other, on the calling thread. */
function serialRunner(problem: LogisticProblem, chunks: Array<[number, number]>): ChunkRunner {
  const { X, y, n, d, k } = problem;
  const len = k * d + k;
  const Z = new Float64Array(Math.max(...chunks.map(([s, e]) => e - s)) * k);
  return {
    run(theta, losses, partials) {
      chunks.forEach(([s, e], c) => {
        losses[c] = objectiveChunk(X, y, s, e, d, k, theta, 1 / n, Z, partials.subarray(c * len, (c + 1) * len));
      });
    },
  };
}

/**
 * Builds the objective/gradient closure for L-BFGS over packed theta = [W, b].
 * Scratch is allocated once; calls do not allocate. `runner` (from ObjectivePool.bind) spreads
 * the chunks over threads; without it they run here. Both give identical results.
 */
export function createLogisticObjective(
  problem: LogisticProblem,
  runner?: RunnerFactory,
): (theta: Float64Array, grad: Float64Array) => number {
  checkProblem(problem);
  const { n, d, k, lambda } = problem;
  const kd = k * d;
  const len = kd + k;
  const chunks = objectiveChunks(n);
  const losses = new Float64Array(chunks.length);
  const partials = new Float64Array(chunks.length * len);
  const run = runner && chunks.length > 1 ? runner(problem, chunks) : serialRunner(problem, chunks);

  return (theta: Float64Array, grad: Float64Array): number => {
    run.run(theta, losses, partials);
    grad.set(partials.subarray(0, len));
    let lossSum = losses[0]!;
    for (let c = 1; c < chunks.length; c++) {
      lossSum += losses[c]!;
      const off = c * len;
      for (let j = 0; j < len; j++) grad[j] += partials[off + j]!;
    }
    let penalty = 0;
    for (let j = 0; j < kd; j++) {
      const w = theta[j];
      penalty += w * w;
      grad[j] += lambda * w;
    }
    return lossSum / n + 0.5 * lambda * penalty;
  };
}

/**
 * Objective value at theta = [W, b], writing its gradient into `grad`.
 * Convenience wrapper over createLogisticObjective (exported for gradient checks).
 */
export function logisticObjective(problem: LogisticProblem, theta: Float64Array, grad: Float64Array): number {
  return createLogisticObjective(problem)(theta, grad);
}
