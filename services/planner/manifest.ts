/**
 * A run's manifest — CSV with a header, or JSON lines — turned into labelled keys. The manifest
 * is untrusted input: every problem is refused with the line it is on, and every piece of the
 * manifest quoted in a message is capped, so a junk file cannot become a junk-sized error.
 *
 * Rules (README "Dataset layouts"):
 * - CSV (RFC 4180, parsed by csv-parse): a header naming `key` and `label` (and optionally
 *   `split`), in any order and case; other columns are ignored, a known column named twice is
 *   refused. Every row has as many values as the header. Values may be quoted ("big, cat",
 *   "say ""hi""", line breaks inside quotes). Unquoted values lose the spaces around them; a
 *   quoted value is kept exactly, so a key that begins or ends with a space must be quoted.
 * - JSON lines: one object per line, `{"key": "...", "label": "...", "split": "..."}`; other
 *   properties are ignored. A numeric label is taken as its text (`7` → "7"); a label or key of
 *   any other type (true, null, an object) is refused. Keys are exact.
 * - Both: a UTF-8 byte order mark and CRLF line ends are fine; blank lines are skipped. Labels
 *   lose surrounding whitespace (it is invisible in every report and would split a class in
 *   two). Keys are object keys in the manifest's bucket (an s3:// URL must name that bucket;
 *   leading '/' are dropped), at most 1024 bytes, without '.' or '..' segments, each once.
 *   Control characters are data: allowed, and escaped wherever a person reads them.
 */
import { parse as parseCsv } from 'csv-parse/sync';
import { DatasetError } from '../../shared/errors.js';
import type { Split } from '../../shared/dataset.js';
import { capText, quote } from '../../shared/text.js';
import { splitNamed, type Labelled } from './plan.js';

export type ManifestFormat = 'csv' | 'jsonl';

/** S3's own limit on a key, in bytes of UTF-8. */
export const MAX_KEY_BYTES = 1024;

const COLUMNS = ['key', 'label', 'split'] as const;
type Column = (typeof COLUMNS)[number];

/** One manifest entry before it is checked; values as found (CSV: strings; JSON: anything). */
interface RawRow {
  readonly key: unknown;
  readonly label: unknown;
  readonly split: unknown;
  /** Line the entry starts on, counting from 1 (a quoted CSV value may span several lines). */
  readonly line: number;
}

/** `.csv`, `.jsonl` or `.ndjson` (any case) names a manifest; anything else is a folder prefix. */
export function manifestFormat(key: string): ManifestFormat | undefined {
  const m = /\.(csv|jsonl|ndjson)$/i.exec(key);
  if (!m) return undefined;
  return m[1]!.toLowerCase() === 'csv' ? 'csv' : 'jsonl';
}

/** The labelled keys of a manifest; `where` names it in messages, `bucket` is where its keys live. */
export function labelsFromManifest(text: string, format: ManifestFormat, where: string, bucket: string): Labelled[] {
  const rows = format === 'csv' ? csvRows(text, where) : jsonRows(text, where);
  const firstLine = new Map<string, number>();
  const out: Labelled[] = [];
  for (const r of rows) {
    const at = `${where} line ${r.line}`;
    const key = manifestKey(textValue(r.key, 'key', at, false), bucket, at);
    const first = firstLine.get(key);
    if (first !== undefined) {
      throw new DatasetError(`${at}: duplicate key ${quote(key)} (first on line ${first}); each image may appear once`);
    }
    firstLine.set(key, r.line);
    const label = textValue(r.label, 'label', at, true).trim();
    out.push({ key, label, ...splitOf(r.split, at) });
  }
  return out;
}

/** A key or label: a non-blank string (a label may also be a JSON number, taken as its text). */
function textValue(v: unknown, what: 'key' | 'label', at: string, numberOk: boolean): string {
  if (v === undefined || v === null || (typeof v === 'string' && v.trim() === '')) {
    throw new DatasetError(`${at}: missing ${what}${v === null ? ' (null)' : ''}; every line needs a key and a label`);
  }
  if (typeof v === 'string') return v;
  if (numberOk && typeof v === 'number' && Number.isFinite(v)) return String(v);
  throw new DatasetError(`${at}: ${what} must be a string${numberOk ? ' or a number' : ''}, not ${typeName(v)}`);
}

