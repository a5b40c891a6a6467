/**
 * Issue 13, items 1 and 2, on real parts (redis-server, the S3 server, worker processes, the
 * shipped backbone, CIFAR-10 cats and dogs from the demo data): `deepfeat similar` finds the
 * images of a run most like a query — the lesson's idea, a dog's nearest neighbours are mostly
 * dogs — from local files and s3:// objects, honouring -k and --split, with exact JSON, a reason
 * for each bad query and exit 2 for an unknown model; a run with features and no model yet is
 * searched with its feature spec's engine; and the evaluator's kNN metrics equal a brute-force
 * vote over the run's stored features.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { enqueueRun, getStatus, waitForRun } from '../cli/client.js';
import { enqueuePredict } from '../cli/predict-client.js';
import { loadDemoImages, type DemoImage } from '../cli/demo-data.js';
import type { SimilarResult } from '../cli/similar.js';
import { RunIndexCache, loadRunIndex } from '../services/retrieval/run-index.js';
import { readFeatures, type LabelledFeatures } from '../shared/feature-store.js';
import { DatasetError } from '../shared/errors.js';
import type { ModelArtifact } from '../shared/model-format.js';
import type { RunStatus } from '../shared/run-state.js';
import { getObjectJson } from '../shared/s3.js';
import {
  deployment,
  runCli,
  spawnWorker,
  storedFinalStatus,
  type Deployment,
  type WorkerProcess,
} from './helpers/pipeline.js';

const PER_CLASS = 100;
/** Images per class the pipeline never sees: the dog queries. */
const HELD_BACK = 10;

