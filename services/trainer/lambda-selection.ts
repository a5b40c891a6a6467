/**
 * Choice of the L2 strength: candidates fitted on the train split and scored on the validation
 * split; the winner is refitted on both.
 */
import { InternalError } from '../../shared/errors.js';
import type { RunnerFactory } from './logistic-objective.js';
import { argmaxRows, fitLogisticRegression, predictProbaMatrix, type SoftmaxParams } from './logreg.js';

/** Default regularisation grid searched by selectLambdaAndFit. */
export const DEFAULT_LAMBDAS: readonly number[] = [1e-4, 1e-3, 1e-2, 1e-1, 1];
/** Lambda used (or the nearest grid value to it) when there is no validation data. */
export const DEFAULT_LAMBDA = 1e-2;
/** Probabilities are clipped here in the validation log-loss so one sure mistake stays finite. */
const LOG_LOSS_EPS = 1e-15;

/** A standardised n×d matrix with its labels. */
export interface LabelledMatrix {
  X: Float32Array;
  n: number;
  y: Int32Array;
}

/** Validation score of one candidate lambda (fitted on train only). */
export interface LambdaScore {
  lambda: number;
  accuracy: number;
  logLoss: number;
  iterations: number;
  converged: boolean;
}

/** Input of selectLambdaAndFit; both matrices must be standardised the same way. */
export interface SelectInput {
  train: LabelledMatrix;
  val: LabelledMatrix;
  d: number;
  k: number;
  /** Candidate lambdas; default DEFAULT_LAMBDAS. */
  lambdas?: readonly number[];
  maxIterations?: number;
  /** Spreads each fit's objective over threads (see ObjectivePool); results are identical. */
  runner?: RunnerFactory;
}

/** The chosen lambda, the final model refitted on train+val, and the search trace. */
export interface SelectResult {
  lambda: number;
  model: SoftmaxParams;
  /** One entry per candidate, in fitting order (descending lambda); empty without validation data. */
  validation: LambdaScore[];
  /** Diagnostics of the final train+val fit. */
  loss: number;
  iterations: number;
  converged: boolean;
}

function scoreOn(
  model: SoftmaxParams,
  data: LabelledMatrix,
  d: number,
  k: number,
): { accuracy: number; logLoss: number } {
  const P = predictProbaMatrix(model, data.X, data.n, d);
  const pred = argmaxRows(P, data.n, k);
  let correct = 0;
  let logLoss = 0;
  for (let i = 0; i < data.n; i++) {
    if (pred[i] === data.y[i]) correct++;
    logLoss -= Math.log(Math.max(P[i * k + data.y[i]], LOG_LOSS_EPS));
  }
  return { accuracy: correct / data.n, logLoss: logLoss / data.n };
}

/**
 * Chooses the L2 strength on a validation split, then refits on train+val.
 *
 * Candidates are fitted on train in descending-lambda order, each warm-started from the
 * previous solution (the regularisation path is smooth, so this saves iterations; the
 * order is fixed, so it stays deterministic). The winner has the best validation
 * accuracy; ties go to the lower validation log-loss, then to the larger lambda (the
 * simpler model). The final model is refitted on train+val with that lambda, warm-started
 * from its train-only fit.
 *
 * With an empty validation set nothing can be compared: the candidate nearest to
 * DEFAULT_LAMBDA (1e-2) on a log scale is used (1e-2 itself for the default grid) and
 * `validation` is empty.
 */
export function selectLambdaAndFit(input: SelectInput): SelectResult {
  const { train, val, d, k } = input;
  const grid = [...(input.lambdas ?? DEFAULT_LAMBDAS)];
  if (grid.length === 0) throw new InternalError('lambda selection: the lambda grid is empty');
  for (const l of grid) {
    if (!Number.isFinite(l) || l < 0)
      throw new InternalError(`lambda selection: lambda ${l} is not a finite number >= 0`);
  }
  if (val.X.length !== val.n * d || val.y.length !== val.n) {
    throw new InternalError(
      `lambda selection: validation set has ${val.X.length} values and ${val.y.length} labels, expected ${val.n}*${d} and ${val.n}`,
    );
  }
  const descending = [...new Set(grid)].sort((a, b) => b - a);
  const maxIterations = input.maxIterations;

  let chosen: number;
  let init: SoftmaxParams | undefined;
  const validation: LambdaScore[] = [];
  if (val.n === 0) {
    const distance = (l: number): number => Math.abs(Math.log(l) - Math.log(DEFAULT_LAMBDA));
    // Descending order + strict '<' means a tie in distance goes to the larger lambda.
    chosen = descending.reduce((best, l) => (distance(l) < distance(best) ? l : best));
  } else {
    let best: { score: LambdaScore; model: SoftmaxParams } | undefined;
    for (const lambda of descending) {
      const fit = fitLogisticRegression({
        X: train.X,
        n: train.n,
        d,
        y: train.y,
        k,
        lambda,
        maxIterations,
        init,
        runner: input.runner,
      });
      init = { W: fit.W, b: fit.b };
      const { accuracy, logLoss } = scoreOn(init, val, d, k);
      const score: LambdaScore = { lambda, accuracy, logLoss, iterations: fit.iterations, converged: fit.converged };
      validation.push(score);
      const better =
        best === undefined ||
        accuracy > best.score.accuracy ||
        (accuracy === best.score.accuracy && logLoss < best.score.logLoss) ||
        (accuracy === best.score.accuracy && logLoss === best.score.logLoss && lambda > best.score.lambda);
      if (better) best = { score, model: init };
    }
    // best is set: the grid is non-empty.
    const winner = best as { score: LambdaScore; model: SoftmaxParams };
    chosen = winner.score.lambda;
    init = winner.model;
  }

  const n = train.n + val.n;
  // Train rows directly followed by val rows in one buffer (as the trainer reads them) are
  // refitted in place; otherwise they are copied together.
  const adjacent = train.X.buffer === val.X.buffer && train.X.byteOffset + train.X.byteLength === val.X.byteOffset;
  const X = adjacent ? new Float32Array(train.X.buffer, train.X.byteOffset, n * d) : new Float32Array(n * d);
  if (!adjacent) {
    X.set(train.X, 0);
    X.set(val.X, train.n * d);
  }
  const y = new Int32Array(n);
  y.set(train.y, 0);
  y.set(val.y, train.n);
  const final = fitLogisticRegression({ X, n, d, y, k, lambda: chosen, maxIterations, init, runner: input.runner });
  return {
    lambda: chosen,
    model: { W: final.W, b: final.b },
    validation,
    loss: final.loss,
    iterations: final.iterations,
    converged: final.converged,
  };
}
