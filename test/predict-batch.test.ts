/**
 * Batch prediction, the pure parts: predictions.csv (RFC 4180 quoting, the header, 6-decimal
 * probabilities), the prediction request and job schemas, which objects under a prefix are
 * classified, prediction manifests without labels, top-k, the model cache, the stage of a
 * prediction run in status and progress. The pipeline itself is test/predict-batch.e2e.test.ts.
 */
import test from 'ava';
import { parse } from 'csv-parse/sync';
import { csvField, csvHeader, csvRow } from '../services/evaluator/predictions-csv.js';
import { imagesFromListing } from '../services/planner/predict-plan.js';
import { keysFromManifest } from '../services/planner/manifest.js';
import { createModelCache } from '../services/extractor/model-cache.js';
import { assertEngineFits } from '../services/extractor/predict.js';
import { formatStatus } from '../cli/format.js';
import { progressLine } from '../cli/progress.js';
import { isTerminal } from '../cli/client.js';
import { KINDS } from '../cli/workers.js';
import { BadRequestError, DatasetError, ModelError } from '../shared/errors.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { predictionLineSchema, predictionsShardKey, topK, type PredictionLine } from '../shared/predictions.js';
import { isPredictRequest, parseJobData, predictRequestSchema, type PredictRequest } from '../shared/queues.js';
import { statusFromHash } from '../shared/run-state.js';
import { KIND_QUEUES } from '../shared/worker-kit.js';

const VERSION = 'r20260101000000-abcdef';
const request: PredictRequest = {
  kind: 'predict',
  source: 's3://data/photos/',
  model: { name: 'pets', version: VERSION, key: `models/pets/${VERSION}/model.json` },
  top: 2,
  shardSize: 100,
};

// ───────────── predictions.csv ─────────────

test('csvField quotes exactly the fields RFC 4180 needs quoted, doubling inner quotes', (t) => {
  t.is(csvField('cats/1.jpg'), 'cats/1.jpg');
  t.is(csvField('a,b'), '"a,b"');
  t.is(csvField('say "hi"'), '"say ""hi"""');
  t.is(csvField('line\nbreak'), '"line\nbreak"');
  t.is(csvField('cr\rhere'), '"cr\rhere"');
  t.is(csvField(''), '');
  t.is(csvField(' spaced '), ' spaced ');
});

test('csvField defuses cells a spreadsheet would run as formulas (OWASP CSV injection)', (t) => {
  t.is(csvField('=HYPERLINK("http://x","y").png'), `"'=HYPERLINK(""http://x"",""y"").png"`);
  for (const lead of ['+', '-', '@', '\t', '\r']) t.is(csvField(`${lead}1.png`), `"'${lead}1.png"`);
  t.is(csvField('a=b.png'), 'a=b.png');
});

test('csv header names K label/probability pairs and the error column', (t) => {
  t.is(csvHeader(1), 'key,label_1,probability_1,error\r\n');
  t.is(csvHeader(3), 'key,label_1,probability_1,label_2,probability_2,label_3,probability_3,error\r\n');
});

test('csv rows: hostile keys, labels and reasons read back exactly with a standard CSV parser', (t) => {
  const lines: PredictionLine[] = [
    {
      key: 'a,b/"c"\r\n.jpg',
      top: [
        { label: 'big, "cat"', probability: 0.7123456789 },
        { label: 'dog\n', probability: 0.2876543211 },
      ],
    },
    { key: 'plain.png', error: 'not an image: "x", then\nmore' },
    {
      key: '\x1b[2J.png',
      top: [
        { label: 'cat', probability: 1 },
        { label: 'dog', probability: 0 },
      ],
    },
  ];
  const text = csvHeader(2) + lines.map((l) => csvRow(l, 2)).join('');
  t.true(text.endsWith('\r\n'));
  const rows = parse(text, { relax_quotes: false }) as string[][];
  t.deepEqual(rows[0], ['key', 'label_1', 'probability_1', 'label_2', 'probability_2', 'error']);
  t.deepEqual(rows[1], ['a,b/"c"\r\n.jpg', 'big, "cat"', '0.712346', 'dog\n', '0.287654', '']);
  t.deepEqual(rows[2], ['plain.png', '', '', '', '', 'not an image: "x", then\nmore']);
  t.deepEqual(rows[3], ['\x1b[2J.png', 'cat', '1.000000', 'dog', '0.000000', '']);
  t.is(rows.length, 4);
});

// ───────────── schemas ─────────────

