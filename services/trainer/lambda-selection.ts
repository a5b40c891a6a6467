/**
 * Choice of the L2 strength: candidates fitted on the train split and scored on the validation
 * split; the winner is refitted on both.
 */
import { InternalError } from '../../shared/errors.js';
import { mulberry32 } from '../../shared/random.js';
import type { RunnerFactory } from './logistic-objective.js';
import { argmaxRows, fitLogisticRegression, predictProbaMatrix, type SoftmaxParams } from './logreg.js';

/** Default regularisation grid searched by selectLambdaAndFit. */
export const DEFAULT_LAMBDAS: readonly number[] = [1e-4, 1e-3, 1e-2, 1e-1, 1];
/** Lambda used (or the nearest grid value to it) when there is no validation data. */
export const DEFAULT_LAMBDA = 1e-2;
/**
 * Convergence of the candidate fits, which are only scored: 10× looser than the final fit's
 * (FIT_GRADIENT_TOLERANCE), which is refitted from the winner at full precision. Measured on
 * 1,024 demo images (718 train, 102 val, 816-d): the same validation scores and the same choice
 * for every candidate, 214 instead of 326 iterations, the whole selection 277 ms instead of
 * 454 ms; at 1e-3 the scores moved and the choice changed, so 1e-4 it is.
 */
export const CANDIDATE_GRADIENT_TOLERANCE = 1e-4;
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
  /**
   * For selectLambda (the trainer's entry): 'auto' = k-fold cross-validation on train+val for
   * small data, else the validation split; 'validation' (default) = the validation split only.
   */
  selection?: 'auto' | 'validation';
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
        gradientTolerance: CANDIDATE_GRADIENT_TOLERANCE,
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
  const { X, y } = joinTrainVal(train, val, d);
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

/** How candidate lambdas are compared on held-out rows. */
export type SelectionCriterion = 'accuracy' | 'logLoss';

/** Input of selectLambdaByKFold: every labelled row (train and val together), standardised. */
export interface KFoldInput {
  data: LabelledMatrix;
  d: number;
  k: number;
  /** Folds; default 5. Clamped to the smallest class's count (at least 2). */
  folds?: number;
  /** Seed of the stratified fold assignment (deterministic). */
  seed: number;
  lambdas?: readonly number[];
  /** Best mean held-out accuracy (ties: lower log loss, then larger lambda), or lowest mean log loss. */
  criterion?: SelectionCriterion;
  maxIterations?: number;
  runner?: RunnerFactory;
}

/**
 * Chooses the L2 strength by stratified k-fold cross-validation over all of `data`, then fits on
 * all of it. Why: one validation split of a few hundred images is noisy — its accuracy moves in
 * steps of 1/n_val and one lucky split picks the wrong lambda — while k folds score every row
 * once, averaging k estimates. Candidates go in descending order per fold, warm-started along the
 * path like selectLambdaAndFit. `validation` holds the mean scores over folds.
 */
export function selectLambdaByKFold(input: KFoldInput): SelectResult {
  const { data, d, k } = input;
  const grid = [...new Set(input.lambdas ?? DEFAULT_LAMBDAS)].sort((a, b) => b - a);
  if (grid.length === 0) throw new InternalError('lambda selection: the lambda grid is empty');
  const criterion = input.criterion ?? 'accuracy';
  const fold = stratifiedFolds(data.y, k, input.folds ?? 5, input.seed);
  const folds = Math.max(...fold) + 1;
  const sums = grid.map((lambda) => ({ lambda, accuracy: 0, logLoss: 0, iterations: 0, converged: true }));
  for (let f = 0; f < folds; f++) {
    const fitRows: number[] = [];
    const heldRows: number[] = [];
    fold.forEach((g, i) => {
      (g === f ? heldRows : fitRows).push(i);
    });
    const fit = takeRows(data, fitRows, d);
    const held = takeRows(data, heldRows, d);
    let init: SoftmaxParams | undefined;
    grid.forEach((lambda, g) => {
      const r = fitLogisticRegression({
        ...fit,
        d,
        k,
        lambda,
        maxIterations: input.maxIterations,
        init,
        runner: input.runner,
        gradientTolerance: CANDIDATE_GRADIENT_TOLERANCE,
      });
      init = { W: r.W, b: r.b };
      const s = scoreOn(init, held, d, k);
      sums[g]!.accuracy += s.accuracy / folds;
      sums[g]!.logLoss += s.logLoss / folds;
      sums[g]!.iterations += r.iterations;
      sums[g]!.converged &&= r.converged;
    });
  }
  // grid is descending, and strict comparisons keep the first (larger) lambda on a tie.
  const best = sums.reduce((a, b) => {
    if (criterion === 'logLoss') return b.logLoss < a.logLoss ? b : a;
    return b.accuracy > a.accuracy || (b.accuracy === a.accuracy && b.logLoss < a.logLoss) ? b : a;
  });
  const final = fitLogisticRegression({
    ...data,
    d,
    k,
    lambda: best.lambda,
    maxIterations: input.maxIterations,
    runner: input.runner,
  });
  return {
    lambda: best.lambda,
    model: { W: final.W, b: final.b },
    validation: sums,
    loss: final.loss,
    iterations: final.iterations,
    converged: final.converged,
  };
}

