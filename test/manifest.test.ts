/**
 * Manifests are untrusted input: each accepted form parses to the exact keys and labels, and each
 * problem is refused with the line it is on and a message of bounded size.
 */
import test from 'ava';
import { MAX_KEY_BYTES, labelsFromManifest, manifestFormat } from '../services/planner/manifest.js';
import { DatasetError } from '../shared/errors.js';
import { MAX_MESSAGE_CHARS } from '../shared/text.js';

const csv = (text: string) => labelsFromManifest(text, 'csv', 's3://b/m.csv', 'b');
const jsonl = (text: string) => labelsFromManifest(text, 'jsonl', 's3://b/m.jsonl', 'b');

function refused(t: import('ava').ExecutionContext, fn: () => unknown, message: RegExp): string {
  const err = t.throws(fn, { instanceOf: DatasetError });
  t.regex(err?.message ?? '', message);
  return err?.message ?? '';
}

test('manifestFormat: .csv, .jsonl and .ndjson in any case; anything else is a prefix', (t) => {
  t.is(manifestFormat('x/labels.csv'), 'csv');
  t.is(manifestFormat('x/labels.CSV'), 'csv');
  t.is(manifestFormat('labels.jsonl'), 'jsonl');
  t.is(manifestFormat('labels.NDJSON'), 'jsonl');
  t.is(manifestFormat('data/'), undefined);
  t.is(manifestFormat('labels.csv/'), undefined);
});

// ---------- CSV: what is accepted ----------

test('csv: quoted fields with commas and "" escapes; split optional and case-insensitive', (t) => {
  const text = [
    'key,label,split',
    '"imgs/a,b.jpg","big, cat",TRAIN',
    'imgs/c.jpg,"say ""hi""",',
    'imgs/d.jpg,dog,validation',
    '',
  ].join('\r\n');
  t.deepEqual(csv(text), [
    { key: 'imgs/a,b.jpg', label: 'big, cat', split: 'train' },
    { key: 'imgs/c.jpg', label: 'say "hi"' },
    { key: 'imgs/d.jpg', label: 'dog', split: 'val' },
  ]);
});

test('csv: header columns in any order and case, s3:// URLs in the same bucket and leading / become plain keys', (t) => {
  t.deepEqual(labelsFromManifest('Label , Key\ncat,s3://b/x/1.jpg\ndog,/x/2.jpg\n', 'csv', 'm', 'b'), [
    { key: 'x/1.jpg', label: 'cat' },
    { key: 'x/2.jpg', label: 'dog' },
  ]);
});

test('csv: a UTF-8 byte order mark before the header is not part of the first column name', (t) => {
  t.deepEqual(csv('\uFEFFkey,label\na.jpg,cat\n'), [{ key: 'a.jpg', label: 'cat' }]);
});

test('csv: CRLF line ends and blank lines; line numbers count every physical line', (t) => {
  t.deepEqual(csv('key,label\r\na.jpg,cat\r\n\r\n   \r\nb.jpg,dog\r\n'), [
    { key: 'a.jpg', label: 'cat' },
    { key: 'b.jpg', label: 'dog' },
  ]);
  refused(t, () => csv('key,label\r\na.jpg,cat\r\n\r\n\r\nb.jpg,\r\n'), /m\.csv line 5: missing label/);
});

test('csv: a quoted key is exact (spaces kept); unquoted values lose the spaces around them', (t) => {
  t.deepEqual(csv('key,label\n"  spaced key.jpg ",cat\n  plain.jpg  ,  dog  \n  " q.jpg" , "big cat" \n'), [
    { key: '  spaced key.jpg ', label: 'cat' },
    { key: 'plain.jpg', label: 'dog' },
    { key: ' q.jpg', label: 'big cat' },
  ]);
});

test('csv: a quoted value spanning lines is parsed, and later lines keep their true numbers', (t) => {
  const text = 'key,label\n"multi\nline.jpg","a\n\nlabel"\nb.jpg,dog\nc.jpg,\n';
  refused(t, () => csv(text), /m\.csv line 7: missing label/);
  t.deepEqual(csv('key,label\n"multi\nline.jpg","two\nlines"\nb.jpg,dog\n'), [
    { key: 'multi\nline.jpg', label: 'two\nlines' },
    { key: 'b.jpg', label: 'dog' },
  ]);
});

test('csv: other columns are ignored (a manifest may carry notes)', (t) => {
  t.deepEqual(csv('id,key,notes,label\n1,a.jpg,"from camera 2, blurry",cat\n'), [{ key: 'a.jpg', label: 'cat' }]);
});

test('csv: keys and labels with control characters are data, kept exactly', (t) => {
  const key = 'x/\u001b[31mred\u0007.jpg';
  const label = 'cat\u001b]0;owned\u0007';
  t.deepEqual(csv(`key,label\n"${key}","${label}"\n`), [{ key, label }]);
});