function splitOf(v: unknown, at: string): { split?: Split } {
  if (v === undefined || v === null || v === '') return {};
  if (typeof v !== 'string')
    throw new DatasetError(`${at}: split must be a string (train, val or test), not ${typeName(v)}`);
  if (v.trim() === '') return {};
  const split = splitNamed(v.trim().toLowerCase());
  if (!split) throw new DatasetError(`${at}: unknown split ${quote(v)}; use train, val or test (or leave it empty)`);
  return { split };
}

function typeName(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v === null) return 'null';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'boolean') return `a boolean (${v})`;
  if (typeof v === 'number') return `the number ${v}`;
  return `a ${typeof v}`;
}

/** Keys are relative to the manifest's bucket; an s3:// URL must name the same bucket. */
function manifestKey(raw: string, bucket: string, at: string): string {
  let key = raw;
  if (raw.startsWith('s3://')) {
    const m = /^s3:\/\/([^/]+)\/(.+)$/s.exec(raw);
    if (!m || m[1] !== bucket) {
      throw new DatasetError(
        `${at}: key ${quote(raw)} is outside the bucket ${bucket}; images must be in the manifest's bucket`,
      );
    }
    key = m[2]!;
  }
  key = key.replace(/^\/+/, '');
  if (key === '') throw new DatasetError(`${at}: key ${quote(raw)} names no object; give the object key as stored`);
  if (key.split('/').some((p) => p === '..' || p === '.')) {
    throw new DatasetError(`${at}: key ${quote(raw)} contains '.' or '..' segments; give the object key as stored`);
  }
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) {
    throw new DatasetError(
      `${at}: key ${quote(key)} is ${bytes} bytes; S3 keys are at most ${MAX_KEY_BYTES}. Is the column right?`,
    );
  }
  return key;
}

// ---------- JSON lines ----------

function jsonRows(text: string, where: string): RawRow[] {
  // A byte order mark is not whitespace to JSON.parse: without this, line 1 is "not valid JSON".
  const lines = (text.charCodeAt(0) === 0xfeff ? text.slice(1) : text).split('\n');
  const rows: RawRow[] = [];
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.trim() === '') continue; // blank lines, and the '\r' left of a CRLF blank line
    const at = `${where} line ${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch (err) {
      const detail = err instanceof Error ? ` (${capText(err.message)})` : '';
      throw new DatasetError(`${at}: not valid JSON${detail}; expected {"key": ..., "label": ..., "split"?: ...}`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      throw new DatasetError(`${at}: expected a JSON object {"key": ..., "label": ...}, not ${typeName(v)}`);
    }
    const o = v as Record<string, unknown>;
    rows.push({ key: o.key, label: o.label, split: o.split, line: i + 1 });
  }
  if (rows.length === 0) {
    throw new DatasetError(
      `manifest ${where} is empty: expected one JSON object per line, {"key": ..., "label": ..., "split"?: ...}`,
    );
  }
  return rows;
}

// ---------- CSV ----------

/** What csv-parse's CsvError carries besides its message. */
interface CsvErrorInfo {
  readonly code?: string;
  readonly lines?: number;
  readonly empty_lines?: number;
}

function csvRows(text: string, where: string): RawRow[] {
  // csv-parse's info reports the line a record *ends* on; a record starts on the first non-blank
  // line after the previous one. Tracked in on_record as records arrive (its context is that
  // info; the `info` option would copy it onto every record, 5x slower), so a parse error can
  // name the start of the record it is in too.
  let lastEnd = 0;
  let lastEmpty = 0;
  const starts: number[] = [];
  let records: string[][];
  try {
    records = parseCsv(text, {
      bom: true,
      trim: true, // spaces around unquoted values and around quotes; never inside quotes
      skip_empty_lines: true,
      relax_column_count: true, // counted below, so the message names the line and the header
      on_record: (record: string[], info) => {
        starts.push(lastEnd + (info.empty_lines - lastEmpty) + 1);
        lastEnd = info.lines;
        lastEmpty = info.empty_lines;
        return record;
      },
    }) as string[][];
  } catch (err) {
    const emptyNow = (err as CsvErrorInfo).empty_lines ?? lastEmpty;
    throw csvParseError(err, where, lastEnd + (emptyNow - lastEmpty) + 1);
  }
  if (records.length === 0) {
    throw new DatasetError(
      `manifest ${where} is empty: expected a header line key,label[,split] and one line per image`,
    );
  }
  const header = records[0]!.map((h) => h.trim().toLowerCase());
  const index = columnIndex(header, where);
  if (records.length === 1) {
    throw new DatasetError(`manifest ${where} has a header but no rows: add one line per image (key,label[,split])`);
  }
  const rows: RawRow[] = [];
  for (let i = 1; i < records.length; i++) {
    const cells = records[i]!;
    const line = starts[i]!;
    if (cells.length !== header.length) {
      throw new DatasetError(
        `${where} line ${line}: ${cells.length} ${cells.length === 1 ? 'value' : 'values'}, expected ${header.length} ` +
          `(the header's columns: ${headerList(header)}); quote a value that contains a comma, e.g. "big, cat"`,
      );
    }
    rows.push({
      key: cells[index.key],
      label: cells[index.label],
      split: index.split === undefined ? undefined : cells[index.split],
      line,
    });
  }
  return rows;
}

