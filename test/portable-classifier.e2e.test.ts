/**
 * Issue 11, items 1 and 2: every published version carries classifier.onnx, and the downloaded
 * folder alone is enough. A fresh Node process that imports only onnxruntime-node and sharp
 * (examples/classify.mjs, the README's snippet) classifies the run's test images from files and
 * reproduces the published accuracy exactly, with the pipeline's probabilities to 1e-4 — for the
 * builtin backbone, raw pixels and a user's TF.js layers model. A backbone the ONNX writer cannot
 * express (a graph op it does not cover) still publishes, and says why.
 */
import { execFileSync, spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, fetchModel, getStatus, waitForRun } from '../cli/client.js';
import { readFeatures } from '../shared/feature-store.js';
import { DEFAULT_FEATURES, RAW_PIXELS, type FeatureSpec } from '../shared/features.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { getObjectBytes, putObject } from '../shared/s3.js';
import { predictProba } from '../shared/softmax-model.js';
import { ROOT, deployment, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';
import { tinyGraphModel, tinyLayersModel } from './helpers/tiny-models.js';

const PER_CLASS = 60;
let dep: Deployment;
let workers: WorkerProcess[] = [];
/** The builtin run's test images as local files, with their labels and the pipeline's probabilities. */
let testFiles: Array<{ file: string; label: string; p: Float64Array }> = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '50' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  const layers = await tinyLayersModel();
  await dep.put('models/layers/model.json', layers.json);
  await dep.put('models/layers/w.bin', layers.weights);
  // A graph model whose Relu is a Softplus: TF.js runs it, the ONNX converter does not cover it.
  const graph = tinyGraphModel();
  const json = JSON.parse(graph.json) as { modelTopology: { node: Array<{ name: string; op: string }> } };
  json.modelTopology.node.find((n) => n.name === 'relu')!.op = 'Softplus';
  await dep.put('models/softplus/model.json', JSON.stringify(json));
  await dep.put('models/softplus/w.bin', graph.weights);
  workers = ['planner', 'trainer', 'evaluator', 'extractor'].map((k) => spawnWorker(dep.env, k));
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await dep?.close();
});

/** Runs examples/classify.mjs in a fresh process: plain Node, no tsx, no deepfeat module. */
function classifyAlone(modelDir: string, files: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, [resolve(ROOT, 'examples/classify.mjs'), modelDir, ...files], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.once('close', (code) => res({ code, out, err }));
  });
}

async function trainAndCheck(t: import('ava').ExecutionContext, name: string, features: FeatureSpec) {
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/pets/`, name, features });
  const s = await waitForRun(dep.client, runId);
  if (s.stage !== 'published') t.log(workers.map((w) => w.output()).join('\n'));
  t.is(s.stage, 'published', s.error?.message);
  t.regex(s.model?.classifier ?? '', new RegExp(`^s3://.*/models/${name}/${runId}/classifier\\.onnx$`));

  // `deepfeat download` writes the whole version folder.
  const dir = await mkdtemp(join(tmpdir(), 'deepfeat-model-'));
  const dl = await runCli(dep.env, ['download', name, '-o', dir]);
  t.is(dl.code, 0, dl.stderr);
  t.regex(dl.stdout, /files +model\.json, classifier\.onnx/);
  t.deepEqual((await readdir(dir)).sort(), ['classifier.onnx', 'model.json']);
  const model = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as ModelArtifact;
  if (model.classifier?.file !== 'classifier.onnx') return t.fail('model.json names no classifier.onnx');
  t.is((await readFile(join(dir, 'classifier.onnx'))).byteLength, model.classifier.bytes);
  t.deepEqual(model.classifier.input.shape, ['N', model.features.input.width, model.features.input.width, 3]);
  t.true(model.classifier.preprocessing.some((p) => /EXIF/.test(p)));

  // The run's test images, as files, and the pipeline's own probabilities for them.
  const testSet = await readFeatures(dep.client.s3, dep.config.bucket, runId, s.shards, ['test']);
  t.is(testSet.n, s.metrics!.testImages);
  const imgDir = await mkdtemp(join(tmpdir(), 'deepfeat-test-images-'));
  const files = await Promise.all(
    testSet.keys.map(async (key, i) => {
      const file = join(imgDir, `${i}-${basename(key)}`);
      await writeFile(file, await getObjectBytes(dep.client.s3, dep.dataBucket, key));
      return file;
    }),
  );
  const alone = await classifyAlone(dir, files);
  t.is(alone.code, 0, alone.err);
  const lines = alone.out
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { file: string; label: string; probabilities: number[] });
  t.is(lines.length, testSet.n);
  let correct = 0;
  let worst = 0;
  lines.forEach((line, i) => {
    t.is(line.file, files[i]);
    if (line.label === testSet.labels[i]) correct++;
    const p = predictProba(model, testSet.X.subarray(i * testSet.d, (i + 1) * testSet.d));
    for (const [c, v] of p.entries()) worst = Math.max(worst, Math.abs(v - line.probabilities[c]!));
  });
  t.log(
    `${name}: ${correct}/${testSet.n} correct alone (published ${s.metrics!.accuracy}); max |Δp| ${worst.toExponential(2)}`,
  );
  t.is(correct / testSet.n, model.metrics.accuracy);
  t.true(worst < 1e-4, `probabilities differ from the pipeline's by ${worst}`);
  return files.map((file, i) => ({
    file,
    label: testSet.labels[i]!,
    p: predictProba(model, testSet.X.subarray(i * testSet.d, (i + 1) * testSet.d)),
  }));
}

