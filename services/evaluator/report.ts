/**
 * Writes a run's report at publish time: runs/<id>/report.json (the extras: the most confident
 * mistakes with thumbnails, throughput samples) and runs/<id>/report.html (the same page
 * `deepfeat serve` shows, static and self-contained, so it opens straight from the bucket).
 */
import { putJson, putObject } from '../../shared/s3.js';
import type { LinearSoftmaxModel } from '../../shared/softmax-model.js';
import type { RunStatus } from '../../shared/run-state.js';
import type { ServiceContext } from '../../shared/worker-kit.js';
import { confidentMistakes, type TestRows, throughputSamples, withThumbnails } from './report-data.js';
import { renderReportHtml, reportHtmlKey, reportJsonKey, type ReportExtras } from './report-html.js';

export interface RunReportInputs {
  readonly runId: string;
  /** The run's status as it will read once published (stage, metrics and model set). */
  readonly status: RunStatus;
  readonly source: string;
  readonly model: LinearSoftmaxModel;
  readonly test: TestRows;
}

/** Writes report.json, then report.html; returns the html's key. */
export async function writeRunReport(ctx: ServiceContext, a: RunReportInputs): Promise<string> {
  const bucket = ctx.config.bucket;
  const { mistakes, total } = confidentMistakes(a.model, a.test);
  const { maxImageBytes, maxImagePixels, imageFormats } = ctx.config.extractor;
  const extras: ReportExtras = {
    mistakes: await withThumbnails(ctx.s3, a.source, mistakes, {
      maxImageBytes,
      maxImagePixels,
      formats: imageFormats,
    }),
    mistakesTotal: total,
    throughput: await throughputSamples(ctx.redis, ctx.config.queuePrefix, a.runId),
  };
  await putJson(ctx.s3, bucket, reportJsonKey(a.runId), extras);
  const html = renderReportHtml({ status: a.status, extras, live: false });
  const key = reportHtmlKey(a.runId);
  await putObject(ctx.s3, bucket, key, html, 'text/html; charset=utf-8');
  return key;
}
