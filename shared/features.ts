/**
 * Which features a run extracts. Declared here because the client (CLI), the planner and the
 * extractor all read it, and the published model records it so a user can reproduce features.
 * Every choice a spec can make is a vocabulary declared once below; the job schema
 * (shared/queues.ts), the CLI's choices and the engines derive from these.
 */

/**
 * Pixel ranges a model may expect, each with how a decoded uint8 pixel value v becomes an input
 * value: v * scale + offset, rounded to float32. This table is the one definition: every engine
 * (TF.js, ONNX Runtime, raw pixels) converts through `inputLut`, and a program reproducing the
 * features from a published model.json applies the same to `features.spec.inputRange`.
 */
export const INPUT_RANGE_SCALES = {
  '0,1': { scale: 1 / 255, offset: 0 },
  '-1,1': { scale: 2 / 255, offset: -1 },
  '0,255': { scale: 1, offset: 0 },
} as const satisfies Record<string, { scale: number; offset: number }>;
export type InputRange = keyof typeof INPUT_RANGE_SCALES;
/** The ranges, in declaration order: for the schema and the CLI's choices. */
export const INPUT_RANGES = Object.keys(INPUT_RANGE_SCALES) as [InputRange, ...InputRange[]];
/** What a user's model gets when its spec names no range. */
export const DEFAULT_INPUT_RANGE: InputRange = '0,1';

/**
 * The input value of each pixel byte 0..255 in `range`, as a 256-entry float32 table. A lookup
 * gives the same bits as computing v * scale + offset per pixel, and costs less on the engine's
 * thread.
 */
export function inputLut(range: InputRange): Float32Array {
  const { scale, offset } = INPUT_RANGE_SCALES[range];
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = v * scale + offset;
  return lut;
}

/**
 * Sides the raw-pixels baseline may be decoded at. Larger sides make rows of 3·size² floats:
 * 256 → 196,608 per image, already silly for this baseline.
 */
export const RAW_PIXELS_SIZE = { min: 1, max: 256, default: 32 } as const;
/** Raw pixels are scaled to [0, 1], as in the lesson. */
export const RAW_PIXELS_RANGE: InputRange = '0,1';

/** Backbones that ship with the install (see services/extractor/engines/builtin-model.ts). */
export const BUILTIN_MODELS = ['mobilenet_v2_mid'] as const;
export type BuiltinModelId = (typeof BUILTIN_MODELS)[number];

export type FeatureSpec =
  /** The lesson's baseline: the image resized to size×size, pixels/255 flattened. */
  | { kind: 'raw-pixels'; size: number }
  /** The backbone that ships with the install (MobileNetV2 in nsfwjs@4.4.0); node defaults to the measured best. */
  | { kind: 'builtin'; id: BuiltinModelId; node?: string }
  /** A user's TF.js graph or layers model: local path or s3:// URL of model.json, plus the node to pool. */
  | { kind: 'tfjs'; model: string; node: string; inputSize?: number; inputRange?: InputRange };

export const DEFAULT_FEATURES: FeatureSpec = { kind: 'builtin', id: 'mobilenet_v2_mid' };
export const RAW_PIXELS: FeatureSpec = { kind: 'raw-pixels', size: RAW_PIXELS_SIZE.default };

/** A short human label for tables and logs. */
export function describeFeatures(spec: FeatureSpec): string {
  switch (spec.kind) {
    case 'raw-pixels':
      return `raw pixels ${spec.size}x${spec.size}`;
    case 'builtin':
      return `${spec.id}${spec.node ? `@${spec.node}` : ''}`;
    case 'tfjs':
      return `${spec.model}@${spec.node}`;
  }
}