test.serial('the builtin backbone: the downloaded folder alone reproduces the published accuracy', async (t) => {
  t.timeout(300_000);
  testFiles = (await trainAndCheck(t, 'pets', DEFAULT_FEATURES)) ?? [];
});

test.serial('raw pixels: the 32x32 classifier.onnx reproduces the published accuracy', async (t) => {
  t.timeout(300_000);
  await trainAndCheck(t, 'pets-raw', RAW_PIXELS);
});

test.serial("a user's layers model: its classifier.onnx reproduces the published accuracy", async (t) => {
  t.timeout(300_000);
  await trainAndCheck(t, 'pets-layers', {
    kind: 'tfjs',
    model: `s3://${dep.dataBucket}/models/layers/model.json`,
    node: 'gap',
  });
});

test.serial(
  'a backbone the ONNX writer cannot express publishes model.json without classifier.onnx, and says why',
  async (t) => {
    t.timeout(300_000);
    const runId = await enqueueRun(dep.client, {
      source: `s3://${dep.dataBucket}/pets/`,
      name: 'pets-softplus',
      features: { kind: 'tfjs', model: `s3://${dep.dataBucket}/models/softplus/model.json`, node: 'relu' },
    });
    const s = await waitForRun(dep.client, runId);
    t.is(s.stage, 'published', s.error?.message);
    t.is(s.model?.classifier, undefined);
    t.regex(s.model?.classifierUnavailable ?? '', /op Softplus \(node relu\) is not covered/);
    const text = await runCli(dep.env, ['status', runId]);
    t.regex(text.stdout, /onnx +none: the backbone cannot be written as ONNX: op Softplus/);
    const dir = await mkdtemp(join(tmpdir(), 'deepfeat-model-'));
    const dl = await runCli(dep.env, ['download', runId, '-o', dir]);
    t.is(dl.code, 0, dl.stderr);
    t.deepEqual(await readdir(dir), ['model.json']);
    t.regex(dl.stdout, /no classifier\.onnx: the backbone cannot be written as ONNX/);
    const model = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as ModelArtifact;
    t.is(model.classifier?.file, null);
  },
);