let dep: Deployment;
const workers: Record<string, WorkerProcess> = {};
let run: RunStatus;
let dir: string;
/** A run with every shard extracted and no model (its trainer stopped), from the test that makes it. */
let unpublishedRun: RunStatus | undefined;
let heldBackDogs: string[] = [];
const uploaded: DemoImage[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '50' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  const seen = new Map<string, number>();
  const held: DemoImage[] = [];
  for (const img of images) {
    const n = (seen.get(img.label) ?? 0) + 1;
    seen.set(img.label, n);
    if (n > PER_CLASS - HELD_BACK) held.push(img);
    else uploaded.push(img);
  }
  await Promise.all(uploaded.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  dir = await mkdtemp(join(tmpdir(), 'deepfeat-similar-'));
  heldBackDogs = await Promise.all(
    held
      .filter((img) => img.label === 'dog')
      .map(async (img) => {
        const file = join(dir, img.name);
        await writeFile(file, img.png);
        return file;
      }),
  );
  for (const kind of ['planner', 'trainer', 'evaluator', 'extractor']) workers[kind] = spawnWorker(dep.env, kind);
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/pets/`, name: 'pets' });
  run = await waitForRun(dep.client, runId);
});

test.after.always(async () => {
  await Promise.all(Object.values(workers).map((w) => w.stop()));
  await dep?.close();
});

function published(t: import('ava').ExecutionContext): boolean {
  if (run.stage === 'published') return true;
  t.log(
    Object.values(workers)
      .map((w) => w.output())
      .join('\n'),
  );
  t.fail(`the run did not publish: ${run.stage} ${run.error?.message ?? ''}`);
  return false;
}

const parseLines = (stdout: string) =>
  stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as SimilarResult);

/** Unit rows of a stored feature set, in float64. */
function unit(set: LabelledFeatures): Float64Array[] {
  return Array.from({ length: set.n }, (_, i) => {
    const row = Float64Array.from(set.X.subarray(i * set.d, (i + 1) * set.d));
    const norm = Math.sqrt(row.reduce((a, x) => a + x * x, 0));
    return norm === 0 ? row : row.map((x) => x / norm);
  });
}

const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, x, j) => s + x * b[j]!, 0);

/** Database rows by similarity to q, highest first, equal ones by lower row: the documented order. */
function ranked(db: Float64Array[], q: Float64Array): Array<{ index: number; score: number }> {
  return db.map((row, index) => ({ index, score: dot(row, q) })).sort((a, b) => b.score - a.score || a.index - b.index);
}

test.serial('the evaluator reports 1-NN and 5-NN test accuracy, equal to a brute-force vote', async (t) => {
  t.timeout(300_000);
  if (!published(t)) return;
  const knn = run.metrics?.knn;
  if (!knn) return t.fail('no knn in the metrics');
  t.deepEqual(
    knn.accuracy.map((a) => a.k),
    [1, 5],
  );
  for (const a of knn.accuracy) t.true(a.accuracy >= 0 && a.accuracy <= 1, `${a.k}-NN ${a.accuracy}`);

  // Brute force over the run's stored features: train+val is the database, every test image a query.
  const [db, tests] = await Promise.all([
    readFeatures(dep.client.s3, dep.config.bucket, run.runId, run.shards, ['train', 'val']),
    readFeatures(dep.client.s3, dep.config.bucket, run.runId, run.shards, ['test']),
  ]);
  t.is(knn.database, db.n);
  t.is(knn.databaseOf, db.n);
  t.is(knn.queries, tests.n);
  t.is(knn.testImages, tests.n);
  const dbUnit = unit(db);
  const correct = { 1: 0, 5: 0 };
  for (const [i, q] of unit(tests).entries()) {
    const order = ranked(dbUnit, q);
    for (const k of [1, 5] as const) {
      const top = order.slice(0, k).map((h) => db.labels[h.index]!);
      const votes = new Map<string, number>();
      for (const l of top) votes.set(l, (votes.get(l) ?? 0) + 1);
      const most = Math.max(...votes.values());
      // The tie-break: the tied label of the nearest neighbour.
      if (top.find((l) => votes.get(l) === most) === tests.labels[i]) correct[k]++;
    }
  }
  t.is(knn.accuracy[0]!.accuracy, correct[1] / tests.n);
  t.is(knn.accuracy[1]!.accuracy, correct[5] / tests.n);
  t.log(`1-NN ${correct[1]}/${tests.n}, 5-NN ${correct[5]}/${tests.n}; regression ${run.metrics!.accuracy}`);

  // model.json and run.json carry the same; status prints one line.
  const model = await getObjectJson<ModelArtifact>(
    dep.client.s3,
    dep.config.bucket,
    `models/pets/${run.runId}/model.json`,
  );
  t.deepEqual(model.metrics.knn, knn);
  const stored = await storedFinalStatus(dep, run.runId);
  t.deepEqual(stored.metrics?.knn, knn);
  const status = await runCli(dep.env, ['status', run.runId]);
  t.is(status.code, 0, status.stderr);
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  t.true(
    status.stdout.includes(
      `knn       1-NN ${pct(knn.accuracy[0]!.accuracy)}, 5-NN ${pct(knn.accuracy[1]!.accuracy)} (train+val as the database)`,
    ),
    status.stdout,
  );
});

test.serial("the lesson's idea: the nearest neighbours of dogs the run never saw are mostly dogs", async (t) => {
  t.timeout(120_000);
  if (!published(t)) return;
  const r = await runCli(dep.env, ['similar', 'pets', ...heldBackDogs, '--json']);
  t.is(r.code, 0, r.stderr);
  const rows = parseLines(r.stdout);
  t.deepEqual(
    rows.map((x) => x.query),
    heldBackDogs,
  );
  let dogs = 0;
  let majority = 0;
  for (const row of rows) {
    if (!('neighbours' in row)) return t.fail(`${row.query}: ${row.error}`);
    t.is(row.neighbours.length, 5);
    const n = row.neighbours.filter((x) => x.label === 'dog').length;
    dogs += n;
    if (n >= 3) majority++;
    // Each neighbour is one of the run's images, with its own label, in rank and similarity order.
    for (const [i, x] of row.neighbours.entries()) {
      t.is(x.rank, i + 1);
      t.true(x.key.startsWith(`pets/${x.label}/`), x.key);
      t.true(x.similarity <= 1 + 1e-6 && x.similarity > -1, String(x.similarity));
      if (i > 0) t.true(x.similarity <= row.neighbours[i - 1]!.similarity);
    }
  }
  t.log(`${dogs} of ${rows.length * 5} neighbours are dogs; ${majority} of ${rows.length} queries have a dog majority`);
  t.true(dogs > (rows.length * 5) / 2, `${dogs} of ${rows.length * 5} neighbours are dogs`);
  t.true(majority > rows.length / 2, `${majority} of ${rows.length} queries have a dog majority`);
});

test.serial('an image of the run finds itself first; JSON is exact, local file and s3:// alike', async (t) => {
  t.timeout(120_000);
  if (!published(t)) return;
  const [db, tests] = await Promise.all([
    readFeatures(dep.client.s3, dep.config.bucket, run.runId, run.shards, ['train', 'val', 'test']),
    readFeatures(dep.client.s3, dep.config.bucket, run.runId, run.shards, ['test']),
  ]);
  // A test image, by its file and by its object: its stored row is the query's features.
  const key = tests.keys[0]!;
  const img = uploaded.find((u) => key.endsWith(`/${u.name}`))!;
  const file = join(dir, `copy-of-${img.name}`);
  await writeFile(file, img.png);
  const url = `s3://${dep.dataBucket}/${key}`;
  const r = await runCli(dep.env, ['similar', run.runId, file, url, '--json', '-k', '4']);
  t.is(r.code, 0, r.stderr);
  const rows = parseLines(r.stdout);
  t.deepEqual(
    rows.map((x) => x.query),
    [file, url],
  );

  // Expected: the brute-force order over every stored row, with each row's split from the manifest.
  const splitOf = new Map<string, string>();
  for (const split of ['train', 'val', 'test'] as const) {
    const set = await readFeatures(dep.client.s3, dep.config.bucket, run.runId, run.shards, [split]);
    for (const k of set.keys) splitOf.set(k, split);
  }
  const all = unit(db);
  const self = db.keys.indexOf(key);
  const order = ranked(all, all[self]!).slice(0, 4);
  for (const row of rows) {
    if (!('neighbours' in row)) return t.fail(`${row.query}: ${row.error}`);
    t.deepEqual(
      row.neighbours.map(({ rank, key: k, label, split }) => ({ rank, key: k, label, split })),
      order.map((h, i) => ({
        rank: i + 1,
        key: db.keys[h.index]!,
        label: db.labels[h.index]!,
        split: splitOf.get(db.keys[h.index]!)!,
      })),
    );
    t.is(row.neighbours[0]!.key, key);
    for (const [i, x] of row.neighbours.entries()) t.true(Math.abs(x.similarity - order[i]!.score) < 1e-4);
  }
});

