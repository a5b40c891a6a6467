/** Reading a run's source for planning, with the bounds every planner read keeps. */
import { DatasetError } from '../../shared/errors.js';
import { ObjectTooLargeError, getObjectBytes } from '../../shared/s3.js';
import type { ServiceContext } from '../../shared/worker-kit.js';

/** The source as messages name it: a run request is untrusted, and its URL has no length limit. */
export const MAX_WHERE_CHARS = 300;

/** The manifest's bytes; one larger than DEEPFEAT_MAX_MANIFEST_BYTES is refused before its body is read. */
export async function readManifest(
  ctx: ServiceContext,
  bucket: string,
  key: string,
  where: string,
): Promise<Uint8Array> {
  const max = ctx.config.maxManifestBytes;
  try {
    return await getObjectBytes(ctx.s3, bucket, key, max);
  } catch (err) {
    if (!(err instanceof ObjectTooLargeError)) throw err;
    throw new DatasetError(
      `manifest ${where} is ${err.size} bytes, over the limit of ${max} (DEEPFEAT_MAX_MANIFEST_BYTES): split the dataset into several runs, or raise the limit`,
      { cause: err },
    );
  }
}
