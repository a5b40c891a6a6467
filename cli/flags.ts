/**
 * Command-line flag values checked and turned into a run request's parts. An odd value is refused
 * with a message naming the flag, the value (quoted and capped: it is user text) and the fix,
 * never read loosely: `Number()` takes ' 0x1', '' and '1e3', and a seed above 2^32 would quietly
 * give the same split as a smaller one. The run request schema (shared/queues.ts) holds the same
 * bounds for every other producer; these messages speak in flags.
 */
import path from 'node:path';
import { BadRequestError } from '../shared/errors.js';
import { parseBackboneRef } from '../shared/backbones.js';
import {
  BUILTIN_MODELS,
  CHANNEL_STAT_LIMIT,
  DEFAULT_FEATURES,
  RAW_PIXELS,
  isOnnxModelRef,
  type FeatureSpec,
  type InputLayout,
  type InputRange,
} from '../shared/features.js';
import { MODEL_NAME_RULE, isModelName } from '../shared/model-format.js';
import { RUN_LIMITS, type RunRequest } from '../shared/queues.js';
import { quote } from '../shared/text.js';
import { parseModelS3Url } from '../services/extractor/model-source.js';
import { modelRefFault } from './client.js';

/** Longest flag value quoted in a message. */
const MAX_SHOWN_CHARS = 80;

/** A refusal: `--flag "value": fix`. */
export function badFlag(flag: string, value: string, fix: string): BadRequestError {
  return new BadRequestError(`${flag} ${quote(value, MAX_SHOWN_CHARS)}: ${fix}`);
}

/**
 * A whole number written in decimal digits (no sign, exponent, hex or spaces) from `range.min` to
 * `range.max`; `what` says what the number is for.
 */
export function parseWholeNumber(
  flag: string,
  value: string,
  range: { readonly min: number; readonly max: number },
  what: string,
): number {
  const n = /^[0-9]{1,20}$/.test(value) ? Number(value) : Number.NaN;
  if (!(n >= range.min && n <= range.max)) {
    throw badFlag(flag, value, `expected a whole number from ${range.min} to ${range.max} (${what})`);
  }
  return n;
}

export const parseSeed = (value: string): number =>
  parseWholeNumber('--seed', value, RUN_LIMITS.seed, "the seed of the split's shuffle");

export const parseShardSize = (value: string): number =>
  parseWholeNumber('--shard-size', value, RUN_LIMITS.shardSize, 'images per extract job');

/** A decimal fraction: digits with an optional decimal point (`0.7`, `.7`, `7`, `7.`). */
const DECIMAL = /^(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})$/;

/** `TRAIN,VAL,TEST` (or with `/` or `:`): relative sizes, so 0.7,0.1,0.2 and 7,1,2 are the same split. */
export function parseSplit(value: string): RunRequest['split'] {
  const parts = value.split(/[,/:]/);
  const [train, val, test] = parts.map(Number) as [number, number, number];
  if (parts.length !== 3 || !parts.every((p) => DECIMAL.test(p)) || !(train > 0) || !(test > 0)) {
    throw badFlag(
      '--split',
      value,
      'expected three decimal fractions TRAIN,VAL,TEST like 0.7,0.1,0.2, with TRAIN and TEST above 0',
    );
  }
  return { train, val, test };
}

export function parseName(value: string): string {
  if (!isModelName(value)) throw badFlag('--name', value, `${MODEL_NAME_RULE} (it becomes part of models/NAME/)`);
  return value;
}

export interface FeatureFlags {
  /** backbone | raw-pixels (commander checks the choice; raw-pixels is never the default). */
  readonly features: string;
  readonly model?: string;
  readonly node?: string;
  readonly inputSize?: string;
  readonly inputRange?: string;
  /** `NAME[:NODE]`: a builtin backbone (shared/backbones.ts) and optionally its node. */
  readonly backbone?: string;
  /** ONNX models only: nchw | nhwc (commander checks the choice), and torchvision-style R,G,B mean and std. */
  readonly inputLayout?: string;
  readonly mean?: string;
  readonly std?: string;
  /** `--no-flip` gives false: plain features instead of flip-averaged ones (the default). */
  readonly flip?: boolean;
  /** `--multi-scale` / `--no-multi-scale`; unset: on for the shipped backbones, off for --model. */
  readonly multiScale?: boolean;
}