// ---------- CSV: what is refused ----------

test('csv: an extra value (an unquoted comma) is an error naming the line and the column count', (t) => {
  const m = refused(t, () => csv('key,label\na.jpg,cat\nb.jpg,big, cat\n'), /m\.csv line 3: 3 values, expected 2/);
  t.regex(m, /"key", "label"/);
  t.regex(m, /quote a value that contains a comma/);
  refused(t, () => csv('key,label,split\na.jpg,cat,train,extra\n'), /line 2: 4 values, expected 3/);
});

test('csv: a row with too few values is an error naming the line', (t) => {
  refused(t, () => csv('key,label,split\na.jpg,cat,train\nb.jpg\n'), /line 3: 1 value, expected 3/);
});

test('csv: a quoted value that is never closed names the line it starts on', (t) => {
  refused(
    t,
    () => csv('key,label\na.jpg,cat\n\nb.jpg,"dog\nc.jpg,cat\n'),
    /m\.csv line 4: a quoted value starting on this line is never closed/,
  );
});

test('csv: stray quotes are errors naming the line and how to quote', (t) => {
  refused(
    t,
    () => csv('key,label\na"b.jpg,cat\n'),
    /line 2: a double quote inside an unquoted value; quote the whole value/,
  );
  refused(t, () => csv('key,label\na.jpg,cat\n"b"c.jpg,cat\n'), /line 3: text right after a closing quote/);
});

test('csv: empty file and header-only file say so', (t) => {
  for (const text of ['', '\n\n', '\uFEFF', '  \r\n'])
    refused(t, () => csv(text), /manifest s3:\/\/b\/m\.csv is empty: expected a header line key,label/);
  for (const text of ['key,label', 'key,label\n', 'key,label,split\r\n\r\n']) {
    const m = refused(t, () => csv(text), /manifest s3:\/\/b\/m\.csv has a header but no rows/);
    t.notRegex(m, /folder/);
  }
});

test('csv: missing key or label column is an error naming the column and what was found', (t) => {
  refused(t, () => csv('key,class\na.jpg,cat\n'), /no "label" column \(found: "key", "class"\)/);
  refused(t, () => csv('path,label\na.jpg,cat\n'), /no "key" column/);
  refused(t, () => csv('key;label\na.jpg;cat\n'), /found: "key;label"; columns must be separated by commas/);
});

test('csv: a column named twice in the header is refused', (t) => {
  refused(t, () => csv('key,label,Label\na.jpg,cat,dog\n'), /the header names "label" twice \(columns 2 and 3\)/);
});

test('csv: unknown split is an error naming the line and the value', (t) => {
  refused(
    t,
    () => csv('key,label,split\na.jpg,cat,train\nb.jpg,dog,holdout\n'),
    /line 3: unknown split "holdout"; use train, val or test/,
  );
  // Names of Object.prototype members are not splits either.
  refused(t, () => csv('key,label,split\na.jpg,cat,constructor\n'), /line 2: unknown split "constructor"/);
});

test('csv: duplicate key (also via its s3:// form) names both lines', (t) => {
  refused(t, () => csv('key,label\na.jpg,cat\na.jpg,dog\n'), /line 3: duplicate key "a.jpg" \(first on line 2\)/);
  refused(t, () => csv('key,label\na.jpg,cat\ns3://b/a.jpg,dog\n'), /duplicate key/);
});

test('csv: a key in another bucket is an error naming both', (t) => {
  refused(
    t,
    () => labelsFromManifest('key,label\ns3://other/a.jpg,cat\n', 'csv', 'm', 'b'),
    /s3:\/\/other\/a\.jpg.*outside the bucket b/,
  );
});

test('csv: keys with .. or . segments, or naming no object, are errors', (t) => {
  for (const k of ['../secret.jpg', 'imgs/../../x.jpg', 's3://b/a/../b.jpg', './a.jpg']) {
    refused(t, () => csv(`key,label\n${k},cat\n`), /'\.' or '\.\.' segments/);
  }
  refused(t, () => csv('key,label\n///,cat\n'), /names no object/);
  t.is(csv('key,label\na..b/c.d.jpg,cat\n')[0]!.key, 'a..b/c.d.jpg');
});

test('csv: a key longer than S3 allows is refused', (t) => {
  refused(
    t,
    () => csv(`key,label\n${'k'.repeat(MAX_KEY_BYTES + 1)},cat\n`),
    new RegExp(`is ${MAX_KEY_BYTES + 1} bytes; S3 keys are at most ${MAX_KEY_BYTES}`),
  );
  t.is(csv(`key,label\n${'k'.repeat(MAX_KEY_BYTES)},cat\n`)[0]!.key.length, MAX_KEY_BYTES);
});

