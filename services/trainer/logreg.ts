/**
 * Multinomial (softmax) logistic regression as an estimator: `fitLogisticRegression` finds W and
 * b by L-BFGS on the objective of logistic-objective.ts; the `predict*` functions apply them.
 * Zero initial parameters and a deterministic objective make a fit bit-for-bit reproducible.
 */
import { InternalError } from '../../shared/errors.js';
import { minimizeLbfgs } from './lbfgs.js';
import {
  computeLogits,
  createLogisticObjective,
  type LogisticProblem,
  type RunnerFactory,
} from './logistic-objective.js';

/** Fitted linear softmax parameters. W is k×d row-major. */
export interface SoftmaxParams {
  W: Float64Array;
  b: Float64Array;
}

/** Input of fitLogisticRegression: the problem (X already standardised) and how to solve it. */
export interface FitInput extends LogisticProblem {
  /** L-BFGS iteration cap; default 300. */
  maxIterations?: number;
  /** Warm start; default all zeros (deterministic). */
  init?: SoftmaxParams;
  /** Runs the objective's row chunks on several threads (same result as without). */
  runner?: RunnerFactory;
  /** Converged when max |gradient| <= this; default FIT_GRADIENT_TOLERANCE. */
  gradientTolerance?: number;
}

/** Gradient of a mean loss is O(1); 1e-5 max-abs is tighter than predictions need. */
export const FIT_GRADIENT_TOLERANCE = 1e-5;

/** A fitted model with optimiser diagnostics. `loss` is the penalised objective. */
export interface FitResult extends SoftmaxParams {
  loss: number;
  iterations: number;
  converged: boolean;
  /** Optimiser stop reason (see LbfgsResult.reason). */
  reason: string;
}

/** Fits multinomial logistic regression by L-BFGS. */
export function fitLogisticRegression(input: FitInput): FitResult {
  const { X, n, d, y, k, lambda } = input;
  const fg = createLogisticObjective({ X, n, d, y, k, lambda }, input.runner);
  const kd = k * d;
  const theta0 = new Float64Array(kd + k);
  if (input.init) {
    if (input.init.W.length !== kd || input.init.b.length !== k) {
      throw new InternalError(
        `logistic regression: init has W of ${input.init.W.length} and b of ${input.init.b.length} values, expected ${kd} and ${k}`,
      );
    }
    theta0.set(input.init.W, 0);
    theta0.set(input.init.b, kd);
  }
  const result = minimizeLbfgs(fg, theta0, {
    maxIterations: input.maxIterations ?? 300,
    gradientTolerance: input.gradientTolerance ?? FIT_GRADIENT_TOLERANCE,
    functionTolerance: 1e-10,
  });
  return {
    W: result.x.slice(0, kd),
    b: result.x.slice(kd),
    loss: result.f,
    iterations: result.iterations,
    converged: result.converged,
    reason: result.reason,
  };
}

/** Class probabilities for each row of a standardised n×d matrix; returns n×k row-major. */
export function predictProbaMatrix(model: SoftmaxParams, X: Float32Array, n: number, d: number): Float64Array {
  const k = model.b.length;
  if (model.W.length !== k * d)
    throw new InternalError(`predict: model has ${model.W.length / k} features, data has ${d}`);
  if (X.length !== n * d) throw new InternalError(`predict: X has ${X.length} values, expected ${n}*${d}`);
  const theta = new Float64Array(k * d + k);
  theta.set(model.W, 0);
  theta.set(model.b, k * d);
  const P = new Float64Array(n * k);
  computeLogits(X, n, d, theta, k, P);
  for (let i = 0; i < n; i++) {
    const po = i * k;
    let zMax = -Infinity;
    for (let c = 0; c < k; c++) if (P[po + c] > zMax) zMax = P[po + c];
    let sum = 0;
    for (let c = 0; c < k; c++) {
      const e = Math.exp(P[po + c] - zMax);
      P[po + c] = e;
      sum += e;
    }
    for (let c = 0; c < k; c++) P[po + c] /= sum;
  }
  return P;
}

/** Arg-max of each row of an n×k probability matrix (ties go to the lowest index). */
export function argmaxRows(P: Float64Array, n: number, k: number): Int32Array {
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < k; c++) if (P[i * k + c] > P[i * k + best]) best = c;
    labels[i] = best;
  }
  return labels;
}

/** Predicted class index for each row of a standardised n×d matrix. */
export function predictLabels(model: SoftmaxParams, X: Float32Array, n: number, d: number): Int32Array {
  return argmaxRows(predictProbaMatrix(model, X, n, d), n, model.b.length);
}
