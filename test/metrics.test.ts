import test from 'ava';
import { classificationReport } from '../services/evaluator/metrics.js';
import { BadRequestError } from '../shared/errors.js';

const close = (a: number, b: number): boolean => Math.abs(a - b) < 1e-12;

test('hand-computed 4-class example, including a class with no support and no predictions', (t) => {
  const yTrue = new Int32Array([0, 0, 0, 1, 1, 2, 2, 2]);
  const yPred = new Int32Array([0, 1, 0, 1, 0, 2, 2, 1]);
  const r = classificationReport(yTrue, yPred, ['a', 'b', 'c', 'd']);
  t.is(r.n, 8);
  t.deepEqual(r.confusion, [
    [2, 1, 0, 0],
    [1, 1, 0, 0],
    [0, 1, 2, 0],
    [0, 0, 0, 0],
  ]);
  t.true(close(r.accuracy, 5 / 8));
  // a: tp 2 of 3 predicted, 3 true. b: tp 1 of 3 predicted, 2 true. c: tp 2 of 2 predicted, 3 true.
  const expected = [
    { label: 'a', precision: 2 / 3, recall: 2 / 3, f1: 2 / 3, support: 3 },
    { label: 'b', precision: 1 / 3, recall: 1 / 2, f1: 2 / 5, support: 2 },
    { label: 'c', precision: 1, recall: 2 / 3, f1: 4 / 5, support: 3 },
    { label: 'd', precision: 0, recall: 0, f1: 0, support: 0 }, // 0/0 := 0
  ];
  r.perClass.forEach((m, c) => {
    const e = expected[c];
    t.is(m.label, e.label);
    t.is(m.support, e.support);
    t.true(close(m.precision, e.precision), `${e.label} precision ${m.precision}`);
    t.true(close(m.recall, e.recall), `${e.label} recall ${m.recall}`);
    t.true(close(m.f1, e.f1), `${e.label} f1 ${m.f1}`);
  });
  t.true(close(r.macroF1, 7 / 15), `macroF1 ${r.macroF1}`); // (2/3 + 2/5 + 4/5 + 0) / 4
});

test('class predicted but never true has precision 0 and recall 0/0 = 0', (t) => {
  const r = classificationReport(new Int32Array([0, 0]), new Int32Array([1, 0]), ['x', 'y']);
  t.deepEqual(r.perClass[1], { label: 'y', precision: 0, recall: 0, f1: 0, support: 0 });
  t.deepEqual(r.perClass[0], { label: 'x', precision: 1, recall: 0.5, f1: 2 / 3, support: 2 });
  t.is(r.accuracy, 0.5);
});

test('perfect predictions give 1 everywhere; empty input gives zeros', (t) => {
  const y = new Int32Array([0, 1, 2, 1]);
  const r = classificationReport(y, y, ['a', 'b', 'c']);
  t.is(r.accuracy, 1);
  t.is(r.macroF1, 1);
  const empty = classificationReport(new Int32Array(0), new Int32Array(0), ['a', 'b']);
  t.is(empty.accuracy, 0);
  t.is(empty.macroF1, 0);
  t.deepEqual(empty.confusion, [
    [0, 0],
    [0, 0],
  ]);
});

test('rejects mismatched lengths and out-of-range labels', (t) => {
  t.throws(() => classificationReport(new Int32Array(2), new Int32Array(3), ['a', 'b']), {
    instanceOf: BadRequestError,
    message: /yTrue has 2 labels but yPred has 3/,
  });
  t.throws(() => classificationReport(new Int32Array([0, 2]), new Int32Array([0, 1]), ['a', 'b']), {
    message: /yTrue\[1\]=2/,
  });
  t.throws(() => classificationReport(new Int32Array([0]), new Int32Array([-1]), ['a', 'b']), {
    message: /yPred\[0\]=-1/,
  });
});