test('csv: missing key or label cell is an error naming the line', (t) => {
  refused(t, () => csv('key,label\na.jpg,\n'), /line 2: missing label/);
  refused(t, () => csv('key,label\n  ,cat\n'), /line 2: missing key/);
});

// ---------- JSON lines ----------

test('jsonl: parses objects, skips blank lines, maps split names, keeps keys exact', (t) => {
  const text = [
    '{"key":"a.jpg","label":"cat","split":"test"}',
    '',
    '{"key":" b.jpg ","label":" dog "}',
    '{"key":"c.jpg","label":"dog","split":"valid","note":1}',
  ].join('\n');
  t.deepEqual(jsonl(text), [
    { key: 'a.jpg', label: 'cat', split: 'test' },
    { key: ' b.jpg ', label: 'dog' },
    { key: 'c.jpg', label: 'dog', split: 'val' },
  ]);
});

test('jsonl: a byte order mark and CRLF line ends are fine', (t) => {
  t.deepEqual(jsonl('\uFEFF{"key":"a.jpg","label":"cat"}\r\n\r\n{"key":"b.jpg","label":"dog"}\r\n'), [
    { key: 'a.jpg', label: 'cat' },
    { key: 'b.jpg', label: 'dog' },
  ]);
});

test('jsonl: a numeric label is taken as its text', (t) => {
  t.deepEqual(jsonl('{"key":"a.jpg","label":7}\n{"key":"b.jpg","label":1.5}\n{"key":"c.jpg","label":"7"}\n'), [
    { key: 'a.jpg', label: '7' },
    { key: 'b.jpg', label: '1.5' },
    { key: 'c.jpg', label: '7' },
  ]);
});

test('jsonl: a label or key of another type is refused with the line', (t) => {
  refused(
    t,
    () => jsonl('{"key":"a","label":"c"}\n{"key":"b","label":true}\n'),
    /line 2: label must be a string or a number, not a boolean \(true\)/,
  );
  refused(t, () => jsonl('{"key":"a","label":null}\n'), /line 1: missing label \(null\)/);
  refused(
    t,
    () => jsonl('{"key":"a","label":{"name":"cat"}}\n'),
    /line 1: label must be a string or a number, not an object/,
  );
  refused(t, () => jsonl('{"key":"a","label":["cat"]}\n'), /line 1: label must be a string or a number, not an array/);
  refused(t, () => jsonl('{"key":12,"label":"cat"}\n'), /line 1: key must be a string, not the number 12/);
  refused(t, () => jsonl('{"key":"a","label":"cat","split":1}\n'), /line 1: split must be a string/);
  refused(t, () => jsonl('{"label":"cat"}\n'), /line 1: missing key/);
});

test('jsonl: a bad JSON line, or one that is not an object, is an error naming the line', (t) => {
  refused(
    t,
    () => jsonl('{"key":"a.jpg","label":"cat"}\n{"key": "b.jpg", label: dog}\n'),
    /s3:\/\/b\/m\.jsonl line 2: not valid JSON/,
  );
  refused(t, () => jsonl('{"key":"a","label":"c"}\n42\n'), /line 2: expected a JSON object/);
  refused(t, () => jsonl('[{"key":"a","label":"c"}]\n'), /line 1: expected a JSON object .*not an array/);
});

test('jsonl: an empty manifest says so', (t) => {
  for (const text of ['', '\n', '\uFEFF\r\n']) refused(t, () => jsonl(text), /manifest s3:\/\/b\/m\.jsonl is empty/);
});

// ---------- Bounded messages ----------

test('messages quoting the manifest stay small: 1 MB of junk in a header, a key, a label or a JSON line', (t) => {
  const junk = 'x'.repeat(1 << 20);
  const cases: Array<() => unknown> = [
    () => csv(`${junk},label\na,b\n`),
    () => csv(`key,label\n${junk},cat\n`), // over the key length limit: quoted in the message
    () => csv(`key,label,split\na.jpg,cat,${junk}\n`),
    () => csv(`key,label\n"${junk}\n`),
    () => csv(`key,${junk},${junk}\n`),
    () => jsonl(`{"key":"${junk}`),
    () => jsonl(`{"key":"a","label":"b","split":"${junk}"}`),
    () => jsonl(`{"key":"../${junk}","label":"cat"}`),
  ];
  for (const [i, fn] of cases.entries()) {
    const err = t.throws(fn, { instanceOf: DatasetError }, `case ${i}`);
    t.true((err?.message.length ?? Infinity) < MAX_MESSAGE_CHARS, `case ${i}: ${err?.message.length} characters`);
  }
});