test.serial('-k and --split are honoured; the table escapes and names each query once', async (t) => {
  t.timeout(120_000);
  if (!published(t)) return;
  for (const split of ['train', 'val', 'test'] as const) {
    const r = await runCli(dep.env, ['similar', 'pets', heldBackDogs[0]!, '--split', split, '-k', '3', '--json']);
    t.is(r.code, 0, r.stderr);
    const [row] = parseLines(r.stdout);
    if (!row || !('neighbours' in row)) return t.fail(r.stdout);
    t.is(row.neighbours.length, 3);
    t.true(
      row.neighbours.every((x) => x.split === split),
      split,
    );
  }
  // More neighbours than the split holds: every one of them.
  const val = Object.values(run.counts).reduce((a, perSplit) => a + (perSplit.val ?? 0), 0);
  t.true(val > 3);
  const many = await runCli(dep.env, ['similar', 'pets', heldBackDogs[0]!, '--split', 'val', '-k', '1000', '--json']);
  t.is(many.code, 0, many.stderr);
  const [manyRow] = parseLines(many.stdout);
  t.is(manyRow && 'neighbours' in manyRow ? manyRow.neighbours.length : -1, val);

  const table = await runCli(dep.env, ['similar', 'pets', heldBackDogs[0]!, heldBackDogs[1]!, '--neighbours', '2']);
  t.is(table.code, 0, table.stderr);
  const lines = table.stdout.trim().split('\n');
  t.regex(lines[0]!, /^query +rank +key +label +split +similarity$/);
  t.is(lines.length, 5);
  t.regex(lines[1]!, /dog-\d+\.png +1 +pets\/(cat|dog)\/\S+ +(cat|dog) +(train|val|test) +-?\d\.\d{4}$/);
  t.regex(lines[2]!, /^ +2 +pets\//);
});

test.serial('a bad query gets its reason and the others still print; none answered is exit 2', async (t) => {
  t.timeout(120_000);
  if (!published(t)) return;
  const text = join(dir, 'notes\x1b[2J.png');
  await writeFile(text, 'not an image\n');
  const missing = `s3://${dep.dataBucket}/pets/dog/none.png`;
  const r = await runCli(dep.env, [
    'similar',
    'pets',
    text,
    heldBackDogs[0]!,
    join(dir, 'gone.png'),
    missing,
    `s3://${dep.dataBucket}/pets/`,
    'gone.png',
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const rows = parseLines(r.stdout);
  t.is(rows.length, 6);
  t.regex('error' in rows[0]! ? rows[0].error : '', /not an image|unsupported|format/);
  t.is(rows[0]!.query, text); // JSON keeps the exact text
  t.true('neighbours' in rows[1]!);
  t.deepEqual(rows[2], { query: join(dir, 'gone.png'), error: 'no such file or folder' });
  t.deepEqual(rows[3], { query: missing, error: 'no such object' });
  t.regex('error' in rows[4]! ? rows[4].error : '', /names a folder/);
  t.deepEqual(rows[5], { query: 'gone.png', error: 'no such file or folder' });

  // The table escapes the query's control characters.
  const table = await runCli(dep.env, ['similar', 'pets', text, heldBackDogs[0]!]);
  t.is(table.code, 0, table.stderr);
  t.false(table.stdout.includes('\x1b'));
  // A failed query's row: '-' for the neighbour columns, its reason in the last (error) column.
  t.regex(table.stdout, /^query +rank +key +label +split +similarity +error$/m);
  t.regex(table.stdout, /notes\\x1b\[2J\.png +- +- +- +- +- +not an image: /);

  const none = await runCli(dep.env, ['similar', 'pets', text, join(dir, 'gone.png')]);
  t.is(none.code, 2);
  t.regex(none.stdout, /no such file/);
});

test.serial('bad requests exit 2 with the fix: unknown model or run, bad -k, --split, --memory', async (t) => {
  t.timeout(120_000);
  const q = heldBackDogs[0] ?? 'x.png';
  const cases: Array<[string[], RegExp]> = [
    [['similar', 'no-such-model', q], /no model named no-such-model/],
    [['similar', 'pets@r20990101000000-abcdef', q], /not found/],
    [['similar', 'r20990101000000-abcdef', q], /unknown run id r20990101000000-abcdef/],
    [['similar', 'pets', q, '-k', '0'], /-k "0": expected a whole number from 1 to 1000/],
    [['similar', 'pets', q, '--split', 'everything'], /--split.*everything.*train, val, test, all/s],
    [['similar', 'pets', q, '--memory', 'lots'], /--memory "lots": expected a whole number/],
    [['similar', 'pets'], /missing required argument 'queries'/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(dep.env, args);
    t.is(r.code, 2, args.join(' '));
    t.regex(r.stderr, message, args.join(' '));
  }
});

test.serial('a run too large for the budget is refused before its rows are read', async (t) => {
  t.timeout(60_000);
  if (!published(t)) return;
  const budget = { bytes: 100_000, source: '--memory (test)' };
  const err = await t.throwsAsync(
    loadRunIndex(dep.client.s3, dep.config.bucket, run.runId, { shards: run.shards, images: run.done, budget }),
    { instanceOf: DatasetError },
  );
  t.regex(
    err!.message,
    new RegExp(`run ${run.runId} is too large to search in this process: ${run.done} images × 1632 features`),
  );
  t.regex(err!.message, /over the budget of 1 MiB \(--memory \(test\)\)/);
  // Without the status's count, the exact size refuses it once the rows are listed, before the matrix.
  await t.throwsAsync(loadRunIndex(dep.client.s3, dep.config.bucket, run.runId, { shards: run.shards, budget }), {
    instanceOf: DatasetError,
    message: /too large to search/,
  });
});

test.serial('a run with features and no model yet is searched with its feature spec', async (t) => {
  t.timeout(300_000);
  if (!published(t)) return;
  // No trainer: the run waits for one with every shard extracted.
  await workers.trainer!.stop();
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/pets/`, name: 'pets-unpublished' });
  let s = await getStatus(dep.client, runId);
  while (s.stage !== 'failed' && !(s.shards > 0 && s.shardsDone === s.shards)) {
    await new Promise((r) => setTimeout(r, 500));
    s = await getStatus(dep.client, runId);
  }
  t.not(s.stage, 'failed', s.error?.message);
  t.is(s.model, null);
  unpublishedRun = s;
  const [viaEngine, viaModel] = await Promise.all([
    runCli(dep.env, ['similar', runId, heldBackDogs[0]!, '--json']),
    runCli(dep.env, ['similar', 'pets', heldBackDogs[0]!, '--json']),
  ]);
  t.is(viaEngine.code, 0, viaEngine.stderr);
  t.is(viaModel.code, 0, viaModel.stderr);
  const [a] = parseLines(viaEngine.stdout);
  const [b] = parseLines(viaModel.stdout);
  if (!a || !b || !('neighbours' in a) || !('neighbours' in b))
    return t.fail(`${viaEngine.stdout}\n${viaModel.stdout}`);
  // The same images, split and backbone: the same neighbours, within the engines' rounding.
  t.deepEqual(
    a.neighbours.map((x) => x.key),
    b.neighbours.map((x) => x.key),
  );
  for (const [i, x] of a.neighbours.entries()) t.true(Math.abs(x.similarity - b.neighbours[i]!.similarity) < 1e-4);

  // A prediction run stores no features: refused with the way out.
  const predictRun = await enqueuePredict(dep.client, { model: 'pets', source: `s3://${dep.dataBucket}/pets/dog/` });
  const refused = await runCli(dep.env, ['similar', predictRun, heldBackDogs[0]!]);
  t.is(refused.code, 2);
  t.regex(
    refused.stderr,
    new RegExp(`run ${predictRun} is a prediction run: .*give the model it used \\("pets@${run.runId}"\\)`),
  );
});

test.serial('the index cache keeps runs by last use within its budget and shares a read', async (t) => {
  t.timeout(60_000);
  if (!published(t) || !unpublishedRun) return t.fail('both runs are needed');
  const o = { shards: run.shards, images: run.done };
  const other = unpublishedRun;
  // At most one index: a second run drops the first.
  const one = new RunIndexCache({ budget: { bytes: 64 * 2 ** 20, source: 'test' }, maxEntries: 1 });
  const [a, b] = await Promise.all([
    one.get(dep.client.s3, dep.config.bucket, run.runId, o),
    one.get(dep.client.s3, dep.config.bucket, run.runId, o),
  ]);
  t.is(a, b); // one read for both
  t.is(a.rows, run.done);
  t.is(a.d, 1632); // the default multi-scale features: 2 × 816
  for (let i = 0; i < 3; i++) {
    const norm = Math.sqrt(a.X.subarray(i * a.d, (i + 1) * a.d).reduce((s, x) => s + x * x, 0));
    t.true(Math.abs(norm - 1) < 1e-5);
  }
  t.is(await one.get(dep.client.s3, dep.config.bucket, run.runId, o), a); // kept
  t.deepEqual(one.runIds, [run.runId]);
  await one.get(dep.client.s3, dep.config.bucket, other.runId, { shards: other.shards, images: other.done });
  t.deepEqual(one.runIds, [other.runId]);
  t.not(await one.get(dep.client.s3, dep.config.bucket, run.runId, o), a); // read again

  // A budget that holds one index: the least recently used goes first.
  const budget = { bytes: Math.floor(a.bytes * 1.5), source: 'test' };
  const small = new RunIndexCache({ budget });
  await small.get(dep.client.s3, dep.config.bucket, run.runId, o);
  await small.get(dep.client.s3, dep.config.bucket, other.runId, { shards: other.shards, images: other.done });
  t.deepEqual(small.runIds, [other.runId]);
  t.true(small.bytes <= budget.bytes);
});
