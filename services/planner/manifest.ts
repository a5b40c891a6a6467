/**
 * A run's manifest — CSV with a header, or JSON lines — turned into labelled keys. The manifest
 * is untrusted input: every problem is refused with the line it is on, and every piece of the
 * manifest quoted in a message is capped, so a junk file cannot become a junk-sized error.
 *
 * Rules (README "Dataset layouts"); a prediction run's manifest (keysFromManifest) follows the
 * same rules with only `key` required: a label is kept when given, a split is not read.
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
 *
 * A manifest of a million images is 60–100 MB. It is parsed from its bytes a chunk at a time,
 * yielding to the event loop between chunks (the planner must keep renewing its 15 s job lock),
 * and each row becomes its labelled key as it is read: neither the whole text as a string nor
 * the parsed rows are held besides the result.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { Parser, type CsvError } from 'csv-parse';
import { DatasetError } from '../../shared/errors.js';
import type { Split } from '../../shared/dataset.js';
import { capText, quote } from '../../shared/text.js';
import { splitNamed, type Labelled } from './plan.js';

export type ManifestFormat = 'csv' | 'jsonl';

/** S3's own limit on a key, in bytes of UTF-8. */
export const MAX_KEY_BYTES = 1024;

/**
 * Bytes parsed between two yields to the event loop: about 30 ms of CSV parsing on one core
 * (csv-parse runs at 8–10 MB/s here), far below the 15 s job lock.
 */
const CHUNK_BYTES = 256 * 1024;

const COLUMNS = ['key', 'label', 'split'] as const;
type Column = (typeof COLUMNS)[number];

/** `.csv`, `.jsonl` or `.ndjson` (any case) names a manifest; anything else is a folder prefix. */
export function manifestFormat(key: string): ManifestFormat | undefined {
  const m = /\.(csv|jsonl|ndjson)$/i.exec(key);
  if (!m) return undefined;
  return m[1]!.toLowerCase() === 'csv' ? 'csv' : 'jsonl';
}

/** A manifest entry: a key, its label (always, for training), and its split when given. */
interface Entry {
  key: string;
  label?: string;
  split?: Split;
}

/** What a manifest must give: training needs key and label; prediction only the key. */
type Need = 'labels' | 'keys';

/** The columns a manifest has, as messages name them. */
const COLUMNS_OF: Record<Need, string> = { labels: 'key,label[,split]', keys: 'key[,label]' };

/**
 * The labelled keys of a manifest; `where` names it in messages, `bucket` is where its keys live.
 * Parses without holding the event loop for more than one chunk at a time.
 */
export async function labelsFromManifest(
  manifest: Uint8Array | string,
  format: ManifestFormat,
  where: string,
  bucket: string,
): Promise<Labelled[]> {
  // Every entry has its label: ManifestRows refuses a row without one when labels are needed.
  return (await entries(manifest, format, where, bucket, 'labels')) as Labelled[];
}

/**
 * The keys of a prediction run's manifest, each with its label when the manifest gives one
 * (a training manifest can be used as it is; its split column is not read).
 */
export async function keysFromManifest(
  manifest: Uint8Array | string,
  format: ManifestFormat,
  where: string,
  bucket: string,
): Promise<Array<{ key: string; label?: string }>> {
  return entries(manifest, format, where, bucket, 'keys');
}

async function entries(
  manifest: Uint8Array | string,
  format: ManifestFormat,
  where: string,
  bucket: string,
  need: Need,
): Promise<Entry[]> {
  const bytes = typeof manifest === 'string' ? Buffer.from(manifest, 'utf8') : asBuffer(manifest);
  await checkLineLengths(bytes, where);
  const rows = new ManifestRows(where, bucket, need);
  if (format === 'csv') await csvRows(bytes, where, rows);
  else await jsonRows(bytes, where, rows);
  return rows.out;
}

/**
 * Longest physical line a manifest may have. A key is at most 1,024 bytes and a run's own
 * manifest line at most 8 KiB (MAX_MANIFEST_LINE_BYTES), so no usable row comes near this; the
 * rest is room for columns deepfeat ignores. Checked before parsing: the parsers would otherwise
 * spend minutes of planner time on a 150 MiB header or JSON line before refusing it.
 */
export const MAX_MANIFEST_PHYSICAL_LINE_BYTES = 64 * 1024;

