/**
 * A published version's files: models/<name>/<version>/ holds model.json and, beside it,
 * classifier.onnx (and whatever later versions add). `deepfeat download` writes the whole folder;
 * `deepfeat predict` reads classifier.onnx, checked against the size and sha256 model.json gives
 * and kept in DEEPFEAT_CACHE_DIR by its hash, so a model is fetched once per host.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BadRequestError, ModelError, NotFoundError } from '../shared/errors.js';
import { CLASSIFIER_FILE, type ClassifierInfo, type ModelArtifact } from '../shared/model-format.js';
import { getObjectBytes, listObjects, s3Url, splitS3Url } from '../shared/s3.js';
import { quote } from '../shared/text.js';
import type { Client } from './client.js';

/** A file name a version folder may hold: one plain segment (never '..', never a path). */
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
/** Most files downloaded from one version folder: it holds two today. */
const MAX_FILES = 64;

/** The classifier model.json names, or undefined (an older version, or a backbone ONNX cannot express). */
export function classifierOf(a: ModelArtifact): ClassifierInfo | undefined {
  return a.classifier && a.classifier.file !== null ? a.classifier : undefined;
}

/**
 * classifier.onnx's bytes for the model.json at `modelUri`, from the host's cache or the bucket,
 * checked against model.json's size and sha256 (a file that does not match is never run).
 */
export async function classifierBytes(client: Client, artifact: ModelArtifact, modelUri: string): Promise<Uint8Array> {
  const info = classifierOf(artifact);
  if (!info) throw new ModelError(`${quote(modelUri)} names no ${CLASSIFIER_FILE}`);
  const cacheDir = client.config.extractor.cacheDir;
  const cached = cacheDir ? join(cacheDir, 'classifiers', `${info.sha256}.onnx`) : undefined;
  if (cached) {
    const bytes = await readFile(cached).catch(() => undefined);
    if (bytes && sha256(bytes) === info.sha256) return new Uint8Array(bytes);
  }
  const bytes = await fetchChecked(client, modelUri, info);
  if (cached) {
    // Written then renamed: a concurrent reader never sees half a file; failing to cache costs a refetch only.
    const tmp = `${cached}.${process.pid}.tmp`;
    await mkdir(join(cacheDir, 'classifiers'), { recursive: true })
      .then(() => writeFile(tmp, bytes))
      .then(() => rename(tmp, cached))
      .catch(() => rm(tmp, { force: true }));
  }
  return bytes;
}

async function fetchChecked(client: Client, modelUri: string, info: ClassifierInfo): Promise<Uint8Array> {
  const { bucket, key } = splitS3Url(modelUri);
  const fileKey = key.replace(/model\.json$/, CLASSIFIER_FILE);
  let bytes: Uint8Array;
  try {
    bytes = await getObjectBytes(client.s3, bucket, fileKey, info.bytes);
  } catch (err) {
    if (err instanceof NotFoundError) {
      throw new NotFoundError(
        `${quote(s3Url(bucket, fileKey))} is missing, though model.json names it: publish the model again`,
        { cause: err },
      );
    }
    throw err;
  }
  if (bytes.byteLength !== info.bytes || sha256(bytes) !== info.sha256) {
    throw new ModelError(
      `${quote(s3Url(bucket, fileKey))} does not match the size and sha256 model.json gives: it was changed or ` +
        'damaged after publishing; publish the model again',
    );
  }
  return bytes;
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * Writes every file of the version folder holding `modelUri` into `dir`: model.json (as read and
 * checked, `artifact`), classifier.onnx (checked against model.json), and any other plain file
 * there up to DEEPFEAT_MAX_MODEL_BYTES. Files are written under a temporary name and renamed, so
 * a folder never holds half a file. Returns the names written.
 */
export async function downloadVersion(
  client: Client,
  artifact: ModelArtifact,
  modelUri: string,
  dir: string,
): Promise<string[]> {
  const { bucket, key } = splitS3Url(modelUri);
  const prefix = key.slice(0, key.lastIndexOf('/') + 1);
  const files = new Map<string, Uint8Array | string>([['model.json', `${JSON.stringify(artifact, null, 2)}\n`]]);
  const info = classifierOf(artifact);
  if (info) files.set(CLASSIFIER_FILE, await fetchChecked(client, modelUri, info));
  for await (const o of listObjects(client.s3, bucket, prefix)) {
    const name = o.key.slice(prefix.length);
    // Nested keys and odd names are not part of a version's layout; they are never a path here.
    if (files.has(name) || !FILE_NAME.test(name) || files.size >= MAX_FILES) continue;
    files.set(name, await getObjectBytes(client.s3, bucket, o.key, client.config.extractor.maxModelBytes));
  }
  try {
    await mkdir(dir, { recursive: true });
    for (const [name, body] of files) {
      const tmp = join(dir, `.${name}.${process.pid}.part`);
      await writeFile(tmp, body);
      await rename(tmp, join(dir, name));
    }
  } catch (err) {
    throw new BadRequestError(`cannot write to ${quote(dir)}: ${fsProblem(err)}; choose another folder (-o DIR)`, {
      cause: err,
    });
  }
  return [...files.keys()];
}

/** A file-system error in words (Node's own message repeats the path, unquoted). */
export function fsProblem(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  switch (code) {
    case 'EEXIST':
    case 'ENOTDIR':
      return 'it, or a folder above it, is a file, not a folder';
    case 'EISDIR':
      return 'a file to write there is a folder';
    case 'EACCES':
    case 'EPERM':
      return 'permission denied';
    case 'EROFS':
      return 'the file system is read-only';
    case 'ENOSPC':
      return 'no space left on the device';
    case 'EDQUOT':
      return 'the disk quota is used up';
    default:
      return code ?? (err instanceof Error ? err.message : String(err));
  }
}
