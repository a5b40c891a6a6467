/**
 * Reads the files of a user's model (model.json, weight files) for the feature engine, from
 * s3:// or from local folders the operator allows (DEEPFEAT_MODEL_DIRS), never from anywhere else.
 *
 * The model reference comes from a run request, which is untrusted: without this gate
 * `--model /etc/passwd` made a worker read the file and echo its first bytes in the run's error.
 * So: a local path must resolve (symlinks followed) to a regular file inside an allowed folder;
 * every file, local or s3://, is read with a size bound known before its body is read; and no
 * message carries a file's content or size, or tells a file outside the allowed folders that
 * exists from one that does not.
 */
import { constants } from 'node:fs';
import { lstat, open, readlink, realpath, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { DeepfeatError, ModelError, NotFoundError, StorageError } from '../../shared/errors.js';
import { ObjectTooLargeError, getObjectBytes } from '../../shared/s3.js';
import { quote } from '../../shared/text.js';

/** Reads one model file, at most `maxBytes` bytes (and never more than the source's own limit). */
export type ReadModelFile = (url: string, maxBytes?: number) => Promise<Uint8Array>;

export interface ModelSourceOptions {
  /** Object storage for s3:// models; without it only local paths can be read. */
  s3?: S3Client;
  /** Absolute folders local model files may be in (config.extractor.modelDirs); empty: none. */
  modelDirs: readonly string[];
  /** Largest file read (config.extractor.maxModelBytes). */
  maxModelBytes: number;
}

/** S3's own limits: a key is 1–1024 bytes of UTF-8; a bucket name 3–63 of [a-z0-9.-]. */
const MAX_KEY_BYTES = 1024;
const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Longer local paths are not a model anyone keeps; they would only bloat messages. */
const MAX_PATH_CHARS = 1024;
// C0, DEL and C1 controls: no real key or path holds them, and they would reach terminals in messages.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

const FIX_LOCAL = 'upload the model to s3:// or have the operator add its folder to DEEPFEAT_MODEL_DIRS';

/** The reader a worker gives its engines (`EngineDeps.readObject`). */
export function createModelSource(opts: ModelSourceOptions): ReadModelFile {
  return async (url, maxBytes) => {
    const limit = Math.min(maxBytes ?? opts.maxModelBytes, opts.maxModelBytes);
    if (typeof url !== 'string' || url === '')
      throw new ModelError('no model given: name an s3:// URL or a local path of model.json');
    if (/^[a-z][a-z0-9+.-]*:/i.test(url)) {
      if (!url.startsWith('s3://')) {
        throw new ModelError(
          `model ${quote(url)} is neither an s3:// URL nor a local path: upload the model to s3://bucket/path/model.json`,
        );
      }
      return readS3(opts.s3, url, limit);
    }
    return readLocal(url, opts.modelDirs, limit);
  };
}

// ───────────────────────────── s3:// ─────────────────────────────

/**
 * Bucket and key of a model object URL, checked against S3's own rules, so a malformed URL fails
 * here with its fix rather than as a confusing storage error (or, on some S3 servers, a crash).
 */
export function parseModelS3Url(url: string): { bucket: string; key: string } {
  const m = /^s3:\/\/([^/]*)\/(.*)$/s.exec(url);
  const bucket = m?.[1] ?? '';
  const key = m?.[2] ?? '';
  const ok =
    BUCKET_NAME.test(bucket) &&
    !bucket.includes('..') &&
    key !== '' &&
    !key.endsWith('/') &&
    Buffer.byteLength(key, 'utf8') <= MAX_KEY_BYTES &&
    !CONTROL.test(key);
  if (!ok) {
    throw new ModelError(
      `model URL ${quote(url)} does not name an S3 object: expected s3://bucket/path/model.json ` +
        `(bucket: 3–63 of a-z 0-9 . -; key: 1–${MAX_KEY_BYTES} bytes, no control characters, not ending in /)`,
    );
  }
  return { bucket, key };
}

async function readS3(s3: S3Client | undefined, url: string, limit: number): Promise<Uint8Array> {
  const { bucket, key } = parseModelS3Url(url);
  if (!s3) throw new DeepfeatError('INTERNAL', `no object storage configured to read ${quote(url)}`);
  try {
    const bytes = await getObjectBytes(s3, bucket, key, limit);
    // getObjectBytes bounds the read by Content-Length; a server that sends none is caught here.
    if (bytes.length > limit) throw new ObjectTooLargeError(url, bytes.length, limit);
    return bytes;
  } catch (err) {
    if (err instanceof ObjectTooLargeError) throw tooLarge(url, limit);
    if (err instanceof NotFoundError)
      throw new ModelError(`model file ${quote(url)} does not exist: check the URL`, { cause: err });
    // Transient storage faults stay retryable; a refused bucket is the model reference's fault.
    if (err instanceof StorageError && err.permanent) {
      throw new ModelError(`cannot read model file ${quote(url)}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

// ───────────────────────────── local folders ─────────────────────────────

/** `child` lies strictly below `dir` (both absolute, resolved). */
export function isInside(child: string, dir: string): boolean {
  const rel = path.relative(dir, child);
  return rel !== '' && rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

function isInsideOrSame(child: string, dir: string): boolean {
  return path.relative(dir, child) === '' || isInside(child, dir);
}

/** One answer for "outside the allowed folders" and "does not exist there": neither may be told apart. */
function notAllowed(p: string): ModelError {
  return new ModelError(
    `model file ${quote(p)} is not in a folder this worker allows (DEEPFEAT_MODEL_DIRS) or does not exist: ${FIX_LOCAL}`,
  );
}

function tooLarge(url: string, limit: number): ModelError {
  return new ModelError(
    `model file ${quote(url)} is larger than ${limit} bytes, the most a worker reads for it: ` +
      'use a smaller model, or have the operator raise DEEPFEAT_MAX_MODEL_BYTES',
  );
}

function errCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

/** The allowed folders as they really are (symlinks resolved); folders that do not exist drop out. */
async function realDirs(dirs: readonly string[]): Promise<string[]> {
  const out = await Promise.all(dirs.map((d) => realpath(d).catch(() => undefined)));
  return out.filter((d): d is string => d !== undefined);
}

/**
 * The real path of `p` when it lies inside an allowed folder.
 * @throws ModelError, the same one whether an outside file exists or not.
 */
async function resolveInside(p: string, dirs: readonly string[]): Promise<string> {
  if (dirs.length === 0)
    throw new ModelError(`local model paths are not allowed on this worker (${quote(p)}): ${FIX_LOCAL}`);
  if (p.length > MAX_PATH_CHARS || CONTROL.test(p) || !path.isAbsolute(p)) {
    throw new ModelError(
      `local model path ${quote(p)} is not an absolute path of at most ${MAX_PATH_CHARS} characters: ` +
        'give the full path of model.json inside a DEEPFEAT_MODEL_DIRS folder, or an s3:// URL',
    );
  }
  const allowed = await realDirs(dirs);
  let real: string;
  try {
    real = await realpath(p);
  } catch (err) {
    if (errCode(err) === 'ENOENT') {
      // "Does not exist" is said only when the file's own folder is inside an allowed folder:
      // there it helps with a typo, and it tells nothing about the rest of the host. A dangling
      // symlink (lstat finds it) may point anywhere, so it gets the outside answer.
      const parent = await realpath(path.dirname(p)).catch(() => undefined);
      if (parent !== undefined && allowed.some((d) => isInsideOrSame(parent, d))) {
        const missing = await lstat(path.join(parent, path.basename(p))).then(
          () => false,
          (e: unknown) => errCode(e) === 'ENOENT',
        );
        if (missing) {
          throw new ModelError(
            `model file ${quote(p)} does not exist: check the path (it is inside DEEPFEAT_MODEL_DIRS)`,
          );
        }
      }
    }
    throw notAllowed(p);
  }
  if (!allowed.some((d) => isInside(real, d))) throw notAllowed(p);
  return real;
}

async function readLocal(p: string, dirs: readonly string[], limit: number): Promise<Uint8Array> {
  const real = await resolveInside(p, dirs);
  let fh: FileHandle;
  try {
    // O_NOFOLLOW: the resolved path has no symlink, so one appearing now was swapped in. O_NONBLOCK:
    // a FIFO swapped in cannot block the open (fstat below then refuses it).
    fh = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = errCode(err);
    if (code === 'ENOENT' || code === 'ELOOP') throw notAllowed(p);
    throw new ModelError(`model file ${quote(p)} cannot be opened (${code ?? 'error'}): check its permissions`, {
      cause: err,
    });
  }
  try {
    // Where the kernel says the open file is (Linux): a folder swapped for a symlink between
    // realpath and open would show here as a path outside.
    const opened = await readlink(`/proc/self/fd/${fh.fd}`).catch(() => undefined);
    if (opened !== undefined && !(await realDirs(dirs)).some((d) => isInside(opened, d))) throw notAllowed(p);
    const st = await fh.stat();
    if (!st.isFile()) {
      throw new ModelError(
        `model file ${quote(p)} is not a regular file: give the path of model.json or of a weight file`,
      );
    }
    if (st.size > limit) throw tooLarge(p, limit);
    const bytes = await readBounded(fh, st.size, limit);
    if (bytes === undefined) throw tooLarge(p, limit);
    return bytes;
  } catch (err) {
    if (err instanceof DeepfeatError) throw err;
    throw new ModelError(`model file ${quote(p)} cannot be read (${errCode(err) ?? 'error'})`, { cause: err });
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/**
 * The whole file, or undefined once more than `limit` bytes turn up. The size from stat is only a
 * hint: a file may grow while read, and kernel files (/proc) report 0 and have content.
 */
export async function readBounded(fh: FileHandle, sizeHint: number, limit: number): Promise<Uint8Array | undefined> {
  let buf = Buffer.allocUnsafeSlow(Math.min(Math.max(sizeHint, 64 * 1024), limit) + 1);
  let n = 0;
  for (;;) {
    if (n === buf.length) {
      if (n > limit) return undefined;
      const next = Buffer.allocUnsafeSlow(Math.min(buf.length * 2, limit + 1));
      buf.copy(next, 0, 0, n);
      buf = next;
    }
    const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
    if (bytesRead === 0) break;
    n += bytesRead;
  }
  return n > limit ? undefined : new Uint8Array(buf.buffer, buf.byteOffset, n);
}
