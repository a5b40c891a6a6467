/** The run report's renderer: escaping of user text, the confusion matrix's SVG values, thumbnails, mistakes. */
import { createHash } from 'node:crypto';
import test from 'ava';
import { confidentMistakes } from '../services/evaluator/report-data.js';
import {
  REPORT_CSP,
  REPORT_SCRIPT,
  renderReportHtml,
  renderRunListHtml,
  safeThumbnail,
  type ReportExtras,
} from '../services/evaluator/report-html.js';
import { confusionMatrixSvg, escapeHtml, lineChartSvg, MAX_MATRIX_CLASSES } from '../services/evaluator/report-svg.js';
import { statusFromHash, type RunMetrics, type RunStatus } from '../shared/run-state.js';

const EVIL = '<script>alert(1)</script>"\'&\u202e\u001b[2J';

function status(over: Partial<RunStatus> = {}): RunStatus {
  const h = {
    request: JSON.stringify({ source: `s3://data/${EVIL}/`, name: 'pets', features: { kind: 'raw-pixels', size: 32 } }),
    stage: 'published',
    createdAt: '2026-11-30T06:00:00.000Z',
    updatedAt: '2026-11-30T06:01:00.000Z',
    total: '12',
    shards: '1',
    'shard:0': JSON.stringify({ done: 10, failed: 2, complete: true }),
  };
  return { ...statusFromHash('r20261130060000-abcdef', h, Date.now()), ...over };
}

const metrics: RunMetrics = {
  accuracy: 0.75,
  macroF1: 0.7321,
  perClass: [
    { label: 'cat', precision: 0.8, recall: 0.6667, f1: 0.7273, support: 6 },
    { label: EVIL, precision: 0.7, recall: 0.8, f1: 0.7467, support: 4 },
  ],
  confusion: [
    [4, 2],
    [1, 3],
  ],
  classes: ['cat', EVIL],
  testImages: 10,
  lambda: 0.01,
  validation: [],
};

/** Every `<script` in a page: the renderer's own, or none. */
const scripts = (html: string) => html.match(/<script/gi) ?? [];

test('user text is escaped everywhere: labels, keys, reasons, source, mistakes', (t) => {
  const extras: ReportExtras = {
    mistakes: [{ key: `cats/${EVIL}.png`, label: EVIL, predicted: 'cat', confidence: 0.97, thumbnailError: EVIL }],
    mistakesTotal: 3,
    throughput: [{ seconds: 2, images: 12 }],
  };
  const html = renderReportHtml({
    status: status({
      metrics,
      failures: [{ key: `bad/${EVIL}`, reason: `not an image: ${EVIL}` }],
      failuresTotal: 1,
      error: { code: 'DATASET_INVALID', message: EVIL },
    }),
    extras,
    live: false,
  });
  t.deepEqual(scripts(html), [], 'a static report has no script at all');
  t.false(html.includes('<script>alert'));
  t.false(html.includes('\u202e'), 'bidi overrides are shown as escapes');
  t.false(html.includes('\u001b'), 'control characters are shown as escapes');
  t.true(html.includes('&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;\\u202e\\x1b[2J'));
  // Attribute context: a key in alt="…" cannot close the attribute.
  t.false(/alt="[^"]*<script/.test(html));
  t.regex(html, /<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;/);
});

test('a live page carries exactly one script, the one the CSP allows by its sha256', (t) => {
  const html = renderReportHtml({ status: status({ stage: 'extracting' }), live: true });
  t.is(scripts(html).length, 1);
  t.true(html.includes(`<script>${REPORT_SCRIPT}</script>`));
  const hash = createHash('sha256').update(REPORT_SCRIPT).digest('base64');
  t.true(REPORT_CSP.includes(`script-src 'sha256-${hash}'`));
  t.true(REPORT_CSP.startsWith("default-src 'none'"));
  t.regex(html, /data-live="1"/);
  // A finished run's live page has nothing to poll for.
  const done = renderReportHtml({ status: status({ stage: 'published', metrics }), live: true });
  t.deepEqual(scripts(done), []);
});

test('the confusion matrix has one cell per pair with its count and row-normalised shade', (t) => {
  const svg = confusionMatrixSvg(metrics.classes, metrics.confusion);
  const cells = [
    ...svg.matchAll(
      /<rect class="cell" data-true="(\d+)" data-pred="(\d+)" data-count="(\d+)"[^>]*fill="hsl\((\d+),70%,(\d+)%\)"/g,
    ),
  ];
  t.is(cells.length, 4);
  const byPair = new Map(
    cells.map((c) => [`${c[1]},${c[2]}`, { count: Number(c[3]), hue: Number(c[4]), light: Number(c[5]) }]),
  );
  t.deepEqual(
    [...byPair].map(([k, v]) => [k, v.count]),
    [
      ['0,0', 4],
      ['0,1', 2],
      ['1,0', 1],
      ['1,1', 3],
    ],
  );
  // Diagonal blue, errors red; shade by the share of the true class (3/4 is darker than 4/6).
  t.is(byPair.get('0,0')!.hue, 215);
  t.is(byPair.get('0,1')!.hue, 5);
  t.true(byPair.get('1,1')!.light < byPair.get('0,0')!.light);
  t.is(byPair.get('0,0')!.light, Math.round(97 - (4 / 6) * 55));
  t.true(svg.includes('&lt;script&gt;'));
  t.false(svg.includes('<script'));
  // Counts written in the cells.
  t.deepEqual(
    [...svg.matchAll(/<text class="count"[^>]*>(\d+)<\/text>/g)].map((m) => Number(m[1])),
    [4, 2, 1, 3],
  );
});

