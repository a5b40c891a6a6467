/**
 * A real run (planner, extractor, trainer and evaluator as separate processes, real Redis and S3
 * server) publishes runs/<id>/report.html: self-contained, with the run's metrics, its confusion
 * matrix as SVG, the failed images with reasons, thumbnails of confident mistakes and throughput;
 * and the server's report page renders the same run.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { renderRunListPage, renderRunReportPage } from '../services/api/report.js';
import { RAW_PIXELS } from '../shared/features.js';
import { getObjectJson, getObjectText, headObject } from '../shared/s3.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const PER_CLASS = 40;
let dep: Deployment;
let workers: WorkerProcess[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '16' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  // A bad file whose key would be markup if it were not escaped.
  await dep.put('pets/cat/<img src=x onerror=alert(1)>.jpg', 'not an image\n');
  workers = ['planner', 'extractor', 'trainer', 'evaluator'].map((k) => spawnWorker(dep.env, k));
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await dep?.close();
});

test.serial('a published run has a self-contained report.html in the bucket, and the server renders it', async (t) => {
  t.timeout(240_000);
  const runId = await enqueueRun(dep.client, {
    source: `s3://${dep.dataBucket}/pets/`,
    name: 'pets',
    features: RAW_PIXELS,
  });
  const s = await waitForRun(dep.client, runId);
  if (s.stage !== 'published') t.log(workers.map((w) => w.output()).join('\n'));
  t.is(s.stage, 'published', s.error?.message);
  const m = s.metrics!;

  const bucket = dep.config.bucket;
  const head = await headObject(dep.client.s3, bucket, `runs/${runId}/report.html`);
  t.truthy(head);
  const html = await getObjectText(dep.client.s3, bucket, `runs/${runId}/report.html`);
  // Self-contained: no script, no external reference of any kind.
  t.false(/<script/i.test(html));
  t.false(/(src|href)="(?!data:)/i.test(html.replace(/xmlns="[^"]*"/g, '')));
  t.true(html.includes(`id="accuracy">${(m.accuracy * 100).toFixed(1)}%`));
  t.true(html.includes('<span id="stage" class="stage stage-published">published</span>'));
  // The matrix's cells hold the run's confusion matrix, pair by pair.
  const cells = [...html.matchAll(/data-true="(\d+)" data-pred="(\d+)" data-count="(\d+)"/g)];
  t.is(cells.length, m.classes.length ** 2);
  for (const c of cells) t.is(Number(c[3]), m.confusion[Number(c[1])]![Number(c[2])]);
  // The failed image with its reason, escaped.
  t.true(html.includes('pets/cat/&lt;img src=x onerror=alert(1)&gt;.jpg'));
  t.false(html.includes('<img src=x'));
  t.regex(html, /not an image/);

  // report.json: the mistakes with thumbnails of the source images, and throughput samples.
  const extras = await getObjectJson<{
    mistakes: Array<{ key: string; thumbnail?: string; confidence: number }>;
    mistakesTotal: number;
    throughput: Array<{ seconds: number; images: number }>;
  }>(dep.client.s3, bucket, `runs/${runId}/report.json`);
  const wrong = m.testImages - m.confusion.reduce((a, row, i) => a + row[i]!, 0);
  t.is(extras.mistakesTotal, wrong);
  t.is(extras.mistakes.length, Math.min(8, wrong));
  t.true(wrong > 0, 'raw pixels on cats and dogs make mistakes');
  for (const mk of extras.mistakes) {
    t.regex(mk.thumbnail ?? '', /^data:image\/jpeg;base64,/);
    t.true(html.includes(mk.thumbnail!));
  }
  t.true(extras.mistakes.every((x, i, a) => i === 0 || a[i - 1]!.confidence >= x.confidence));
  t.is(extras.throughput.length, s.shards);
  t.is(extras.throughput.at(-1)!.images, s.total);
  t.true(html.includes('<path class="line"'));

  // The server's page: the same run, live-rendered, with the list linking to it.
  const page = await renderRunReportPage(runId, { client: dep.client });
  t.truthy(page);
  t.true(page!.includes(`id="accuracy">${(m.accuracy * 100).toFixed(1)}%`));
  t.is((page!.match(/<rect class="cell"/g) ?? []).length, m.classes.length ** 2);
  t.is((page!.match(/<img src="data:image\/jpeg;base64,/g) ?? []).length, extras.mistakes.length);
  t.is(await renderRunReportPage('r20990101000000-000000', { client: dep.client }), null);
  t.is(await renderRunReportPage('../../etc/passwd', { client: dep.client }), null);
  const list = await renderRunListPage({ client: dep.client });
  t.true(list.includes(`<a href="/reports/${runId}">`));
});
