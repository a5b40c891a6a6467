/**
 * The InceptionV3 shipped in nsfwjs@4.4.0 (`nsfwjs/models/inception_v3`: a Keras-era layers model,
 * 299×299, pixels in [0, 1], uint8-quantized weights in six shards) as a user would hand it over:
 * model.json plus one weight file `w.bin`. A real, large layers model for the layers→ONNX
 * converter's tests and bench/layers-speed.ts; not a selectable backbone.
 */
import type * as tf from '@tensorflow/tfjs';
import type { ModelFiles } from './tiny-models.js';

export const INCEPTION_SIZE = 299;
export const INCEPTION_RANGE = '0,1' as const;
/** The last Inception block of the 17×17 stage, the node the first probe pooled. */
export const INCEPTION_MIXED7 = 'mixed7';
/** The 8×8 average pool over the last block (2048 channels): the network's global pool. */
export const INCEPTION_GLOBAL_POOL = 'average_pooling2d_10';

export async function inceptionV3Files(): Promise<ModelFiles> {
  const { InceptionV3Model: def } = await import('nsfwjs/models/inception_v3');
  const json = (await def.modelJson()).default as tf.io.ModelJSON;
  const shards = await Promise.all(
    def.weightBundles.map(async (load) => Buffer.from((await load()).default, 'base64')),
  );
  const weights = json.weightsManifest.flatMap((g) => g.weights);
  return {
    json: JSON.stringify({ modelTopology: json.modelTopology, weightsManifest: [{ paths: ['w.bin'], weights }] }),
    weights: Buffer.concat(shards),
  };
}
