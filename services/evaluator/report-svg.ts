/**
 * The run report's pictures as inline SVG text: the confusion matrix as a heat map and a line
 * chart. Pure functions of numbers and labels; every label is escaped here (escapeHtml), so the
 * SVG can be inlined into an HTML page whatever the labels hold.
 */
import { capText, terminalSafe } from '../../shared/text.js';

/** Classes drawn in a matrix at most; a larger run's matrix shows the first ones and says so. */
export const MAX_MATRIX_CLASSES = 60;
/** Longest label shown in a picture (the full label is in the table). */
const MAX_LABEL_CHARS = 24;

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text for HTML or SVG content or a quoted attribute: the five special characters escaped. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

/**
 * User text (a key, a label, a reason) for a page: capped, control and bidi characters shown as
 * escapes (as on a terminal: `\u202e` must not reorder what a reader sees), then HTML-escaped.
 */
export function userText(s: string, max = 300): string {
  return escapeHtml(terminalSafe(capText(s, max)));
}

/** A number as SVG coordinates take it: finite, at most 2 decimals. */
const n2 = (v: number): string => String(Math.round(v * 100) / 100);

/**
 * The confusion matrix as an SVG heat map: one `<rect class="cell">` per (true, predicted) pair
 * with `data-true`, `data-pred` and `data-count`, shaded by the share of its true class (row
 * normalised, so a small class's errors show as clearly as a large one's), the count written in
 * the cell while cells are large enough to hold it.
 */
export function confusionMatrixSvg(classes: readonly string[], confusion: readonly (readonly number[])[]): string {
  const k = Math.min(classes.length, MAX_MATRIX_CLASSES);
  const cell = k <= 10 ? 44 : k <= 25 ? 24 : 12;
  const labelW = 8 + Math.min(MAX_LABEL_CHARS, Math.max(4, ...classes.slice(0, k).map((c) => c.length))) * 7;
  const top = labelW;
  const left = labelW;
  const size = left + k * cell + 8;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" class="confusion" role="img" width="${size}" height="${top + k * cell + 8}" viewBox="0 0 ${size} ${top + k * cell + 8}" font-family="sans-serif" font-size="11">`,
    '<title>Confusion matrix: rows are true labels, columns predicted labels</title>',
  );
  for (let i = 0; i < k; i++) {
    const label = userText(classes[i]!, MAX_LABEL_CHARS);
    const y = top + i * cell + cell / 2 + 4;
    parts.push(`<text class="row-label" x="${left - 4}" y="${n2(y)}" text-anchor="end">${label}</text>`);
    const x = left + i * cell + cell / 2 + 4;
    parts.push(
      `<text class="col-label" x="${n2(x)}" y="${top - 4}" transform="rotate(-90 ${n2(x)} ${top - 4})">${label}</text>`,
    );
  }
  for (let t = 0; t < k; t++) {
    const row = confusion[t] ?? [];
    let rowSum = 0;
    for (let p = 0; p < classes.length; p++) rowSum += row[p] ?? 0;
    for (let p = 0; p < k; p++) {
      const count = row[p] ?? 0;
      const share = rowSum > 0 ? count / rowSum : 0;
      // Diagonal in blue, errors in red: the eye finds the mistakes without reading numbers.
      const hue = t === p ? 215 : 5;
      const light = Math.round(97 - share * 55);
      const x = left + p * cell;
      const y = top + t * cell;
      const tip = `${userText(classes[t]!, 100)} predicted as ${userText(classes[p]!, 100)}: ${count} (${(share * 100).toFixed(1)}% of the class)`;
      parts.push(
        `<rect class="cell" data-true="${t}" data-pred="${p}" data-count="${count}" x="${x}" y="${y}" width="${cell - 1}" height="${cell - 1}" fill="hsl(${hue},70%,${light}%)"><title>${tip}</title></rect>`,
      );
      if (cell >= 24) {
        const fill = light < 60 ? '#fff' : '#222';
        parts.push(
          `<text class="count" x="${n2(x + (cell - 1) / 2)}" y="${n2(y + cell / 2 + 4)}" text-anchor="middle" fill="${fill}">${count}</text>`,
        );
      }
    }
  }
  parts.push('</svg>');
  return parts.join('');
}

export interface ChartPoint {
  readonly x: number;
  readonly y: number;
}

export interface LineChartOptions {
  readonly xLabel: string;
  readonly yLabel: string;
  readonly width?: number;
  readonly height?: number;
}

/** A nice round tick step for a range (1, 2 or 5 × a power of ten), about `ticks` steps. */
function tickStep(range: number, ticks: number): number {
  if (!(range > 0)) return 1;
  const raw = range / ticks;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const m = raw / pow;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * pow;
}

/** An SVG line chart of points (sorted by x), both axes from 0, with ticks and axis labels. */
export function lineChartSvg(points: readonly ChartPoint[], opts: LineChartOptions): string {
  const width = opts.width ?? 560;
  const height = opts.height ?? 220;
  const m = { left: 56, right: 12, top: 10, bottom: 40 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const finite = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const maxX = Math.max(1e-9, ...finite.map((p) => p.x));
  const maxY = Math.max(1e-9, ...finite.map((p) => p.y));
  const sx = (x: number) => m.left + (x / maxX) * pw;
  const sy = (y: number) => m.top + ph - (y / maxY) * ph;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<title>${escapeHtml(opts.yLabel)} over ${escapeHtml(opts.xLabel)}</title>`,
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#888"/>`,
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#888"/>`,
  ];
  const xs = tickStep(maxX, 6);
  for (let v = 0; v <= maxX + 1e-9; v += xs) {
    parts.push(`<text x="${n2(sx(v))}" y="${m.top + ph + 14}" text-anchor="middle">${n2(v)}</text>`);
  }
  const ys = tickStep(maxY, 4);
  for (let v = 0; v <= maxY + 1e-9; v += ys) {
    parts.push(
      `<line x1="${m.left}" y1="${n2(sy(v))}" x2="${m.left + pw}" y2="${n2(sy(v))}" stroke="#eee"/>`,
      `<text x="${m.left - 4}" y="${n2(sy(v) + 4)}" text-anchor="end">${n2(v)}</text>`,
    );
  }
  parts.push(
    `<text x="${m.left + pw / 2}" y="${height - 6}" text-anchor="middle">${escapeHtml(opts.xLabel)}</text>`,
    `<text x="12" y="${m.top + ph / 2}" text-anchor="middle" transform="rotate(-90 12 ${m.top + ph / 2})">${escapeHtml(opts.yLabel)}</text>`,
  );
  if (finite.length > 0) {
    const d = finite.map((p, i) => `${i === 0 ? 'M' : 'L'}${n2(sx(p.x))},${n2(sy(p.y))}`).join(' ');
    parts.push(`<path class="line" d="${d}" fill="none" stroke="#1f6feb" stroke-width="2"/>`);
    for (const p of finite)
      parts.push(`<circle class="point" cx="${n2(sx(p.x))}" cy="${n2(sy(p.y))}" r="2.5" fill="#1f6feb"/>`);
  }
  parts.push('</svg>');
  return parts.join('');
}
