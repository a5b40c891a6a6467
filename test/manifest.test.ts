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

async function refused(
  t: import('ava').ExecutionContext,
  fn: () => Promise<unknown>,
  message: RegExp,
): Promise<string> {
  const err = await t.throwsAsync(fn, { instanceOf: DatasetError });
  t.regex(err?.message ?? '', message);
  return err?.message ?? '';
}

test('manifestFormat: .csv, .jsonl and .ndjson in any case; anything else is a prefix', async (t) => {
  t.is(manifestFormat('x/labels.csv'), 'csv');
  t.is(manifestFormat('x/labels.CSV'), 'csv');
  t.is(manifestFormat('labels.jsonl'), 'jsonl');
  t.is(manifestFormat('labels.NDJSON'), 'jsonl');
  t.is(manifestFormat('data/'), undefined);
  t.is(manifestFormat('labels.csv/'), undefined);
});

// ---------- CSV: what is accepted ----------

test('csv: quoted fields with commas and "" escapes; split optional and case-insensitive', async (t) => {
  const text = [
    'key,label,split',
    '"imgs/a,b.jpg","big, cat",TRAIN',
    'imgs/c.jpg,"say ""hi""",',
    'imgs/d.jpg,dog,validation',
    '',
  ].join('\r\n');
  t.deepEqual(await csv(text), [
    { key: 'imgs/a,b.jpg', label: 'big, cat', split: 'train' },
    { key: 'imgs/c.jpg', label: 'say "hi"' },
    { key: 'imgs/d.jpg', label: 'dog', split: 'val' },
  ]);
});

test('csv: header columns in any order and case, s3:// URLs in the same bucket and leading / become plain keys', async (t) => {
  t.deepEqual(await labelsFromManifest('Label , Key\ncat,s3://b/x/1.jpg\ndog,/x/2.jpg\n', 'csv', 'm', 'b'), [
    { key: 'x/1.jpg', label: 'cat' },
    { key: 'x/2.jpg', label: 'dog' },
  ]);
});

test('csv: a UTF-8 byte order mark before the header is not part of the first column name', async (t) => {
  t.deepEqual(await csv('\uFEFFkey,label\na.jpg,cat\n'), [{ key: 'a.jpg', label: 'cat' }]);
});

test('csv: CRLF line ends and blank lines; line numbers count every physical line', async (t) => {
  t.deepEqual(await csv('key,label\r\na.jpg,cat\r\n\r\n   \r\nb.jpg,dog\r\n'), [
    { key: 'a.jpg', label: 'cat' },
    { key: 'b.jpg', label: 'dog' },
  ]);
  await refused(t, () => csv('key,label\r\na.jpg,cat\r\n\r\n\r\nb.jpg,\r\n'), /m\.csv line 5: missing label/);
});

test('csv: a quoted key is exact (spaces kept); unquoted values lose the spaces around them', async (t) => {
  t.deepEqual(await csv('key,label\n"  spaced key.jpg ",cat\n  plain.jpg  ,  dog  \n  " q.jpg" , "big cat" \n'), [
    { key: '  spaced key.jpg ', label: 'cat' },
    { key: 'plain.jpg', label: 'dog' },
    { key: ' q.jpg', label: 'big cat' },
  ]);
});

test('csv: a quoted value spanning lines is parsed, and later lines keep their true numbers', async (t) => {
  const text = 'key,label\n"multi\nline.jpg","a\n\nlabel"\nb.jpg,dog\nc.jpg,\n';
  await refused(t, () => csv(text), /m\.csv line 7: missing label/);
  t.deepEqual(await csv('key,label\n"multi\nline.jpg","two\nlines"\nb.jpg,dog\n'), [
    { key: 'multi\nline.jpg', label: 'two\nlines' },
    { key: 'b.jpg', label: 'dog' },
  ]);
});

test('csv: other columns are ignored (a manifest may carry notes)', async (t) => {
  t.deepEqual(await csv('id,key,notes,label\n1,a.jpg,"from camera 2, blurry",cat\n'), [{ key: 'a.jpg', label: 'cat' }]);
});

test('csv: keys and labels with control characters are data, kept exactly', async (t) => {
  const key = 'x/\u001b[31mred\u0007.jpg';
  const label = 'cat\u001b]0;owned\u0007';
  t.deepEqual(await csv(`key,label\n"${key}","${label}"\n`), [{ key, label }]);
});

