/**
 * Where a TF.js graph model is cut, worked out from its topology alone (no model load, no
 * TensorFlow.js runtime): the full name of the node to pool, its short label for engine ids, and
 * the square input side. The TF.js engine and the ONNX converter both cut here, so the same
 * model and node give the same id on either engine. (Layers models are cut by layer name, in
 * tfjs.ts.)
 */
import type * as tf from '@tensorflow/tfjs';
import { ModelError } from '../../../shared/errors.js';

/**
 * A layers model (Keras-style topology, cut by layer name) rather than a graph model (cut here).
 * Three forms: `format: "layers-model"` (tfjs-converter 1.x and later); no format and the Keras
 * model config as the topology; and the Keras-era form older converters wrote (most public TF.js
 * models), `{keras_version, backend, model_config: {class_name, config}}` with no format, which
 * TensorFlow.js's own loader unwraps.
 */
export function isLayersModel(artifacts: tf.io.ModelArtifacts): boolean {
  const topo = artifacts.modelTopology;
  if (artifacts.format === 'layers-model') return true;
  if (artifacts.format !== undefined || !isRecord(topo)) return false;
  return 'class_name' in topo || (isRecord(topo.model_config) && 'class_name' in topo.model_config);
}

/**
 * Resolve `node` in a graph model: its full name (with any ':N' output index) and its label for
 * engine ids, the shortest unique suffix of the name, however the caller spelled it.
 * @throws ModelError for an unknown or ambiguous node.
 */
export function resolveCut(
  artifacts: tf.io.ModelArtifacts,
  node: string,
  modelName: string,
): { full: string; label: string } {
  const names = graphNodeNames(artifacts);
  const full = resolveNode(names, node, modelName);
  const [fullBase, index = ''] = full.split(/(?=:\d+$)/);
  return { full, label: shortestUniqueSuffix(fullBase!, names) + index };
}

/**
 * The whole cut of a graph model: the node (see resolveCut), its engine id, and the square input
 * side from the model's one input. Lets another engine (ONNX Runtime) run the same cut under the
 * same id as the TF.js engine.
 * @throws ModelError for an unknown or ambiguous node or an unusable input.
 */
export function planGraphCut(
  artifacts: tf.io.ModelArtifacts,
  node: string,
  modelName: string,
  inputSize?: number,
): { full: string; id: string; size: number } {
  const { full, label } = resolveCut(artifacts, node, modelName);
  const topo = artifacts.modelTopology;
  const nodes = isRecord(topo) && Array.isArray(topo.node) ? (topo.node as unknown[]) : [];
  const inputs = nodes.filter((n): n is Record<string, unknown> => isRecord(n) && n.op === 'Placeholder');
  if (inputs.length !== 1) {
    throw new ModelError(
      `model ${modelName} has ${inputs.length} inputs; feature extraction needs a model with one image input`,
    );
  }
  const attr = inputs[0]!.attr as { shape?: { shape?: { dim?: { size?: string | number }[] } } } | undefined;
  const shape = (attr?.shape?.shape?.dim ?? []).map((d) => (d.size === undefined ? null : Number(d.size)));
  return { full, id: `${modelName}@${label}`, size: inputSide(shape, inputSize, modelName) };
}

/**
 * Square input side: the asked-for size, checked against the model's input shape [N, H, W, 3]
 * (graph and layers models alike).
 */
