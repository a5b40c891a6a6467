/**
 * `deepfeat backbones`: the shipped backbones as rows for a table or JSON, from the catalogue in
 * shared/backbones.ts (nothing is loaded: the figures were measured once and are kept in code with
 * the date and command that produced them).
 */
import { BUILTIN_BACKBONES, type BackboneMeasurement } from '../shared/backbones.js';
import { BUILTIN_MODELS, type BuiltinModelId, type InputRange } from '../shared/features.js';
import { table } from './format.js';

export interface BackboneRow {
  id: BuiltinModelId;
  title: string;
  default: boolean;
  inputSize: number;
  inputRange: InputRange;
  defaultNode: string;
  dim: number;
  /** The engine that runs it when ONNX Runtime is available (DEEPFEAT_ENGINE=auto). */
  engine: string;
  measured: BackboneMeasurement | null;
}

export function backboneRows(): BackboneRow[] {
  return BUILTIN_MODELS.map((id, i) => {
    const b = BUILTIN_BACKBONES[id];
    return {
      id,
      title: b.title,
      default: i === 0,
      inputSize: b.inputSize,
      inputRange: b.inputRange,
      defaultNode: b.defaultNode,
      dim: b.dim,
      engine: `onnxruntime (converted from a TF.js ${b.form} model)`,
      measured: b.measured ?? null,
    };
  });
}

export function formatBackbones(rows: readonly BackboneRow[]): string {
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  const lines = table([
    ['backbone', 'input', 'default node', 'dim', 'engine', 'images/s', 'accuracy'],
    ...rows.map((r) => [
      `${r.id}${r.default ? ' (default)' : ''}`,
      `${r.inputSize}x${r.inputSize}`,
      r.defaultNode,
      String(r.dim),
      `onnxruntime (${BUILTIN_BACKBONES[r.id].form})`,
      r.measured ? r.measured.imagesPerSecond.toFixed(1) : '-',
      r.measured ? `${pct(r.measured.accuracy)} ± ${(100 * r.measured.accuracySd).toFixed(1)}` : '-',
    ]),
  ]);
  const sources = [...new Set(rows.flatMap((r) => (r.measured ? [`${r.measured.date}: ${r.measured.command}`] : [])))];
  return [
    lines,
    '',
    "images/s: features only (decode excluded), ONNX Runtime on the project's shared 2-core CPU host; accuracy: " +
      "the demo's CIFAR-10 cats vs dogs (32x32 sources) with the pipeline's trainer, mean ± sd over 5 split seeds.",
    'dim, images/s and accuracy are for plain features (--no-flip --no-multi-scale); the defaults add the image at ' +
      "half size (multi-scale: twice the dim) and the mirror image's vector (flip), about 2.6x the extraction time.",
    ...sources.map((s) => `measured ${s}`),
    'Use one: deepfeat run s3://bucket/prefix/ --backbone NAME[:NODE]',
  ].join('\n');
}
