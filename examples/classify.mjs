// Classify images with a downloaded deepfeat model, using onnxruntime-node and sharp only.
// Usage: node classify.mjs MODEL_DIR IMAGE...   (MODEL_DIR from `deepfeat download NAME -o MODEL_DIR`)
import { readFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';

const [dir, ...files] = process.argv.slice(2);
const model = JSON.parse(await readFile(`${dir}/model.json`, 'utf8'));
const [, size] = model.classifier.input.shape; // ['N', size, size, 3], uint8 RGB
const session = await ort.InferenceSession.create(`${dir}/${model.classifier.file}`);

for (const file of files) {
  // The preprocessing model.json lists: first frame, EXIF rotation, alpha on white, sRGB, cover + centre crop.
  const pixels = await sharp(file, { pages: 1 })
    .rotate()
    .flatten({ background: '#ffffff' })
    .toColourspace('srgb')
    .resize(size, size, { fit: 'cover', position: 'centre' })
    .removeAlpha()
    .raw()
    .toBuffer();
  const image = new ort.Tensor('uint8', new Uint8Array(pixels), [1, size, size, 3]);
  const { probabilities } = await session.run({ image });
  const p = Array.from(probabilities.data);
  const best = p.indexOf(Math.max(...p));
  console.log(JSON.stringify({ file, label: model.classes[best], probabilities: p }));
}