test('a prediction request is its own schema; the plan job takes either request, reporting a bad field by its path', (t) => {
  t.deepEqual(predictRequestSchema.parse(request), request);
  t.true(isPredictRequest(request));
  t.deepEqual(parseJobData('plan', { runId: 'r1', request }).request, request);
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ ...request, top: 0 }, 'request.top'],
    [{ ...request, source: 'http://x/' }, 'request.source'],
    [{ ...request, shardSize: 0 }, 'request.shardSize'],
    [{ ...request, model: { ...request.model, key: 'models/other/x/model.json' } }, 'request.model.key'],
    [{ ...request, model: { ...request.model, key: `models/pets/${VERSION}/../../x` } }, 'request.model.key'],
    [{ ...request, model: { ...request.model, name: '../etc' } }, 'request.model.name'],
    [{ ...request, model: { ...request.model, version: 'latest' } }, 'request.model.version'],
  ];
  for (const [req, path] of cases) {
    const err = t.throws(() => parseJobData('plan', { runId: 'r1', request: req }), { instanceOf: BadRequestError });
    t.true(err!.message.includes(`${path}: `), `${path} in ${err!.message}`);
  }
});

test('a training request without kind is a training request, as every request stored before prediction runs', (t) => {
  const train = {
    source: 's3://b/data/',
    name: 'pets',
    features: { kind: 'raw-pixels', size: 32 },
    seed: 1,
    split: { train: 0.7, val: 0.1, test: 0.2 },
    shardSize: 8,
  };
  const parsed = parseJobData('plan', { runId: 'r1', request: train }).request;
  t.false(isPredictRequest(parsed));
  t.deepEqual(parsed, train as never);
  const err = t.throws(() => parseJobData('plan', { runId: 'r1', request: { ...train, kind: 'guess' } }), {
    instanceOf: BadRequestError,
  });
  t.true(err!.message.includes('request.kind: '), err!.message);
});

test('prediction lines: a top list or an error, nothing else', (t) => {
  t.true(predictionLineSchema.safeParse({ key: 'a', top: [{ label: 'x', probability: 0.5 }] }).success);
  t.true(predictionLineSchema.safeParse({ key: 'a', label: 'cat', error: 'bad' }).success);
  t.false(predictionLineSchema.safeParse({ key: 'a' }).success);
  t.false(predictionLineSchema.safeParse({ key: 'a', top: [{ label: 'x', probability: 1.5 }] }).success);
  t.false(predictionLineSchema.safeParse({ key: 'a', top: [], extra: 1 }).success);
  t.is(predictionsShardKey('r1', 7), 'runs/r1/predictions/00007.jsonl');
});

// ───────────── planning ─────────────

test('imagesFromListing: image names and extension-less keys at any depth; others skipped with why', (t) => {
  const { items, ignored } = imagesFromListing([
    'p/',
    'p/a.JPG',
    'p/deep/er/b.png',
    'p/c',
    'p/notes.txt',
    'p/sub/',
    'p/d.webp',
    'p/.hidden',
    'p/labels.csv',
  ]);
  t.deepEqual(
    items.map((i) => i.key),
    ['p/a.JPG', 'p/deep/er/b.png', 'p/c', 'p/d.webp'],
  );
  t.deepEqual(
    ignored.map((o) => o.key),
    ['p/notes.txt', 'p/.hidden', 'p/labels.csv'],
  );
  t.regex(ignored[0]!.reason, /not an image file name \(\.txt\).*manifest/);
  t.regex(ignored[1]!.reason, /hidden file/);
});

test('keysFromManifest: only key is required; a label is kept when given; split is not read', async (t) => {
  const csv = 'key,label,split\na.png,cat,train\nb.png,,\nc.png, dog ,nonsense\n';
  t.deepEqual(await keysFromManifest(csv, 'csv', 'm.csv', 'data'), [
    { key: 'a.png', label: 'cat' },
    { key: 'b.png' },
    { key: 'c.png', label: 'dog' },
  ]);
  t.deepEqual(await keysFromManifest('key\ns3://data/x/1.png\n', 'csv', 'm.csv', 'data'), [{ key: 'x/1.png' }]);
  const jsonl = '{"key":"a.png"}\n{"key":"b.png","label":7}\n{"key":"c.png","label":null}\n';
  t.deepEqual(await keysFromManifest(jsonl, 'jsonl', 'm.jsonl', 'data'), [
    { key: 'a.png' },
    { key: 'b.png', label: '7' },
    { key: 'c.png' },
  ]);
  // The key rules are a training manifest's.
  await t.throwsAsync(keysFromManifest('label\ncat\n', 'csv', 'm.csv', 'data'), {
    instanceOf: DatasetError,
    message: /no "key" column .*expected key\[,label\]/,
  });
  await t.throwsAsync(keysFromManifest('{"key":"a.png"}\n{"key":"a.png"}\n', 'jsonl', 'm.jsonl', 'data'), {
    instanceOf: DatasetError,
    message: /duplicate key/,
  });
  await t.throwsAsync(keysFromManifest('{"label":"cat"}\n', 'jsonl', 'm.jsonl', 'data'), {
    instanceOf: DatasetError,
    message: /missing key; every line needs a key$/,
  });
  await t.throwsAsync(keysFromManifest('key\n../x.png\n', 'csv', 'm.csv', 'data'), { message: /'\.\.' segments/ });
});

