/**
 * A published version's files: models/<name>/<version>/ holds model.json and, beside it,
 * classifier.onnx. `deepfeat download` writes both (nothing else from the folder);
 * `deepfeat predict` reads classifier.onnx, checked against the size and sha256 model.json gives
 * and kept in DEEPFEAT_CACHE_DIR by its hash, so a model is fetched once per host.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BadRequestError, ModelError, NotFoundError } from '../shared/errors.js';
import { CLASSIFIER_FILE, type ClassifierInfo, type ModelArtifact } from '../shared/model-format.js';
import { getObjectBytes, s3Url, splitS3Url } from '../shared/s3.js';
import { quote } from '../shared/text.js';
import type { Client } from './client.js';

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
  const limit = client.config.extractor.maxModelBytes;
  if (info.bytes > limit) {
    throw new ModelError(
      `${quote(s3Url(bucket, fileKey))} is ${info.bytes} bytes, over the limit of ${limit} (DEEPFEAT_MAX_MODEL_BYTES)`,
    );
  }
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
 * Writes the version holding `modelUri` into `dir`: model.json (as read and checked, `artifact`)
 * and classifier.onnx (checked against model.json), and nothing else — another object someone put
 * in the version's folder in the bucket never becomes a file here (it could be a package.json).
 * Files are written under a temporary name and renamed, so a folder never holds half a file.
 * Returns the names written.
 */
export async function downloadVersion(
  client: Client,
  artifact: ModelArtifact,
  modelUri: string,
  dir: string,
): Promise<string[]> {
  const files = new Map<string, Uint8Array | string>([['model.json', `${JSON.stringify(artifact, null, 2)}\n`]]);
  const info = classifierOf(artifact);
  if (info) files.set(CLASSIFIER_FILE, await fetchChecked(client, modelUri, info));
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