async function checkLineLengths(bytes: Buffer, where: string): Promise<void> {
  let start = 0;
  let nextYield = 16 * 2 ** 20;
  for (let line = 1; start < bytes.length; line++) {
    let end = bytes.indexOf(0x0a, start);
    if (end === -1) end = bytes.length;
    if (end - start > MAX_MANIFEST_PHYSICAL_LINE_BYTES) {
      throw new DatasetError(
        `${where} line ${line} is longer than ${MAX_MANIFEST_PHYSICAL_LINE_BYTES / 1024} KiB: a manifest line holds one ` +
          'image (key, label, split); check that the file is a manifest with one image per line',
      );
    }
    start = end + 1;
    if (start >= nextYield) {
      nextYield = start + 16 * 2 ** 20;
      await yieldToEventLoop();
    }
  }
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Checks each entry as it is read and keeps its (labelled) key. */
class ManifestRows {
  readonly out: Entry[] = [];
  private readonly firstLine = new Map<string, number>();
  /** One string per label: a million rows of ten classes hold ten label strings, not a million. */
  private readonly labels = new Map<string, string>();

  constructor(
    private readonly where: string,
    private readonly bucket: string,
    readonly need: Need = 'labels',
  ) {}

  /** One entry; values as found (CSV: strings; JSON: anything); `line` is where it starts (from 1). */
  add(rawKey: unknown, rawLabel: unknown, rawSplit: unknown, line: number): void {
    const need = this.need;
    const key = manifestKey(textValue(rawKey, 'key', this.where, line, false, need), this.bucket, this.where, line);
    const first = this.firstLine.get(key);
    if (first !== undefined) {
      throw new DatasetError(
        `${this.where} line ${line}: duplicate key ${quote(key)} (first on line ${first}); each image may appear once`,
      );
    }
    this.firstLine.set(key, line);
    // A prediction run takes a label only when there is one, and reads no split.
    if (need === 'keys' && (rawLabel === undefined || rawLabel === null || rawLabel === '')) {
      this.out.push({ key });
      return;
    }
    const text = textValue(rawLabel, 'label', this.where, line, true, need).trim();
    let label = this.labels.get(text);
    if (label === undefined) {
      label = text;
      this.labels.set(text, text);
    }
    if (need === 'keys') {
      this.out.push(label === '' ? { key } : { key, label });
      return;
    }
    const split = splitOf(rawSplit, this.where, line);
    this.out.push(split === undefined ? { key, label } : { key, label, split });
  }
}

/** A key or label: a non-blank string (a label may also be a JSON number, taken as its text). */
function textValue(
  v: unknown,
  what: 'key' | 'label',
  where: string,
  line: number,
  numberOk: boolean,
  need: Need,
): string {
  if (typeof v === 'string' && v.trim() !== '') return v;
  // A blank label of a prediction manifest is no label (the caller keeps none).
  if (need === 'keys' && what === 'label' && typeof v === 'string') return '';
  if (v === undefined || v === null || typeof v === 'string') {
    const needs = need === 'labels' ? 'a key and a label' : 'a key';
    throw new DatasetError(
      `${where} line ${line}: missing ${what}${v === null ? ' (null)' : ''}; every line needs ${needs}`,
    );
  }
  if (numberOk && typeof v === 'number' && Number.isFinite(v)) return String(v);
  throw new DatasetError(
    `${where} line ${line}: ${what} must be a string${numberOk ? ' or a number' : ''}, not ${typeName(v)}`,
  );
}

function splitOf(v: unknown, where: string, line: number): Split | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string')
    throw new DatasetError(`${where} line ${line}: split must be a string (train, val or test), not ${typeName(v)}`);
  if (v.trim() === '') return undefined;
  const split = splitNamed(v.trim().toLowerCase());
  if (!split)
    throw new DatasetError(
      `${where} line ${line}: unknown split ${quote(v)}; use train, val or test (or leave it empty)`,
    );
  return split;
}

function typeName(v: unknown): string {
  if (Array.isArray(v)) return 'an array';
  if (v === null) return 'null';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'boolean') return `a boolean (${v})`;
  if (typeof v === 'number') return `the number ${v}`;
  return `a ${typeof v}`;
}

/** A '.' or '..' path segment. */
const DOT_SEGMENT = /(?:^|\/)\.\.?(?:\/|$)/;

/** Keys are relative to the manifest's bucket; an s3:// URL must name the same bucket. */
function manifestKey(raw: string, bucket: string, where: string, line: number): string {
  const at = () => `${where} line ${line}`;
  let key = raw;
  if (raw.startsWith('s3://')) {
    const m = /^s3:\/\/([^/]+)\/(.+)$/s.exec(raw);
    if (!m || m[1] !== bucket) {
      throw new DatasetError(
        `${at()}: key ${quote(raw)} is outside the bucket ${bucket}; images must be in the manifest's bucket`,
      );
    }
    key = m[2]!;
  }
  if (key.charCodeAt(0) === 0x2f) key = key.replace(/^\/+/, '');
  if (key === '') throw new DatasetError(`${at()}: key ${quote(raw)} names no object; give the object key as stored`);
  if (DOT_SEGMENT.test(key)) {
    throw new DatasetError(`${at()}: key ${quote(raw)} contains '.' or '..' segments; give the object key as stored`);
  }
  // A JavaScript string has at most 3 bytes of UTF-8 per UTF-16 unit: most keys need no count.
  const bytes = key.length * 3 <= MAX_KEY_BYTES ? 0 : Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) {
    throw new DatasetError(
      `${at()}: key ${quote(key)} is ${bytes} bytes; S3 keys are at most ${MAX_KEY_BYTES}. Is the column right?`,
    );
  }
  return key;
}

