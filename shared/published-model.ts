/**
 * Reading a published model (models/<name>/<version>/model.json) for use: the planner checks a
 * prediction run's model before it plans, and extractors read it to classify. Bounded in size
 * before its body is read, and checked to be a whole model (shared/model-format.ts).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { ModelError, NotFoundError } from './errors.js';
import { assertModelArtifact, type ModelArtifact } from './model-format.js';
import { ObjectTooLargeError, getObjectBytes, s3Url } from './s3.js';
import { quote } from './text.js';

/**
 * The model at `key` of the artifacts bucket, refusing one over `maxBytes`
 * (DEEPFEAT_MAX_MODEL_BYTES). A missing or malformed model is permanent: the run fails, naming it.
 */
export async function readPublishedModel(
  s3: S3Client,
  bucket: string,
  key: string,
  maxBytes: number,
): Promise<ModelArtifact> {
  const uri = s3Url(bucket, key);
  let bytes: Uint8Array;
  try {
    bytes = await getObjectBytes(s3, bucket, key, maxBytes);
  } catch (err) {
    if (err instanceof ObjectTooLargeError) {
      throw new ModelError(
        `${quote(uri)} is ${err.size} bytes, over the limit of ${maxBytes} (DEEPFEAT_MAX_MODEL_BYTES): raise the limit`,
        { cause: err },
      );
    }
    if (err instanceof NotFoundError) {
      throw new NotFoundError(`model ${quote(uri)} does not exist (deleted after the run was queued?)`, { cause: err });
    }
    throw err;
  }
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new ModelError(`${quote(uri)} is not valid JSON: publish the model again`, { cause: err });
  }
  return assertModelArtifact(value, uri);
}
