/**
 * The embedded S3 server of the single-machine default: s3rver (npm) served by our own HTTP server,
 * which bounds every request and lets s3-guard.ts refuse what s3rver would mishandle before s3rver
 * sees it. Runs inside the child process started by local-stack.ts (see local-stack-child.mjs).
 *
 * The guard runs in the same process as s3rver, in front of its request handler, rather than as a
 * proxy on a second port: a second port would be an unguarded way in for anything on this machine
 * (a web page can POST to any 127.0.0.1 port). Below it, s3rver's file store is replaced where it
 * loses data or files (AtomicFilesystemStore), and that store takes each key's lock (key-locks.ts).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import S3rver from 's3rver';
import AWSAccount from 's3rver/lib/models/account.js';
import S3Error from 's3rver/lib/models/error.js';
import S3Object from 's3rver/lib/models/object.js';
import FilesystemStore, {
  type CompletedPart,
  type ObjectMetadata,
  type ReadObject,
  type StoredObject,
} from 's3rver/lib/stores/filesystem.js';
import { quote } from '../shared/text.js';
import { KeyLocks } from './key-locks.js';
import {
  checkRequest,
  DEFAULT_MAX_OBJECT_BYTES,
  type GuardLimits,
  MAX_KEY_BYTES,
  s3ErrorXml,
  type S3Refusal,
  STORE_SUFFIX_BYTES,
  type UploadTarget,
} from './s3-guard.js';

export interface EmbeddedS3Options {
  /** Folder for buckets and objects; created if missing. */
  readonly dir: string;
  /** Default 0: a free port. Always bound on 127.0.0.1 (s3rver checks no signatures). */
  readonly port?: number;
  /** Buckets to create (existing ones are kept). */
  readonly buckets?: readonly string[];
  /** Access key ids to accept besides s3rver's own `S3RVER` (any secret passes). */
  readonly accessKeyIds?: readonly string[];
  /** Largest PutObject / UploadPart body; default 5 GiB, S3's own limit. */
  readonly maxObjectBytes?: number;
}

export interface EmbeddedS3 {
  readonly port: number;
  /** Stop listening and cut open connections (keep-alive sockets would hold close() open). */
  close(): Promise<void>;
}

/** Node's default, stated: a request's line and headers together; more gets 431. */
const MAX_HEADER_BYTES = 16 * 1024;
/** A socket with no traffic this long is closed, so a request that hangs cannot hold it forever. */
const IDLE_TIMEOUT_MS = 120_000;
/** Connections beyond this are dropped at once instead of exhausting file descriptors. */
const MAX_CONNECTIONS = 1000;
/** Linux's limit on a whole path, in bytes. */
const PATH_MAX = 4096;
/** Room a stored object's path needs beyond the data folder: bucket, key, s3rver's suffix, slack. */
const PATH_ROOM = 1 + 63 + 1 + MAX_KEY_BYTES + STORE_SUFFIX_BYTES + 64;

