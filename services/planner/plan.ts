/**
 * Dataset planning, pure: from a listing (or a manifest's rows, see manifest.ts) to the labelled,
 * split, sharded list of images. Labels are data — they never become part of a key we write.
 */
import { DatasetError } from '../../shared/errors.js';
import { capText, quote } from '../../shared/text.js';
import { SPLITS, type ManifestItem, type Split } from '../../shared/dataset.js';
import { mulberry32 } from '../../shared/random.js';
import type { ListedObject } from '../../shared/s3.js';

/** Split folder names (and manifest split values, lower-cased) → split: each split's own name, and aliases. */
const SPLIT_NAMES: ReadonlyMap<string, Split> = new Map<string, Split>([
  ...SPLITS.map((s): [string, Split] => [s, s]),
  ['validation', 'val'],
  ['valid', 'val'],
]);

/**
 * The split a folder or manifest value names, if any. A Map, not an object literal: a folder
 * called `constructor` or `__proto__` must not find Object.prototype's members.
 */
export function splitNamed(name: string): Split | undefined {
  return SPLIT_NAMES.get(name);
}

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

/**
 * The version of an object its listing gave: ETag and size, the feature cache's key for the image
 * (shared/queues.ts itemSchema). Only a listing gives them; the planner never reads them from a
 * user's manifest.
 */
export interface ObjectVersion {
  etag?: string;
  size?: number;
}

/** A listed object: its key, and its version when the store gave one. */
export type ListedKey = string | ({ key: string } & ObjectVersion);

/** An image with its label, its split when the dataset gives one, and its listed version. */
export interface Labelled extends ObjectVersion {
  key: string;
  label: string;
  split?: Split;
}

/** A manifest item as the planner writes it: with the listed version, when there is one. */
export type PlannedItem = ManifestItem & ObjectVersion;

/** A listing's object as planning keeps it: the key, with its ETag and size when the store gave an ETag. */
export function listedKey(o: ListedObject): ListedKey {
  return o.etag !== undefined ? { key: o.key, etag: o.etag, size: o.size } : o.key;
}

/** The version fields of a listed object, for spreading into an item (nothing for a bare key). */
export function versionOf(o: ListedKey | Labelled): ObjectVersion {
  if (typeof o === 'string') return {};
  return {
    ...(o.etag !== undefined ? { etag: o.etag } : {}),
    ...(o.size !== undefined && o.etag !== undefined ? { size: o.size } : {}),
  };
}

/**
 * Folder-per-class listing: `prefix/<label>/<file>` or `prefix/<split>/<label>/<file>`. Every
 * object that is not used is returned in `ignored` with why, so `status` can show it: a stray
 * file is never dropped without a word.
 */