/**
 * Fold of each row, 0..folds-1: within each class, rows are shuffled (seeded) and dealt round
 * robin, so every fold holds each class in proportion. `folds` is clamped to [2, smallest class].
 */
export function stratifiedFolds(y: Int32Array, k: number, folds: number, seed: number): Int32Array {
  const byClass = Array.from({ length: k }, () => [] as number[]);
  y.forEach((c, i) => {
    byClass[c]!.push(i);
  });
  const smallest = Math.min(...byClass.filter((rows) => rows.length > 0).map((rows) => rows.length));
  const f = Math.max(2, Math.min(folds, smallest));
  const out = new Int32Array(y.length);
  const rand = mulberry32(seed);
  for (const rows of byClass) {
    for (let i = rows.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [rows[i], rows[j]] = [rows[j]!, rows[i]!];
    }
    rows.forEach((row, idx) => {
      out[row] = idx % f;
    });
  }
  return out;
}

/**
 * The rows `rows` of m, copied into shared memory: an ObjectivePool binds shared arrays as they
 * are, so the fold's fits along the lambda path do not each copy them again.
 */
function takeRows(m: LabelledMatrix, rows: readonly number[], d: number): LabelledMatrix {
  const X = new Float32Array(new SharedArrayBuffer(rows.length * d * 4));
  const y = new Int32Array(new SharedArrayBuffer(rows.length * 4));
  rows.forEach((r, i) => {
    X.set(m.X.subarray(r * d, (r + 1) * d), i * d);
    y[i] = m.y[r]!;
  });
  return { X, n: rows.length, y };
}

/**
 * Most train+val rows for which the trainer chooses L2 by k-fold cross-validation; above, one
 * validation split. Why: k folds cost about k times the fits, and their benefit is for small
 * data, where a validation split of a few hundred rows is noisy (bench/accuracy.ts measured it);
 * at 20,000 rows the validation split (10% of the images by default) already holds thousands.
 */
export const KFOLD_MAX_ROWS = 20_000;
/** Folds of the k-fold selection. */
export const KFOLD_FOLDS = 5;
/** Seed of the fold assignment: fixed, so a fit is reproducible whatever the run's split seed. */
export const KFOLD_SEED = 1;

/**
 * The trainer's L2 selection. With `selection: 'auto'`: k-fold cross-validation over train+val
 * when there are at most KFOLD_MAX_ROWS of them and a validation split exists (a run asked for
 * one); otherwise, and by default, selectLambdaAndFit on the validation split. Either way the
 * final model is fitted on train+val.
 */
export function selectLambda(input: SelectInput): SelectResult {
  const { train, val, d } = input;
  const n = train.n + val.n;
  if (input.selection !== 'auto' || val.n === 0 || n > KFOLD_MAX_ROWS) return selectLambdaAndFit(input);
  const { X, y } = joinTrainVal(train, val, d);
  return selectLambdaByKFold({
    data: { X, n, y },
    d,
    k: input.k,
    folds: KFOLD_FOLDS,
    seed: KFOLD_SEED,
    lambdas: input.lambdas,
    maxIterations: input.maxIterations,
    runner: input.runner,
  });
}

/**
 * Train rows then val rows as one matrix and label vector. Rows directly followed by val rows in
 * one buffer (as the trainer reads them) are used in place; otherwise they are copied together.
 */
function joinTrainVal(
  train: SelectInput['train'],
  val: SelectInput['val'],
  d: number,
): { X: Float32Array; y: Int32Array } {
  const n = train.n + val.n;
  const adjacent = train.X.buffer === val.X.buffer && train.X.byteOffset + train.X.byteLength === val.X.byteOffset;
  const X = adjacent ? new Float32Array(train.X.buffer, train.X.byteOffset, n * d) : new Float32Array(n * d);
  if (!adjacent) {
    X.set(train.X, 0);
    X.set(val.X, train.n * d);
  }
  const y = new Int32Array(n);
  y.set(train.y, 0);
  y.set(val.y, train.n);
  return { X, y };
}
