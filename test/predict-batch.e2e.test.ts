/**
 * Batch prediction end to end on real parts: redis-server, the S3 server, and planner, extractor,
 * trainer and evaluator processes. Models are trained on real CIFAR cat and dog PNGs (raw pixels,
 * and the shipped backbone for the fault test), then `deepfeat predict` classifies prefixes and
 * manifests as pipeline runs: every key once in the shard files and in predictions.csv, the same
 * probabilities as the model gives the run's own stored features, bad images recorded with their
 * reasons, an extractor SIGKILLed mid-shard losing and doubling nothing, and a missing model or
 * bucket refused at once with exit code 2.
 */
import test from 'ava';
import { parse } from 'csv-parse/sync';
import { Redis } from 'ioredis';
import { loadDemoImages, type DemoImage } from '../cli/demo-data.js';
import { enqueueRun, fetchModel, getFailures, getStatus, isTerminal, waitForRun } from '../cli/client.js';
import { enqueuePredict } from '../cli/predict-client.js';
import { createObjectWriter } from '../services/evaluator/object-upload.js';
import { readFeatures } from '../shared/feature-store.js';
import { DEFAULT_FEATURES, RAW_PIXELS } from '../shared/features.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { predictionLineSchema, predictionsShardKey, type PredictionLine } from '../shared/predictions.js';
import { PREDICT_STAGE_ORDER, RunStore, STAGE_ORDER, type RunStatus } from '../shared/run-state.js';
import { getObjectBytes, getObjectText, listObjects } from '../shared/s3.js';
import { predictProba } from '../shared/softmax-model.js';
import { deployment, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const PER_CLASS = 30;
/** Images per predict job in the fault test: two batches of DEEPFEAT_BATCH_SIZE each. */
const SHARD = 8;
let dep: Deployment;
let images: DemoImage[];
const workers: WorkerProcess[] = [];
/** The extractor the fault test kills. */
let extractor: WorkerProcess;
let rawRun: string;
let deepRun: string;
const petKeys = () => images.map((img) => `pets/${img.label}/${img.name}`).sort();

test.before(async () => {
  dep = await deployment({
    DEEPFEAT_SHARD_SIZE: '16',
    DEEPFEAT_BATCH_SIZE: '4',
    // Every run here must really extract: a cached vector would finish a shard before the fault.
    DEEPFEAT_FEATURE_CACHE: 'off',
  });
  images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  extractor = spawnWorker(dep.env, 'extractor');
  workers.push(
    spawnWorker(dep.env, 'planner'),
    spawnWorker(dep.env, 'trainer'),
    spawnWorker(dep.env, 'evaluator'),
    extractor,
  );
  const source = `s3://${dep.dataBucket}/pets/`;
  rawRun = await enqueueRun(dep.client, { source, name: 'pets-raw', features: RAW_PIXELS });
  deepRun = await enqueueRun(dep.client, { source, name: 'pets-deep', features: DEFAULT_FEATURES });
  for (const id of [rawRun, deepRun]) {
    const s = await waitForRun(dep.client, id);
    if (s.stage !== 'published') throw new Error(`training run ${id} ${s.stage}: ${s.error?.message}`);
  }
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await dep?.close();
});

/** Every line of the run's predictions/<shard>.jsonl files, in shard order. */
async function predictionLines(s: RunStatus): Promise<PredictionLine[]> {
  const out: PredictionLine[] = [];
  for (let shard = 0; shard < s.shards; shard++) {
    const text = await getObjectText(dep.client.s3, dep.config.bucket, predictionsShardKey(s.runId, shard));
    for (const line of text.split('\n').filter(Boolean)) out.push(predictionLineSchema.parse(JSON.parse(line)));
  }
  return out;
}

/** predictions.csv as rows of cells (header first), read by a standard CSV parser. */
async function predictionsCsv(runId: string): Promise<string[][]> {
  return parse(await getObjectText(dep.client.s3, dep.config.bucket, `runs/${runId}/predictions.csv`)) as string[][];
}

/** The model's probabilities for the training run's own stored test features, by key. */
async function expectedTestProbabilities(runId: string, model: ModelArtifact): Promise<Map<string, Float64Array>> {
  const s = await getStatus(dep.client, runId);
  const test = await readFeatures(dep.client.s3, dep.config.bucket, runId, s.shards, ['test']);
  const out = new Map<string, Float64Array>();
  for (let i = 0; i < test.n; i++)
    out.set(test.keys[i]!, predictProba(model, test.X.subarray(i * test.d, (i + 1) * test.d)));
  return out;
}

const argmax = (p: ArrayLike<number>) => {
  let best = 0;
  for (let c = 1; c < p.length; c++) if (p[c]! > p[best]!) best = c;
  return best;
};

test.serial(
  'a batch prediction over a prefix: every key once, the model’s own probabilities, status done',
  async (t) => {
    t.timeout(180_000);
    const r = await runCli(dep.env, ['predict', 'pets-raw', `s3://${dep.dataBucket}/pets/`, '--wait', '--json']);
    t.is(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as RunStatus;
    t.is(s.stage, 'done', s.error?.message);
    t.is(s.total, 2 * PER_CLASS);
    t.is(s.done, 2 * PER_CLASS);
    t.is(s.failed, 0);
    t.is(s.shards, Math.ceil((2 * PER_CLASS) / 16));
    t.true((s.imagesPerSecond ?? 0) > 0);
    t.is(s.predictions?.uri, `s3://${dep.config.bucket}/runs/${s.runId}/predictions.csv`);
    t.deepEqual({ ...s.predictions, uri: '' }, { uri: '', images: 2 * PER_CLASS, predicted: 2 * PER_CLASS, failed: 0 });

    // The shard files: every key under the prefix exactly once, each with both labels (top defaults
    // to min(3, classes)).
    const lines = await predictionLines(s);
    t.deepEqual(lines.map((l) => l.key).sort(), petKeys());
    t.true(lines.every((l) => 'top' in l && l.top.length === 2));
    // predictions.csv holds the same, one row per key.
    const [header, ...rows] = await predictionsCsv(s.runId);
    t.deepEqual(header, ['key', 'label_1', 'probability_1', 'label_2', 'probability_2', 'error']);
    t.deepEqual(rows.map((row) => row[0]).sort(), petKeys());

    // The top label and probability are the model's on the training run's stored test features.
    const { artifact } = await fetchModel(dep.client, 'pets-raw');
    const expected = await expectedTestProbabilities(rawRun, artifact);
    t.true(expected.size >= 10);
    const byKey = new Map(lines.map((l) => [l.key, l]));
    const csvByKey = new Map(rows.map((row) => [row[0]!, row]));
    for (const [key, p] of expected) {
      const best = argmax(p);
      const line = byKey.get(key)!;
      t.true('top' in line, key);
      if (!('top' in line)) continue;
      t.is(line.top[0]!.label, artifact.classes[best], key);
      t.true(
        Math.abs(line.top[0]!.probability - p[best]!) <= 1e-6,
        `${key}: ${line.top[0]!.probability} vs ${p[best]}`,
      );
      const row = csvByKey.get(key)!;
      t.is(row[1], artifact.classes[best]);
      t.is(row[2], p[best]!.toFixed(6));
    }

    // status (from the CLI) says where the results are, and still does once Redis has forgotten the run.
    const text = await runCli(dep.env, ['status', s.runId]);
    t.is(text.code, 0, text.stderr);
    t.regex(text.stdout, /stage {5}done/);
    t.regex(text.stdout, new RegExp(`model     pets-raw@${rawRun}, top 2`));
    t.true(
      text.stdout.includes(
        `results   ${s.predictions!.uri}  (${2 * PER_CLASS} images: ${2 * PER_CLASS} classified, 0 failed)`,
      ),
    );
    const redis = new Redis(dep.redis.url);
    try {
      await redis.del(`${dep.config.queuePrefix}:run:${s.runId}`, `${dep.config.queuePrefix}:run:${s.runId}:failures`);
    } finally {
      await redis.quit();
    }
    const stored = await getStatus(dep.client, s.runId);
    t.is(stored.stage, 'done');
    t.deepEqual(stored.predictions, s.predictions);
  },
);

test.serial('bad images are recorded with their reasons in the csv and in status; the run completes', async (t) => {
  t.timeout(120_000);
  const good = images.slice(0, 6);
  await Promise.all(good.map((img) => dep.put(`odd/${img.name}`, img.png)));
  await dep.put('odd/garbage.jpg', Buffer.from('\x00\x01 definitely not a picture \xff'.repeat(20), 'latin1'));
  await dep.put('odd/sub/truncated.png', good[0]!.png.subarray(0, Math.floor(good[0]!.png.length / 2)));
  await dep.put('odd/readme.txt', 'notes about the photos');
  const runId = await enqueuePredict(dep.client, { model: 'pets-raw', source: `s3://${dep.dataBucket}/odd/`, top: 1 });
  const s = await waitForRun(dep.client, runId);
  t.is(s.stage, 'done', s.error?.message);
  t.is(s.total, 8);
  t.is(s.done, 6);
  t.is(s.failed, 2);
  t.deepEqual(
    s.failures.map((f) => f.key),
    ['odd/garbage.jpg', 'odd/sub/truncated.png'],
  );
  t.regex(s.failures[0]!.reason, /not an image/);
  t.regex(s.failures[1]!.reason, /truncated|corrupt|premature|png/i);
  t.deepEqual(
    s.skipped.map((o) => o.key),
    ['odd/readme.txt'],
  );
  t.deepEqual(s.predictions && { ...s.predictions, uri: '' }, { uri: '', images: 8, predicted: 6, failed: 2 });
  const [header, ...rows] = await predictionsCsv(runId);
  t.deepEqual(header, ['key', 'label_1', 'probability_1', 'error']);
  t.is(rows.length, 8);
  const byKey = new Map(rows.map((row) => [row[0]!, row]));
  for (const f of s.failures) t.deepEqual(byKey.get(f.key), [f.key, '', '', f.reason]);
  for (const img of good) t.regex(byKey.get(`odd/${img.name}`)![2]!, /^[01]\.\d{6}$/);
  // --all-failures reads the same reasons.
  const all: string[] = [];
  for await (const f of getFailures(dep.client, runId)) all.push(f.key);
  t.deepEqual(all, ['odd/garbage.jpg', 'odd/sub/truncated.png']);
});

test.serial('a manifest source: only the keys it lists, in its order; labels optional', async (t) => {
  t.timeout(120_000);
  const keys = petKeys();
  const picked = [keys[5]!, keys[0]!, keys[40]!];
  await dep.put('lists/some.csv', `key,label\n${picked[0]},cat\n${picked[1]},\n"${picked[2]}",dog\n`);
  const r = await runCli(dep.env, ['predict', `pets-raw@${rawRun}`, `s3://${dep.dataBucket}/lists/some.csv`, '--wait']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /stage {5}done/);
  const runId = /run\s+(r\d{14}-[0-9a-f]{6})/.exec(r.stdout)![1]!;
  const [, ...rows] = await predictionsCsv(runId);
  t.deepEqual(
    rows.map((row) => row[0]),
    picked,
  );
  const lines = await predictionLines(await getStatus(dep.client, runId));
  t.deepEqual(
    lines.map((l) => l.label),
    ['cat', undefined, 'dog'],
  );
});

test.serial(
  'an extractor SIGKILLed mid-shard: another finishes, every key exactly once, counts never past the total',
  async (t) => {
    t.timeout(240_000);
    const runId = await enqueuePredict(dep.client, {
      model: 'pets-deep',
      source: `s3://${dep.dataBucket}/pets/`,
      shardSize: SHARD,
    });
    let s = await getStatus(dep.client, runId);
    const seen: RunStatus[] = [];
    // Until a shard is part done (more images processed than the completed shards hold: the
    // extractor is between two batches of it), then kill that extractor.
    const midShard = (st: RunStatus) => st.stage === 'predicting' && st.done + st.failed > st.shardsDone * SHARD;
    for (let i = 0; i < 2400 && !midShard(s) && !isTerminal(s); i++) {
      await new Promise((r) => setTimeout(r, 50));
      s = await getStatus(dep.client, runId);
      seen.push(s);
    }
    t.true(midShard(s), `the extractor should be mid-shard when it is killed: ${JSON.stringify(s)}`);
    await extractor.stop('SIGKILL');
    const replacement = spawnWorker(dep.env, 'extractor');
    workers.push(replacement);
    while (!isTerminal(s)) {
      await new Promise((r) => setTimeout(r, 100));
      s = await getStatus(dep.client, runId);
      seen.push(s);
    }
    t.is(s.stage, 'done', s.error?.message ?? replacement.output());
    t.is(s.shards, Math.ceil((2 * PER_CLASS) / SHARD));
    for (const st of seen)
      t.true(st.done + st.failed <= st.total || st.total === 0, `${st.done}+${st.failed}/${st.total}`);
    t.is(s.done + s.failed, 2 * PER_CLASS);
    const lines = await predictionLines(s);
    t.deepEqual(lines.map((l) => l.key).sort(), petKeys());
    const [, ...rows] = await predictionsCsv(runId);
    const csvKeys = rows.map((row) => row[0]!);
    t.is(new Set(csvKeys).size, csvKeys.length);
    t.deepEqual([...csvKeys].sort(), petKeys());

    // The backbone's predictions are the model's on the training run's own features.
    const { artifact } = await fetchModel(dep.client, 'pets-deep');
    t.is(artifact.features.dim, 2 * 816); // multi-scale: 224 ‖ 112
    const expected = await expectedTestProbabilities(deepRun, artifact);
    const byKey = new Map(lines.map((l) => [l.key, l]));
    for (const [key, p] of expected) {
      const line = byKey.get(key)!;
      if (!('top' in line)) {
        t.fail(`${key}: ${JSON.stringify(line)}`);
        continue;
      }
      t.is(line.top[0]!.label, artifact.classes[argmax(p)], key);
      t.true(Math.abs(line.top[0]!.probability - p[argmax(p)]!) <= 1e-4, key);
    }
  },
);

test.serial(
  'a missing model, a missing bucket, and misused flags fail at once with exit code 2 and one line',
  async (t) => {
    t.timeout(120_000);
    const before = await dep.client.runs!.list(1000);
    const cases: Array<[string[], RegExp]> = [
      [['predict', 'nosuch', `s3://${dep.dataBucket}/pets/`], /no model named nosuch/],
      [
        ['predict', 'pets-raw', 's3://no-such-bucket-here/pets/'],
        /no such bucket for "s3:\/\/no-such-bucket-here\/".*create it/,
      ],
      [['predict', 'pets-raw', `s3://${dep.dataBucket}/pets/`, '--csv'], /--csv is for local files/],
      [['predict', 'pets-raw', `s3://${dep.dataBucket}/a/`, `s3://${dep.dataBucket}/b/`], /one source/],
      [['predict', 'pets-raw', `s3://${dep.dataBucket}/pets/`, '--top', '3'], /has 2 classes; ask for 1 to 2/],
      [['predict', 'pets-raw', `s3://${dep.dataBucket}/pets/`, '--top', '0'], /--top "0": expected a whole number/],
    ];
    for (const [args, message] of cases) {
      const r = await runCli(dep.env, args);
      t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      t.regex(r.stderr, message, args.join(' '));
      t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
      t.is(r.stdout, '');
    }
    t.deepEqual(await dep.client.runs!.list(1000), before, 'nothing was recorded');
  },
);

test.serial('predictions.csv over one part is sent as a multipart upload, byte for byte', async (t) => {
  const key = 'runs/multipart-check/predictions.csv';
  const out = createObjectWriter(dep.client.s3, dep.config.bucket, key, 'text/csv', 1024);
  const chunks = Array.from({ length: 40 }, (_, i) => `row ${i},${'x'.repeat(100 + i)}\r\n`);
  for (const c of chunks) await out.write(c);
  const { bytes, parts } = await out.finish();
  t.true(parts > 2, `${parts} parts`);
  const stored = Buffer.from(await getObjectBytes(dep.client.s3, dep.config.bucket, key)).toString('utf8');
  t.is(stored, chunks.join(''));
  t.is(bytes, Buffer.byteLength(stored));
  // A small object is one PUT; an aborted one leaves nothing.
  const small = createObjectWriter(
    dep.client.s3,
    dep.config.bucket,
    'runs/multipart-check/small.csv',
    'text/csv',
    1024,
  );
  await small.write('a,b\r\n');
  t.deepEqual(await small.finish(), { bytes: 5, parts: 1 });
  const dropped = createObjectWriter(
    dep.client.s3,
    dep.config.bucket,
    'runs/multipart-check/dropped.csv',
    'text/csv',
    8,
  );
  await dropped.write('more than eight bytes');
  await dropped.abort();
  const left: string[] = [];
  for await (const o of listObjects(dep.client.s3, dep.config.bucket, 'runs/multipart-check/')) left.push(o.key);
  t.deepEqual(left.sort(), ['runs/multipart-check/predictions.csv', 'runs/multipart-check/small.csv']);
});

test.serial(
  'stages: a prediction run moves along its own order, never onto a training run’s, and ends at done',
  async (t) => {
    const redis = new Redis(dep.redis.url);
    const store = new RunStore(redis, `${dep.config.queuePrefix}-stages`);
    try {
      const req = (await getStatus(dep.client, rawRun)).request;
      await store.create('p1', {
        kind: 'predict',
        source: 's3://b/x/',
        model: { name: 'm', version: rawRun, key: `models/m/${rawRun}/model.json` },
        top: 1,
        shardSize: 4,
      });
      t.true(await store.setStage('p1', 'planning'));
      t.false(await store.setStage('p1', 'extracting'), 'a prediction run never extracts');
      await store.setPlan('p1', { total: 4, shards: 1, classes: ['a', 'b'], counts: {} }, 'predicting');
      t.is((await store.get('p1'))?.stage, 'predicting');
      t.false(await store.setStage('p1', 'training'));
      t.false(await store.setStage('p1', 'planning'));
      await store.setPredictions('p1', { uri: 's3://b/runs/p1/predictions.csv', images: 4, predicted: 4, failed: 0 });
      t.is((await store.get('p1'))?.stage, 'done');
      for (const stage of [...STAGE_ORDER, ...PREDICT_STAGE_ORDER]) t.false(await store.setStage('p1', stage), stage);
      await store.fail('p1', 'INTERNAL', 'late');
      t.is((await store.get('p1'))?.stage, 'done', 'a done run never fails afterwards');
      // A training run's order is unchanged, and it never moves onto the prediction track.
      await store.create('t1', req);
      t.true(await store.setStage('t1', 'planning'));
      t.false(await store.setStage('t1', 'predicting'), 'a training run never predicts');
      t.true(await store.setStage('t1', 'extracting'));
      t.false(await store.setStage('t1', 'collecting'));
      t.false(await store.setStage('t1', 'done'));
      t.true(await store.setStage('t1', 'training'));
      t.true(await store.setStage('t1', 'published'));
      // A run recorded before prediction runs existed has no kind: it is a training run.
      await redis.hset(`${dep.config.queuePrefix}-stages:run:old`, { request: JSON.stringify(req), stage: 'planning' });
      t.false(await store.setStage('old', 'predicting'));
      t.true(await store.setStage('old', 'extracting'));
    } finally {
      await redis.quit();
    }
  },
);
