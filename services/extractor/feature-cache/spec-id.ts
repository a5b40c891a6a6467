/**
 * The feature spec id the cache keys vectors by: everything besides the image that determines a
 * vector — the engine id (backbone@node, or raw-pixels:NxN), the input size, the pixel range and
 * the decoder's PREPROCESSING_VERSION. Not the engine that ran it: ONNX Runtime and TF.js give the
 * same features for one id (within 3e-6 relative error, test/onnx.test.ts), as runs already mix them.
 */
import {
  BUILTIN_MODELS,
  RAW_PIXELS_RANGE,
  type BuiltinModelId,
  type FeatureSpec,
  type InputRange,
} from '../../../shared/features.js';
import { BUILTIN_BACKBONES } from '../../../shared/backbones.js';
import { PREPROCESSING_VERSION } from '../image.js';

/**
 * Each builtin backbone's pixel range, from the catalogue (shared/backbones.ts), which
 * engines/builtin-model.ts reads too; this module must not load TensorFlow.js, which an
 * extractor's main thread does not (test/feature-cache.test.ts holds the two equal).
 */
export const BUILTIN_INPUT_RANGES: Readonly<Record<BuiltinModelId, InputRange>> = Object.fromEntries(
  BUILTIN_MODELS.map((id) => [id, BUILTIN_BACKBONES[id].inputRange]),
) as Record<BuiltinModelId, InputRange>;

/**
 * The spec id of `spec` run by an engine with this id and input size; undefined when its vectors
 * are not cached. A user's model (`--model`) is not: its model.json and weights can be replaced
 * under the same URL or path, and the id would still name the old ones. The builtin backbone is
 * pinned with the install (nsfwjs 4.4.0), and raw pixels have no weights.
 */
export function cacheSpecId(
  spec: FeatureSpec,
  engine: { readonly id: string; readonly input: { readonly width: number; readonly height: number } },
): string | undefined {
  let range: InputRange;
  if (spec.kind === 'raw-pixels') range = RAW_PIXELS_RANGE;
  else if (spec.kind === 'builtin' && (BUILTIN_MODELS as readonly string[]).includes(spec.id)) {
    range = BUILTIN_INPUT_RANGES[spec.id];
  } else return undefined;
  const { width, height } = engine.input;
  return `${engine.id} input=${width}x${height} range=${range} preprocessing=${PREPROCESSING_VERSION}`;
}