/** Where key, label and split are; every problem with the header named with the fix. */
function columnIndex(header: readonly string[], where: string): { key: number; label: number; split?: number } {
  const found: Partial<Record<Column, number>> = {};
  header.forEach((h, i) => {
    if (!(COLUMNS as readonly string[]).includes(h)) return; // other columns may carry notes
    const c = h as Column;
    if (found[c] !== undefined) {
      throw new DatasetError(
        `${where}: the header names ${quote(c)} twice (columns ${found[c]! + 1} and ${i + 1}); name each column once`,
      );
    }
    found[c] = i;
  });
  for (const col of ['key', 'label'] as const) {
    if (found[col] === undefined) {
      const hint = header.length === 1 && /[;\t|]/.test(header[0]!) ? '; columns must be separated by commas' : '';
      throw new DatasetError(
        `${where}: the header has no "${col}" column (found: ${headerList(header) || 'nothing'}${hint}); expected key,label[,split]`,
      );
    }
  }
  return { key: found.key!, label: found.label!, ...(found.split !== undefined ? { split: found.split } : {}) };
}

/** The header's names for a message: each capped, and at most ten of them. */
function headerList(header: readonly string[]): string {
  const shown = header.slice(0, 10).map((h) => quote(h, 40));
  if (header.length > 10) shown.push(`…${header.length - 10} more`);
  return shown.join(', ');
}

/** csv-parse's error as a DatasetError with the line and the fix; its own text is capped. */
function csvParseError(err: unknown, where: string, recordStart: number): DatasetError {
  const e = err as CsvErrorInfo;
  const line = e.lines ?? recordStart;
  const quoting = 'quote the whole value and double any quote inside it, e.g. "a ""b"" c"';
  switch (e.code) {
    case 'CSV_QUOTE_NOT_CLOSED':
      return new DatasetError(
        `${where} line ${recordStart}: a quoted value starting on this line is never closed; end it with "`,
        { cause: err },
      );
    case 'INVALID_OPENING_QUOTE':
      return new DatasetError(`${where} line ${line}: a double quote inside an unquoted value; ${quoting}`, {
        cause: err,
      });
    case 'CSV_INVALID_CLOSING_QUOTE':
      return new DatasetError(`${where} line ${line}: text right after a closing quote; ${quoting}`, { cause: err });
    case 'CSV_MAX_RECORD_SIZE':
      return new DatasetError(
        `${where} line ${recordStart}: a row longer than 128,000 characters; is this a CSV manifest?`,
        { cause: err },
      );
    default:
      return new DatasetError(
        `${where} line ${line}: not valid CSV (${capText(err instanceof Error ? err.message : String(err))})`,
        { cause: err },
      );
  }
}
