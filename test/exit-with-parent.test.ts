/**
 * DEEPFEAT_EXIT_WITH_PARENT's value (cli/local-pipeline.ts parentToWatch): only a plain decimal
 * process id is watched; a value that only looks like a number must not make a worker stop itself.
 */
import test from 'ava';
import { parentToWatch } from '../cli/local-pipeline.js';

test('a plain decimal process id is watched', (t) => {
  t.is(parentToWatch('1'), 1);
  t.is(parentToWatch('4242'), 4242);
  t.is(parentToWatch(String(2 ** 22)), 2 ** 22);
});

test('anything else is ignored: unset, empty, signs, exponents, hex, fractions, spaces, past the largest pid', (t) => {
  for (const v of [
    undefined,
    '',
    '0',
    '-1',
    '+5',
    '1e3',
    '0x10',
    '1.5',
    ' 12',
    '12 ',
    '012',
    'abc',
    '99999999999999999999',
    String(2 ** 22 + 1),
  ]) {
    t.is(parentToWatch(v), undefined, JSON.stringify(v));
  }
});
