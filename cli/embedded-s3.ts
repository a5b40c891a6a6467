/**
 * The embedded S3 server of the single-machine default: s3rver (npm) served by our own HTTP server,
 * which bounds every request and lets s3-guard.ts refuse what s3rver would mishandle before s3rver
 * sees it. Runs inside the child process started by local-stack.ts (see local-stack-child.mjs).
 *
 * The guard runs in the same process as s3rver, in front of its request handler, rather than as a
 * proxy on a second port: a second port would be an unguarded way in for anything on this machine
 * (a web page can POST to any 127.0.0.1 port).
 */
import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename, rm, unlink, writeFile } from 'node:fs/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import S3rver from 's3rver';
import AWSAccount from 's3rver/lib/models/account.js';
import FilesystemStore, { type StoredObject } from 's3rver/lib/stores/filesystem.js';
import { KeyLocks } from './key-locks.js';
import {
  checkRequest,
  DEFAULT_MAX_OBJECT_BYTES,
  type GuardLimits,
  MAX_KEY_BYTES,
  s3ErrorXml,
  type S3Refusal,
  STORE_SUFFIX_BYTES,
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
  const locks = new KeyLocks();

  const serve = async (req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> => {
    const decision = checkRequest({ method: req.method ?? 'GET', url: req.url ?? '', headers: req.headers }, limits);
    if (!decision.ok) {
      sendRefusal(req, res, decision.refusal);
      return;
    }
    req.url = decision.url;
    if (decision.copySource !== undefined) req.headers['x-amz-copy-source'] = decision.copySource;

    const gone = new AbortController();
    res.once('close', () => gone.abort(new Error('client went away')));
    const releases: (() => void)[] = [];
    const releaseAll = () => {
      for (const release of releases) release();
    };
    try {
      for (const need of decision.locks) releases.push(await locks.acquire(need.id, need.mode, gone.signal));
    } catch {
      releaseAll(); // the client left while waiting: nothing to serve
      return;
    }
    if (gone.signal.aborted) {
      releaseAll();
      return;
    }
    res.once('close', releaseAll);
    if (expectsContinue) res.writeContinue(); // only now: a refused body is never sent at all
    await handle(req, res);
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

/**
 * s3rver's file store with its two upload writers replaced. s3rver pipes the request into a file
 * stream with no 'error' listener, so any write error (a name too long, a full disk) ends the whole
 * process; an aborted upload leaves its file open for good; and the object is rewritten in place,
 * so a failed overwrite destroys the old object. Here the body goes through `pipeline` (every error
 * becomes this request's 500, every stream is closed) into a temporary file in the bucket's
 * `._S3rver_tmp` folder, renamed over the object only once complete.
 */
class AtomicFilesystemStore extends FilesystemStore {
  override async putObject(object: StoredObject): Promise<{ size: number; md5: string }> {
    const target = this.getResourcePath(object.bucket, object.key, 'object');
    const written = await this.writeAtomically(object.bucket, target, object.content);
    await this.putMetadata(object.bucket, object.key, object.metadata, written.md5);
    return written;
  }

  override async putPart(
    bucket: string,
    uploadId: string,
    partNumber: number | string,
    content: Readable,
  ): Promise<{ size: number; md5: string }> {
    const target = path.join(this.getResourcePath(bucket, undefined, 'uploads'), uploadId, String(partNumber));
    const written = await this.writeAtomically(bucket, target, content);
    await writeFile(`${target}.md5`, written.md5);
    return written;
  }

  private async writeAtomically(
    bucket: string,
    target: string,
    content: Buffer | Readable,
  ): Promise<{ size: number; md5: string }> {
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
      for (let attempt = 1; ; attempt++) {
        await mkdir(path.dirname(target), { recursive: true });
        try {
          await rename(tmp, target);
          break;
        } catch (err) {
          // A DeleteObject of the folder's last other object removes the folder; make it again.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 3) throw err;
        }
      }
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    return { size, md5: md5.digest('hex') };
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
