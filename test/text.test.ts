/** shared/text.ts: user text made safe for a terminal without changing what it says. */
import test from 'ava';
import { terminalSafe, terminalSafeJson } from '../shared/text.js';

test('terminalSafeJson: the same JSON value, with no control character a terminal would obey', (t) => {
  const value = { key: 'a\u009b2Jb\u202ec\u001b[31md\u2028e\u007f', n: [1, 2] };
  for (const space of [undefined, 2]) {
    const out = terminalSafeJson(value, space);
    t.deepEqual(JSON.parse(out), value);
    t.false(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e\u2028]/.test(out), out);
  }
  // Pretty-printed output keeps its own line breaks (it must stay valid JSON).
  t.is(terminalSafeJson({ a: 1 }, 2), '{\n  "a": 1\n}');
});

test('terminalSafe: every control character becomes a visible escape', (t) => {
  t.is(terminalSafe('x\u001b[2Jy\nz\u202e'), 'x\\x1b[2Jy\\x0az\\u202e');
});
