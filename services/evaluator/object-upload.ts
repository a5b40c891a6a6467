/**
 * One object written as a stream of chunks with bounded memory: chunks are gathered into parts
 * of `partBytes`, and an object that outgrows one part is sent as a multipart upload
 * (CreateMultipartUpload, UploadPart, CompleteMultipartUpload), so the writer holds one part
 * whatever the object's size. A small object is one PutObject. Written with the SDK's commands
 * directly (@aws-sdk/lib-storage is not a dependency); errors map as every storage error does
 * (shared/s3.ts storageError), and a failed upload is aborted so no parts are left behind.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import { DeepfeatError, InternalError } from '../../shared/errors.js';
import { putObject, storageError } from '../../shared/s3.js';

/**
 * Bytes per part: S3 wants at least 5 MiB in every part but the last, and allows 10,000 parts,
 * so 8 MiB parts hold objects up to about 78 GiB — predictions.csv for several hundred million
 * images — while the writer holds 8 MiB.
 */
export const DEFAULT_PART_BYTES = 8 * 1024 * 1024;
const MAX_PARTS = 10_000;

export interface ObjectWriter {
  /** Adds bytes; resolves once any part they completed has been uploaded. */
  write(chunk: string | Uint8Array): Promise<void>;
  /** Sends what is left and completes the object; returns its size and how it was sent. */
  finish(): Promise<{ bytes: number; parts: number }>;
  /** Drops the upload (after a failure elsewhere): no object is written, no parts are kept. */
  abort(): Promise<void>;
}

export function createObjectWriter(
  s3: S3Client,
  bucket: string,
  key: string,
  contentType: string,
  partBytes = DEFAULT_PART_BYTES,
): ObjectWriter {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let total = 0;
  let uploadId: string | undefined;
  const parts: CompletedPart[] = [];
  let ended = false;

  const fail = async (err: unknown): Promise<never> => {
    await abort();
    throw err instanceof DeepfeatError ? err : storageError(err, { bucket, key });
  };

  const sendPart = async (): Promise<void> => {
    const body = Buffer.concat(pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    try {
      if (uploadId === undefined) {
        const created = await s3.send(
          new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: contentType }),
        );
        if (!created.UploadId) throw new InternalError(`the S3 server started an upload of ${key} without an id`);
        uploadId = created.UploadId;
      }
      const PartNumber = parts.length + 1;
      if (PartNumber > MAX_PARTS) {
        throw new InternalError(`${key} needs more than ${MAX_PARTS} parts of ${partBytes} bytes`);
      }
      const res = await s3.send(
        new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber, Body: body }),
      );
      parts.push({ ETag: res.ETag, PartNumber });
    } catch (err) {
      await fail(err);
    }
  };

  async function abort(): Promise<void> {
    ended = true;
    pending = [];
    pendingBytes = 0;
    if (uploadId === undefined) return;
    const id = uploadId;
    uploadId = undefined;
    // Best effort: the upload failed already, and a bucket lifecycle rule can clear what is left.
    await s3.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: id })).catch(() => undefined);
  }

  return {
    async write(chunk) {
      if (ended) throw new InternalError(`write to ${key} after it was finished or aborted`);
      const b = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : Buffer.from(chunk);
      pending.push(b);
      pendingBytes += b.length;
      total += b.length;
      if (pendingBytes >= partBytes) await sendPart();
    },
    async finish() {
      if (ended) throw new InternalError(`${key} was already finished or aborted`);
      if (uploadId === undefined) {
        // Never reached one part: a single PutObject.
        ended = true;
        await putObject(s3, bucket, key, Buffer.concat(pending, pendingBytes), contentType);
        return { bytes: total, parts: 1 };
      }
      if (pendingBytes > 0) await sendPart();
      ended = true;
      try {
        await s3.send(
          new CompleteMultipartUploadCommand({
            Bucket: bucket,
            Key: key,
            UploadId: uploadId,
            MultipartUpload: { Parts: parts },
          }),
        );
      } catch (err) {
        await fail(err);
      }
      return { bytes: total, parts: parts.length };
    },
    abort,
  };
}