// ───────────── classifying ─────────────

test('topK: most probable first, ties in class order, at most k', (t) => {
  const classes = ['a', 'b', 'c', 'd'];
  t.deepEqual(topK(classes, [0.1, 0.4, 0.1, 0.4], 3), [
    { label: 'b', probability: 0.4 },
    { label: 'd', probability: 0.4 },
    { label: 'a', probability: 0.1 },
  ]);
  t.deepEqual(
    topK(classes, [0.1, 0.2, 0.3, 0.4], 1).map((r) => r.label),
    ['d'],
  );
});

test('the model cache reads each key once, keeps the most recent few, and forgets a failed read', async (t) => {
  const reads: string[] = [];
  const cache = createModelCache(async (key) => {
    reads.push(key);
    if (key === 'bad') throw new ModelError('bad model');
    return { name: key } as unknown as ModelArtifact;
  }, 2);
  await Promise.all([cache.get('a'), cache.get('a')]);
  await cache.get('b');
  await cache.get('a'); // a is now the most recent
  await cache.get('c'); // evicts b
  await cache.get('a');
  await cache.get('b');
  t.deepEqual(reads, ['a', 'b', 'c', 'b']);
  t.is(cache.size, 2);
  await t.throwsAsync(cache.get('bad'), { instanceOf: ModelError });
  await t.throwsAsync(cache.get('bad'), { instanceOf: ModelError });
  t.deepEqual(reads.slice(-2), ['bad', 'bad']);
});

test('a model is only used with the engine its features came from', (t) => {
  const model = { features: { engine: 'raw-pixels:32x32', dim: 3072 } } as ModelArtifact;
  t.notThrows(() => assertEngineFits(model, { id: 'raw-pixels:32x32', dim: 3072 }, 's3://b/m.json'));
  t.throws(() => assertEngineFits(model, { id: 'raw-pixels:16x16', dim: 768 }, 's3://b/m.json'), {
    instanceOf: ModelError,
    message: /fitted on "raw-pixels:32x32" features \(3072 per image\).*"raw-pixels:16x16" \(768\)/,
  });
});

// ───────────── status, progress, workers ─────────────

const hash = (stage: string, extra: Record<string, string> = {}) => ({
  request: JSON.stringify(request),
  stage,
  total: '100',
  shards: '2',
  extractStartedAt: '1000',
  lastShardAt: '11000',
  'shard:0': JSON.stringify({ done: 40, failed: 2, complete: false }),
  ...extra,
});

test('a predicting run has throughput and ETA, like an extracting one; it ends at done', (t) => {
  const s = statusFromHash('r1', hash('predicting'), 21_000);
  t.is(s.imagesPerSecond, 42 / 20);
  t.true(s.etaSeconds! > 0);
  t.regex(progressLine(s), /^predicting 42\/100 images, 2 failed, 2\.1 images\/s, eta /);
  t.false(isTerminal(s));
  const done = statusFromHash('r1', hash('done'), 99_000);
  t.is(done.etaSeconds, null);
  t.is(done.imagesPerSecond, 42 / 10); // up to the last shard update, not now
  t.true(isTerminal(done));
  t.false(isTerminal(statusFromHash('r1', hash('collecting'), 0)));
});

test('status of a prediction run names its model and where predictions.csv is; no features or accuracy', (t) => {
  const predictions = { uri: 's3://art/runs/r1/predictions.csv', images: 100, predicted: 97, failed: 3 };
  const s = statusFromHash('r1', hash('done', { predictions: JSON.stringify(predictions) }), 0);
  t.deepEqual(s.predictions, predictions);
  const out = formatStatus(s);
  t.regex(out, new RegExp(`model     pets@${VERSION}, top 2`));
  t.regex(out, /results {3}s3:\/\/art\/runs\/r1\/predictions\.csv {2}\(100 images: 97 classified, 3 failed\)/);
  t.notRegex(out, /features|accuracy/);
  // A hostile model name from a stored request is escaped.
  const evil = { ...request, model: { ...request.model, name: 'x\x1b[2J' } };
  t.false(formatStatus(statusFromHash('r1', { request: JSON.stringify(evil), stage: 'queued' }, 0)).includes('\x1b'));
});

test('an extractor process serves extract and predict, an evaluator evaluate and collect', (t) => {
  t.deepEqual(KIND_QUEUES.get('extractor'), ['extract', 'predict']);
  t.deepEqual(KIND_QUEUES.get('evaluator'), ['evaluate', 'collect']);
  t.deepEqual(KINDS.extractor, ['extract', 'predict']);
  t.deepEqual(KINDS.planner, ['plan']);
  t.deepEqual(Object.keys(KINDS), ['planner', 'extractor', 'trainer', 'evaluator', 'all']);
  t.is(KINDS.all!.length, 6);
});
