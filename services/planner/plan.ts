/**
 * Dataset planning, pure: from a listing or a manifest to the labelled, split, sharded list of
 * images. Labels are data — they never become part of a key we write.
 */
import { DatasetError } from '../../shared/errors.js';
import { type ManifestItem, type Split } from '../../shared/dataset.js';
import { mulberry32 } from '../../shared/random.js';

const SPLIT_FOLDERS: Readonly<Record<string, Split>> = { train: 'train', val: 'val', validation: 'val', valid: 'val', test: 'test' };

export interface SplitFractions {
  readonly train: number;
  readonly val: number;
  readonly test: number;
}

export interface Plan {
  readonly items: ManifestItem[];
  readonly classes: string[];
  /** label → split → count */
  readonly counts: Record<string, Record<Split, number>>;
  /** Objects that are not part of the dataset, with why (e.g. a file at the prefix root). */
  readonly ignored: Array<{ key: string; reason: string }>;
}

interface Labelled {
  key: string;
  label: string;
  split?: Split;
}

/** Folder-per-class listing: `prefix/<label>/<file>` or `prefix/<split>/<label>/<file>`. */
export function labelsFromListing(keys: readonly string[], prefix: string, where: string): { items: Labelled[]; ignored: Plan['ignored'] } {
  const items: Labelled[] = [];
  const ignored: Plan['ignored'] = [];
  let withSplit = 0;
  let withoutSplit = 0;
  // Files directly inside a split folder (train/README.md) are strays when the layout has
  // split folders, but a class may legitimately be called "test" when it has none.
  const inSplitFolder: Labelled[] = [];
  for (const key of keys) {
    if (key.endsWith('/')) continue; // folder marker objects
    const parts = key.slice(prefix.length).split('/').filter((p) => p !== '');
    if (parts.length === 3 && SPLIT_FOLDERS[parts[0]!] !== undefined) {
      items.push({ key, label: parts[1]!, split: SPLIT_FOLDERS[parts[0]!] });
      withSplit++;
    } else if (parts.length === 2 && SPLIT_FOLDERS[parts[0]!] !== undefined) {
      inSplitFolder.push({ key, label: parts[0]! });
    } else if (parts.length === 2) {
      items.push({ key, label: parts[0]! });
      withoutSplit++;
    } else {
      ignored.push({ key, reason: 'not in a <label>/ or <split>/<label>/ folder' });
    }
  }
  if (withSplit > 0) {
    for (const it of inSplitFolder) ignored.push({ key: it.key, reason: 'directly in a split folder, not in <split>/<label>/' });
  } else {
    items.push(...inSplitFolder);
    withoutSplit += inSplitFolder.length;
  }
  if (withSplit > 0 && withoutSplit > 0) {
    throw new DatasetError(
      `${where} mixes split folders (train/val/test/<label>/) with plain <label>/ folders: use one layout`,
    );
  }
  if (items.length === 0) {
    throw new DatasetError(`no images under ${where}: expected <label>/<file> folders (or train|val|test/<label>/<file>, or a manifest .csv/.jsonl)`);
  }
  return { items, ignored };
}

/** A manifest of key,label[,split] as CSV (with header) or JSON lines. */
export function labelsFromManifest(text: string, format: 'csv' | 'jsonl', where: string, bucket: string): Labelled[] {
  const rows: Array<{ key?: unknown; label?: unknown; split?: unknown; line: number }> = [];
  const lines = text.split(/\r?\n/);
  if (format === 'jsonl') {
    lines.forEach((l, i) => {
      if (l.trim() === '') return;
      let v: unknown;
      try {
        v = JSON.parse(l);
      } catch {
        throw new DatasetError(`${where} line ${i + 1}: not valid JSON; expected {"key": ..., "label": ..., "split"?: ...}`);
      }
      if (v === null || typeof v !== 'object') throw new DatasetError(`${where} line ${i + 1}: expected a JSON object`);
      rows.push({ ...(v as object), line: i + 1 });
    });
  } else {
    const header = parseCsvLine(lines[0] ?? '').map((h) => h.trim().toLowerCase());
    for (const col of ['key', 'label']) {
      if (!header.includes(col)) {
        throw new DatasetError(`${where}: the header has no "${col}" column (found: ${header.join(', ') || 'nothing'}); expected key,label[,split]`);
      }
    }
    lines.slice(1).forEach((l, i) => {
      if (l.trim() === '') return;
      const cells = parseCsvLine(l);
      const row: Record<string, unknown> = { line: i + 2 };
      header.forEach((h, j) => (row[h] = cells[j]));
      rows.push(row as (typeof rows)[number]);
    });
  }
  const seen = new Set<string>();
  return rows.map((r) => {
    const at = `${where} line ${r.line}`;
    if (typeof r.key !== 'string' || r.key.trim() === '') throw new DatasetError(`${at}: missing key`);
    if (typeof r.label !== 'string' || r.label.trim() === '') throw new DatasetError(`${at}: missing label`);
    const key = manifestKey(r.key.trim(), bucket, at);
    if (seen.has(key)) throw new DatasetError(`${at}: duplicate key ${JSON.stringify(key)}; each image may appear once`);
    seen.add(key);
    let split: Split | undefined;
    if (r.split !== undefined && r.split !== null && String(r.split).trim() !== '') {
      split = SPLIT_FOLDERS[String(r.split).trim().toLowerCase()];
      if (!split) throw new DatasetError(`${at}: unknown split ${JSON.stringify(r.split)}; use train, val or test (or leave it empty)`);
    }
    return { key, label: r.label.trim(), ...(split ? { split } : {}) };
  });
}

