/**
 * Keys, labels and messages are user data: on a person's terminal (`deepfeat status`) they are
 * capped and their control characters escaped, so an ANSI escape in a key cannot clear, recolour
 * or rewrite the screen; `--json` keeps them exact. Unit tests of the formatter, then the real
 * CLI against a real Redis and S3 with a real planner.
 */
import test from 'ava';
import type { Worker } from 'bullmq';
import { formatDownloaded, formatError, formatStatus, table } from '../cli/format.js';
import { enqueueRun } from '../cli/client.js';
import { startPlannerWorker } from '../services/planner/worker.js';
import { statusFromHash, type RunMetrics, type RunStatus } from '../shared/run-state.js';
import type { RunRequest } from '../shared/queues.js';
import { MAX_MESSAGE_CHARS } from '../shared/text.js';
import { ConfigError } from '../shared/errors.js';
import { createContext, closeContext, type ServiceContext } from '../shared/worker-kit.js';
import { deployment, runCli, type Deployment } from './helpers/pipeline.js';

const ESC = '\u001b';
const CLEAR = `${ESC}[2J${ESC}[H`;
const TITLE = `${ESC}]0;owned${'\u0007'}`;
/** Every byte a terminal acts on, besides the newlines and spaces the CLI lays out itself. */
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

const request: RunRequest = {
  source: `s3://data/${CLEAR}prefix/`,
  name: `m${TITLE}`,
  features: { kind: 'tfjs', model: `s3://data/${ESC}[31mmodel.json`, node: `n${ESC}[0m` },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 50,
};

const badLabel = `cat${CLEAR}`;
const metrics: RunMetrics = {
  accuracy: 0.75,
  macroF1: 0.7,
  perClass: [
    { label: badLabel, precision: 0.5, recall: 0.5, f1: 0.5, support: 2 },
    { label: 'dog\u202eevil', precision: 1, recall: 1, f1: 1, support: 2 },
  ],
  confusion: [
    [1, 1],
    [0, 2],
  ],
  classes: [badLabel, 'dog\u202eevil'],
  testImages: 4,
  lambda: 0.1,
  validation: [],
};

function hostileStatus(): RunStatus {
  const base = statusFromHash('r20260101000000-abcdef', { request: JSON.stringify(request), stage: 'published' }, 0);
  return {
    ...base,
    engine: `onnx${ESC}[5m`,
    backend: 'cpu\r',
    failures: [{ key: `a/${CLEAR}1.jpg`, reason: `not an image: ${TITLE}` }],
    skipped: [{ key: `a/${ESC}[8mhidden.txt`, reason: 'at the top of the prefix, not in a <label>/ folder' }],
    skippedTotal: 1,
    metrics,
    model: { name: `m${TITLE}`, version: 'v', uri: `s3://b/models/m${TITLE}/v/model.json` },
    error: { code: 'INTERNAL', message: `boom\n${CLEAR}model     s3://evil/` },
  };
}

test('formatStatus: no control character from user data reaches the output; each is shown escaped', (t) => {
  const out = formatStatus(hostileStatus());
  t.false(CONTROL.test(out), JSON.stringify(out));
  for (const shown of [
    'a/\\x1b[2J\\x1b[H1.jpg',
    'not an image: \\x1b]0;owned\\x07',
    'a/\\x1b[8mhidden.txt',
    'cat\\x1b[2J',
    'dog\\u202eevil',
    'onnx\\x1b[5m',
    'cpu\\x0d',
  ]) {
    t.true(out.includes(shown), shown);
  }
  // A newline inside a message cannot start a line that looks like the CLI's own.
  t.false(out.split('\n').some((l) => l.startsWith('model     s3://evil/')));
  t.true(out.includes('boom\\x0a\\x1b[2J\\x1b[Hmodel     s3://evil/'));
});