/**
 * The feature spec the flags ask for. A flag that would be ignored is refused instead: the user
 * meant something by it, and a run that silently did something else wastes their time.
 */
/**
 * `--model` as the workers will read it, checked here so a bad one is refused before anything is
 * queued: an s3:// URL naming an object (checked as the extractor checks it, plus no empty, `.` or
 * `..` key segments, which S3-compatible stores treat inconsistently), or a local path, made
 * absolute from this directory (workers read local models only inside DEEPFEAT_MODEL_DIRS, and
 * only by absolute path). Any other scheme (file:, http:) is refused.
 */
export function modelReference(model: string): string {
  if (model.startsWith('s3://')) parseModelS3Url(model);
  // The rules every run request is held to (client.ts modelRefFault), with --model's wording.
  const fault = modelRefFault(model);
  if (fault === 'segments') throw badFlag('--model', model, 'name the object without empty, "." or ".." path segments');
  if (fault === 'scheme') {
    throw badFlag('--model', model, 'give an s3:// URL or a local path of model.json (other URL schemes are not read)');
  }
  return model.startsWith('s3://') ? model : path.resolve(model);
}

/** `--input-size` of a user's model, checked, as the spec field it becomes. */
function inputSizeField(o: FeatureFlags): { inputSize?: number } {
  if (o.inputSize === undefined) return {};
  return {
    inputSize: parseWholeNumber(
      '--input-size',
      o.inputSize,
      RUN_LIMITS.modelInputSize,
      'the side of the square input --model takes',
    ),
  };
}

export function featureSpec(o: FeatureFlags): FeatureSpec {
  const spec = backboneOrPixels(o);
  if (spec.kind === 'raw-pixels') {
    if (o.multiScale === true) throw badFlag('--multi-scale', 'on', 'raw pixels have one scale: drop --multi-scale');
    return spec;
  }
  // Multi-scale features are on for the shipped backbones (measured there) unless --no-multi-scale,
  // and asked for with --multi-scale for a TF.js --model; deepfeat cannot resize an ONNX model's input.
  if (spec.kind === 'onnx' && o.multiScale === true) {
    throw badFlag(
      '--multi-scale',
      'on',
      'an ONNX --model runs at the input size it was written for: drop --multi-scale (it works with the shipped backbones and TF.js models)',
    );
  }
  const multiScale = o.multiScale ?? spec.kind === 'builtin';
  const { multiScale: _default, ...rest } = spec as FeatureSpec & { multiScale?: boolean };
  // Flip averaging is on unless --no-flip (shared/features.ts FlipOption says why).
  return { ...rest, flip: o.flip !== false, ...(multiScale ? { multiScale: true } : {}) } as FeatureSpec;
}

function backboneOrPixels(o: FeatureFlags): FeatureSpec {
  if (o.node === '') throw badFlag('--node', o.node, 'give the name of the node or layer to pool');
  const onnx = o.model !== undefined && o.backbone === undefined && isOnnxModelRef(o.model);
  for (const [flag, value] of [
    ['--input-layout', o.inputLayout],
    ['--mean', o.mean],
    ['--std', o.std],
  ] as const) {
    if (value !== undefined && !onnx) {
      throw badFlag(
        flag,
        value,
        'this flag applies only to an ONNX --model (a .onnx file): drop it, or give --model MODEL.onnx',
      );
    }
  }
  if (o.backbone !== undefined) return backboneSpec(o.backbone, o);
  if (o.model !== undefined) {
    if (o.model === '') throw badFlag('--model', o.model, 'give the path or s3:// URL of a TF.js model.json');
    if (o.features === 'raw-pixels') {
      throw new BadRequestError('--model and --features raw-pixels ask for two different extractors: choose one');
    }
    if (o.node === undefined) {
      throw new BadRequestError(
        onnx
          ? "--model needs --node: the name of the tensor to pool (an output of one of the ONNX graph's nodes)"
          : '--model needs --node: the name of the node (graph model) or layer (layers model) to pool',
      );
    }
    if (onnx) return onnxSpec(o, o.model, o.node);
    return {
      kind: 'tfjs',
      model: modelReference(o.model),
      node: o.node,
      ...inputSizeField(o),
      ...(o.inputRange !== undefined ? { inputRange: o.inputRange as '0,1' } : {}),
    };
  }
  for (const [flag, value] of [
    ['--input-size', o.inputSize],
    ['--input-range', o.inputRange],
  ] as const) {
    if (value !== undefined) {
      throw badFlag(
        flag,
        value,
        'this flag applies only to your own --model (the shipped backbone and raw pixels fix their input): drop it, or add --model',
      );
    }
  }
  if (o.features === 'raw-pixels') {
    if (o.node !== undefined) {
      throw badFlag('--node', o.node, 'raw pixels have no nodes to pool: drop --node, or use --features backbone');
    }
    return RAW_PIXELS;
  }
  if (o.features === 'backbone')
    return o.node !== undefined ? { kind: 'builtin', id: 'mobilenet_v2_mid', node: o.node } : DEFAULT_FEATURES;
  throw badFlag('--features', o.features, 'use backbone or raw-pixels (or --model PATH --node NAME)');
}

