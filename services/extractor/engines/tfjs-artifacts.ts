/**
 * A user's TensorFlow.js model as artifacts (topology + weights) for the engines: model.json and
 * the weight files its manifest names, read through the caller's reader (local path or s3://,
 * see ../model-source.ts), checked and bounded because the model is untrusted input.
 */
import path from 'node:path';
import { tf } from './tf.js';
import { DeepfeatError, ModelError, errorMessage } from '../../../shared/errors.js';
import { capText, quote } from '../../../shared/text.js';
import type { EngineDeps } from './engine.js';

/**
 * Largest model.json read. It holds the topology and the weight manifest, not the weights (real
 * ones are kilobytes to a few MB), and JSON.parse needs several times the text's size in heap.
 */
export const MAX_MODEL_JSON_BYTES = 64 * 1024 * 1024;
/** Most weight files one manifest may name: TF.js exports shard at 4 MB, 256 files per GB. */
export const MAX_WEIGHT_FILES = 1024;
/** When the caller gives no limit: the default of DEEPFEAT_MAX_MODEL_BYTES. */
const DEFAULT_MAX_MODEL_BYTES = 1024 ** 3;
// C0, DEL and C1 controls: never in a real node name or weight path, and harmful on a terminal.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/**
 * A user's TensorFlow.js model: read model.json, then every weight file its manifest names, in
 * the folder of model.json (local) or under its key prefix (s3://), in manifest order.
 *
 * The model is untrusted input, so everything that can be checked is checked before a weight file
 * is read: every path stays beside model.json, and the bytes the manifest's weights need fit in
 * `maxModelBytes`; each read is bounded by what is left of it. Messages never hold a byte count
 * of a file read, nor a parser's quote of its text.
 */
export async function readTfjsArtifacts(
  modelUrl: string,
  readObject: EngineDeps['readObject'],
  maxModelBytes = DEFAULT_MAX_MODEL_BYTES,
): Promise<tf.io.ModelArtifacts> {
  const name = quote(modelUrl);
  const raw = await read(readObject, modelUrl, 'model.json', Math.min(MAX_MODEL_JSON_BYTES, maxModelBytes));
  let json: tf.io.ModelJSON;
  try {
    json = JSON.parse(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8')) as tf.io.ModelJSON;
  } catch {
    // No parser detail and no cause: V8's message quotes the text around the error, i.e. the file.
    throw new ModelError(`${name} is not valid JSON; point the spec at a TensorFlow.js model.json`);
  }
  if (!isRecord(json) || typeof json.modelTopology !== 'object' || json.modelTopology === null) {
    throw new ModelError(`${name} has no modelTopology: it is not a TensorFlow.js model.json`);
  }
  const manifest: unknown = json.weightsManifest ?? [];
  if (
    !Array.isArray(manifest) ||
    !manifest.every((g) => isRecord(g) && Array.isArray(g.paths) && Array.isArray(g.weights))
  ) {
    throw new ModelError(`${name}: weightsManifest must be a list of {paths, weights} groups`);
  }
  const groups = manifest as tf.io.WeightsManifestConfig;
  const rels: unknown[] = groups.flatMap((g) => g.paths);
  if (rels.length > MAX_WEIGHT_FILES) {
    throw new ModelError(
      `${name}: weightsManifest names more than ${MAX_WEIGHT_FILES} weight files: re-export the model with larger shards`,
    );
  }
  const urls = rels.map((rel) => siblingOf(modelUrl, rel));
  const specs: unknown[] = groups.flatMap((g) => g.weights);
  const need = weightBytes(specs, name, maxModelBytes);

  const files: Uint8Array[] = [];
  let total = 0;
  for (const [i, url] of urls.entries()) {
    const bytes = await read(readObject, url, `weight file ${quote(rels[i] as string)}`, maxModelBytes - total);
    files.push(bytes);
    total += bytes.byteLength;
  }
  if (need.exact ? total !== need.bytes : total < need.bytes) {
    throw new ModelError(
      `${name}: weight files do not match the manifest: re-export the model so that model.json and its weight files ` +
        'come from the same export',
    );
  }
  // One copy into the buffer TF.js keeps (tf.io.concatenateArrayBuffers would make two).
  const weightData = new Uint8Array(total);
  let off = 0;
  for (const f of files.splice(0)) {
    weightData.set(f, off);
    off += f.byteLength;
  }
  return tf.io.getModelArtifactsForJSONSync(json, tf.io.getWeightSpecs(groups), weightData.buffer);
}

/** Bytes per element of each dtype TF.js decodes weights from. */
const DTYPE_BYTES: Readonly<Record<string, number>> = {
  float32: 4,
  int32: 4,
  bool: 1,
  uint8: 1,
  uint16: 2,
  float16: 2,
  complex64: 8,
};
/** Quantized weights are stored in these. */
const QUANTIZED_BYTES: Readonly<Record<string, number>> = { uint8: 1, uint16: 2, float16: 2 };

/**
 * Bytes the manifest's weights take in the weight files: exact, or (with string weights, whose
 * length is in the data) a lower bound of 4 bytes per string. Checked against `maxBytes` as it is
 * summed, so a manifest declaring enormous shapes is refused before any weight file is read.
 */
function weightBytes(specs: readonly unknown[], name: string, maxBytes: number): { bytes: number; exact: boolean } {
  let total = 0;
  let exact = true;
  for (const s of specs) {
    if (
      !isRecord(s) ||
      typeof s.name !== 'string' ||
      typeof s.dtype !== 'string' ||
      !Array.isArray(s.shape) ||
      !s.shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)
    ) {
      throw new ModelError(
        `${name}: weightsManifest lists a weight that is not {name, shape, dtype} with whole-number dims: re-export the model`,
      );
    }
    let per: number | undefined;
    if (s.quantization !== undefined) {
      const q = s.quantization;
      per = isRecord(q) && typeof q.dtype === 'string' ? QUANTIZED_BYTES[q.dtype] : undefined;
    } else if (s.dtype === 'string') {
      per = 4;
      exact = false;
    } else {
      per = DTYPE_BYTES[s.dtype];
    }
    if (per === undefined) {
      throw new ModelError(
        `${name}: weight ${quote(s.name)} has a dtype TensorFlow.js cannot load: re-export the model`,
      );
    }
    let n = (s.shape as number[]).includes(0) ? 0 : per;
    for (const d of s.shape as number[]) {
      if (n > maxBytes) break; // already too large; stop before the product overflows
      n *= d;
    }
    total += n;
    if (total > maxBytes) {
      throw new ModelError(
        `${name}: its weights need more than ${maxBytes} bytes, the most a worker loads for one model: ` +
          'use a smaller model, or have the operator raise DEEPFEAT_MAX_MODEL_BYTES',
      );
    }
  }
  return { bytes: total, exact };
}

/**
 * A weight file the manifest names: in the folder of model.json (local) or under its key prefix
 * (s3://), or below. TF.js exports put their shards beside model.json; a path that climbs out
 * ("..") or is absolute or a URL would let a model.json pick any file the worker can read.
 */
function siblingOf(modelUrl: string, rel: unknown): string {
  const ok =
    typeof rel === 'string' &&
    rel !== '' &&
    rel.length <= 1024 &&
    !CONTROL.test(rel) &&
    !rel.includes('\\') &&
    !/^[a-z][a-z0-9+.-]*:/i.test(rel) &&
    rel.split('/').every((seg) => seg !== '' && seg !== '..');
  if (!ok) {
    const shown = typeof rel === 'string' ? quote(rel) : capText(String(JSON.stringify(rel)));
    throw new ModelError(
      `${quote(modelUrl)}: weight path ${shown} must name a file in the folder of model.json or below it ` +
        '(no "..", no absolute path or URL): fix weightsManifest or re-export the model',
    );
  }
  if (modelUrl.startsWith('s3://')) {
    const rest = modelUrl.slice('s3://'.length);
    const slash = rest.indexOf('/');
    if (slash < 0) throw new ModelError(`${quote(modelUrl)} names no object: expected s3://bucket/path/model.json`);
    return `s3://${rest.slice(0, slash)}/${path.posix.join(path.posix.dirname(rest.slice(slash + 1)), rel)}`;
  }
  return path.join(path.dirname(modelUrl), rel);
}

/** One file through the caller's reader, at most `maxBytes` of it. */
async function read(
  readObject: EngineDeps['readObject'],
  url: string,
  what: string,
  maxBytes: number,
): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await readObject(url, maxBytes);
  } catch (err) {
    // Storage errors keep their own class: a transient one must stay retryable.
    if (err instanceof DeepfeatError) throw err;
    throw new ModelError(`cannot read ${what} at ${capText(url)}: ${capText(errorMessage(err))}`, { cause: err });
  }
  // The reader should have refused it; one that ignores the bound must not get past it either.
  if (bytes.byteLength > maxBytes) {
    throw new ModelError(
      `${what} at ${quote(url)} is larger than ${maxBytes} bytes, the most a worker reads for it: ` +
        'use a smaller model, or have the operator raise DEEPFEAT_MAX_MODEL_BYTES',
    );
  }
  return bytes;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
