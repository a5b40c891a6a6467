/**
 * The run report as one self-contained HTML page: stage and progress, metrics per class, the
 * confusion matrix and throughput as inline SVG, the most confident mistakes as data: thumbnails,
 * failures with their reasons. Pure: a function of the run's status and the report's extras.
 * The evaluator writes it as runs/<id>/report.html (static), and `deepfeat serve` renders it live.
 *
 * Everything from users (labels, keys, reasons, the source, the name) goes through userText;
 * images are only data: URIs of JPEG/PNG base64 that this module checks before embedding.
 * The page needs nothing but itself: no external style, font, image or script; it works under
 * REPORT_CSP (its only script, live pages only, is allowed by its sha256).
 */
import { createHash } from 'node:crypto';
import { isFinalStage, type RunStatus } from '../../shared/run-state.js';
import { confusionMatrixSvg, escapeHtml, lineChartSvg, MAX_MATRIX_CLASSES, userText } from './report-svg.js';

/** Most confident mistakes kept in a report. */
export const MAX_MISTAKES = 8;
/** Largest thumbnail data: URI accepted in a report (characters). */
export const MAX_THUMBNAIL_CHARS = 16 * 1024;

/** A test image the published model got wrong, with the probability it gave its wrong answer. */
export interface ReportMistake {
  readonly key: string;
  readonly label: string;
  readonly predicted: string;
  readonly confidence: number;
  /** data:image/jpeg;base64,… of the image as the model saw it (small), when it could be made. */
  readonly thumbnail?: string;
  /** Why there is no thumbnail. */
  readonly thumbnailError?: string;
}

/** Images processed (decoded or failed) by `seconds` after extraction started. */
export interface ThroughputSample {
  readonly seconds: number;
  readonly images: number;
}

/** What a report shows beyond the run's status; the evaluator stores it as runs/<id>/report.json. */
export interface ReportExtras {
  /** Absent while the run is not evaluated. */
  readonly mistakes?: readonly ReportMistake[];
  /** Wrong test predictions in all (mistakes lists the most confident few). */
  readonly mistakesTotal?: number;
  /** One sample per completed shard, by time; see services/evaluator/report-data.ts for the source. */
  readonly throughput: readonly ThroughputSample[];
}

export const reportJsonKey = (runId: string) => `runs/${runId}/report.json`;
export const reportHtmlKey = (runId: string) => `runs/${runId}/report.html`;

/** How often a live page asks for the run's status. */
const POLL_MS = 2000;

/**
 * The live page's only script: polls GET /v1/runs/<id> (same origin, the page's credentials),
 * updates stage and progress, and reloads the page when the stage changes (the server renders
 * the rest). Static text: the CSP allows it by hash, and it reads the run id from the page.
 */
export const REPORT_SCRIPT = `(function () {
  var body = document.body, run = body.getAttribute('data-run'), stage = body.getAttribute('data-stage');
  function show(s) {
    var seen = s.done + s.failed;
    document.getElementById('progress-text').textContent =
      seen + ' / ' + s.total + ' images (' + s.failed + ' failed)' +
      (s.imagesPerSecond ? ', ' + s.imagesPerSecond.toFixed(1) + ' images/s' : '') +
      (s.etaSeconds ? ', about ' + Math.ceil(s.etaSeconds) + ' s left' : '');
    var bar = document.getElementById('progress-bar');
    bar.max = Math.max(1, s.total); bar.value = seen;
  }
  function tick() {
    fetch('/v1/runs/' + encodeURIComponent(run), { headers: { accept: 'application/json' }, cache: 'no-store' })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (s) {
        if (!s || typeof s.stage !== 'string') return;
        if (s.stage !== stage) { location.reload(); return; }
        show(s);
      })
      .catch(function () {})
      .then(function () { setTimeout(tick, ${POLL_MS}); });
  }
  setTimeout(tick, ${POLL_MS});
})();`;

const SCRIPT_HASH = `'sha256-${createHash('sha256').update(REPORT_SCRIPT).digest('base64')}'`;

/**
 * The policy the pages are written for; `deepfeat serve` sends it as a header. Images only as
 * data: URIs, styles inline, the one script by hash, requests only to the page's own origin.
 */
