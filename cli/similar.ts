/**
 * `deepfeat similar REF QUERY...`: the images of a run most like each query image, by cosine
 * similarity of the pooled deep features (the lesson's second use of them, retrieval).
 *
 * REF names a published model (NAME, NAME@VERSION or its RUN): its classifier.onnx gives the
 * query's features and probabilities in one forward pass (local-classifier.ts), and its run's
 * stored shards are the images searched. A RUN with features but no model yet (still training or
 * evaluating, or failed after extraction, e.g. too large for the trainer) is searched too: the
 * query goes through the engine of the run's feature spec, as the extractors ran it.
 *
 * A QUERY is a local image file or one object, s3://bucket/key (read up to DEEPFEAT_MAX_IMAGE_BYTES),
 * decoded exactly as the pipeline decodes (decoder processes bounded in time and memory). A query
 * that cannot be used gets its reason on its own row and the others still print: exit 0 when any
 * query was answered, 2 when none was (as `predict` on local files).
 */
import {
  RunIndexCache,
  indexMemoryBudget,
  searchIndex,
  splitRange,
  type MemoryBudget,
  type Neighbour,
  type SearchSplit,
} from '../services/retrieval/run-index.js';
import { sharedScanner } from '../services/retrieval/scan.js';
import {
  BadRequestError,
  DeepfeatError,
  ImageError,
  ModelError,
  NotFoundError,
  errorMessage,
} from '../shared/errors.js';
import { isPredictRequest } from '../shared/queues.js';
import { RUN_ID_PATTERN, type RunStatus } from '../shared/run-state.js';
import { ObjectTooLargeError, getObjectBytes, parseS3Url } from '../shared/s3.js';
import { quote, terminalSafeJson } from '../shared/text.js';
import { fetchModel, getStatus, type Client } from './client.js';
import { EXIT_BAD_INPUT } from './exit-codes.js';
import { table } from './format.js';
import { openClassifier, openFeatureEngine, type LocalFeatures } from './local-classifier.js';
import { localDecoderPool, readImageFile } from './predict-local.js';

export const DEFAULT_NEIGHBOURS = 5;
/** Most neighbours a query may ask for. */
export const MAX_NEIGHBOURS = 1000;

export interface SimilarOptions {
  /** Neighbours per query (fewer when the split has fewer images). */
  k: number;
  split: SearchSplit;
  format: 'table' | 'json';
  /** MiB the run's index may take (--memory); default: half of the host's or container's memory. */
  memoryMiB?: number;
}

/** One query's answer: its neighbours, most similar first, or why it has none. */
export type SimilarResult = { query: string; neighbours: Neighbour[] } | { query: string; error: string };

/** Queries decoded and searched together (the engine's batch, and what the decoders work on at once). */
const BATCH = 8;

/** The run searched, and how a query's features are made. */
interface Target {
  runId: string;
  status: RunStatus;
  open(): Promise<LocalFeatures>;
}

/** RUN | NAME | NAME@VERSION → the run whose shards are searched, and the backbone for queries. */
async function resolveTarget(client: Client, ref: string): Promise<Target> {
  if (RUN_ID_PATTERN.test(ref)) {
    const status = await getStatus(client, ref);
    if (isPredictRequest(status.request)) {
      throw new BadRequestError(
        `run ${ref} is a prediction run: it stores predictions, not features to search; give the model it used ` +
          `(${quote(`${status.request.model.name}@${status.request.model.version}`)}) or a training run`,
      );
    }
    if (!status.model) {
      const extracted = status.shards > 0 && status.shardsDone === status.shards;
      if (!extracted) {
        throw new NotFoundError(
          `run ${ref} has no features to search yet (stage ${status.stage}, ${status.shardsDone}/${status.shards} ` +
            `shards extracted${status.error ? `: ${status.error.message}` : ''}): wait for its extraction ` +
            `(deepfeat status ${ref} --watch), or search a published model`,
        );
      }
      const spec = status.request.features;
      return { runId: ref, status, open: () => openFeatureEngine(client, spec) };
    }
  }
  const { artifact, uri } = await fetchModel(client, ref);
  const status = await getStatus(client, artifact.runId);
  return { runId: artifact.runId, status, open: () => openClassifier(client, artifact, uri) };
}

let cache: { budget: MemoryBudget; indexes: RunIndexCache } | undefined;
/** This process's indexes (one per run searched), within the budget the first search set. */
function processCache(budget: MemoryBudget): RunIndexCache {
  if (!cache || cache.budget.bytes !== budget.bytes) cache = { budget, indexes: new RunIndexCache({ budget }) };
  return cache.indexes;
}