// ---------- CSV: what is refused ----------

test('csv: an extra value (an unquoted comma) is an error naming the line and the column count', async (t) => {
  const m = await refused(
    t,
    () => csv('key,label\na.jpg,cat\nb.jpg,big, cat\n'),
    /m\.csv line 3: 3 values, expected 2/,
  );
  t.regex(m, /"key", "label"/);
  t.regex(m, /quote a value that contains a comma/);
  await refused(t, () => csv('key,label,split\na.jpg,cat,train,extra\n'), /line 2: 4 values, expected 3/);
});

test('csv: a row with too few values is an error naming the line', async (t) => {
  await refused(t, () => csv('key,label,split\na.jpg,cat,train\nb.jpg\n'), /line 3: 1 value, expected 3/);
});

test('csv: a quoted value that is never closed names the line it starts on', async (t) => {
  await refused(
    t,
    () => csv('key,label\na.jpg,cat\n\nb.jpg,"dog\nc.jpg,cat\n'),
    /m\.csv line 4: a quoted value starting on this line is never closed/,
  );
});

test('csv: stray quotes are errors naming the line and how to quote', async (t) => {
  await refused(
    t,
    () => csv('key,label\na"b.jpg,cat\n'),
    /line 2: a double quote inside an unquoted value; quote the whole value/,
  );
  await refused(t, () => csv('key,label\na.jpg,cat\n"b"c.jpg,cat\n'), /line 3: text right after a closing quote/);
});

test('csv: empty file and header-only file say so', async (t) => {
  for (const text of ['', '\n\n', '\uFEFF', '  \r\n'])
    await refused(t, () => csv(text), /manifest s3:\/\/b\/m\.csv is empty: expected a header line key,label/);
  for (const text of ['key,label', 'key,label\n', 'key,label,split\r\n\r\n']) {
    const m = await refused(t, () => csv(text), /manifest s3:\/\/b\/m\.csv has a header but no rows/);
    t.notRegex(m, /folder/);
  }
});

test('csv: missing key or label column is an error naming the column and what was found', async (t) => {
  await refused(t, () => csv('key,class\na.jpg,cat\n'), /no "label" column \(found: "key", "class"\)/);
  await refused(t, () => csv('path,label\na.jpg,cat\n'), /no "key" column/);
  await refused(t, () => csv('key;label\na.jpg;cat\n'), /found: "key;label"; columns must be separated by commas/);
});

test('csv: a column named twice in the header is refused', async (t) => {
  await refused(t, () => csv('key,label,Label\na.jpg,cat,dog\n'), /the header names "label" twice \(columns 2 and 3\)/);
});

test('csv: unknown split is an error naming the line and the value', async (t) => {
  await refused(
    t,
    () => csv('key,label,split\na.jpg,cat,train\nb.jpg,dog,holdout\n'),
    /line 3: unknown split "holdout"; use train, val or test/,
  );
  // Names of Object.prototype members are not splits either.
  await refused(t, () => csv('key,label,split\na.jpg,cat,constructor\n'), /line 2: unknown split "constructor"/);
});

test('csv: duplicate key (also via its s3:// form) names both lines', async (t) => {
  await refused(t, () => csv('key,label\na.jpg,cat\na.jpg,dog\n'), /line 3: duplicate key "a.jpg" \(first on line 2\)/);
  await refused(t, () => csv('key,label\na.jpg,cat\ns3://b/a.jpg,dog\n'), /duplicate key/);
});

test('csv: a key in another bucket is an error naming both', async (t) => {
  await refused(
    t,
    () => labelsFromManifest('key,label\ns3://other/a.jpg,cat\n', 'csv', 'm', 'b'),
    /s3:\/\/other\/a\.jpg.*outside the bucket b/,
  );
});

test('csv: keys with .. or . segments, or naming no object, are errors', async (t) => {
  for (const k of ['../secret.jpg', 'imgs/../../x.jpg', 's3://b/a/../b.jpg', './a.jpg']) {
    await refused(t, () => csv(`key,label\n${k},cat\n`), /'\.' or '\.\.' segments/);
  }
  await refused(t, () => csv('key,label\n///,cat\n'), /names no object/);
  t.is((await csv('key,label\na..b/c.d.jpg,cat\n'))[0]!.key, 'a..b/c.d.jpg');
});

