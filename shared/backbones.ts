/**
 * The catalogue of builtin backbones: for each id in BUILTIN_MODELS, what a client, a planner and
 * an extractor all need to know without loading the network — its input size and pixel range,
 * the default node and that node's dimension, the model form (which engine runs it) — and the
 * figures measured on this project's hardware, with the date and command that produced them.
 * The weights themselves are read by services/extractor/engines/builtin-model.ts.
 * Kept apart from shared/features.ts (the spec vocabulary) because it is data about networks,
 * and out of the extractor because `deepfeat backbones` prints it without loading TensorFlow.js.
 */
import type { BuiltinModelId, InputRange } from './features.js';

/** A measured figure for one backbone at its default node (see `measured.command`). */
export interface BackboneMeasurement {
  /**
   * Test accuracy on the demo's cats vs dogs (2,000 CIFAR-10 images, 32×32) with the pipeline's
   * own split and trainer (bench/accuracy.ts, row "backbone"), mean over split seeds, 0..1.
   */
  accuracy: number;
  /** Its standard deviation over the splits, 0..1. */
  accuracySd: number;
  /** Extraction images/s on ONNX Runtime (CPU, 2 threads) here, decode excluded (bench/backbone-speed.ts). */
  imagesPerSecond: number;
  /** When and how the figures were produced. */
  date: string;
  command: string;
  /** The machine: cores and load, so a reader can weigh images/s. */
  host: string;
}

export interface BuiltinBackbone {
  id: BuiltinModelId;
  /** The network, as a person would name it. */
  title: string;
  /** graph = TF.js graph model; layers = Keras-era TF.js layers model (converted to ONNX like the graph). */
  form: 'graph' | 'layers';
  /** Square input side the network was trained at. */
  inputSize: number;
  inputRange: InputRange;
  /** Node (graph) or layer (layers) pooled when a spec names none: chosen by bench/probe-layers.ts. */
  defaultNode: string;
  /** Feature dimension at the default node (global average pool: its channel count). */
  dim: number;
  measured?: BackboneMeasurement;
}

/**
 * Every builtin backbone, from nsfwjs@4.4.0 (read from the installed package; nothing is
 * downloaded). All three take pixels in [0, 1], as nsfwjs feeds them (`img / 255`).
 */
/** Where and how every figure below was measured (one session, the same host). */
const MEASURED = {
  date: '2026-11-30',
  command:
    'npm run bench:accuracy (accuracy: 5 split seeds 42-46, 0.7/0.1/0.2) and ' +
    'npx tsx bench/backbone-speed.ts --images 64 --reps 3 (images/s)',
  host: '2 cores shared with other jobs, load average 4-7',
} as const;

export const BUILTIN_BACKBONES: Readonly<Record<BuiltinModelId, BuiltinBackbone>> = {
  /** Node probe: the table in services/extractor/engines/builtin-model.ts (500 per class, 5 splits). */
  mobilenet_v2_mid: {
    id: 'mobilenet_v2_mid',
    title: 'MobileNetV2 1.4 (nsfwjs "mid")',
    form: 'graph',
    inputSize: 224,
    inputRange: '0,1',
    defaultNode: 'expanded_conv_13/expand/Relu6',
    dim: 816,
    measured: { accuracy: 0.747, accuracySd: 0.032, imagesPerSecond: 95.6, ...MEASURED },
  },
  /**
   * Node probe, 2026-11-30, `npx tsx bench/probe-layers.ts --backbone mobilenet_v2 --per-class 500
   * --splits 5` (1,000 CIFAR-10 cats and dogs, 32×32 → 224, TF.js wasm; ridge accuracy on 30%,
   * mean ± sd over 5 splits): block_11_expand_relu 70.7% ± 2.3 (best), block_12_expand_relu
   * 70.1 ± 2.0, block_15_add 69.1 ± 0.8, block_12_add 68.9 ± 1.3, block_13_expand_relu 68.4 ± 1.5,
   * out_relu (final, 1280) 67.3 ± 1.1, block_16_project_BN 66.1 ± 3.4; raw pixels 56.9 ± 2.0.
   * (A first probe of 300 per class and 3 splits ranked block_10_project_BN first at 70.9 ± 3.0:
   * that size is too noisy to rank nodes 2 points apart; the larger probe decides.)
   */
  mobilenet_v2: {
    id: 'mobilenet_v2',
    title: 'MobileNetV2 1.0 (nsfwjs)',
    form: 'layers',
    inputSize: 224,
    inputRange: '0,1',
    defaultNode: 'block_11_expand_relu',
    dim: 576,
    measured: { accuracy: 0.737, accuracySd: 0.021, imagesPerSecond: 131.8, ...MEASURED },
  },
  /**
   * Node probe, 2026-11-30, `npx tsx bench/probe-layers.ts --backbone inception_v3 --per-class 300
   * --splits 3` (600 images, 32×32 → 299, TF.js wasm; smaller than the others because a pass to
   * every candidate took 613 ms/image on the shared 2-core host): mixed4 69.6% ± 4.2, mixed7
   * 69.1 ± 1.9, mixed8 69.1 ± 0.3, mixed3 68.0 ± 0.9, mixed5 67.6 ± 4.2, mixed2 67.2 ± 1.6,
   * mixed9 66.7 ± 4.9, mixed10 65.9 ± 5.0, mixed6 64.8 ± 5.7; nearest class mean: mixed8 67.2%,
   * mixed7 66.5%, mixed4 62.6%. mixed4, mixed7 and mixed8 tie within the spread; mixed7 is kept:
   * steadier than mixed4, second-best by nearest mean, 768-d, and a block cheaper than mixed8.
   */
  inception_v3: {
    id: 'inception_v3',
    title: 'InceptionV3 (nsfwjs, uint8-quantized)',
    form: 'layers',
    inputSize: 299,
    inputRange: '0,1',
    defaultNode: 'mixed7',
    dim: 768,
    measured: { accuracy: 0.749, accuracySd: 0.01, imagesPerSecond: 31.8, ...MEASURED },
  },
};

/** The id and optional node of `--backbone NAME[:NODE]`; undefined when NAME is not a builtin. */
export function parseBackboneRef(value: string): { id: BuiltinModelId; node?: string } | undefined {
  const colon = value.indexOf(':');
  const name = colon < 0 ? value : value.slice(0, colon);
  const node = colon < 0 ? undefined : value.slice(colon + 1);
  if (!Object.hasOwn(BUILTIN_BACKBONES, name)) return undefined;
  return node === undefined ? { id: name as BuiltinModelId } : { id: name as BuiltinModelId, node };
}
