/**
 * `deepfeat predict REF FILE|DIR...`: classify local images with a published model.
 *
 * Images are decoded exactly as the pipeline decodes them (decoder processes bounded in time and
 * memory, the same size and format limits), a batch at a time, and classified by the model's
 * classifier.onnx (local-classifier.ts). A file that cannot be classified gets its reason on its
 * own row and the others still print: exit 0 when any image was classified, 2 when none was.
 * Rows stream out batch by batch in --json (JSON lines) and --csv; the table waits for the end
 * to align its columns.
 */
import { constants } from 'node:fs';
import { type FileHandle, lstat, open, readdir, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { DecoderPool } from '../services/extractor/decoder-pool.js';
import { readBounded } from '../services/extractor/model-source.js';
import { BadRequestError, ImageError, errorMessage } from '../shared/errors.js';
import type { Client } from './client.js';
import { fetchModel } from './client.js';
import { EXIT_BAD_INPUT } from './exit-codes.js';
import { field, table } from './format.js';
import { openClassifier } from './local-classifier.js';
import { DEFAULT_TOP } from './predict-client.js';
import { csvHeader, csvRow } from '../services/evaluator/predictions-csv.js';
import { topK } from '../shared/predictions.js';
import { terminalSafe, terminalSafeJson, terminalSafeLines } from '../shared/text.js';

export interface LocalPredictOptions {
  /** Labels per image, highest first (1 to the model's class count); default 3, or the class count if fewer. */
  top?: number;
  format: 'table' | 'json' | 'csv';
}

/** One image's answer: its top labels, or why it has none. */
export type LocalPrediction =
  | { file: string; top: Array<{ label: string; probability: number }> }
  | { file: string; error: string };

/** Images decoded and classified together: the engine's batch, and what the decoders work on at once. */
const BATCH = 8;

/** Classifies `paths` (files, or folders walked recursively) and prints; returns the exit code (0 if any image was classified, 2 if none). */
export async function predictLocal(
  client: Client,
  ref: string,
  paths: readonly string[],
  o: LocalPredictOptions,
  out: (line: string) => void = (line) =>
    // CSV cells are data: escaped only when a person is looking (JSON is escaped always, validly).
    process.stdout.write(`${process.stdout.isTTY ? terminalSafe(line) : line}\n`),
): Promise<number> {
  const { artifact, uri } = await fetchModel(client, ref);
  const k = artifact.classes.length;
  const top = o.top ?? Math.min(DEFAULT_TOP, k);
  if (!Number.isInteger(top) || top < 1 || top > k) {
    throw new BadRequestError(`--top ${top}: the model has ${k} classes; give 1 to ${k}`);
  }
  const classifier = await openClassifier(client, artifact, uri);
  const cfg = client.config.extractor;
  const decoders = localDecoderPool(cfg);
  const rows: LocalPrediction[] = [];
  let classified = 0;
  // CSV keeps file names exactly when it goes to a file or a pipe; on a terminal its control
  // characters (an ESC in a file name) are shown as escapes like every other output, never obeyed.
  const csvOut = (line: string) => out(process.stdout.isTTY ? terminalSafeLines(line) : line);
  const emit = (r: LocalPrediction) => {
    if ('top' in r) classified++;
    if (o.format === 'json') out(terminalSafeJson(r));
    else if (o.format === 'csv') csvOut(csvRow({ key: r.file, ...r }, top).slice(0, -2));
    else rows.push(r);
  };
  // The batch job's columns, with the file where the batch has the key.
  if (o.format === 'csv') csvOut(csvHeader(top).replace(/^key/, 'file').slice(0, -2));
  try {
    type Decoded = { file: string; pixels: Uint8Array } | { file: string; error: string };
    const decode = (b: FileItem): Promise<Decoded> =>
      b.error !== undefined
        ? Promise.resolve({ file: b.file, error: b.error })
        : decoders
            .decode(b.bytes!, {
              width: classifier.size,
              height: classifier.size,
              maxPixels: cfg.maxImagePixels,
              formats: cfg.imageFormats,
            })
            .then(
              (pixels) => ({ file: b.file, pixels }),
              (err: unknown) => {
                if (err instanceof ImageError) return { file: b.file, error: err.message };
                throw err;
              },
            );
    // The next batch is read and decoded while this one runs through the model, as the
    // extractor's shard loop does: decoding and inference overlap.
    const batches = batchesOf(imageFiles(paths, cfg.maxImageBytes), BATCH);
    const decodeNext = async (): Promise<Decoded[] | undefined> => {
      const next = await batches.next();
      return next.done ? undefined : Promise.all(next.value.map(decode));
    };
    let pending = decodeNext();
    for (;;) {
      const decoded = await pending;
      if (!decoded) break;
      pending = decodeNext();
      pending.catch(() => undefined); // observed when awaited above
      const ok = decoded.filter((d): d is { file: string; pixels: Uint8Array } => 'pixels' in d);
      const p = ok.length > 0 ? await classifier.classify(ok.map((d) => d.pixels)) : new Float32Array(0);
      let row = 0;
      for (const d of decoded) {
        if ('error' in d) {
          emit({ file: d.file, error: d.error });
          continue;
        }
        emit({ file: d.file, top: topK(artifact.classes, p.subarray(row * k, (row + 1) * k), top) });
        row++;
      }
    }
  } finally {
    await Promise.all([decoders.close(), classifier.close()]);
  }
  // One line at a time: `out` escapes what it writes on a terminal, and the table's cells are escaped already.
  if (o.format === 'table') for (const line of formatPredictions(rows, top).split('\n')) out(line);
  return classified > 0 ? 0 : EXIT_BAD_INPUT;
}

/** The human table: file, then each top label with its probability; a file that failed has its reason in the last column. */
export function formatPredictions(rows: readonly LocalPrediction[], top: number): string {
  const labels = Array.from({ length: top }, (_, i) => (top === 1 ? 'label' : `#${i + 1}`));
  const failed = rows.some((r) => 'error' in r);
  const head = ['file', ...labels, ...(failed ? ['error'] : [])];
  const body = rows.map((r) =>
    'top' in r
      ? [r.file, ...r.top.map((t) => `${t.label} ${(100 * t.probability).toFixed(1)}%`)]
      : [r.file, ...labels.map(() => '-'), r.error],
  );
  return table([head, ...body]);
}

/**
 * Decoder processes for a CLI command that decodes local images (predict, similar): the
 * pipeline's limits, one process per core up to a batch.
 */
export function localDecoderPool(cfg: Client['config']['extractor']): DecoderPool {
  return new DecoderPool({
    processes: Math.max(1, Math.min(BATCH, availableParallelism())),
    timeoutSeconds: cfg.decodeTimeoutSeconds,
    memoryLimitMiB: cfg.decodeMemoryMiB,
    jpegDecoder: cfg.jpegDecoder,
    log: () => undefined, // a decoder replaced after a bad image: the row says what happened
  });
}

export type FileItem = { file: string; bytes?: Uint8Array; error?: string };

/** `items` in arrays of `size` (the last may be shorter). */
async function* batchesOf<T>(items: AsyncIterable<T>, size: number): AsyncGenerator<T[]> {
  let batch: T[] = [];
  for await (const item of items) {
    batch.push(item);
    if (batch.length >= size) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}

/**
 * The files `paths` name, in order: a file as given, a folder's files recursively in name order
 * (hidden names and symbolic links inside folders skipped: no loops, nothing outside the folder).
 * A path that cannot be read, anything that is not a regular file, a file over the size limit,
 * and a folder with no files come back with their reason.
 */
async function* imageFiles(paths: readonly string[], maxBytes: number): AsyncGenerator<FileItem> {
  for (const path of paths) {
    let info: Awaited<ReturnType<typeof stat>>;
    try {
      info = await stat(path);
    } catch (err) {
      yield { file: path, error: fileProblem(err) };
      continue;
    }
    if (!info.isDirectory()) {
      yield readImageFile(path, maxBytes, true);
      continue;
    }
    let found = false;
    for await (const item of walk(path, maxBytes)) {
      found = true;
      yield item;
    }
    if (!found) yield { file: path, error: 'no files in this folder (hidden names and symbolic links are skipped)' };
  }
}

async function* walk(dir: string, maxBytes: number): AsyncGenerator<FileItem> {
  let names: string[];
  try {
    names = (await readdir(dir)).sort();
  } catch (err) {
    yield { file: dir, error: fileProblem(err) };
    return;
  }
  for (const name of names) {
    if (name.startsWith('.')) continue;
    const path = join(dir, name);
    const info = await lstat(path).catch((err: unknown) => err as NodeJS.ErrnoException);
    if (info instanceof Error) yield { file: path, error: fileProblem(info) };
    else if (info.isSymbolicLink()) continue;
    else if (info.isDirectory()) yield* walk(path, maxBytes);
    else yield readImageFile(path, maxBytes, false);
  }
}

/**
 * The file's bytes, read from one open handle: opened without blocking (a FIFO cannot hang it)
 * and, inside a walked folder, without following a symbolic link (one swapped in after the walk
 * looked is refused); checked to be a regular file by fstat; and read only up to the limit, since
 * the size on disk is only a hint (a file may grow; /proc files report 0).
 */
export async function readImageFile(path: string, maxBytes: number, follow: boolean): Promise<FileItem> {
  const flags = constants.O_RDONLY | constants.O_NONBLOCK | (follow ? 0 : constants.O_NOFOLLOW);
  let fh: FileHandle;
  try {
    fh = await open(path, flags);
  } catch (err) {
    return { file: path, error: fileProblem(err) };
  }
  try {
    const info = await fh.stat();
    if (info.isDirectory()) return { file: path, error: 'a folder: give image files' };
    if (!info.isFile()) return { file: path, error: 'not a regular file' };
    const tooLarge = (size: string) => ({
      file: path,
      error: `file too large: ${size} exceeds the limit of ${maxBytes} bytes (DEEPFEAT_MAX_IMAGE_BYTES)`,
    });
    if (info.size > maxBytes) return tooLarge(`${info.size} bytes`);
    const bytes = await readBounded(fh, info.size, maxBytes);
    return bytes ? { file: path, bytes } : tooLarge('what it holds');
  } catch (err) {
    return { file: path, error: fileProblem(err) };
  } finally {
    await fh.close().catch(() => undefined);
  }
}

function fileProblem(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      return 'no such file or folder';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EISDIR':
      return 'a folder';
    case 'ELOOP':
      return 'a symbolic link (inside a folder, links are not followed) or a loop of them';
    default:
      return `cannot read: ${field(errorMessage(err), 200)}`;
  }
}