test.serial('deepfeat predict on local files: top-k table, JSON and CSV; a bad file gets its own row', async (t) => {
  t.timeout(120_000);
  if (testFiles.length === 0) return t.fail('the builtin run did not finish');
  const dir = await mkdtemp(join(tmpdir(), 'deepfeat-predict-'));
  const nested = join(dir, 'more', 'deeper');
  await mkdir(nested, { recursive: true });
  const [a, b, c] = testFiles;
  await copyFile(b!.file, join(nested, 'b.png'));
  await copyFile(c!.file, join(dir, 'more', 'c.png'));
  await writeFile(join(dir, 'more', 'notes.txt'), 'not an image\n');
  await writeFile(join(dir, 'more', '.hidden.png'), 'skipped\n');

  const json = await runCli(dep.env, ['predict', 'pets', a!.file, join(dir, 'more'), join(dir, 'gone.jpg'), '--json']);
  t.is(json.code, 0, json.stderr);
  const rows = json.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { file: string; top?: Array<{ label: string; probability: number }>; error?: string });
  // Arguments in order; a folder's files in name order, recursively, hidden ones skipped.
  t.deepEqual(
    rows.map((r) => r.file),
    [a!.file, join(dir, 'more', 'c.png'), join(nested, 'b.png'), join(dir, 'more', 'notes.txt'), join(dir, 'gone.jpg')],
  );
  // The two-class model gives both labels by default, with the pipeline's probabilities.
  for (const [row, want] of [
    [rows[0]!, a!],
    [rows[1]!, c!],
    [rows[2]!, b!],
  ] as const) {
    t.is(row.top?.length, 2);
    const best = want.p[0]! >= want.p[1]! ? 0 : 1;
    t.is(row.top![0]!.label, ['cat', 'dog'][best]);
    t.true(Math.abs(row.top![0]!.probability - want.p[best]!) < 1e-4);
  }
  t.regex(rows[3]!.error ?? '', /not an image/);
  t.is(rows[4]!.error, 'no such file or folder');

  const table = await runCli(dep.env, ['predict', 'pets', a!.file, join(dir, 'more', 'notes.txt'), '--top', '1']);
  t.is(table.code, 0, table.stderr);
  const lines = table.stdout.trim().split('\n');
  t.regex(lines[0]!, /^file +label +error$/);
  t.regex(lines[1]!, /(cat|dog) \d+\.\d%$/);
  t.regex(lines[2]!, /notes\.txt +- +not an image/);

  const csv = await runCli(dep.env, ['predict', 'pets', a!.file, join(dir, 'gone.jpg'), '--csv']);
  t.is(csv.code, 0, csv.stderr);
  const [header, first, second] = csv.stdout.trim().split('\n');
  t.is(header, 'file,label_1,probability_1,label_2,probability_2,error');
  t.regex(first!, /^[^,]+,(cat|dog),0\.\d{6},(cat|dog),0\.\d{6},$/);
  t.true(second!.endsWith(',,,,,no such file or folder'));

  // Nothing classified: exit 2, and every row still says why.
  const none = await runCli(dep.env, ['predict', 'pets', join(dir, 'more', 'notes.txt'), join(dir, 'gone.jpg')]);
  t.is(none.code, 2);
  t.regex(none.stdout, /no such file or folder/);
  // --top beyond the classes and an unknown model are bad requests.
  const tooMany = await runCli(dep.env, ['predict', 'pets', a!.file, '--top', '5']);
  t.is(tooMany.code, 2);
  t.regex(tooMany.stderr, /--top 5: the model has 2 classes; give 1 to 2/);
  const unknown = await runCli(dep.env, ['predict', 'no-such-model', a!.file]);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /no model named no-such-model/);
});