/** Keys are relative to the manifest's bucket; an s3:// URL must name the same bucket. */
function manifestKey(raw: string, bucket: string, at: string): string {
  let key = raw;
  if (raw.startsWith('s3://')) {
    const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(raw);
    if (!m || m[1] !== bucket) throw new DatasetError(`${at}: key ${JSON.stringify(raw)} is outside the bucket ${bucket}; images must be in the manifest's bucket`);
    key = m[2]!;
  }
  key = key.replace(/^\/+/, '');
  if (key.split('/').some((p) => p === '..' || p === '.')) {
    throw new DatasetError(`${at}: key ${JSON.stringify(raw)} contains '.' or '..' segments; give the object key as stored`);
  }
  return key;
}

/** Minimal RFC 4180 line parser: commas, double quotes, "" escapes. */
export function parseCsvLine(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quoted) {
      if (c === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cur += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out;
}


function hashString(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}

function shuffled<T>(xs: readonly T[], rand: () => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/**
 * Assigns missing splits, stratified by class and seeded. When every item has a split but none
 * is 'val', a validation part is carved out of train the same way (L2 strength is chosen on it).
 */
export function assignSplits(items: readonly Labelled[], fractions: SplitFractions, seed: number): ManifestItem[] {
  const byLabel = new Map<string, Labelled[]>();
  for (const it of items) byLabel.set(it.label, [...(byLabel.get(it.label) ?? []), it]);
  const anySplit = items.some((i) => i.split !== undefined);
  const allSplit = items.every((i) => i.split !== undefined);
  if (anySplit && !allSplit) throw new DatasetError('some images have a split and some do not: give every image a split, or none');
  const hasVal = items.some((i) => i.split === 'val');
  const out: ManifestItem[] = [];
  for (const label of [...byLabel.keys()].sort()) {
    const group = [...byLabel.get(label)!].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const rand = mulberry32(seed ^ hashString(label));
    if (allSplit) {
      const train = group.filter((i) => i.split === 'train');
      const valCount = hasVal ? 0 : Math.round(train.length * (fractions.val / (fractions.train + fractions.val)));
      const valKeys = new Set(shuffled(train, rand).slice(0, Math.min(valCount, train.length - 1)).map((i) => i.key));
      for (const i of group) out.push({ key: i.key, label, split: valKeys.has(i.key) ? 'val' : i.split! });
      continue;
    }
    const total = fractions.train + fractions.val + fractions.test;
    const n = group.length;
    // At least one test image per class when it has two or more; at least one val when three or more.
    let nTest = Math.max(n >= 2 ? 1 : 0, Math.round((n * fractions.test) / total));
    let nVal = Math.max(n >= 3 && fractions.val > 0 ? 1 : 0, Math.round((n * fractions.val) / total));
    if (nTest + nVal >= n) {
      nVal = Math.max(0, Math.min(nVal, n - nTest - 1));
      nTest = Math.min(nTest, n - 1 - nVal);
    }
    shuffled(group, rand).forEach((i, idx) => {
      out.push({ key: i.key, label, split: idx < nTest ? 'test' : idx < nTest + nVal ? 'val' : 'train' });
    });
  }
  out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  return out;
}

/** Checks the dataset can be trained and tested on; messages name the class and the fix. */
export function checkAndCount(items: readonly ManifestItem[], where: string): Pick<Plan, 'classes' | 'counts'> {
  const counts: Record<string, Record<Split, number>> = {};
  for (const it of items) {
    const c = (counts[it.label] ??= { train: 0, val: 0, test: 0 });
    c[it.split]++;
  }
  const classes = Object.keys(counts).sort();
  if (classes.length < 2) {
    throw new DatasetError(
      `only one class (${classes[0] ?? 'none'}) under ${where}: a classifier needs at least two labels; add a folder per class`,
    );
  }
  for (const c of classes) {
    if (counts[c]!.train === 0) throw new DatasetError(`class ${JSON.stringify(c)} has no training images under ${where}: add some or remove the class`);
    if (counts[c]!.test === 0) throw new DatasetError(`class ${JSON.stringify(c)} has no test images under ${where}: add some to its test split, or let deepfeat split (no split folders)`);
  }
  return { classes, counts };
}

export function shardItems<T>(items: readonly T[], shardSize: number): T[][] {
  const shards: T[][] = [];
  for (let i = 0; i < items.length; i += shardSize) shards.push(items.slice(i, i + shardSize));
  return shards;
}

