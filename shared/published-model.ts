/**
 * Reading a published model (models/<name>/<version>/model.json) for use: the planner checks a
 * prediction run's model before it plans, and extractors read it to classify. Bounded in size
 * before its body is read, and checked to be a whole model (shared/model-format.ts).
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { ModelError, NotFoundError } from './errors.js';
import { MAX_PUBLISHED_MODEL_BYTES, assertModelArtifact, modelKey, type ModelArtifact } from './model-format.js';
import { ObjectTooLargeError, getObjectBytes, s3Url } from './s3.js';
import { quote } from './text.js';

/**
 * The model at `key` of the artifacts bucket, refusing one over MAX_PUBLISHED_MODEL_BYTES (or
 * DEEPFEAT_MAX_MODEL_BYTES if lower) before its body is read, and one whose name and version are
 * not those of its key. A missing or malformed model is permanent: the run fails, naming it.
 */
export async function readPublishedModel(
  s3: S3Client,
  bucket: string,
  key: string,
  maxModelBytes: number,
): Promise<ModelArtifact> {
  const uri = s3Url(bucket, key);
  const maxBytes = Math.min(maxModelBytes, MAX_PUBLISHED_MODEL_BYTES);
  let bytes: Uint8Array;
  try {
    bytes = await getObjectBytes(s3, bucket, key, maxBytes);
  } catch (err) {
    if (err instanceof ObjectTooLargeError) {
      throw new ModelError(
        `${quote(uri)} is ${err.size} bytes, over the limit of ${maxBytes} for a model.json ` +
          `(${maxBytes === maxModelBytes ? 'DEEPFEAT_MAX_MODEL_BYTES' : 'a published model.json holds one weight row per class'}): ` +
          'it is not a model deepfeat published',
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
  const artifact = assertModelArtifact(value, uri);
  // The version's key names it: a model.json copied under another name or version is not that model.
  if (modelKey(artifact.name, artifact.version) !== key) {
    throw new ModelError(
      `${quote(uri)} names itself ${quote(`${artifact.name}@${artifact.version}`)}, which is published at ` +
        `${quote(s3Url(bucket, modelKey(artifact.name, artifact.version)))}: use that name, or publish the model again`,
    );
  }
  return artifact;
}