test('a matrix of many classes is bounded and says so', (t) => {
  const k = MAX_MATRIX_CLASSES + 5;
  const classes = Array.from({ length: k }, (_, i) => `c${i}`);
  const confusion = classes.map((_, i) => classes.map((__, j) => (i === j ? 1 : 0)));
  const svg = confusionMatrixSvg(classes, confusion);
  t.is((svg.match(/<rect class="cell"/g) ?? []).length, MAX_MATRIX_CLASSES ** 2);
  const html = renderReportHtml({
    status: status({ metrics: { ...metrics, classes, confusion, perClass: [] } }),
    live: false,
  });
  t.true(html.includes(`the first ${MAX_MATRIX_CLASSES} of ${k} classes`));
});

test('metrics, per-class rows and throughput are rendered', (t) => {
  const html = renderReportHtml({
    status: status({ metrics }),
    extras: { mistakes: [], mistakesTotal: 0, throughput: [{ seconds: 4, images: 12 }] },
    live: false,
  });
  t.regex(html, /<div class="big" id="accuracy">75\.0%<\/div>/);
  t.regex(html, /id="macro-f1">73\.2%/);
  t.is((html.match(/<tr><td>/g) ?? []).length, 2 + 0, 'two per-class rows (no failures listed)');
  t.true(html.includes('Average 3.0 images/s'));
  t.true(html.includes('<path class="line" d="M56,180 L548,10"'));
  t.true(html.includes('No test image was misclassified'));
});

test('thumbnails are embedded only as small base64 JPEG or PNG data: URIs', (t) => {
  t.is(safeThumbnail('data:image/jpeg;base64,/9j/4AAQ=='), 'data:image/jpeg;base64,/9j/4AAQ==');
  t.is(safeThumbnail('data:image/svg+xml;base64,PHN2Zz4='), undefined);
  t.is(safeThumbnail('data:image/png;base64,AAA" onerror="x'), undefined);
  t.is(safeThumbnail('javascript:alert(1)'), undefined);
  t.is(safeThumbnail(`data:image/png;base64,${'A'.repeat(20_000)}`), undefined);
  t.is(safeThumbnail(42), undefined);
  const html = renderReportHtml({
    status: status({ metrics }),
    extras: {
      mistakes: [{ key: 'k', label: 'cat', predicted: EVIL, confidence: 0.9, thumbnail: 'https://evil.example/x.png' }],
      mistakesTotal: 1,
      throughput: [],
    },
    live: false,
  });
  t.false(html.includes('evil.example'));
  t.true(html.includes('no picture'));
});

test('confidentMistakes: only wrong predictions, most confident first, bounded', (t) => {
  // Two classes, one feature: p(b) = sigmoid(2x); true labels all 'a', so x > 0 is a mistake.
  const model = { classes: ['a', 'b'], dim: 1, mean: [0], std: [1], weights: [[-1], [1]], bias: [0, 0] };
  const xs = [-2, 0.5, 3, 1, -1];
  const test_ = {
    n: xs.length,
    d: 1,
    X: Float32Array.from(xs),
    keys: xs.map((_, i) => `k${i}`),
    labels: xs.map(() => 'a'),
  };
  const { mistakes, total } = confidentMistakes(model as never, test_, 2);
  t.is(total, 3);
  t.deepEqual(
    mistakes.map((m) => [m.key, m.predicted]),
    [
      ['k2', 'b'],
      ['k3', 'b'],
    ],
  );
  t.true(mistakes[0]!.confidence > mistakes[1]!.confidence);
});

test('the run list links every run and escapes names', (t) => {
  const html = renderRunListHtml(
    [
      {
        runId: 'r20261130060000-abcdef',
        name: EVIL,
        stage: 'published',
        images: 10,
        failed: 0,
        accuracy: 0.5,
        createdAt: 'x',
      },
      {
        runId: 'r20261130060001-abcdef',
        name: 'b',
        stage: 'extracting',
        images: 5,
        failed: 1,
        accuracy: null,
        createdAt: 'y',
      },
    ],
    (id) => `/reports/${id}`,
  );
  t.true(html.includes('<a href="/reports/r20261130060000-abcdef">'));
  t.true(html.includes('<a href="/reports/r20261130060001-abcdef">'));
  t.false(html.includes('<script'));
  t.true(html.includes('50.0%'));
});

test('escapeHtml escapes the five special characters and nothing else', (t) => {
  t.is(
    escapeHtml(`<a href="x" title='y'>&amp;</a> é`),
    '&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt; é',
  );
  const svg = lineChartSvg([{ x: 1, y: 2 }], { xLabel: '<x>', yLabel: 'y' });
  t.true(svg.includes('&lt;x&gt;'));
});