test('formatStatus: a huge key, reason or label is capped on the terminal', (t) => {
  const s = hostileStatus();
  const huge = 'k'.repeat(1 << 20);
  const out = formatStatus({
    ...s,
    failures: [{ key: huge, reason: huge }],
    metrics: { ...metrics, perClass: [{ ...metrics.perClass[0]!, label: huge }] },
    error: { code: 'INTERNAL', message: huge },
  });
  t.true(out.length < 20 * MAX_MESSAGE_CHARS, `${out.length} characters`);
  t.regex(out, /more characters\)/);
});

test('formatStatus: skipped objects are listed with a count of the rest; old run.json without them still prints', (t) => {
  const s = hostileStatus();
  const skipped = Array.from({ length: 30 }, (_, i) => ({ key: `p/stray-${i}`, reason: 'r' }));
  const out = formatStatus({ ...s, skipped, skippedTotal: 5000 }, 10, 10);
  t.regex(out, /skipped {3}\(5000\) objects under the source/);
  t.true(out.includes('  p/stray-9: r'));
  t.false(out.includes('p/stray-10:'));
  t.regex(out, /\.\.\. 4990 more \(--json lists the first 30\)/);
  const { skipped: _s, skippedTotal: _t, ...old } = s;
  t.notRegex(formatStatus(old as RunStatus), /skipped/);
});

test('table, formatDownloaded and formatError escape control characters; formatError keeps its own line breaks', (t) => {
  const d = formatDownloaded(
    'out/model.json',
    {
      name: `m${TITLE}`,
      version: 'v1',
      classes: ['a', 'b'],
      metrics: { accuracy: 0.5 },
      classifier: { file: null, reason: `layers${TITLE}` },
    },
    ['model.json', `extra${TITLE}`],
  );
  t.is(
    d,
    'out/model.json: m\\x1b]0;owned\\x07@v1, 2 classes, test accuracy 50.0%\n' +
      'files     model.json, extra\\x1b]0;owned\\x07\n' +
      'no classifier.onnx: layers\\x1b]0;owned\\x07',
  );
  t.false(
    CONTROL.test(
      table([
        ['a', `b${ESC}[2J`],
        ['c\u0007', 'd'],
      ]),
    ),
  );
  const e = formatError(new ConfigError([`X=${JSON.stringify('\u001b[2J')}`, `raw ${ESC}[31m`]));
  t.is(e.split('\n').length, 3);
  t.false(CONTROL.test(e.replaceAll('\n', '')));
});

// ---------- the real CLI ----------

let dep: Deployment;
let ctx: ServiceContext;
let planner: Worker;

test.before(async () => {
  dep = await deployment({ DEEPFEAT_JOB_ATTEMPTS: '1', LOG_LEVEL: 'silent' });
  ctx = createContext(dep.config, 'planner-test');
  planner = startPlannerWorker(ctx);
});

test.after.always(async () => {
  await planner?.close();
  if (ctx) await closeContext(ctx);
  await dep?.close();
});

async function waitForStage(runId: string, stages: string[]): Promise<RunStatus> {
  for (let i = 0; i < 200; i++) {
    const s = await dep.client.runs!.get(runId);
    if (s && stages.includes(s.stage)) return s;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`run ${runId} did not reach ${stages.join('/')}`);
}