test('csv: a key longer than S3 allows is refused', async (t) => {
  await refused(
    t,
    () => csv(`key,label\n${'k'.repeat(MAX_KEY_BYTES + 1)},cat\n`),
    new RegExp(`is ${MAX_KEY_BYTES + 1} bytes; S3 keys are at most ${MAX_KEY_BYTES}`),
  );
  t.is((await csv(`key,label\n${'k'.repeat(MAX_KEY_BYTES)},cat\n`))[0]!.key.length, MAX_KEY_BYTES);
});

test('csv: missing key or label cell is an error naming the line', async (t) => {
  await refused(t, () => csv('key,label\na.jpg,\n'), /line 2: missing label/);
  await refused(t, () => csv('key,label\n  ,cat\n'), /line 2: missing key/);
});

// ---------- JSON lines ----------

test('jsonl: parses objects, skips blank lines, maps split names, keeps keys exact', async (t) => {
  const text = [
    '{"key":"a.jpg","label":"cat","split":"test"}',
    '',
    '{"key":" b.jpg ","label":" dog "}',
    '{"key":"c.jpg","label":"dog","split":"valid","note":1}',
  ].join('\n');
  t.deepEqual(await jsonl(text), [
    { key: 'a.jpg', label: 'cat', split: 'test' },
    { key: ' b.jpg ', label: 'dog' },
    { key: 'c.jpg', label: 'dog', split: 'val' },
  ]);
});

test('jsonl: a byte order mark and CRLF line ends are fine', async (t) => {
  t.deepEqual(await jsonl('\uFEFF{"key":"a.jpg","label":"cat"}\r\n\r\n{"key":"b.jpg","label":"dog"}\r\n'), [
    { key: 'a.jpg', label: 'cat' },
    { key: 'b.jpg', label: 'dog' },
  ]);
});

test('jsonl: a numeric label is taken as its text', async (t) => {
  t.deepEqual(await jsonl('{"key":"a.jpg","label":7}\n{"key":"b.jpg","label":1.5}\n{"key":"c.jpg","label":"7"}\n'), [
    { key: 'a.jpg', label: '7' },
    { key: 'b.jpg', label: '1.5' },
    { key: 'c.jpg', label: '7' },
  ]);
});

test('jsonl: a label or key of another type is refused with the line', async (t) => {
  await refused(
    t,
    () => jsonl('{"key":"a","label":"c"}\n{"key":"b","label":true}\n'),
    /line 2: label must be a string or a number, not a boolean \(true\)/,
  );
  await refused(t, () => jsonl('{"key":"a","label":null}\n'), /line 1: missing label \(null\)/);
  await refused(
    t,
    () => jsonl('{"key":"a","label":{"name":"cat"}}\n'),
    /line 1: label must be a string or a number, not an object/,
  );
  await refused(
    t,
    () => jsonl('{"key":"a","label":["cat"]}\n'),
    /line 1: label must be a string or a number, not an array/,
  );
  await refused(t, () => jsonl('{"key":12,"label":"cat"}\n'), /line 1: key must be a string, not the number 12/);
  await refused(t, () => jsonl('{"key":"a","label":"cat","split":1}\n'), /line 1: split must be a string/);
  await refused(t, () => jsonl('{"label":"cat"}\n'), /line 1: missing key/);
});

test('jsonl: a bad JSON line, or one that is not an object, is an error naming the line', async (t) => {
  await refused(
    t,
    () => jsonl('{"key":"a.jpg","label":"cat"}\n{"key": "b.jpg", label: dog}\n'),
    /s3:\/\/b\/m\.jsonl line 2: not valid JSON/,
  );
  await refused(t, () => jsonl('{"key":"a","label":"c"}\n42\n'), /line 2: expected a JSON object/);
  await refused(t, () => jsonl('[{"key":"a","label":"c"}]\n'), /line 1: expected a JSON object .*not an array/);
});

test('jsonl: an empty manifest says so', async (t) => {
  for (const text of ['', '\n', '\uFEFF\r\n'])
    await refused(t, () => jsonl(text), /manifest s3:\/\/b\/m\.jsonl is empty/);
});

// ---------- Bounded messages ----------

test('messages quoting the manifest stay small: 1 MB of junk in a header, a key, a label or a JSON line', async (t) => {
  const junk = 'x'.repeat(1 << 20);
  const cases: Array<() => Promise<unknown>> = [
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
    const err = await t.throwsAsync(fn, { instanceOf: DatasetError }, `case ${i}`);
    t.true((err?.message.length ?? Infinity) < MAX_MESSAGE_CHARS, `case ${i}: ${err?.message.length} characters`);
  }
});