/** Answers every query and prints; returns the exit code (0 if any query was answered, 2 if none). */
export async function similar(
  client: Client,
  ref: string,
  queries: readonly string[],
  o: SimilarOptions,
  out: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Promise<number> {
  if (!Number.isInteger(o.k) || o.k < 1 || o.k > MAX_NEIGHBOURS) {
    throw new BadRequestError(`-k ${o.k}: give 1 to ${MAX_NEIGHBOURS} neighbours per query`);
  }
  const target = await resolveTarget(client, ref);
  // The index first: a run too large for the budget, or a split with no images, is refused
  // before any backbone is loaded or image decoded.
  const index = await processCache(indexMemoryBudget(o.memoryMiB, '--memory')).get(
    client.s3,
    client.config.bucket,
    target.runId,
    { shards: target.status.shards, images: target.status.done },
  );
  splitRange(index, o.split);
  const scanner = await sharedScanner();
  const backbone = await target.open();
  const cfg = client.config.extractor;
  const decoders = localDecoderPool(cfg);
  const rows: SimilarResult[] = [];
  let answered = 0;
  const emit = (r: SimilarResult) => {
    if ('neighbours' in r) answered++;
    if (o.format === 'json') out(terminalSafeJson(r));
    else rows.push(r);
  };
  try {
    if (backbone.dim !== index.d) {
      throw new ModelError(
        `the backbone (${backbone.runs}) gives ${backbone.dim} features, but run ${target.runId}'s stored rows have ` +
          `${index.d}: the run's features were made by another backbone; search a model published from this run`,
      );
    }
    type Decoded = { query: string; pixels: Uint8Array } | { query: string; error: string };
    const decode = async (query: string): Promise<Decoded> => {
      const read = await readQuery(client, query);
      if ('error' in read) return { query, error: read.error };
      try {
        const pixels = await decoders.decode(read.bytes, {
          width: backbone.size,
          height: backbone.size,
          maxPixels: cfg.maxImagePixels,
          formats: cfg.imageFormats,
        });
        return { query, pixels };
      } catch (err) {
        if (err instanceof ImageError) return { query, error: err.message };
        throw err;
      }
    };
    for (let first = 0; first < queries.length; first += BATCH) {
      const decoded = await Promise.all(queries.slice(first, first + BATCH).map(decode));
      const ok = decoded.filter((d): d is { query: string; pixels: Uint8Array } => 'pixels' in d);
      const found =
        ok.length > 0
          ? await searchIndex(index, scanner, await backbone.features(ok.map((d) => d.pixels)), ok.length, o.k, o.split)
          : [];
      let row = 0;
      for (const d of decoded) {
        if ('error' in d) emit({ query: d.query, error: d.error });
        else emit({ query: d.query, neighbours: found[row++]! });
      }
    }
  } finally {
    await Promise.all([decoders.close(), backbone.close()]);
  }
  if (o.format === 'table') out(formatSimilar(rows));
  return answered > 0 ? 0 : EXIT_BAD_INPUT;
}

/**
 * The human table: per query, one row per neighbour (the query named on its first); a query that
 * failed has one row, its reason in a last column (as `deepfeat predict`'s table), so a long reason
 * does not widen the neighbour columns.
 */
export function formatSimilar(rows: readonly SimilarResult[]): string {
  const failed = rows.some((r) => 'error' in r);
  const head = ['query', 'rank', 'key', 'label', 'split', 'similarity', ...(failed ? ['error'] : [])];
  const body: string[][] = [];
  for (const r of rows) {
    if ('error' in r) {
      body.push([r.query, '-', '-', '-', '-', '-', r.error]);
      continue;
    }
    r.neighbours.forEach((n, i) => {
      body.push([i === 0 ? r.query : '', String(n.rank), n.key, n.label, n.split, n.similarity.toFixed(4)]);
    });
  }
  return table([head, ...body]);
}

/** A query's bytes: a local file, or one object s3://bucket/key, at most DEEPFEAT_MAX_IMAGE_BYTES; or why not. */
async function readQuery(client: Client, query: string): Promise<{ bytes: Uint8Array } | { error: string }> {
  const maxBytes = client.config.extractor.maxImageBytes;
  if (query.startsWith('s3://')) {
    let bucket: string;
    let key: string;
    try {
      ({ bucket, key } = parseS3Url(query));
    } catch (err) {
      return { error: errorMessage(err) };
    }
    if (key === '' || key.endsWith('/'))
      return { error: 'names a folder, not an object: give one image, s3://bucket/key' };
    try {
      return { bytes: await getObjectBytes(client.s3, bucket, key, maxBytes) };
    } catch (err) {
      if (err instanceof ObjectTooLargeError) return { error: err.message };
      if (err instanceof NotFoundError) return { error: 'no such object' };
      // Refused keys, a missing bucket, refused access: this query's problem. A fault (storage
      // unreachable after its retries) is not the query's, and ends the command (exit 1).
      if (err instanceof DeepfeatError && err.permanent) return { error: err.message };
      throw err;
    }
  }
  // The same reader as `deepfeat predict`: one handle, no blocking on a FIFO, bounded read.
  const file = await readImageFile(query, maxBytes, true);
  return file.bytes ? { bytes: file.bytes } : { error: file.error ?? 'cannot read' };
}