test('CLI status: a run whose keys, labels, reasons, source and model name hold ANSI escapes prints none; --json is exact', async (t) => {
  const runs = dep.client.runs!;
  const runId = 'r20260101000000-0e5c00';
  const failure = { key: `imgs/${CLEAR}1.jpg`, reason: `not an image: ${TITLE}` };
  const stray = { key: `imgs/${ESC}[8mhidden.txt`, reason: 'at the top of the prefix, not in a <label>/ folder' };
  await runs.create(runId, request);
  await runs.setPlan(runId, { total: 4, shards: 1, classes: metrics.classes, counts: {}, skipped: [stray] });
  await runs.setShardProgress(
    runId,
    0,
    { done: 3, failed: 1, complete: true, engine: `onnx${ESC}[5m`, backend: 'cpu' },
    [failure],
  );
  await runs.setResult(runId, metrics, {
    name: request.name,
    version: runId,
    uri: `s3://b/models/${request.name}/${runId}/model.json`,
  });

  const human = await runCli(dep.env, ['status', runId]);
  t.is(human.code, 0, human.stderr);
  t.false(human.stdout.includes(ESC), JSON.stringify(human.stdout));
  t.false(CONTROL.test(human.stdout), JSON.stringify(human.stdout));
  t.true(human.stdout.includes('imgs/\\x1b[2J\\x1b[H1.jpg'));
  t.true(human.stdout.includes('cat\\x1b[2J\\x1b[H'));
  t.true(human.stdout.includes('imgs/\\x1b[8mhidden.txt'));

  const json = await runCli(dep.env, ['status', runId, '--json']);
  t.is(json.code, 0, json.stderr);
  const s = JSON.parse(json.stdout) as RunStatus;
  t.deepEqual(s.failures, [failure]);
  t.deepEqual(s.skipped, [stray]);
  t.deepEqual(s.metrics?.classes, metrics.classes);
  t.is(s.request.source, request.source);
  t.is(s.model?.name, request.name);
});

test('CLI status: a failed run with a 1 MB message full of escapes shows it capped and escaped; --json capped too', async (t) => {
  const runs = dep.client.runs!;
  const runId = 'r20260101000000-0e5c01';
  await runs.create(runId, request);
  await runs.fail(runId, 'DATASET_INVALID', `bad ${CLEAR}${'x'.repeat(1 << 20)}`);
  const human = await runCli(dep.env, ['status', runId]);
  t.not(human.code, 0); // exit code of a failed run: 2 for a dataset error
  t.false(CONTROL.test(human.stdout), JSON.stringify(human.stdout.slice(0, 500)));
  t.true(human.stdout.length < 4 * MAX_MESSAGE_CHARS, `${human.stdout.length} characters`);
  const s = JSON.parse((await runCli(dep.env, ['status', runId, '--json'])).stdout) as RunStatus;
  t.true(s.error!.message.startsWith(`bad ${CLEAR}xxx`));
  t.true(s.error!.message.length <= MAX_MESSAGE_CHARS + 40, `${s.error!.message.length} characters`);
});

test('CLI status: stray objects with terminal controls in their keys, skipped by a real planner, are shown escaped and listed exactly in --json', async (t) => {
  // s3rver refuses keys with C0 controls (ESC) — XML 1.0 cannot carry them in a listing — so
  // these strays use the C1 CSI (U+009B, ESC [ on many terminals) and the right-to-left override.
  const strays = ['hostile/\u009b2Jroot.txt', 'hostile/cat/sub\u202e/3.png'];
  for (const k of ['hostile/cat/1.png', 'hostile/cat/2.png', 'hostile/dog/1.png', 'hostile/dog/2.png', ...strays])
    await dep.put(k, 'x');
  const runId = await enqueueRun(dep.client, { source: `s3://${dep.dataBucket}/hostile/` });
  const live = await waitForStage(runId, ['extracting', 'failed']);
  t.is(live.stage, 'extracting', live.error?.message);
  t.is(live.skippedTotal, 2);

  const human = await runCli(dep.env, ['status', runId]);
  t.false(CONTROL.test(human.stdout), JSON.stringify(human.stdout));
  t.regex(human.stdout, /skipped {3}\(2\)/);
  t.true(human.stdout.includes('hostile/\\x9b2Jroot.txt: at the top of the prefix'), human.stdout);
  t.true(human.stdout.includes('hostile/cat/sub\\u202e/3.png: in a subfolder 1 deep'), human.stdout);

  const s = JSON.parse((await runCli(dep.env, ['status', runId, '--json'])).stdout) as RunStatus;
  t.deepEqual(s.skipped.map((o) => o.key).sort(), [...strays].sort());
  t.is(s.skippedTotal, 2);
});