// ---------- Line numbers and size ----------

test('csv: a CRLF inside a quoted value is one line break; later rows keep their true line numbers', async (t) => {
  const text =
    'key,label\r\n"pets/cat/0.png",cat\r\n"pets/dog/\r\n0.png",dog\r\npets/cat/1.png,cat\r\npets/dog/1.png,dog,extra\r\n';
  await refused(t, () => csv(text), /m\.csv line 6: 3 values, expected 2/);
  // The value itself is kept exactly, CR included.
  t.deepEqual(await csv('key,label\r\n"pets/dog/\r\n0.png",dog\r\n'), [{ key: 'pets/dog/\r\n0.png', label: 'dog' }]);
  // Several CRLFs in one record, blank CRLF lines, then a stray quote inside the next record.
  const stray = 'key,label\r\n"a\r\n\r\nb.png","x\r\ny"\r\n\r\n\r\nc.png,"big\r\ncat" z\r\n';
  await refused(t, () => csv(stray), /m\.csv line 9: text right after a closing quote/);
  await refused(t, () => csv('key,label\r\n"a\r\nb.png",cat\r\n\r\n"c.png,dog\r\n'), /line 5: a quoted value starting/);
});

test('csv and jsonl: a manifest larger than one parse chunk keeps every row and every line number', async (t) => {
  // ~2.6 MB: ten chunks; a refused row near the end is named by its line.
  const rows = Array.from({ length: 40_000 }, (_, i) => `"imgs/${String(i).padStart(6, '0')}\r\nx.png",c${i % 7}`);
  const text = `key,label\r\n${rows.join('\r\n')}\r\n`;
  const labelled = await csv(text);
  t.is(labelled.length, 40_000);
  t.deepEqual(labelled[39_999], { key: 'imgs/039999\r\nx.png', label: 'c1' });
  await refused(t, () => csv(`${text}last.png\r\n`), /m\.csv line 80002: 1 value, expected 2/);
  const lines = Array.from({ length: 40_000 }, (_, i) => JSON.stringify({ key: `k/${i}`, label: `c${i % 7}` }));
  t.is((await jsonl(lines.join('\n'))).length, 40_000);
  await refused(t, () => jsonl(`${lines.join('\n')}\n{"key":"x"}`), /m\.jsonl line 40001: missing label/);
});

test('the event loop keeps running while a large manifest is parsed', async (t) => {
  const rows = Array.from({ length: 60_000 }, (_, i) => `imgs/${String(i).padStart(6, '0')}.png,c${i % 5}`);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    t.is((await csv(`key,label\n${rows.join('\n')}\n`)).length, 60_000);
    const json = rows.map((r) => JSON.stringify({ key: r.split(',')[0], label: 'c' })).join('\n');
    t.is((await jsonl(json)).length, 60_000);
  } finally {
    clearInterval(timer);
  }
  // Parsed in one piece, the interval could not fire until the end (at most once).
  t.true(ticks >= 4, `${ticks} timer ticks during parsing`);
});

test('labels are shared strings: a million rows of a few classes do not hold a million label strings', async (t) => {
  const out = await csv('key,label\na.png,cat\nb.png,cat\nc.png, cat \n');
  t.is(out[0]!.label, 'cat');
  t.is(out[2]!.label, 'cat');
});

test('a manifest line longer than 64 KiB (a 2 MiB header, a 2 MiB JSON line) is refused before parsing, with its line', async (t) => {
  // Found by an attacker: a 150 MiB header with no newline held the planner for two minutes.
  const header = `${'k'.repeat(2 * 2 ** 20)}\na.png,cat\n`;
  const csvErr = await t.throwsAsync(labelsFromManifest(header, 'csv', 's3://b/m.csv', 'b'));
  t.regex(csvErr!.message, /^s3:\/\/b\/m\.csv line 1 is longer than 64 KiB/);
  t.true(csvErr!.message.length < 300);
  const jsonl = `{"key":"a.png","label":"cat"}\n{"key":"${'x'.repeat(2 * 2 ** 20)}","label":"dog"}\n`;
  const jsonErr = await t.throwsAsync(labelsFromManifest(jsonl, 'jsonl', 's3://b/m.jsonl', 'b'));
  t.regex(jsonErr!.message, /line 2 is longer than 64 KiB/);
});
