/**
 * The API in front of the whole pipeline, all real: `deepfeat serve` as its own process (tokens
 * from DEEPFEAT_API_TOKENS_FILE), planner, extractor, trainer and evaluator processes, a spawned
 * redis-server and the S3 server. The README's curl examples (examples/service.sh) run as they
 * are: queue a run over HTTP, follow its events to the end, read its status, list and download
 * the published model's files, classify an image, fetch the OpenAPI document and the metrics.
 * Then the predict route is checked against `deepfeat predict` on the same files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import test from 'ava';
import { loadDemoImages, type DemoImage } from '../cli/demo-data.js';
import { deployment, ROOT, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const ADMIN = 'pipeline-admin-token-0123456789abcdef';
const READ = 'pipeline-read-token-0123456789abcdef';
const PER_CLASS = 30;

let dep: Deployment;
let dir: string;
let serve: ChildProcess;
let serveOutput = '';
let api = '';
const heldBack: DemoImage[] = [];
const workers: WorkerProcess[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '16' });
  dir = await mkdtemp(join(tmpdir(), 'deepfeat-api-'));
  const images = await loadDemoImages({ perClass: PER_CLASS + 2 });
  // The last two of each class are never uploaded: they are the images to classify.
  const byLabel = new Map<string, DemoImage[]>();
  for (const img of images) byLabel.set(img.label, [...(byLabel.get(img.label) ?? []), img]);
  const upload: DemoImage[] = [];
  for (const list of byLabel.values()) {
    upload.push(...list.slice(0, PER_CLASS));
    heldBack.push(...list.slice(PER_CLASS));
  }
  await Promise.all(upload.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  for (const img of heldBack) await writeFile(join(dir, img.name), img.png);
  await writeFile(join(dir, 'tokens'), `# mounted secret\nops:admin:${ADMIN}\ngrafana:read:${READ}\n`);
  workers.push(...['planner', 'extractor', 'trainer', 'evaluator'].map((k) => spawnWorker(dep.env, k)));
  serve = spawn(process.execPath, ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), 'serve', '--port', '0'], {
    cwd: ROOT,
    env: {
      ...process.env,
      ...dep.env,
      DEEPFEAT_API_TOKENS_FILE: join(dir, 'tokens'),
      DEEPFEAT_CACHE_DIR: join(dir, 'cache'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  api = await new Promise<string>((res, rej) => {
    const onData = (d: Buffer) => {
      serveOutput += d;
      const m = /listening on (http:\/\/\S+) /.exec(serveOutput);
      if (m) res(m[1]!);
    };
    serve.stdout!.on('data', onData);
    serve.stderr!.on('data', onData);
    serve.once('exit', (code) => rej(new Error(`deepfeat serve exited ${code}: ${serveOutput}`)));
  });
});

test.after.always(async () => {
  serve?.kill('SIGTERM');
  await Promise.all(workers.map((w) => w.stop()));
  await dep?.close();
});

function sh(
  script: string,
  env: Record<string, string>,
  cwd: string,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((res) => {
    const child = spawn('sh', [script], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.once('close', (code) => res({ code, out, err }));
  });
}

test.serial("the README's curl examples run against deepfeat serve and real workers", async (t) => {
  t.timeout(240_000);
  const image = heldBack[0]!;
  const r = await sh(
    join(ROOT, 'examples/service.sh'),
    { DEEPFEAT_API: api, DEEPFEAT_TOKEN: ADMIN, SOURCE: `s3://${dep.dataBucket}/pets/`, IMAGE: join(dir, image.name) },
    dir,
  );
  t.is(r.code, 0, `${r.err}\n${r.out}\n${serveOutput}`);
  const lines = r.out.split('\n');
  t.deepEqual(JSON.parse(lines[0]!), { status: 'ok' });
  t.is(JSON.parse(lines[1]!).status, 'ready');
  const runId = /^run (r\d{14}-[0-9a-f]{6})$/m.exec(r.out)?.[1];
  t.truthy(runId, r.out);
  // The event stream: progress, then the end with the published run.
  const events = [...r.out.matchAll(/^event: (\w+)\ndata: (.*)$/gm)].map((m) => ({
    event: m[1]!,
    data: JSON.parse(m[2]!),
  }));
  t.true(
    events.some((e) => e.event === 'status' && e.data.stage === 'extracting'),
    JSON.stringify(events.map((e) => e.data.stage)),
  );
  const end = events.at(-1)!;
  t.is(end.event, 'end');
  t.is(end.data.stage, 'published');
  t.is(end.data.model.name, 'pets');
  // The downloaded files are the published version's.
  const model = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8'));
  t.is(model.version, runId);
  const onnx = await readFile(join(dir, 'classifier.onnx'));
  t.is(createHash('sha256').update(onnx).digest('hex'), model.classifier.sha256);
  // The classification of the held-back image.
  const predicted = lines.map((l) => (l.startsWith('{"model"') ? JSON.parse(l) : undefined)).find(Boolean);
  t.deepEqual(predicted.model, { name: 'pets', version: runId });
  t.is(predicted.predictions[0].file, image.name);
  t.deepEqual(predicted.predictions[0].top.map((p: { label: string }) => p.label).sort(), ['cat', 'dog']);
  const openapi = JSON.parse(await readFile(join(dir, 'openapi.json'), 'utf8'));
  t.is(openapi.openapi, '3.0.3');
  t.regex(r.out, /^bullmq_job_count\{queue="extract", state="completed"\} [1-9]/m);
});

test.serial(
  'predict over HTTP gives what `deepfeat predict` gives for the same files, and a reason for a bad one',
  async (t) => {
    t.timeout(120_000);
    const form = new FormData();
    for (const img of heldBack) form.append('image', new Blob([await readFile(join(dir, img.name))]), img.name);
    form.append('image', new Blob([new TextEncoder().encode('not an image')]), 'broken.png');
    form.set('top', '2');
    const res = await fetch(`${api}/v1/models/pets/predict`, {
      method: 'POST',
      headers: { authorization: `Bearer ${READ}` },
      body: form,
    });
    t.is(res.status, 200);
    const body = (await res.json()) as { predictions: Array<{ file: string; top?: unknown; error?: string }> };
    t.is(body.predictions.length, heldBack.length + 1);
    t.regex(body.predictions.at(-1)!.error ?? '', /./);
    const cli = await runCli(dep.env, [
      'predict',
      'pets',
      ...heldBack.map((img) => join(dir, img.name)),
      '--top',
      '2',
      '--json',
    ]);
    t.is(cli.code, 0, cli.stderr);
    const local = cli.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { file: string; top: unknown });
    t.deepEqual(
      body.predictions.slice(0, -1).map((p) => p.top),
      local.map((p) => p.top),
    );
    // A read token may classify; writes still need admin.
    const write = await fetch(`${api}/v1/runs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${READ}`, 'content-type': 'application/json' },
      body: JSON.stringify({ source: `s3://${dep.dataBucket}/pets/` }),
    });
    t.is(write.status, 403);
  },
);

test.serial('metrics after a real run: job durations per queue, runs by stage, the engine, live workers', async (t) => {
  const res = await fetch(`${api}/metrics`, { headers: { authorization: `Bearer ${READ}` } });
  t.is(res.status, 200);
  const text = await res.text();
  for (const queue of ['plan', 'extract', 'train', 'evaluate']) {
    t.regex(text, new RegExp(`^deepfeat_job_duration_seconds\\{queue="${queue}",quantile="0.5"\\} \\d`, 'm'), queue);
  }
  t.regex(text, /^deepfeat_runs\{stage="published"\} 1$/m);
  t.regex(text, /^deepfeat_engine_runs\{engine="[^"]+",backend="[^"]*"\} 1$/m);
  t.regex(text, /^deepfeat_workers\{kind="extractor"\} 1$/m);
  t.regex(text, /^deepfeat_run_images\{state="processed"\} 60$/m);
});