test.serial('deepfeat predict on hostile paths: FIFOs, links out of a folder, endless files, a terminal', async (t) => {
  t.timeout(120_000);
  if (testFiles.length === 0) return t.fail('the builtin run did not finish');
  const dir = await mkdtemp(join(tmpdir(), 'deepfeat-hostile-'));
  await copyFile(testFiles[0]!.file, join(dir, 'a.png'));
  execFileSync('mkfifo', [join(dir, 'b-fifo.png')]);
  await symlink('/etc/passwd', join(dir, 'c-link.png'));
  const r = await runCli({ ...dep.env, DEEPFEAT_MAX_IMAGE_BYTES: '4096' }, [
    'predict',
    'pets',
    dir,
    '/proc/self/maps', // reports size 0, holds more than the limit
    '--json',
  ]);
  t.is(r.code, 0, r.stderr);
  const rows = r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { file: string; top?: unknown[]; error?: string });
  // The link inside the folder is skipped, never read; the FIFO does not hang the walk.
  t.deepEqual(
    rows.map((x) => x.file),
    [join(dir, 'a.png'), join(dir, 'b-fifo.png'), '/proc/self/maps'],
  );
  t.truthy(rows[0]!.top);
  t.is(rows[1]!.error, 'not a regular file');
  t.regex(rows[2]!.error ?? '', /file too large: what it holds exceeds the limit of 4096 bytes/);
  t.false(r.stdout.includes('root:'));

  // On a terminal the table keeps its lines (only control characters in names are escaped).
  // The name reaches the command through the folder: a shell would not pass an escape in an argument.
  const ttyDir = join(dir, 'tty');
  await mkdir(ttyDir);
  await copyFile(testFiles[0]!.file, join(ttyDir, 'evil\u001b[2Jname.png'));
  await copyFile(testFiles[0]!.file, join(ttyDir, 'plain.png'));
  const cmd = `${process.execPath} --import tsx ${resolve(ROOT, 'cli/main.ts')} predict pets ${ttyDir}`;
  const tty = execFileSync('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, ...dep.env }, cwd: ROOT });
  const text = tty.toString('utf8');
  t.false(text.includes('\u001b[2J'), 'a name with an escape must not clear the screen');
  t.true(text.includes('evil\\x1b[2Jname.png'));
  t.true(text.split(/\r?\n/).filter((l) => /\.png +(cat|dog) /.test(l)).length >= 2, text);
});

test.serial(
  'download writes model.json and classifier.onnx only; a model.json under another name is refused',
  async (t) => {
    t.timeout(60_000);
    const s = await getStatus(dep.client, (await fetchModel(dep.client, 'pets')).artifact.version);
    const version = s.model!.version;
    await putObject(dep.client.s3, dep.config.bucket, `models/pets/${version}/package.json`, '{"scripts":{}}');
    const dir = await mkdtemp(join(tmpdir(), 'deepfeat-model-'));
    await writeFile(join(dir, 'package.json'), 'mine');
    const dl = await runCli(dep.env, ['download', 'pets', '-o', dir]);
    t.is(dl.code, 0, dl.stderr);
    t.is(await readFile(join(dir, 'package.json'), 'utf8'), 'mine');
    t.deepEqual((await readdir(dir)).sort(), ['classifier.onnx', 'model.json', 'package.json']);
    // The same model.json copied under another name is not that model.
    const copy = await getObjectBytes(dep.client.s3, dep.config.bucket, `models/pets/${version}/model.json`);
    await putObject(dep.client.s3, dep.config.bucket, `models/impostor/${version}/model.json`, copy);
    const r = await runCli(dep.env, ['predict', `impostor@${version}`, testFiles[0]!.file]);
    t.is(r.code, 2);
    t.regex(r.stderr, /names itself "pets@r\d+-[0-9a-f]+", which is published at/);
  },
);

test.serial('deepfeat predict on a version without classifier.onnx runs its backbone and head', async (t) => {
  t.timeout(120_000);
  if (testFiles.length === 0) return t.fail('the builtin run did not finish');
  const r = await runCli(dep.env, ['predict', 'pets-softplus', testFiles[0]!.file, '--json']);
  t.is(r.code, 0, r.stderr);
  const row = JSON.parse(r.stdout) as { top: Array<{ label: string; probability: number }> };
  t.is(row.top.length, 2);
  t.true(Math.abs(row.top[0]!.probability + row.top[1]!.probability - 1) < 1e-5);
});

test('the README shows the snippet this test runs, word for word', async (t) => {
  const readme = await readFile(resolve(ROOT, 'README.md'), 'utf8');
  const snippet = await readFile(resolve(ROOT, 'examples/classify.mjs'), 'utf8');
  t.true(readme.includes(snippet.trim()), 'README.md must quote examples/classify.mjs whole');
});