/**
 * `--backbone NAME[:NODE]`: one of the shipped backbones, at its measured default node or NODE.
 * It chooses the extractor, so --model and --features raw-pixels (other extractors) are refused
 * with it, as is --node together with a `:NODE` (two nodes).
 */
function backboneSpec(value: string, o: FeatureFlags): FeatureSpec {
  const known = BUILTIN_MODELS.join(', ');
  if (o.model !== undefined) {
    throw new BadRequestError('--backbone and --model ask for two different extractors: choose one');
  }
  if (o.features === 'raw-pixels') {
    throw new BadRequestError('--backbone and --features raw-pixels ask for two different extractors: choose one');
  }
  for (const [flag, v] of [
    ['--input-size', o.inputSize],
    ['--input-range', o.inputRange],
  ] as const) {
    if (v !== undefined) {
      throw badFlag(flag, v, 'a shipped backbone fixes its input size and range (see deepfeat backbones): drop it');
    }
  }
  const ref = parseBackboneRef(value);
  if (ref === undefined) {
    throw badFlag('--backbone', value, `expected NAME or NAME:NODE with NAME one of ${known} (deepfeat backbones)`);
  }
  if (ref.node === '') throw badFlag('--backbone', value, `give a node after the colon, or drop the colon`);
  if (ref.node !== undefined && o.node !== undefined) {
    throw badFlag('--node', o.node, `--backbone ${ref.id}:NODE already names a node: give the node once`);
  }
  const node = ref.node ?? o.node;
  return node !== undefined ? { kind: 'builtin', id: ref.id, node } : { kind: 'builtin', id: ref.id };
}

/** `--model MODEL.onnx --node TENSOR` with its input flags, each checked. */
function onnxSpec(o: FeatureFlags, model: string, node: string): FeatureSpec {
  return {
    kind: 'onnx',
    model: modelReference(model),
    node,
    ...inputSizeField(o),
    ...(o.inputLayout !== undefined ? { inputLayout: o.inputLayout as InputLayout } : {}),
    ...(o.inputRange !== undefined ? { inputRange: o.inputRange as InputRange } : {}),
    ...(o.mean !== undefined ? { mean: parseChannelStats('--mean', o.mean, false) } : {}),
    ...(o.std !== undefined ? { std: parseChannelStats('--std', o.std, true) } : {}),
  };
}

/** A signed decimal: `0.485`, `-1`, `.5`, `2.` (no exponent, hex or spaces). */
const SIGNED_DECIMAL = /^-?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})$/;

/**
 * `R,G,B`: three decimals, one per channel, as torchvision's Normalize takes them (for pixels in
 * 0..1: mean 0.485,0.456,0.406 and std 0.229,0.224,0.225 for ImageNet models).
 */
export function parseChannelStats(
  flag: '--mean' | '--std',
  value: string,
  positive: boolean,
): [number, number, number] {
  const parts = value.split(',');
  const nums = parts.map(Number);
  const ok =
    parts.length === 3 &&
    parts.every((p) => SIGNED_DECIMAL.test(p)) &&
    nums.every((n) => Math.abs(n) <= CHANNEL_STAT_LIMIT && (!positive || n > 0));
  if (!ok) {
    throw badFlag(
      flag,
      value,
      `expected three decimals R,G,B like ${positive ? '0.229,0.224,0.225' : '0.485,0.456,0.406'}` +
        `${positive ? ', each above 0' : ''}, at most ${CHANNEL_STAT_LIMIT} in size, in the scale of --input-range`,
    );
  }
  return nums as [number, number, number];
}