export const REPORT_CSP = [
  "default-src 'none'",
  'img-src data:',
  "style-src 'unsafe-inline'",
  `script-src ${SCRIPT_HASH}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The static file's policy (a <meta>, as the bucket sends no header): no script, no requests. */
const STATIC_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";
/** A live page also carries its policy in a <meta> (minus frame-ancestors, which a meta cannot set). */
const LIVE_META_CSP = REPORT_CSP.split('; ')
  .filter((d) => !d.startsWith('frame-ancestors'))
  .join('; ');

const THUMBNAIL_URI = /^data:image\/(?:jpeg|png);base64,[A-Za-z0-9+/]+={0,2}$/;

/** A thumbnail only when it is a small base64 JPEG or PNG data: URI (a report.json is read back from the bucket). */
export function safeThumbnail(uri: unknown): string | undefined {
  return typeof uri === 'string' && uri.length <= MAX_THUMBNAIL_CHARS && THUMBNAIL_URI.test(uri) ? uri : undefined;
}

const pct = (v: number) => `${(v * 100).toFixed(1)}%`;
const num = (v: number) => (Number.isFinite(v) ? String(v) : '0');

const STYLE = `
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;padding:0 16px;color:#1b1f24}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#57606a}
.stage{display:inline-block;padding:2px 8px;border-radius:10px;background:#ddf4ff}
.stage-failed{background:#ffebe9}.stage-published,.stage-done{background:#dafbe1}
.big{font-size:28px;font-weight:600}.kpis{display:flex;gap:32px;flex-wrap:wrap}
progress{width:100%;height:14px}.mistakes{display:flex;flex-wrap:wrap;gap:14px}
.mistake{width:150px;font-size:12px;word-break:break-all}.mistake img{width:96px;height:96px;image-rendering:pixelated;display:block;border:1px solid #d0d7de}
code{font-size:12px;word-break:break-all}.error{background:#ffebe9;padding:8px 12px;border-radius:6px}`;

export interface RenderOptions {
  readonly status: RunStatus;
  readonly extras?: ReportExtras | null;
  /** A page served live (polls for progress); false for the static file in the bucket. */
  readonly live: boolean;
  /** Link back to the run list (live pages). */
  readonly listHref?: string;
}

function requestSummary(s: RunStatus): { name: string; source: string; features: string } {
  const r = s.request as unknown as Record<string, unknown>;
  const model = r.model as { name?: string; version?: string } | undefined;
  const name = typeof r.name === 'string' ? r.name : model ? `${model.name}@${model.version}` : '';
  const features = r.features ? JSON.stringify(r.features) : 'prediction run';
  return { name, source: typeof r.source === 'string' ? r.source : '', features };
}

function progressSection(s: RunStatus): string {
  const seen = s.done + s.failed;
  const rate = s.imagesPerSecond ? `, ${s.imagesPerSecond.toFixed(1)} images/s` : '';
  const eta = s.etaSeconds ? `, about ${Math.ceil(s.etaSeconds)} s left` : '';
  return `<p><progress id="progress-bar" max="${Math.max(1, s.total)}" value="${seen}"></progress></p>
<p id="progress-text">${seen} / ${s.total} images (${s.failed} failed)${rate}${eta}</p>
<p class="muted">shards ${s.shardsDone} / ${s.shards}; engine ${userText(s.engine ?? '—')}${s.engineInput ? ` at ${userText(s.engineInput)}` : ''}${s.cache ? `; feature cache ${s.cache.hits} hits, ${s.cache.misses} misses` : ''}</p>`;
}

function metricsSection(s: RunStatus): string {
  const m = s.metrics;
  if (!m) return `<h2>Metrics</h2><p class="muted">Metrics appear once the run is evaluated.</p>`;
  const knn = (m.knn?.accuracy ?? []).map((a) => `${a.k}-NN ${pct(a.accuracy)}`).join(', ');
  const rows = m.perClass
    .map(
      (c) =>
        `<tr><td>${userText(c.label, 100)}</td><td class="n">${pct(c.precision)}</td><td class="n">${pct(c.recall)}</td><td class="n">${pct(c.f1)}</td><td class="n">${num(c.support)}</td></tr>`,
    )
    .join('\n');
  const cut =
    m.classes.length > MAX_MATRIX_CLASSES
      ? `<p class="muted">The picture shows the first ${MAX_MATRIX_CLASSES} of ${m.classes.length} classes.</p>`
      : '';
  return `<h2>Metrics</h2>
<div class="kpis"><div><div class="muted">test accuracy</div><div class="big" id="accuracy">${pct(m.accuracy)}</div></div>
<div><div class="muted">macro F1</div><div class="big" id="macro-f1">${pct(m.macroF1)}</div></div>
<div><div class="muted">test images</div><div class="big">${num(m.testImages)}</div></div>
${knn ? `<div><div class="muted">nearest neighbours</div><div class="big">${escapeHtml(knn)}</div></div>` : ''}</div>
<p class="muted">L2 strength ${escapeHtml(String(m.lambda))}, chosen on the validation split.</p>
<h2>Per class</h2>
<table id="per-class"><thead><tr><th>class</th><th class="n">precision</th><th class="n">recall</th><th class="n">F1</th><th class="n">support</th></tr></thead>
<tbody>${rows}</tbody></table>
<h2>Confusion matrix</h2>
<p class="muted">Rows are true labels, columns predicted labels; shade is the share of the true class.</p>
${cut}${confusionMatrixSvg(m.classes, m.confusion)}`;
}

function throughputSection(s: RunStatus, extras: ReportExtras | null | undefined): string {
  const samples = extras?.throughput ?? [];
  if (samples.length === 0) {
    return `<h2>Throughput</h2><p class="muted">No shard has completed yet${s.imagesPerSecond ? `; ${s.imagesPerSecond.toFixed(1)} images/s so far` : ''}.</p>`;
  }
  const points = [{ x: 0, y: 0 }, ...samples.map((p) => ({ x: p.seconds, y: p.images }))];
  const last = samples[samples.length - 1]!;
  const avg = last.seconds > 0 ? last.images / last.seconds : 0;
  return `<h2>Throughput</h2>
<p class="muted">Images processed since extraction started, one point per completed shard (when its job finished): the slope is images/s. Average ${avg.toFixed(1)} images/s.</p>
${lineChartSvg(points, { xLabel: 'seconds since extraction started', yLabel: 'images processed' })}`;
}

function mistakesSection(extras: ReportExtras | null | undefined): string {
  if (!extras?.mistakes) return '';
  if (extras.mistakes.length === 0)
    return '<h2>Most confident mistakes</h2><p class="muted">No test image was misclassified.</p>';
  const items = extras.mistakes
    .map((m) => {
      const thumb = safeThumbnail(m.thumbnail);
      const img = thumb
        ? `<img src="${thumb}" alt="${userText(m.key, 100)}">`
        : `<div class="muted">no picture: ${userText(m.thumbnailError ?? 'not available', 200)}</div>`;
      return `<div class="mistake">${img}<div><b>${userText(m.predicted, 60)}</b> ${pct(m.confidence)}</div><div class="muted">true: ${userText(m.label, 60)}</div><code>${userText(m.key, 200)}</code></div>`;
    })
    .join('\n');
  return `<h2>Most confident mistakes</h2>
<p class="muted">${extras.mistakes.length} of ${extras.mistakesTotal ?? extras.mistakes.length} misclassified test images, most confident first.</p>
<div class="mistakes">${items}</div>`;
}

function failuresSection(s: RunStatus): string {
  const parts: string[] = [];
  if (s.failuresTotal > 0 || s.failures.length > 0) {
    const rows = s.failures
      .map((f) => `<tr><td><code>${userText(f.key, 300)}</code></td><td>${userText(f.reason, 500)}</td></tr>`)
      .join('\n');
    const more =
      s.failuresTotal > s.failures.length
        ? `<p class="muted">The first ${s.failures.length} of ${s.failuresTotal}; <code>deepfeat status ${escapeHtml(s.runId)} --all-failures</code> lists every one.</p>`
        : '';
    parts.push(
      `<h2>Failed images (${s.failuresTotal})</h2><table id="failures"><thead><tr><th>key</th><th>reason</th></tr></thead><tbody>${rows}</tbody></table>${more}`,
    );
  } else {
    parts.push('<h2>Failed images (0)</h2><p class="muted">Every image was read.</p>');
  }
  if (s.skippedTotal > 0) {
    const rows = s.skipped
      .slice(0, 100)
      .map((f) => `<tr><td><code>${userText(f.key, 300)}</code></td><td>${userText(f.reason, 500)}</td></tr>`)
      .join('\n');
    parts.push(
      `<h2>Skipped at planning (${s.skippedTotal})</h2><table><thead><tr><th>key</th><th>reason</th></tr></thead><tbody>${rows}</tbody></table>`,
    );
  }
  return parts.join('\n');
}

/** The whole report page. */
export function renderReportHtml(o: RenderOptions): string {
  const s = o.status;
  const req = requestSummary(s);
  const live = o.live && !(s.stage === 'failed' || isFinalStage(s.stage));
  const csp = o.live ? LIVE_META_CSP : STATIC_CSP;
  const model = s.model
    ? `<p>Published <code>${userText(s.model.uri, 500)}</code>${s.model.classifier ? `, <code>${userText(s.model.classifier, 500)}</code>` : ''}</p>`
    : '';
  const error = s.error
    ? `<p class="error" id="run-error"><b>${escapeHtml(s.error.code)}</b>: ${userText(s.error.message, 2000)}</p>`
    : '';
  const back = o.listHref ? `<p><a href="${escapeHtml(o.listHref)}">all runs</a></p>` : '';
  const safeId = escapeHtml(s.runId);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${escapeHtml(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>deepfeat run ${safeId}${req.name ? ` — ${userText(req.name, 100)}` : ''}</title>
<style>${STYLE}</style></head>
<body data-run="${safeId}" data-stage="${escapeHtml(s.stage)}" data-live="${live ? '1' : '0'}">
${back}<h1>Run <code>${safeId}</code> ${req.name ? userText(req.name, 100) : ''}</h1>
<p>Stage <span id="stage" class="stage stage-${escapeHtml(s.stage)}">${escapeHtml(s.stage)}</span>
<span class="muted">· created ${escapeHtml(s.createdAt)} · updated ${escapeHtml(s.updatedAt)}</span></p>
<p class="muted">source <code>${userText(req.source, 500)}</code> · features <code>${userText(req.features, 500)}</code></p>
${error}${model}
<h2>Progress</h2>
${progressSection(s)}
${metricsSection(s)}
${mistakesSection(o.extras)}
${throughputSection(s, o.extras)}
${failuresSection(s)}
<p class="muted">Report ${o.live ? 'served live' : 'written when the run was published'} by deepfeat.</p>
${live ? `<script>${REPORT_SCRIPT}</script>` : ''}
</body></html>
`;
}

export interface RunListRow {
  readonly runId: string;
  readonly name: string;
  readonly stage: string;
  readonly images: number;
  readonly failed: number;
  readonly accuracy: number | null;
  readonly createdAt: string;
}

/** The run list page: one row per run, newest first, each linking to `href(runId)`. */
export function renderRunListHtml(rows: readonly RunListRow[], href: (runId: string) => string): string {
  const body = rows
    .map(
      (r) =>
        `<tr><td><a href="${escapeHtml(href(r.runId))}"><code>${escapeHtml(r.runId)}</code></a></td><td>${userText(r.name, 100)}</td><td><span class="stage stage-${escapeHtml(r.stage)}">${escapeHtml(r.stage)}</span></td><td class="n">${r.images}</td><td class="n">${r.failed}</td><td class="n">${r.accuracy === null ? '—' : pct(r.accuracy)}</td><td>${escapeHtml(r.createdAt)}</td></tr>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${escapeHtml(STATIC_CSP)}">
<title>deepfeat runs</title><style>${STYLE}</style></head>
<body><h1>Runs</h1>
${rows.length === 0 ? '<p class="muted">No runs yet.</p>' : `<table id="runs"><thead><tr><th>run</th><th>name</th><th>stage</th><th class="n">images</th><th class="n">failed</th><th class="n">accuracy</th><th>created</th></tr></thead><tbody>${body}</tbody></table>`}
</body></html>
`;
}
