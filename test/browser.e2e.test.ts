/**
 * The run report in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core; nothing downloaded) opens a real run's report through the API server with a
 * bearer token while the run is still going, follows it live to 'published' under the server's
 * Content-Security-Policy, checks the metrics, the confusion matrix and the mistakes' thumbnails
 * render, saves a screenshot, and is refused without a token or with a wrong one.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import { chromium, type Browser } from 'playwright-core';
import { getStatus } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { enqueueRun } from '../cli/client.js';
import { loadTokens } from '../services/api/auth.js';
import { buildServer } from '../services/api/server.js';
import { RAW_PIXELS } from '../shared/features.js';
import { getObjectText } from '../shared/s3.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'browser-test-token-0123456789abcdef';
const PER_CLASS = 60;

let dep: Deployment;
let workers: WorkerProcess[] = [];
let browser: Browser | undefined;
let server: ReturnType<typeof buildServer> | undefined;
let base = '';

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: '16' });
  const images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  await dep.put('pets/dog/broken.png', 'not a png');
  server = buildServer({ client: dep.client, tokens: loadTokens({ DEEPFEAT_API_TOKENS: `ui:read:${TOKEN}` }) });
  await server.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(server.server.address() as AddressInfo).port}`;
  if (existsSync(CHROMIUM)) browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
});

test.after.always(async () => {
  await browser?.close();
  await server?.close();
  await Promise.all(workers.map((w) => w.stop()));
  await dep?.close();
});

test.serial('the report of a real run renders in Chromium with a token, live until published', async (t) => {
  t.timeout(240_000);
  if (!browser) {
    t.fail(`${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)`);
    return;
  }
  const runId = await enqueueRun(dep.client, {
    source: `s3://${dep.dataBucket}/pets/`,
    name: 'pets',
    features: RAW_PIXELS,
  });
  const context = await browser.newContext({ extraHTTPHeaders: { authorization: `Bearer ${TOKEN}` } });
  const page = await context.newPage();
  const cspViolations: string[] = [];
  page.on('console', (msg) => {
    if (/Content.Security.Policy|Refused to/i.test(msg.text())) cspViolations.push(msg.text());
  });
  // Open the page before any worker runs: the run is queued, and the page must follow it live.
  const first = await page.goto(`${base}/reports/${runId}`);
  t.is(first?.status(), 200);
  t.is(await page.locator('#stage').textContent(), 'queued');
  t.is(await page.locator('body').getAttribute('data-live'), '1');
  t.regex(first?.headers()['content-security-policy'] ?? '', /script-src 'sha256-/);
  workers = ['planner', 'extractor', 'trainer', 'evaluator'].map((k) => spawnWorker(dep.env, k));

  // The page's own script polls the status and reloads on each stage change, up to published.
  await page.waitForSelector('#stage.stage-published', { timeout: 200_000 });
  const s = await getStatus(dep.client, runId);
  t.is(s.stage, 'published', s.error?.message);
  const m = s.metrics!;
  t.is((await page.locator('#accuracy').textContent())?.trim(), `${(m.accuracy * 100).toFixed(1)}%`);
  t.is(await page.locator('svg.confusion rect.cell').count(), m.classes.length ** 2);
  const counts = await page
    .locator('svg.confusion rect.cell')
    .evaluateAll((els) =>
      els.map((e) => [
        Number(e.getAttribute('data-true')),
        Number(e.getAttribute('data-pred')),
        Number(e.getAttribute('data-count')),
      ]),
    );
  for (const [i, j, c] of counts) t.is(c, m.confusion[i!]![j!]);
  // The matrix has a real size on screen, and the thumbnails decoded (img-src data: allowed).
  const box = await page.locator('svg.confusion').boundingBox();
  t.true((box?.width ?? 0) > 50 && (box?.height ?? 0) > 50);
  const widths = await page
    .locator('.mistake img')
    .evaluateAll((els) => els.map((e) => (e as unknown as { naturalWidth: number }).naturalWidth));
  t.true(widths.length > 0);
  t.true(widths.every((w) => w === 64));
  t.is(await page.locator('#per-class tbody tr').count(), m.classes.length);
  t.true((await page.locator('#failures').textContent())?.includes('pets/dog/broken.png'));
  t.deepEqual(cspViolations, []);

  const dir = await mkdtemp(join(tmpdir(), 'deepfeat-browser-'));
  const shot = join(dir, 'report.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.true((await stat(shot)).size > 10_000);
  t.log(`screenshot: ${shot}`);

  // The evaluator's report.html, opened straight from a file as from the bucket: the same
  // pictures under its own <meta> policy, and no script.
  const file = join(dir, 'report.html');
  await writeFile(file, await getObjectText(dep.client.s3, dep.config.bucket, `runs/${runId}/report.html`));
  const fromFile = await context.newPage();
  fromFile.on('console', (msg) => {
    if (/Content.Security.Policy|Refused to/i.test(msg.text())) cspViolations.push(msg.text());
  });
  await fromFile.goto(pathToFileURL(file).href);
  t.is(await fromFile.locator('svg.confusion rect.cell').count(), m.classes.length ** 2);
  t.is((await fromFile.locator('#accuracy').textContent())?.trim(), `${(m.accuracy * 100).toFixed(1)}%`);
  const fileWidths = await fromFile
    .locator('.mistake img')
    .evaluateAll((els) => els.map((e) => (e as unknown as { naturalWidth: number }).naturalWidth));
  t.deepEqual(fileWidths, widths);
  t.is(await fromFile.locator('script').count(), 0);
  t.deepEqual(cspViolations, []);
  await fromFile.close();

  // The run list links to the report.
  await page.goto(`${base}/reports`);
  await page.locator(`a[href="/reports/${runId}"]`).click();
  await page.waitForSelector('#accuracy');
  t.is(new URL(page.url()).pathname, `/reports/${runId}`);
  await context.close();

  // Without a token, and with a wrong one, the page is refused and shows nothing of the run.
  const refused: Array<Record<string, string>> = [{}, { authorization: `Bearer ${TOKEN.replace(/.$/, 'x')}` }];
  for (const headers of refused) {
    const anon = await browser.newContext({ extraHTTPHeaders: headers });
    const p = await anon.newPage();
    const res = await p.goto(`${base}/reports/${runId}`);
    t.is(res?.status(), 401);
    const body = (await p.content()) ?? '';
    t.false(body.includes('accuracy'));
    t.false(body.includes(runId));
    await anon.close();
  }
});