// ---------- JSON lines ----------

async function jsonRows(bytes: Buffer, where: string, rows: ManifestRows): Promise<void> {
  // A byte order mark is not whitespace to JSON.parse: without this, line 1 is "not valid JSON".
  let start = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  let nextYield = start + CHUNK_BYTES;
  // One line past the last '\n' too: a file need not end with a newline.
  for (let line = 1; start <= bytes.length; line++) {
    let end = bytes.indexOf(0x0a, start);
    if (end === -1) end = bytes.length;
    const l = bytes.toString('utf8', start, end);
    start = end + 1;
    if (l.trim() === '') continue; // blank lines, and the '\r' left of a CRLF blank line
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch (err) {
      const detail = err instanceof Error ? ` (${capText(err.message)})` : '';
      throw new DatasetError(
        `${where} line ${line}: not valid JSON${detail}; expected {"key": ..., "label": ..., "split"?: ...}`,
      );
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      const shape = rows.need === 'labels' ? '{"key": ..., "label": ...}' : '{"key": ...}';
      throw new DatasetError(`${where} line ${line}: expected a JSON object ${shape}, not ${typeName(v)}`);
    }
    const o = v as Record<string, unknown>;
    rows.add(o.key, o.label, o.split, line);
    if (start >= nextYield) {
      nextYield = start + CHUNK_BYTES;
      await yieldToEventLoop();
    }
  }
  if (rows.out.length === 0) {
    throw new DatasetError(
      `manifest ${where} is empty: expected one JSON object per line, {"key": ..., "label": ..., "split"?: ...}`,
    );
  }
}

// ---------- CSV ----------

/**
 * Line numbers of byte offsets, counted as an editor counts them: `\n`, `\r\n` and a lone `\r`
 * each end a line. Offsets are asked for in increasing order, so the bytes are read once.
 */
class LineCounter {
  private pos = 0;
  private line = 1;
  constructor(private readonly bytes: Buffer) {}

  /** The line (from 1) of the byte at `offset`. */
  at(offset: number): number {
    const b = this.bytes;
    const end = Math.min(offset, b.length);
    for (let i = this.pos; i < end; i++) {
      const c = b[i];
      if (c === 0x0a || (c === 0x0d && b[i + 1] !== 0x0a)) this.line++;
    }
    if (end > this.pos) this.pos = end;
    return this.line;
  }
}

/** What a CsvError carries besides its message. */
interface CsvErrorInfo {
  readonly code?: string;
  readonly lines?: number;
}

