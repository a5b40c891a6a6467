/**
 * Run report pages for `deepfeat serve` (issue 15 item 3), server-rendered HTML, no build step.
 *
 * FOR THE SERVER — how to mount:
 *   import { renderRunReportPage, renderRunListPage, REPORT_CSP, reportHref, type ReportDeps } from './report.js';
 *   deps: ReportDeps = { client }   // the same cli/client.ts Client the JSON routes use
 *   GET /reports          → renderRunListPage(deps)            → 200 text/html
 *   GET /reports/:id      → renderRunReportPage(id, deps)      → 200 text/html, or null → 404
 *   Both behind a `read` token. Send `Content-Security-Policy: ${REPORT_CSP}` with them
 *   (a constant: the page's only script is inline and allowed by its sha256, so no nonce).
 *   A live page's script polls GET /v1/runs/:id (the JSON status, as `deepfeat status --json`
 *   prints it: stage, done, failed, total, imagesPerSecond, etaSeconds) every 2 s while the run
 *   is live, same origin with the page's credentials, and reloads the page when the stage changes.
 * An unknown or malformed run id gives null (never throws NotFoundError for it).
 */
import { z } from 'zod';
import { getStatus, type Client } from '../../cli/client.js';
import { NotFoundError } from '../../shared/errors.js';
import { isPredictRequest } from '../../shared/queues.js';
import { isFinalStage, RUN_ID_PATTERN, type RunStatus } from '../../shared/run-state.js';
import { getObjectJson } from '../../shared/s3.js';
import { throughputSamples } from '../evaluator/report-data.js';
import {
  MAX_MISTAKES,
  renderReportHtml,
  renderRunListHtml,
  reportJsonKey,
  type ReportExtras,
  type RunListRow,
} from '../evaluator/report-html.js';

export { REPORT_CSP } from '../evaluator/report-html.js';

/** What the pages read: Redis (live run state) and the artifacts bucket, through the CLI's client. */
export interface ReportDeps {
  readonly client: Client;
}

/** Where a run's report page is served; the list links there. */
export const reportHref = (runId: string): string => `/reports/${runId}`;
/** Where the run list is served. */
export const REPORT_LIST_HREF = '/reports';
/** Runs on the list page, newest first. */
const LIST_LIMIT = 50;

/** report.json as read back from the bucket: checked, so a damaged file cannot break the page. */
const extrasSchema = z.object({
  mistakes: z
    .array(
      z.object({
        key: z.string(),
        label: z.string(),
        predicted: z.string(),
        confidence: z.number().min(0).max(1),
        thumbnail: z.string().optional(),
        thumbnailError: z.string().optional(),
      }),
    )
    .max(MAX_MISTAKES)
    .optional(),
  mistakesTotal: z.number().int().min(0).optional(),
  throughput: z.array(z.object({ seconds: z.number().finite().min(0), images: z.number().finite().min(0) })),
});

/** The evaluator's report.json of a published run; null when there is none (older runs) or it is unreadable. */
async function storedExtras(client: Client, runId: string): Promise<ReportExtras | null> {
  try {
    const parsed = extrasSchema.safeParse(await getObjectJson(client.s3, client.config.bucket, reportJsonKey(runId)));
    return parsed.success ? parsed.data : null;
  } catch (err) {
    if (err instanceof NotFoundError) return null;
    throw err;
  }
}

/** The report's extras: the evaluator's once published, else throughput so far from Redis and the bucket. */
async function reportExtras(client: Client, status: RunStatus): Promise<ReportExtras | null> {
  if (isFinalStage(status.stage)) {
    const stored = await storedExtras(client, status.runId);
    if (stored) return stored;
  }
  if (!client.redis) return null;
  const queue = isPredictRequest(status.request) ? 'predict' : 'extract';
  const throughput = await throughputSamples(client.redis, client.config.queuePrefix, status.runId, queue);
  return { throughput };
}

/** The report of one run as an HTML page; null when there is no such run. */
export async function renderRunReportPage(runId: string, deps: ReportDeps): Promise<string | null> {
  if (!RUN_ID_PATTERN.test(runId)) return null;
  let status: RunStatus;
  try {
    status = await getStatus(deps.client, runId);
  } catch (err) {
    if (err instanceof NotFoundError) return null;
    throw err;
  }
  const extras = await reportExtras(deps.client, status);
  return renderReportHtml({ status, extras, live: true, listHref: REPORT_LIST_HREF });
}

/** The recent runs (those Redis still holds), newest first, each linking to its report. */
export async function renderRunListPage(deps: ReportDeps): Promise<string> {
  const { runs } = deps.client;
  const rows: RunListRow[] = [];
  if (runs) {
    for (const runId of await runs.list(LIST_LIMIT)) {
      const s = await runs.get(runId);
      if (!s) continue;
      const r = s.request as { name?: unknown; model?: { name?: unknown } };
      const name = typeof r.name === 'string' ? r.name : typeof r.model?.name === 'string' ? r.model.name : '';
      rows.push({
        runId,
        name,
        stage: s.stage,
        images: s.total,
        failed: s.failed,
        accuracy: s.metrics?.accuracy ?? null,
        createdAt: s.createdAt,
      });
    }
  }
  return renderRunListHtml(rows, reportHref);
}
