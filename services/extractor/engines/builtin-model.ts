/**
 * The backbones that ship with the install, read from the installed nsfwjs@4.4.0 package (nothing
 * is downloaded at run time): MobileNetV2 1.4 "mid" (graph model, the default), MobileNetV2 1.0
 * and InceptionV3 (Keras-era layers models). Their sizes, ranges and default nodes are declared
 * once in shared/backbones.ts; this module loads their topology and weights.
 */
import { tf } from './tf.js';
import { BUILTIN_BACKBONES } from '../../../shared/backbones.js';
import { ModelError, errorMessage } from '../../../shared/errors.js';
import type { BuiltinModelId, InputRange } from '../../../shared/features.js';

/** The default builtin's id in a feature spec (`{ kind: 'builtin', id }`) and in engine ids. */
export const BUILTIN_MODEL_ID = 'mobilenet_v2_mid' satisfies BuiltinModelId;
/** Pixels in [0, 1]: the graph scales them to [-1, 1] itself. */
export const BUILTIN_INPUT_RANGE: InputRange = BUILTIN_BACKBONES[BUILTIN_MODEL_ID].inputRange;

/**
 * Node of the builtin MobileNetV2 (nsfwjs `mobilenet_v2_mid`) whose globally averaged output is
 * the default feature vector. Measured with `bench/probe-layers.ts` (defaults: 500 CIFAR-10 cats +
 * 500 dogs, 32×32 through decodeImage to 224×224, wasm; five seeded stratified 70/30 splits;
 * standardised features; accuracy on the 30%, mean over splits):
 *
 * | node                                  | dim  | nearest mean | ridge ± sd    |
 * |---------------------------------------|-----:|-------------:|--------------:|
 * | raw pixels 32×32 (baseline)           | 3072 | 55.3%        | 56.9% ± 2.0   |
 * | expanded_conv_11/expand/Relu6         |  816 | 61.0%        | 71.0% ± 1.6   |
 * | expanded_conv_11/project              |  136 | 61.3%        | 66.6% ± 1.5   |
 * | expanded_conv_11/add                  |  136 | 59.9%        | 68.5% ± 1.1   |
 * | expanded_conv_12/expand/Relu6         |  816 | 62.3%        | 69.7% ± 2.9   |
 * | expanded_conv_12/project              |  136 | 61.9%        | 68.2% ± 2.3   |
 * | expanded_conv_12/add                  |  136 | 61.7%        | 68.3% ± 1.8   |
 * | expanded_conv_13/expand/Relu6  ◀      |  816 | 62.3%        | 71.1% ± 2.2   |
 * | expanded_conv_13/project              |  224 | 60.5%        | 70.0% ± 1.8   |
 * | expanded_conv_14/expand/Relu6         | 1344 | 62.5%        | 69.9% ± 1.8   |
 * | expanded_conv_14/project              |  224 | 61.4%        | 67.9% ± 1.8   |
 * | expanded_conv_14/add                  |  224 | 63.1%        | 71.1% ± 2.7   |
 * | expanded_conv_15/expand/Relu6         | 1344 | 62.7%        | 70.7% ± 2.6   |
 * | expanded_conv_15/project              |  224 | 61.9%        | 65.2% ± 2.1   |
 * | expanded_conv_15/add                  |  224 | 64.6%        | 69.9% ± 2.0   |
 * | expanded_conv_16/expand/Relu6         | 1344 | 58.3%        | 68.1% ± 2.7   |
 * | expanded_conv_16/project              |  448 | 65.3%        | 69.6% ± 1.8   |
 * | feature_vector/SpatialSqueeze (final) | 1792 | 64.6%        | 69.1% ± 1.9   |
 * ("project" = project/BatchNorm/FusedBatchNormV3; ridge = ridge classifier, L2 picked on a
 * validation slice of train. A run standardising on each split's train rows only, instead of
 * on all images, gave every number within 0.7 points of these.)
 *
 * expanded_conv_13/expand/Relu6, expanded_conv_14/add and expanded_conv_11/expand/Relu6 tie
 * (71.0–71.1%, well inside the split-to-split spread). expanded_conv_13/expand/Relu6 is kept:
 * tied best with the linear classifier, better than expanded_conv_11 by nearest mean, 816-d, and
 * its forward pass stops three blocks before the end. The final 1792-d feature vector is about
 * 2 points worse here, not the 7 a single earlier probe suggested.
 */
export const DEFAULT_BUILTIN_NODE = BUILTIN_BACKBONES[BUILTIN_MODEL_ID].defaultNode;

/** How nsfwjs packages each model: model.json and base64 weight shards as lazy imports. */
interface NsfwjsModelDef {
  modelJson: () => Promise<{ default: unknown }>;
  weightBundles: Array<() => Promise<{ default: string }>>;
}

const NSFWJS_MODELS: Record<BuiltinModelId, () => Promise<NsfwjsModelDef>> = {
  mobilenet_v2_mid: async () => (await import('nsfwjs/models/mobilenet_v2_mid')).MobileNetV2MidModel,
  mobilenet_v2: async () => (await import('nsfwjs/models/mobilenet_v2')).MobileNetV2Model,
  inception_v3: async () => (await import('nsfwjs/models/inception_v3')).InceptionV3Model,
};

/** Topology and weights of builtin backbone `id`, from the installed nsfwjs package (no network). */
export async function builtinModelArtifacts(id: BuiltinModelId = BUILTIN_MODEL_ID): Promise<tf.io.ModelArtifacts> {
  try {
    const def = await NSFWJS_MODELS[id]();
    const json = (await def.modelJson()).default as tf.io.ModelJSON;
    const bundles = await Promise.all(
      def.weightBundles.map(async (load) => Buffer.from((await load()).default, 'base64')),
    );
    const weights = Buffer.concat(bundles);
    const weightData = weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) as ArrayBuffer;
    return tf.io.getModelArtifactsForJSONSync(json, tf.io.getWeightSpecs(json.weightsManifest), weightData);
  } catch (err) {
    throw new ModelError(`cannot load the builtin model ${id} from the nsfwjs package: ${errorMessage(err)}`, {
      cause: err,
    });
  }
}
