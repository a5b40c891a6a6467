/**
 * Classification metrics for the evaluator: accuracy, per-class precision/recall/F1,
 * macro-F1 and the confusion matrix.
 *
 * Convention: every 0/0 ratio is defined as 0 (as scikit-learn's zero_division=0).
 * So a class never predicted has precision 0, a class absent from yTrue has recall 0,
 * F1 is 0 when precision + recall = 0, and accuracy of an empty set is 0. Macro-F1
 * averages F1 over all `classes`, including ones with zero support.
 */
import { BadRequestError } from '../../shared/errors.js';

/** Precision/recall/F1 of one class; support is its count in yTrue. */
export interface ClassMetrics {
  label: string;
  precision: number;
  recall: number;
  f1: number;
  support: number;
}

/** Full report; confusion[t][p] counts samples of true class t predicted as p. */
export interface ClassificationReport {
  accuracy: number;
  macroF1: number;
  perClass: ClassMetrics[];
  confusion: number[][];
  n: number;
}

const ratio = (num: number, den: number): number => (den === 0 ? 0 : num / den);

/**
 * Computes the report for class indices in [0, classes.length).
 * Throws BadRequestError if the arrays differ in length or hold an out-of-range index.
 */
export function classificationReport(
  yTrue: Int32Array,
  yPred: Int32Array,
  classes: readonly string[],
): ClassificationReport {
  const n = yTrue.length;
  const k = classes.length;
  if (yPred.length !== n) throw new BadRequestError(`metrics: yTrue has ${n} labels but yPred has ${yPred.length}`);
  if (k === 0) throw new BadRequestError('metrics: no classes given');

  const confusion = Array.from({ length: k }, () => new Array<number>(k).fill(0));
  let correct = 0;
  for (let i = 0; i < n; i++) {
    const t = yTrue[i];
    const p = yPred[i];
    if (t < 0 || t >= k) throw new BadRequestError(`metrics: yTrue[${i}]=${t} is outside [0, ${k})`);
    if (p < 0 || p >= k) throw new BadRequestError(`metrics: yPred[${i}]=${p} is outside [0, ${k})`);
    confusion[t][p]++;
    if (t === p) correct++;
  }

  const perClass: ClassMetrics[] = [];
  let f1Sum = 0;
  for (let c = 0; c < k; c++) {
    const tp = confusion[c][c];
    let support = 0;
    let predicted = 0;
    for (let j = 0; j < k; j++) {
      support += confusion[c][j];
      predicted += confusion[j][c];
    }
    const precision = ratio(tp, predicted);
    const recall = ratio(tp, support);
    const f1 = ratio(2 * precision * recall, precision + recall);
    f1Sum += f1;
    perClass.push({ label: classes[c], precision, recall, f1, support });
  }
  return { accuracy: ratio(correct, n), macroF1: f1Sum / k, perClass, confusion, n };
}
