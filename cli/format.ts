/** Human-readable output for the CLI (tables, status); the JSON forms are the objects themselves. */
import type { RunStatus } from '../shared/run-state.js';
import { describeFeatures } from '../shared/features.js';

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

export function formatDuration(s: number | null): string {
  if (s === null || !Number.isFinite(s)) return '-';
  if (s < 60) return `${Math.round(s)}s`;
  return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
}

export function table(rows: ReadonlyArray<ReadonlyArray<string>>): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n');
}

export function formatStatus(s: RunStatus, maxFailures = 10): string {
  const lines = [
    `run       ${s.runId}`,
    `source    ${s.request.source}`,
    `features  ${describeFeatures(s.request.features)}${s.engine ? `  (engine ${s.engine} on ${s.backend})` : ''}`,
    `stage     ${s.stage}`,
    `images    ${s.done + s.failed}/${s.total} processed, ${s.failed} failed, shards ${s.shardsDone}/${s.shards}`,
    `speed     ${s.imagesPerSecond ? `${s.imagesPerSecond.toFixed(1)} images/s` : '-'}   eta ${formatDuration(s.etaSeconds)}`,
  ];
  if (s.error) lines.push(`error     ${s.error.message}`);
  if (s.failures.length > 0) {
    lines.push(`failures  (${s.failures.length})`);
    for (const f of s.failures.slice(0, maxFailures)) lines.push(`  ${f.key}: ${f.reason}`);
    if (s.failures.length > maxFailures) lines.push(`  ... ${s.failures.length - maxFailures} more (--json for all)`);
  }
  if (s.metrics) {
    const m = s.metrics;
    lines.push(`accuracy  ${pct(m.accuracy)} on ${m.testImages} test images (macro F1 ${pct(m.macroF1)}, L2 ${m.lambda})`);
    lines.push(
      table([
        ['class', 'precision', 'recall', 'f1', 'support'],
        ...m.perClass.map((c) => [c.label, pct(c.precision), pct(c.recall), pct(c.f1), String(c.support)]),
      ])
        .split('\n')
        .map((l) => `  ${l}`)
        .join('\n'),
    );
    lines.push('  confusion (rows true, cols predicted): ' + m.confusion.map((r) => `[${r.join(' ')}]`).join(' '));
  }
  if (s.model) lines.push(`model     ${s.model.uri}  (deepfeat download ${s.runId} -o DIR)`);
  return lines.join('\n');
}