export function inputSide(shape: readonly (number | null)[], asked: number | undefined, modelName: string): number {
  const dims = shape.map((d) => (d === null || d < 0 ? undefined : d));
  if (shape.length !== 4) {
    throw new ModelError(
      `model ${modelName} takes input of shape [${shape.join(', ')}]; expected an NHWC image batch [N, H, W, 3]`,
    );
  }
  if (dims[3] !== undefined && dims[3] !== 3) {
    throw new ModelError(
      `model ${modelName} takes ${dims[3]} channels in its last input dimension; only NHWC RGB models (3 channels last) are supported`,
    );
  }
  const [, h, w] = dims;
  if (asked !== undefined) {
    if (!Number.isInteger(asked) || asked < 8 || asked > 2048) {
      throw new ModelError(`inputSize must be an integer from 8 to 2048, got ${asked}`);
    }
    if ((h !== undefined && h !== asked) || (w !== undefined && w !== asked)) {
      throw new ModelError(`model ${modelName} takes ${w ?? '?'}×${h ?? '?'} input; inputSize ${asked} does not fit`);
    }
    return asked;
  }
  if (h === undefined || w === undefined) {
    throw new ModelError(`model ${modelName} does not fix its input size ([${shape.join(', ')}]); set inputSize`);
  }
  if (h !== w)
    throw new ModelError(`model ${modelName} takes non-square ${w}×${h} input; only square inputs are supported`);
  // The model file sets this size, and the warm-up and every batch allocate side² × 3 per image:
  // a model.json declaring a 100000×100000 input must not get that far.
  if (!Number.isInteger(h) || h < 8 || h > 2048)
    throw new ModelError(`model ${modelName} takes ${w}×${h} input; input sides from 8 to 2048 are supported`);
  return h;
}

/** Names of the nodes of a graph model that can be pooled (everything but constants), in graph order. */
export function graphNodeNames(artifacts: tf.io.ModelArtifacts): string[] {
  const topo = artifacts.modelTopology;
  const nodes = isRecord(topo) && Array.isArray(topo.node) ? (topo.node as unknown[]) : [];
  const names: string[] = [];
  for (const n of nodes) {
    if (isRecord(n) && typeof n.name === 'string' && n.op !== 'Const') names.push(n.name);
  }
  return names;
}

/**
 * Find `node` among a graph's node names: an exact name, or a unique suffix that starts after a
 * '/' (so 'expanded_conv_13/expand/Relu6' finds the long TF-Hub name). An output index
 * (':1') is kept. Unknown or ambiguous names give a ModelError that lists names to use instead.
 */
export function resolveNode(names: readonly string[], node: string, modelName: string): string {
  const m = /^(.*?)(:\d+)?$/.exec(node.trim());
  const base = m?.[1] ?? node;
  const index = m?.[2] ?? '';
  if (base && names.includes(base)) return base + index;
  const hits = base ? names.filter((n) => n.endsWith(`/${base}`)) : [];
  if (hits.length === 1) return hits[0] + index;
  if (hits.length > 1) {
    throw new ModelError(
      `node "${node}" is ambiguous in ${modelName}: it ends ${hits.length} node names, e.g. ` +
        `${hits
          .slice(0, 5)
          .map((h) => shortestUniqueSuffix(h, names))
          .join(', ')}; give more of the name`,
    );
  }
  if (names.length === 0) {
    throw new ModelError(
      `${modelName} has no graph nodes to pool: its model.json is neither a TF.js graph model (modelTopology.node) ` +
        'nor a layers model (modelTopology.class_name, or model_config.class_name in older exports); ' +
        're-export it with tensorflowjs_converter',
    );
  }
  throw new ModelError(
    `node "${node}" not found in ${modelName} (${names.length} nodes); nodes you can pool include: ` +
      `${suggestNodes(names).join(', ')}`,
  );
}

/** Activations and pooled outputs, deepest last, as short names that `resolveNode` accepts. */
export function suggestNodes(names: readonly string[], max = 16): string[] {
  const useful = names.filter((n) => /relu|squeeze|pool|gelu|swish|sigmoid|add$/i.test(n.split('/').pop() ?? ''));
  const pick = (useful.length > 0 ? useful : names).slice(-max);
  return pick.map((n) => shortestUniqueSuffix(n, names));
}

/** The shortest '/'-suffix of `name` that no other name ends with. */
export function shortestUniqueSuffix(name: string, names: readonly string[]): string {
  const parts = name.split('/');
  for (let k = 1; k < parts.length; k++) {
    const suffix = parts.slice(-k).join('/');
    if (names.every((n) => n === name || !(n === suffix || n.endsWith(`/${suffix}`)))) return suffix;
  }
  return name;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
