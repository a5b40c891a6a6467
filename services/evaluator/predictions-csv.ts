/**
 * predictions.csv, a line at a time: `key,label_1,probability_1,…,label_K,probability_K,error`.
 * RFC 4180: CRLF line ends, and a field holding a comma, a double quote, CR or LF is quoted with
 * its quotes doubled; keys, labels and reasons are user data and may hold any of them.
 * Probabilities with 6 decimals. Pure code: the collect job streams these lines to storage.
 */
import type { PredictionLine } from '../../shared/predictions.js';

const EOL = '\r\n';

/**
 * One field as RFC 4180 writes it. A field that a spreadsheet would run as a formula (first
 * character = + - @, tab or CR: an object key or label like `=HYPERLINK(...)` is user data) gets an
 * apostrophe in front and is quoted, as OWASP's CSV-injection advice says: spreadsheets show the
 * text, and a program reading the file drops one leading apostrophe from such a cell.
 */
export function csvField(s: string): string {
  const text = /^[=+\-@\t\r]/.test(s) ? `'${s}` : s;
  return text !== s || /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** The header line for `top` labels per image. */
export function csvHeader(top: number): string {
  const cols = ['key'];
  for (let i = 1; i <= top; i++) cols.push(`label_${i}`, `probability_${i}`);
  cols.push('error');
  return cols.join(',') + EOL;
}

/**
 * One image's line: its top labels and probabilities (empty cells past the labels it has), or
 * empty label cells and its failure reason.
 */
export function csvRow(line: PredictionLine, top: number): string {
  const cells = [csvField(line.key)];
  const ranked = 'top' in line ? line.top : [];
  for (let i = 0; i < top; i++) {
    const r = ranked[i];
    cells.push(r ? csvField(r.label) : '', r ? r.probability.toFixed(6) : '');
  }
  cells.push('error' in line ? csvField(line.error) : '');
  return cells.join(',') + EOL;
}
