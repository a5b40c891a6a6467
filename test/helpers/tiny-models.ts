/**
 * Small TensorFlow.js models written as a user would hand them over (model.json + weight file),
 * for tests that need a real model without the 10 MB builtin backbone.
 */
import * as tf from '@tensorflow/tfjs';

export interface ModelFiles {
  /** model.json text; its manifest names one weight file, `w.bin`. */
  json: string;
  weights: Buffer;
}

/** model.json text with the weight path(s) replaced (for hostile manifests). */
export function withWeightPaths(files: ModelFiles, paths: unknown[]): string {
  const json = JSON.parse(files.json) as { weightsManifest: Array<{ paths: unknown[] }> };
  json.weightsManifest[0]!.paths = paths;
  return JSON.stringify(json);
}

/** A Keras-style layers model: 16×16 RGB → conv 'conv' (6 channels, ReLU) → 'gap'. */
export async function tinyLayersModel(): Promise<ModelFiles> {
  const model = tf.sequential({
    layers: [
      tf.layers.conv2d({ inputShape: [16, 16, 3], filters: 6, kernelSize: 3, activation: 'relu', name: 'conv' }),
      tf.layers.globalAveragePooling2d({ name: 'gap' }),
    ],
  });
  let saved: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      saved = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  model.dispose();
  const json = JSON.stringify({
    format: 'layers-model',
    modelTopology: saved!.modelTopology,
    weightsManifest: [{ paths: ['w.bin'], weights: saved!.weightSpecs }],
  });
  return { json, weights: Buffer.from(tf.io.concatenateArrayBuffers(saved!.weightData as ArrayBuffer)) };
}

const dims = (shape: number[]) => ({ dim: shape.map((n) => ({ size: String(n) })) });
const ints = (xs: number[]) => ({ list: { i: xs.map(String) } });
const str = (s: string) => ({ s: Buffer.from(s).toString('base64') });

/**
 * A TF.js graph model (what the converter writes): 16×16 RGB input → Conv2D 3×3×3×4 → Relu, with
 * node names chosen by the caller (they may be hostile: '../../x'). ONNX Runtime and TF.js both
 * run it; pool `${prefix}relu`.
 */
export function tinyGraphModel(prefix = ''): ModelFiles {
  const filter = Float32Array.from({ length: 3 * 3 * 3 * 4 }, (_, i) => Math.sin(i + 1) / 4);
  const node = [
    {
      name: `${prefix}input`,
      op: 'Placeholder',
      attr: { dtype: { type: 'DT_FLOAT' }, shape: { shape: dims([-1, 16, 16, 3]) } },
    },
    {
      name: `${prefix}filter`,
      op: 'Const',
      attr: { dtype: { type: 'DT_FLOAT' }, value: { tensor: { dtype: 'DT_FLOAT', tensorShape: dims([3, 3, 3, 4]) } } },
    },
    {
      name: `${prefix}conv`,
      op: 'Conv2D',
      input: [`${prefix}input`, `${prefix}filter`],
      attr: {
        T: { type: 'DT_FLOAT' },
        strides: ints([1, 1, 1, 1]),
        dilations: ints([1, 1, 1, 1]),
        padding: str('VALID'),
        data_format: str('NHWC'),
      },
    },
    { name: `${prefix}relu`, op: 'Relu', input: [`${prefix}conv`], attr: { T: { type: 'DT_FLOAT' } } },
  ];
  const json = JSON.stringify({
    format: 'graph-model',
    generatedBy: 'test',
    convertedBy: 'test',
    modelTopology: { node, library: {}, versions: { producer: 1 } },
    weightsManifest: [
      { paths: ['w.bin'], weights: [{ name: `${prefix}filter`, shape: [3, 3, 3, 4], dtype: 'float32' }] },
    ],
  });
  return { json, weights: Buffer.from(filter.buffer) };
}

/**
 * The same layers model as older tfjs-converter versions wrote it (most public TF.js models):
 * `modelTopology` is `{keras_version, backend, model_config}` and there is no `format` field.
 */
export function kerasEraModel(files: ModelFiles): ModelFiles {
  const modern = JSON.parse(files.json) as { modelTopology: unknown; weightsManifest: unknown };
  const json = JSON.stringify({
    modelTopology: { keras_version: '2.1.6', backend: 'tensorflow', model_config: modern.modelTopology },
    weightsManifest: modern.weightsManifest,
  });
  return { json, weights: files.weights };
}
