/**
 * Human-readable output for the CLI (tables, status, progress); the JSON forms are the objects
 * themselves, exact. Every piece of user data (keys, labels, reasons, the source, model names,
 * error messages) goes through `field` here: capped, and with its control characters escaped, so
 * a key holding an ANSI escape cannot recolour, clear or rewrite a user's terminal.
 */
import type { ImageFailure, KnnMetrics, RunStatus } from '../shared/run-state.js';
import { isPredictRequest } from '../shared/queues.js';
import type { ModelArtifact } from '../shared/model-format.js';
import { describeFeatures } from '../shared/features.js';
import { ConfigError, errorMessage } from '../shared/errors.js';
import { MAX_MESSAGE_CHARS, MAX_QUOTED_CHARS, capText, terminalSafe } from '../shared/text.js';

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** One field of user data, for a terminal: at most `max` characters, control characters escaped. */
export function field(s: string, max = MAX_MESSAGE_CHARS): string {
  return terminalSafe(capText(String(s), max));
}

export function formatDuration(s: number | null): string {
  if (s === null || !Number.isFinite(s)) return '-';
  if (s < 60) return `${Math.round(s)}s`;
  return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

/** Columns padded to their widest cell; every cell is a `field` (capped, escaped) first. */
export function table(rows: ReadonlyArray<ReadonlyArray<string>>): string {
  const safe = rows.map((r) => r.map((cell) => field(cell, MAX_QUOTED_CHARS)));
  const widths = safe[0]!.map((_, c) => Math.max(...safe.map((r) => (r[c] ?? '').length)));
  return safe
    .map((r) =>
      r
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function formatStatus(s: RunStatus, maxFailures = 10, maxSkipped = 10): string {
  const engine = s.engine ? `  (engine ${field(s.engine)} on ${field(String(s.backend))})` : '';
  const lines = [
    `run       ${field(s.runId)}`,
    `source    ${field(s.request.source)}`,
    // A prediction run names the model it classifies with; its features are the model's.
    isPredictRequest(s.request)
      ? `model     ${field(`${s.request.model.name}@${s.request.model.version}`)}, top ${s.request.top}${engine}`
      : `features  ${field(describeFeatures(s.request.features))}${engine}`,
    `stage     ${field(s.stage)}`,
    `images    ${s.done + s.failed}/${s.total} processed, ${s.failed} failed, shards ${s.shardsDone}/${s.shards}`,
    `speed     ${s.imagesPerSecond ? `${s.imagesPerSecond.toFixed(1)} images/s` : '-'}   eta ${formatDuration(s.etaSeconds)}`,
  ];
  // Feature cache lookups; absent when the run looked nothing up (and from older run.json files).
  if (s.cache) lines.push(`cache     ${s.cache.hits}/${s.cache.hits + s.cache.misses} hits`);
  if (s.error) lines.push(`error     ${field(s.error.message)}`);
  // A status lists the first failures and counts them all; a run.json written before that lists
  // every failure and has no count.
  const failuresTotal = Math.max(s.failuresTotal ?? 0, s.failures.length);
  if (failuresTotal > 0) {
    lines.push(`failures  (${failuresTotal})`);
    for (const f of s.failures.slice(0, maxFailures)) lines.push(`  ${formatFailure(f)}`);
    const more = failuresTotal - Math.min(maxFailures, s.failures.length);
    if (more > 0) lines.push(`  ... ${more} more (deepfeat status ${field(s.runId)} --all-failures lists every one)`);
  }
  // A run.json written before skipped objects were recorded has neither field.
  const skipped = s.skipped ?? [];
  const skippedTotal = s.skippedTotal ?? skipped.length;
  if (skippedTotal > 0) {
    lines.push(`skipped   (${skippedTotal}) objects under the source that are not part of the dataset`);
    for (const o of skipped.slice(0, maxSkipped)) lines.push(`  ${field(o.key)}: ${field(o.reason)}`);
    const more = skippedTotal - Math.min(maxSkipped, skipped.length);
    if (more > 0)
      lines.push(
        `  ... ${more} more (--json lists ${skipped.length === skippedTotal ? 'all' : `the first ${skipped.length}`})`,
      );
  }
  if (s.metrics) {
    const m = s.metrics;
    lines.push(
      `accuracy  ${pct(m.accuracy)} on ${m.testImages} test images (macro F1 ${pct(m.macroF1)}, L2 ${m.lambda})`,
    );
    lines.push(
      table([
        ['class', 'precision', 'recall', 'f1', 'support'],
        ...m.perClass.map((c) => [c.label, pct(c.precision), pct(c.recall), pct(c.f1), String(c.support)]),
      ])
        .split('\n')
        .map((l) => `  ${l}`)
        .join('\n'),
    );
    lines.push(`  confusion (rows true, cols predicted): ${m.confusion.map((r) => `[${r.join(' ')}]`).join(' ')}`);
    if (m.knn) lines.push(`knn       ${formatKnn(m.knn)}`);
  }
  if (s.model) lines.push(`model     ${field(s.model.uri)}  (deepfeat download ${field(s.runId)} -o DIR)`);
  // A run.json written before prediction runs existed has no `predictions`.
  const p = s.predictions;
  if (p) {
    lines.push(`results   ${field(p.uri)}  (${p.images} images: ${p.predicted} classified, ${p.failed} failed)`);
  }
  if (s.model?.classifier)
    lines.push(`onnx      ${field(s.model.classifier)}  (the whole classifier: image in, probabilities out)`);
  if (s.model?.classifierUnavailable) lines.push(`onnx      none: ${field(s.model.classifierUnavailable)}`);
  return lines.join('\n');
}

/**
 * The kNN metrics in one line: `1-NN 71.2%, 5-NN 74.0% (train+val as the database)`, and the
 * sample sizes when the evaluator sampled either side.
 */
export function formatKnn(k: KnnMetrics): string {
  const n = (x: number) => x.toLocaleString('en-US');
  const sampled = [
    ...(k.database < k.databaseOf ? [`${n(k.database)} of ${n(k.databaseOf)} train+val images`] : []),
    ...(k.queries < k.testImages ? [`${n(k.queries)} of ${n(k.testImages)} test images as queries`] : []),
  ];
  return (
    `${k.accuracy.map((a) => `${a.k}-NN ${pct(a.accuracy)}`).join(', ')} (train+val as the database` +
    `${sampled.length > 0 ? `; seeded samples: ${sampled.join(', ')}` : ''})`
  );
}

/** One failed image for a terminal: `key: reason`, both capped and escaped. */
export function formatFailure(f: ImageFailure): string {
  return `${field(f.key)}: ${field(f.reason)}`;
}

/** What `download` wrote (the model name is the run request's, user data). */
export function formatDownloaded(
  path: string,
  a: Pick<ModelArtifact, 'name' | 'version' | 'classes' | 'classifier'> & { metrics: { accuracy: number } },
  files: readonly string[] = ['model.json'],
): string {
  const lines = [
    `${field(path)}: ${field(a.name)}@${field(a.version)}, ${a.classes.length} classes, test accuracy ${pct(a.metrics.accuracy)}`,
    `files     ${files.map((f) => field(f)).join(', ')}`,
  ];
  if (a.classifier?.file === null) lines.push(`no classifier.onnx: ${field(a.classifier.reason)}`);
  return lines.join('\n');
}

/**
 * An error for stderr: `deepfeat: MESSAGE`, on one line. Messages quote user data (keys, names,
 * a server's reason), so every control character is escaped, newlines included: a key holding
 * "\n" cannot forge a second error line. The one layout deepfeat makes itself, the list of
 * configuration problems, is applied after each problem is escaped.
 */
export function formatError(err: unknown): string {
  if (err instanceof ConfigError) {
    return `deepfeat: invalid configuration:${err.problems.map((p) => `\n  - ${field(p)}`).join('')}`;
  }
  return `deepfeat: ${field(errorMessage(err), 4 * MAX_MESSAGE_CHARS)}`;
}