async function csvRows(bytes: Buffer, where: string, rows: ManifestRows): Promise<void> {
  // Where records start. csv-parse reports the byte offset just past each record (info.bytes)
  // and how many blank lines it skipped; the line numbers are counted here from the bytes,
  // because its own count (info.lines) takes a CRLF inside a quoted value for two lines.
  const lines = new LineCounter(bytes);
  let prevEnd = 0; // byte offset just past the previous record
  let emptyBefore = 0; // csv-parse's count of skipped blank lines at that point
  let csvLinesAtPrevEnd = 1; // csv-parse's line count there (its own way of counting)
  let header: string[] | undefined;
  let index: ReturnType<typeof columnIndex> | undefined;
  const onRecord = (cells: string[], info: { bytes: number; lines: number; empty_lines: number }): null => {
    const line = lines.at(prevEnd) + (info.empty_lines - emptyBefore);
    prevEnd = info.bytes;
    emptyBefore = info.empty_lines;
    // Its line count moves past the record's line end when it reads the next byte.
    csvLinesAtPrevEnd = info.lines + 1;
    if (header === undefined) {
      header = cells.map((h) => h.trim().toLowerCase());
      index = columnIndex(header, where, rows.need);
      return null;
    }
    if (cells.length !== header.length) {
      throw new DatasetError(
        `${where} line ${line}: ${cells.length} ${cells.length === 1 ? 'value' : 'values'}, expected ${header.length} ` +
          `(the header's columns: ${headerList(header)}); quote a value that contains a comma, e.g. "big, cat"`,
      );
    }
    rows.add(
      cells[index!.key],
      index!.label === undefined ? undefined : cells[index!.label],
      index!.split === undefined ? undefined : cells[index!.split],
      line,
    );
    return null; // nothing is kept by the parser
  };
  const parser = new Parser({
    bom: true,
    trim: true, // spaces around unquoted values and around quotes; never inside quotes
    skip_empty_lines: true,
    relax_column_count: true, // counted above, so the message names the line and the header
    on_record: onRecord,
  });
  let failure: unknown;
  const done = new Promise<void>((resolve) => {
    parser.once('finish', resolve);
    parser.once('error', (err) => {
      failure ??= err;
      resolve();
    });
  });
  // Each write parses its chunk at once (records go to on_record, none is queued), then the event
  // loop runs before the next: a parse error, or a refused row, arrives as 'error' in between.
  for (let off = 0; off < bytes.length && failure === undefined; off += CHUNK_BYTES) {
    parser.write(bytes.subarray(off, off + CHUNK_BYTES));
    await yieldToEventLoop();
  }
  if (failure === undefined) parser.end();
  await done;
  if (failure instanceof DatasetError) throw failure;
  if (failure !== undefined) {
    const prevEndLine = lines.at(prevEnd);
    const start = recordStart(bytes, prevEnd);
    const startLine = lines.at(start);
    // csv-parse's count where the record starts: one more per blank line skipped since prevEnd.
    const csvLinesAtStart = csvLinesAtPrevEnd + (startLine - prevEndLine);
    throw csvParseError(failure, where, startLine, (csvLines) =>
      lineOfCsvCount(bytes, start, startLine, csvLines - csvLinesAtStart),
    );
  }
  const columns = COLUMNS_OF[rows.need];
  if (header === undefined) {
    throw new DatasetError(`manifest ${where} is empty: expected a header line ${columns} and one line per image`);
  }
  if (rows.out.length === 0) {
    throw new DatasetError(`manifest ${where} has a header but no rows: add one line per image (${columns})`);
  }
}

/** Offset of the first byte of the record after `from`: blank lines and leading blanks skipped. */
function recordStart(bytes: Buffer, from: number): number {
  let i = from;
  while (i < bytes.length && (bytes[i] === 0x20 || bytes[i] === 0x09 || bytes[i] === 0x0d || bytes[i] === 0x0a)) i++;
  return i;
}

/**
 * The line where csv-parse stopped inside a record that starts at `start` (on `startLine`), from
 * the number of line-break characters it had read in the record by then (`breaks`): each `\r`
 * and `\n` is one to it, so a CRLF inside a quoted value counts once here.
 */
function lineOfCsvCount(bytes: Buffer, start: number, startLine: number, breaks: number): number {
  let line = startLine;
  let seen = 0;
  for (let i = start; i < bytes.length && seen < breaks; i++) {
    const c = bytes[i];
    if (c !== 0x0a && c !== 0x0d) continue;
    seen++;
    if (c === 0x0a || bytes[i + 1] !== 0x0a) line++;
  }
  return line;
}

/** Where key, label and split are; every problem with the header named with the fix. */
function columnIndex(
  header: readonly string[],
  where: string,
  need: Need,
): { key: number; label?: number; split?: number } {
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
  for (const col of need === 'labels' ? (['key', 'label'] as const) : (['key'] as const)) {
    if (found[col] === undefined) {
      const hint = header.length === 1 && /[;\t|]/.test(header[0]!) ? '; columns must be separated by commas' : '';
      throw new DatasetError(
        `${where}: the header has no "${col}" column (found: ${headerList(header) || 'nothing'}${hint}); expected ${COLUMNS_OF[need]}`,
      );
    }
  }
  return {
    key: found.key!,
    ...(found.label !== undefined ? { label: found.label } : {}),
    ...(found.split !== undefined ? { split: found.split } : {}),
  };
}

/** The header's names for a message: each capped, and at most ten of them. */
function headerList(header: readonly string[]): string {
  const shown = header.slice(0, 10).map((h) => quote(h, 40));
  if (header.length > 10) shown.push(`…${header.length - 10} more`);
  return shown.join(', ');
}

/**
 * csv-parse's error as a DatasetError with the line and the fix; its own text is capped.
 * `recordStart` is the line the record in progress starts on; `lineOf` turns csv-parse's line
 * count at the error into the true line.
 */
function csvParseError(
  err: unknown,
  where: string,
  recordStart: number,
  lineOf: (csvLines: number) => number,
): DatasetError {
  const e = err as CsvError & CsvErrorInfo;
  const line = e.lines === undefined ? recordStart : lineOf(e.lines);
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
    case 'CSV_NON_TRIMABLE_CHAR_AFTER_CLOSING_QUOTE':
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