export async function startEmbeddedS3(opts: EmbeddedS3Options): Promise<EmbeddedS3> {
  const dir = path.resolve(opts.dir);
  const dirBytes = Buffer.byteLength(dir);
  if (dirBytes + PATH_ROOM > PATH_MAX) {
    throw new Error(
      `data folder ${dir} is too long (${dirBytes} bytes): a ${MAX_KEY_BYTES}-byte key under it must stay within ` +
        `${PATH_MAX} bytes, so use a folder of at most ${PATH_MAX - PATH_ROOM} bytes`,
    );
  }
  await mkdir(dir, { recursive: true });
  const limits: GuardLimits = {
    maxObjectBytes: opts.maxObjectBytes ?? DEFAULT_MAX_OBJECT_BYTES,
    maxNameBytes: await probeMaxNameBytes(dir),
  };

  // s3rver refuses access key ids it does not know (only S3RVER by default); register ours.
  for (const accessKeyId of opts.accessKeyIds ?? []) AWSAccount.DUMMY_ACCOUNT.createKeyPair(accessKeyId, accessKeyId);
  const s3rver = new S3rver({
    directory: dir,
    silent: true,
    vhostBuckets: false, // a bucket name comes only from the path, which the guard checked
    configureBuckets: (opts.buckets ?? []).map((name) => ({ name })),
  });
  const store = new AtomicFilesystemStore(dir);
  s3rver.store = store;
  s3rver.context.store = store;
  await s3rver.configureBuckets();
  const handle = s3rver.callback();

  const serve = async (req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> => {
    const decision = checkRequest({ method: req.method ?? 'GET', url: req.url ?? '', headers: req.headers }, limits);
    if (!decision.ok) {
      sendRefusal(req, res, decision.refusal);
      return;
    }
    if (decision.upload !== undefined && !(await store.uploadIsFor(decision.upload))) {
      sendRefusal(req, res, noSuchUpload(decision.upload));
      return;
    }
    req.url = decision.url;
    if (decision.copySource !== undefined) req.headers['x-amz-copy-source'] = decision.copySource;
    if (expectsContinue) res.writeContinue(); // only now: a refused body is never sent at all
    const opened = new Set<Readable>();
    try {
      await openedFiles.run(opened, () => handle(req, res));
    } finally {
      // s3rver opens an object's file before it checks If-None-Match / If-Modified-Since, and
      // answers 304 without closing it. A stream Koa is sending has been piped (it closes it).
      for (const stream of opened) if (stream.readableFlowing === null) stream.destroy();
    }
  };
  const onRequest = (expectsContinue: boolean) => (req: IncomingMessage, res: ServerResponse) => {
    serve(req, res, expectsContinue).catch((err: unknown) => {
      process.stderr.write(
        `embedded S3: request failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      res.destroy();
    });
  };

  const server = http.createServer({ maxHeaderSize: MAX_HEADER_BYTES });
  server.on('request', onRequest(false));
  // With a listener here Node no longer answers "100 Continue" by itself: the guard decides first.
  server.on('checkContinue', onRequest(true));
  server.setTimeout(IDLE_TIMEOUT_MS); // with no 'timeout' listener, an idle socket is destroyed
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function sendRefusal(req: IncomingMessage, res: ServerResponse, refusal: S3Refusal): void {
  const requestId = randomUUID().replace(/-/g, '').slice(0, 16).toUpperCase();
  const resource = (req.url ?? '').split('?')[0]!.slice(0, 1100);
  const body = s3ErrorXml(refusal, resource, requestId);
  res.statusCode = refusal.status;
  res.setHeader('Content-Type', 'application/xml');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('x-amz-request-id', requestId);
  if (Number(req.headers['content-length'] ?? 0) > 0 || req.headers['transfer-encoding'] !== undefined) {
    // Do not read a body we refused: answer, then close the connection.
    res.setHeader('Connection', 'close');
  }
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** The files getObject opened for the request being handled, so `serve` can close those never sent. */
const openedFiles = new AsyncLocalStorage<Set<Readable>>();

/** S3's part numbers. */
const MAX_PART_NUMBER = 10_000;

function noSuchUpload(upload: UploadTarget): S3Refusal {
  return {
    status: 404,
    code: 'NoSuchUpload',
    message:
      `The specified upload does not exist: upload ${upload.uploadId} is not one for key ` +
      `${quote(upload.key, 120)} (never created, or already completed); start one with CreateMultipartUpload`,
    details: { UploadId: upload.uploadId },
  };
}

/**
 * s3rver's file store with its writers replaced, and each key's lock taken here, around the file
 * operations that must see an object's three files (data, MD5, metadata) as one.
 *
 * s3rver pipes a request into a file stream with no 'error' listener, so any write error (a name
 * too long, a full disk) ends the whole process; an aborted upload leaves its file open for good;
 * the object is rewritten in place, so a failed overwrite destroys the old object; and completing a
 * multipart upload that names a part never uploaded waits forever with its files open. Here every
 * body goes through `pipeline` (every error becomes this request's error, every stream is closed)
 * into a temporary file in the bucket's `._S3rver_tmp` folder, renamed over the object once whole.
 *
 * Locks: a writer holds its key only while it renames the data into place and writes the MD5 and
 * metadata; a reader only while it reads them and opens the data file. The open file keeps the
 * bytes it had, even when a writer renames new data over it (POSIX), so a reader streams exactly the
 * object whose ETag it sent, however slowly its client reads, without keeping writers waiting; and
 * the body of a slow upload arrives before its writer takes the lock. No method here calls another
 * while holding a lock, so a request never waits for a lock it holds.
 */
class AtomicFilesystemStore extends FilesystemStore {
  private readonly locks = new KeyLocks();

  override async getObject(
    bucket: string,
    key: string,
    options?: { start?: number; end?: number },
  ): Promise<ReadObject | null> {
    const object = await this.locks.run(lockId(bucket, key), 'shared', () => super.getObject(bucket, key, options));
    if (object?.content) openedFiles.getStore()?.add(object.content);
    return object;
  }

  override async putObject(object: StoredObject): Promise<{ size: number; md5: string }> {
    const staged = await this.stage(object.bucket, object.content);
    const target = this.getResourcePath(object.bucket, object.key, 'object');
    await this.locks.run(lockId(object.bucket, object.key), 'exclusive', async () => {
      await this.moveInto(staged.tmp, target, { makeFolder: true });
      await this.putMetadata(object.bucket, object.key, object.metadata, staged.md5);
    });
    return { size: staged.size, md5: staged.md5 };
  }

  /** A copy is a read of the source then a write of the destination: atomic, and never two locks at once. */
  override async copyObject(
    srcBucket: string,
    srcKey: string,
    destBucket: string,
    destKey: string,
    replacementMetadata: ObjectMetadata | null,
  ): Promise<ObjectMetadata> {
    if (srcBucket === destBucket && srcKey === destKey) {
      // Only the metadata changes (s3rver refuses a same-key copy that does not replace it).
      return this.locks.run(lockId(destBucket, destKey), 'exclusive', () =>
        super.copyObject(srcBucket, srcKey, destBucket, destKey, replacementMetadata),
      );
    }
    const source = await this.getObject(srcBucket, srcKey);
    if (!source?.content) {
      throw new S3Error('NoSuchKey', 'The specified key does not exist.', { Key: srcKey.slice(0, 1024) });
    }
    const metadata = replacementMetadata ?? source.metadata;
    const { size, md5 } = await this.putObject({ bucket: destBucket, key: destKey, content: source.content, metadata });
    return {
      ...metadata,
      etag: JSON.stringify(md5),
      'last-modified': new Date().toUTCString(),
      'content-length': size,
    };
  }

  /**
   * s3rver rewrites a key's MD5 and metadata files in place, so a listing (which reads them without
   * a lock) could read one half-written: an empty ETag, or JSON cut short (a 500). Each is written
   * to a temporary file and renamed over the old one instead: a reader sees the old or the new.
   */
  override async putMetadata(bucket: string, key: string, metadata: Record<string, unknown>, md5?: string) {
    const kept = Object.entries(metadata).filter(
      ([name]) => S3Object.ALLOWED_METADATA.includes(name) || name.startsWith('x-amz-meta-'),
    );
    if (md5) await this.writeWhole(bucket, this.getResourcePath(bucket, key, 'object.md5'), md5);
    const json = JSON.stringify(Object.fromEntries(kept), null, 2);
    await this.writeWhole(bucket, this.getResourcePath(bucket, key, 'metadata.json'), json);
  }

  /**
   * A listing walks the bucket's folders, the temporary one included, and stats each name it
   * read: a file renamed or deleted in between (a write finishing, a delete) fails that walk with
   * ENOENT. It is walked again (a listing is a read; nothing was changed by the failed one).
   */
  override async listObjects(bucket: string, options: Record<string, unknown>): Promise<unknown> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await super.listObjects(bucket, options);
      } catch (err) {
        if (!isNotFound(err) || attempt >= LIST_ATTEMPTS) throw err;
      }
    }
  }

  override async deleteObject(bucket: string, key: string): Promise<void> {
    await this.locks.run(lockId(bucket, key), 'exclusive', () => super.deleteObject(bucket, key));
  }

  override async putPart(
    bucket: string,
    uploadId: string,
    partNumber: number | string,
    content: Readable,
  ): Promise<{ size: number; md5: string }> {
    const staged = await this.stage(bucket, content);
    const target = path.join(this.uploadDir(bucket, uploadId), String(partNumber));
    try {
      // No folder is made: one that is gone means the upload was completed meanwhile.
      await this.moveInto(staged.tmp, target, { makeFolder: false });
      await writeFile(`${target}.md5`, staged.md5);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      throw new S3Error('NoSuchUpload', `The specified upload does not exist: upload ${uploadId} was completed`, {
        UploadId: uploadId,
      });
    }
    return { size: staged.size, md5: staged.md5 };
  }

  /**
   * CompleteMultipartUpload, with S3's checks on the part list (s3rver makes none): at least one
   * part, ascending part numbers, each part uploaded and listed with its own ETag. The parts are
   * hashed again as they are joined, so a part replaced meanwhile fails the request instead of
   * storing bytes whose ETag the client never saw.
   */
  override async putObjectMultipart(
    bucket: string,
    uploadId: string,
    parts: readonly CompletedPart[],
  ): Promise<{ size: number; md5: string }> {
    const dir = this.uploadDir(bucket, uploadId);
    const upload = await Promise.all([
      readFile(path.join(dir, 'key'), 'utf8'),
      readFile(path.join(dir, 'metadata'), 'utf8').then((text) => JSON.parse(text) as ObjectMetadata),
    ]).catch((err: unknown) => {
      if (!isNotFound(err)) throw err;
      throw new S3Error('NoSuchUpload', `The specified upload does not exist: upload ${uploadId}`, {
        UploadId: uploadId,
      });
    });
    const [key, metadata] = upload;
    checkPartList(parts);
    for (const part of parts) {
      const recorded = await readFile(path.join(dir, `${part.number}.md5`), 'utf8').catch((err: unknown) => {
        if (isNotFound(err)) return undefined;
        throw err;
      });
      if (recorded === undefined) throw invalidPart(uploadId, part, 'was never uploaded (or is gone)');
      if (recorded !== part.etag.toLowerCase()) {
        throw invalidPart(uploadId, part, `does not have ETag ${quote(part.etag, 80)}`);
      }
    }
    const content = Readable.from(joinParts(dir, uploadId, parts), { objectMode: false });
    const result = await this.putObject({ bucket, key, content, metadata });
    await rm(dir, { recursive: true, force: true, maxRetries: 3 });
    return result;
  }

  /** Whether `upload` exists and was created for its key: s3rver writes the key it recorded. */
  async uploadIsFor(upload: UploadTarget): Promise<boolean> {
    const recorded = await readFile(path.join(this.uploadDir(upload.bucket, upload.uploadId), 'key'), 'utf8').catch(
      (err: unknown) => {
        if (isNotFound(err)) return undefined;
        throw err;
      },
    );
    return recorded === upload.key;
  }

  private uploadDir(bucket: string, uploadId: string): string {
    return path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId);
  }

  /** Writes `content` to a new temporary file; removes it if anything fails. */
  private async stage(bucket: string, content: Buffer | Readable): Promise<{ tmp: string; size: number; md5: string }> {
    const tmpDir = this.getResourcePath(bucket, undefined, 'tmp');
    await mkdir(tmpDir, { recursive: true });
    const tmp = path.join(tmpDir, randomUUID());
    const md5 = createHash('md5');
    let size = 0;
    const measure = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        md5.update(chunk);
        size += chunk.length;
        callback(null, chunk);
      },
    });
    try {
      const source = Buffer.isBuffer(content) ? Readable.from([content]) : content;
      await pipeline(source, measure, createWriteStream(tmp, { flags: 'wx' }));
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return { tmp, size, md5: md5.digest('hex') };
  }

  /** Writes `text` to `target` through a temporary file renamed over it. */
  private async writeWhole(bucket: string, target: string, text: string): Promise<void> {
    const { tmp } = await this.stage(bucket, Buffer.from(text));
    await this.moveInto(tmp, target, { makeFolder: false });
  }

  /** Renames a staged file over `target`; the staged file is removed if that fails. */
  private async moveInto(tmp: string, target: string, opts: { makeFolder: boolean }): Promise<void> {
    try {
      for (let attempt = 1; ; attempt++) {
        if (opts.makeFolder) await mkdir(path.dirname(target), { recursive: true });
        try {
          await rename(tmp, target);
          return;
        } catch (err) {
          // A DeleteObject of the folder's last other object removes the folder; make it again.
          if (!opts.makeFolder || !isNotFound(err) || attempt >= 3) throw err;
        }
      }
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }
}

/** Walks of one listing before its ENOENT is answered (a 500): each retry follows a write or delete that finished. */
const LIST_ATTEMPTS = 8;

function lockId(bucket: string, key: string): string {
  return `${bucket}/${key}`;
}

function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

function checkPartList(parts: readonly CompletedPart[]): void {
  if (parts.length === 0) {
    throw new S3Error('MalformedXML', 'The XML you provided was not well-formed: it lists no Part');
  }
  let previous = 0;
  for (const part of parts) {
    if (!Number.isInteger(part.number)) {
      throw new S3Error('MalformedXML', 'The XML you provided was not well-formed: a PartNumber is not a whole number');
    }
    if (part.number < 1 || part.number > MAX_PART_NUMBER) {
      throw new S3Error('InvalidArgument', 'Part number must be an integer between 1 and 10000, inclusive', {
        ArgumentName: 'PartNumber',
        ArgumentValue: part.number,
      });
    }
    if (part.number <= previous) {
      throw new S3Error(
        'InvalidPartOrder',
        `The list of parts was not in ascending order: part ${part.number} comes after part ${previous}; ` +
          'list each part once, by increasing part number',
      );
    }
    previous = part.number;
  }
}

function invalidPart(uploadId: string, part: CompletedPart, why: string): S3Error {
  return new S3Error(
    'InvalidPart',
    `One or more of the specified parts could not be found: part ${part.number} of upload ${uploadId} ${why}; ` +
      'list each part with the ETag its UploadPart returned, uploading it again if need be',
    { UploadId: uploadId, PartNumber: part.number },
  );
}

/** The parts' bytes in order, each checked against its ETag as it is read. */
async function* joinParts(dir: string, uploadId: string, parts: readonly CompletedPart[]): AsyncGenerator<Buffer> {
  for (const part of parts) {
    const md5 = createHash('md5');
    try {
      for await (const chunk of createReadStream(path.join(dir, String(part.number)))) {
        md5.update(chunk as Buffer);
        yield chunk as Buffer;
      }
    } catch (err) {
      if (isNotFound(err)) throw invalidPart(uploadId, part, 'is gone');
      throw err;
    }
    if (md5.digest('hex') !== part.etag.toLowerCase()) {
      throw invalidPart(
        uploadId,
        part,
        'changed while the upload was being completed (its bytes no longer match its ETag)',
      );
    }
  }
}

/**
 * Longest file name the data folder takes, in bytes (at most 255): each key segment becomes one,
 * so the guard refuses longer segments instead of letting the write fail half-way (an object file
 * without its metadata file breaks every later listing of the bucket).
 */
async function probeMaxNameBytes(dir: string): Promise<number> {
  const fits = async (bytes: number): Promise<boolean> => {
    const file = path.join(dir, `.deepfeat-name-probe-${process.pid}-`.padEnd(bytes, 'x'));
    try {
      await writeFile(file, '', { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENAMETOOLONG') return false;
      throw err;
    }
    await unlink(file);
    return true;
  };
  if (await fits(255)) return 255;
  let lo = 64; // every file system in use takes 64-byte names
  let hi = 254;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (await fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
