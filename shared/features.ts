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

/** Image input layouts an ONNX model may take: channels first (PyTorch exports) or last (TF exports). */
export const INPUT_LAYOUTS = ['nchw', 'nhwc'] as const;
export type InputLayout = (typeof INPUT_LAYOUTS)[number];
/** Whether `--model` names an ONNX model: by its extension, `.onnx` (any case); anything else is TF.js's model.json. */
export function isOnnxModelRef(model: string): boolean {
  return /\.onnx$/i.test(model);
}
/** Bounds of --mean and --std values: std must be positive; both finite and of a sane size. */
export const CHANNEL_STAT_LIMIT = 1e6;

/**
 * One 256-entry table per channel (R, G, B): the input value of each pixel byte in `range`, then
 * (value − mean[c]) / std[c] (torchvision's Normalize after ToTensor when range is 0,1), computed
 * in double precision and rounded once to float32. Without mean and std each table equals
 * inputLut(range).
 */
export function channelLuts(
  range: InputRange,
  mean: readonly number[] = [0, 0, 0],
  std: readonly number[] = [1, 1, 1],
): [Float32Array, Float32Array, Float32Array] {
  const { scale, offset } = INPUT_RANGE_SCALES[range];
  const luts = [0, 1, 2].map((c) => {
    const lut = new Float32Array(256);
    for (let v = 0; v < 256; v++) lut[v] = (v * scale + offset - mean[c]!) / std[c]!;
    return lut;
  });
  return luts as [Float32Array, Float32Array, Float32Array];
}

/**
 * Sides the raw-pixels baseline may be decoded at. Larger sides make rows of 3·size² floats:
 * 256 → 196,608 per image, already silly for this baseline.
 */
export const RAW_PIXELS_SIZE = { min: 1, max: 256, default: 32 } as const;
/** Raw pixels are scaled to [0, 1], as in the lesson. */
export const RAW_PIXELS_RANGE: InputRange = '0,1';

/**
 * Backbones that ship with the install, all from nsfwjs@4.4.0 (catalogue: shared/backbones.ts;
 * loaders: services/extractor/engines/builtin-model.ts). The first is the default.
 */
export const BUILTIN_MODELS = ['mobilenet_v2_mid', 'mobilenet_v2', 'inception_v3'] as const;
export type BuiltinModelId = (typeof BUILTIN_MODELS)[number];

/**
 * Test-time flip averaging, a choice of every backbone spec: `flip: true` makes each image's
 * feature vector the mean of the pooled vectors of the image and of its horizontal mirror
 * (services/extractor/engines/flip.ts; classifier.onnx does the same in its graph). Absent means
 * false, so a spec stored before the option existed still means what it meant. The CLI, the
 * client's default (DEFAULT_FEATURES) and the demo turn it on (`--no-flip` turns it off): with
 * multi-scale and the signed square root it lifts the demo's test accuracy from 78.5 to 80.5 over
 * 30 split seeds (`npm run bench:accuracy -- --headline`), +5.9 points over plain features, for
 * 2.04× the extraction time of multi-scale alone (2.61× plain's; `npx tsx bench/lever-costs.ts`).
 * The issue's bar allows more than 2× for a gain of 5 points or more; the README says so.
 */
export interface FlipOption {
  flip?: boolean;
  /**
   * Multi-scale features: the backbone also runs on the image at half its input side (each 2×2
   * block of the decoded pixels averaged and rounded: multi-scale.ts), and the two pooled vectors
   * are concatenated (twice the dimension). A coarser view of the same image adds what the
   * network sees at another scale. Absent means false, so older specs keep their meaning. The CLI,
   * DEFAULT_FEATURES and the demo turn it on for builtin backbones (measured by `npm run
   * bench:accuracy`: README "Shipped backbones and accuracy levers"); for a user's TF.js model it
   * is asked for (`--multi-scale`); ONNX models and raw pixels refuse it.
   */
  multiScale?: boolean;
}

export type FeatureSpec =
  /** The lesson's baseline: the image resized to size×size, pixels/255 flattened. */
  | { kind: 'raw-pixels'; size: number }
  /** A backbone that ships with the install (nsfwjs@4.4.0); node defaults to its measured best. */
  | ({ kind: 'builtin'; id: BuiltinModelId; node?: string } & FlipOption)
  /** A user's TF.js graph or layers model: local path or s3:// URL of model.json, plus the node to pool. */
  | ({ kind: 'tfjs'; model: string; node: string; inputSize?: number; inputRange?: InputRange } & FlipOption)
  /**
   * A user's ONNX model (local path or s3:// URL of a .onnx file) pooled at any tensor `node`.
   * Layout and size come from the model's input unless given; mean/std follow torchvision:
   * x = (range value − mean) / std per channel (RGB).
   */
  | ({
      kind: 'onnx';
      model: string;
      node: string;
      inputSize?: number;
      inputLayout?: InputLayout;
      inputRange?: InputRange;
      mean?: [number, number, number];
      std?: [number, number, number];
    } & FlipOption);

export const DEFAULT_FEATURES: FeatureSpec = { kind: 'builtin', id: 'mobilenet_v2_mid', flip: true, multiScale: true };

/** Whether a spec asks for flip averaging (raw pixels never do). */
export function flipsFeatures(spec: FeatureSpec): boolean {
  return spec.kind !== 'raw-pixels' && spec.flip === true;
}

/**
 * Suffix of the engine id of flip-averaged features ('mobilenet_v2_mid@node+flip'): they are not
 * comparable with the plain features of the same cut, so the id (and the feature cache's key,
 * which starts from it) differs.
 */
export const FLIP_ID_SUFFIX = '+flip';

/** Whether a spec asks for multi-scale features (raw pixels never do). */
export function multiScaleFeatures(spec: FeatureSpec): boolean {
  return spec.kind !== 'raw-pixels' && spec.multiScale === true;
}

/**
 * Suffix of the engine id of multi-scale features ('mobilenet_v2_mid@node+half+flip': the half
 * scale is added first, then the flip averages the concatenated vectors).
 */
export const MULTI_SCALE_ID_SUFFIX = '+half';
export const RAW_PIXELS: FeatureSpec = { kind: 'raw-pixels', size: RAW_PIXELS_SIZE.default };

/** A short human label for tables and logs. */
export function describeFeatures(spec: FeatureSpec): string {
  switch (spec.kind) {
    case 'raw-pixels':
      return `raw pixels ${spec.size}x${spec.size}`;
    case 'builtin':
      return `${spec.id}${spec.node ? `@${spec.node}` : ''}${options(spec)}`;
    case 'tfjs':
    case 'onnx':
      return `${spec.model}@${spec.node}${options(spec)}`;
  }
}

function options(spec: FeatureSpec): string {
  return `${multiScaleFeatures(spec) ? ' +half-scale' : ''}${flipsFeatures(spec) ? ' +flip' : ''}`;
}