export function labelsFromListing(
  keys: readonly ListedKey[],
  prefix: string,
  where: string,
): { items: Labelled[]; ignored: Plan['ignored'] } {
  const items: Labelled[] = [];
  const ignored: Plan['ignored'] = [];
  let withSplit = 0;
  let withoutSplit = 0;
  // Files directly inside a split folder (train/README.md) are strays when the layout has
  // split folders, but a class may legitimately be called "test" when it has none.
  const inSplitFolder: Labelled[] = [];
  for (const listed of keys) {
    const key = typeof listed === 'string' ? listed : listed.key;
    if (key.endsWith('/')) continue; // folder marker objects
    const version = versionOf(listed);
    const parts = key.slice(prefix.length).split('/');
    if (parts.some((p) => p === '')) {
      // `cat//1.jpg` is not in folder `cat`: S3 keys are plain strings, '' is a folder name too.
      ignored.push({
        key,
        reason: "a folder with an empty name ('//' or a leading '/') in its key; expected <label>/<file>",
      });
    } else if (parts.length === 3 && splitNamed(parts[0]!) !== undefined) {
      items.push({ key, label: parts[1]!, split: splitNamed(parts[0]!)!, ...version });
      withSplit++;
    } else if (parts.length === 2 && splitNamed(parts[0]!) !== undefined) {
      inSplitFolder.push({ key, label: parts[0]!, ...version });
    } else if (parts.length === 2) {
      items.push({ key, label: parts[0]!, ...version });
      withoutSplit++;
    } else if (parts.length === 1) {
      ignored.push({ key, reason: 'at the top of the prefix, not in a <label>/ folder' });
    } else {
      ignored.push({
        key,
        reason: `in a subfolder ${parts.length - 2} deep; only files directly in <label>/ or <split>/<label>/ are used`,
      });
    }
  }
  if (withSplit > 0) {
    for (const it of inSplitFolder)
      ignored.push({ key: it.key, reason: 'directly in a split folder, not in <split>/<label>/' });
  } else {
    // A loop, not push(...spread): a spread of 100,000+ items overflows the call stack.
    for (const it of inSplitFolder) items.push(it);
    withoutSplit += inSplitFolder.length;
  }
  if (withSplit > 0 && withoutSplit > 0) {
    throw new DatasetError(
      `${where} mixes split folders (train/val/test/<label>/) with plain <label>/ folders: use one layout`,
    );
  }
  if (items.length === 0) {
    throw new DatasetError(
      `no images under ${where}: expected <label>/<file> folders (or train|val|test/<label>/<file>, or a manifest .csv/.jsonl)`,
    );
  }
  return { items, ignored };
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
export function assignSplits(items: readonly Labelled[], fractions: SplitFractions, seed: number): PlannedItem[] {
  // One sort by key: each class's images keep that order (the seeded shuffle starts from it) and
  // the result is built in it, so a million images are sorted once, not twice. Classes hold
  // indices into `sorted`, not copies.
  const sorted = [...items].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const byLabel = new Map<string, number[]>();
  sorted.forEach((it, i) => {
    const group = byLabel.get(it.label);
    if (group) group.push(i);
    else byLabel.set(it.label, [i]);
  });
  const anySplit = items.some((i) => i.split !== undefined);
  const allSplit = items.every((i) => i.split !== undefined);
  if (anySplit && !allSplit)
    throw new DatasetError('some images have a split and some do not: give every image a split, or none');
  const hasVal = items.some((i) => i.split === 'val');
  const splits = new Array<Split>(sorted.length);
  for (const label of [...byLabel.keys()].sort()) {
    const group = byLabel.get(label)!;
    const rand = mulberry32(seed ^ hashString(label));
    if (allSplit) {
      const train = group.filter((i) => sorted[i]!.split === 'train');
      const valCount = hasVal ? 0 : Math.round(train.length * (fractions.val / (fractions.train + fractions.val)));
      for (const i of group) splits[i] = sorted[i]!.split!;
      for (const i of shuffled(train, rand).slice(0, Math.min(valCount, train.length - 1))) splits[i] = 'val';
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
      splits[i] = idx < nTest ? 'test' : idx < nTest + nVal ? 'val' : 'train';
    });
  }
  return sorted.map((it, i) => ({ key: it.key, label: it.label, split: splits[i]!, ...versionOf(it) }));
}

/**
 * Checks the dataset can be trained and tested on; messages name the class and the fix.
 * `layout` picks the fix to suggest for too few classes.
 */
export function checkAndCount(
  items: readonly ManifestItem[],
  where: string,
  layout: 'folders' | 'manifest' = 'folders',
): Pick<Plan, 'classes' | 'counts'> {
  // No prototype: labels are data, and a class called "__proto__" or "constructor" must count
  // like any other (on a plain object it would find, and write to, Object.prototype's members).
  const counts: Record<string, Record<Split, number>> = Object.create(null);
  for (const it of items) {
    counts[it.label] ??= { train: 0, val: 0, test: 0 };
    counts[it.label]![it.split]++;
  }
  const classes = Object.keys(counts).sort();
  if (classes.length < 2) {
    const fix = layout === 'manifest' ? 'give the images at least two different labels' : 'add a folder per class';
    const only = classes[0] === undefined ? 'none' : capText(classes[0]);
    throw new DatasetError(`only one class (${only}) under ${where}: a classifier needs at least two labels; ${fix}`);
  }
  for (const c of classes) {
    if (counts[c]!.train === 0)
      throw new DatasetError(`class ${quote(c)} has no training images under ${where}: add some or remove the class`);
    if (counts[c]!.test === 0)
      throw new DatasetError(
        `class ${quote(c)} has no test images under ${where}: add some to its test split, or let deepfeat split (no split folders)`,
      );
  }
  return { classes, counts };
}

export function shardItems<T>(items: readonly T[], shardSize: number): T[][] {
  const shards: T[][] = [];
  for (let i = 0; i < items.length; i += shardSize) shards.push(items.slice(i, i + shardSize));
  return shards;
}
