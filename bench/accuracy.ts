/**
 * Which accuracy levers are worth adopting? Measured on the demo data with the pipeline's own
 * parts, over several split seeds, never asserted.
 *
 *   npm run bench:accuracy -- [--per-class 1000] [--seeds 10] [--seed 42] [--skip-tfjs] [--quick]
 *   npm run bench:accuracy -- --headline [--seeds 30]   (plain, the defaults without flip, the defaults)
 *
 * Data: the demo's CIFAR-10 cats and dogs (cli/demo-data.ts, 32×32 PNG), decoded by the
 * pipeline's decodeImage. Splits: the planner's own assignSplits (stratified, seeded, 0.7/0.1/0.2,
 * as `deepfeat run` does), one per seed. Training: the trainer's own code — standardisation on
 * train+val (standardizer.ts), L2 chosen by selectLambdaAndFit (one validation split, the default) or
 * selectLambdaByKFold (lambda-selection.ts), L-BFGS logistic regression (logreg.ts) — and test
 * accuracy on the test split. Each lever is compared with the plain features (base: no flip) on the same seeds:
 * "Δ" is the mean paired difference ± its sd over seeds, so a lever "wins beyond the spread"
 * when Δ exceeds its sd clearly (every seed, or nearly).
 *
 * Features come from the extractor's own engines (loadEngine: ONNX Runtime here), except the
 * pooling variants and the two-node concatenation, which need the unpooled activation map: those
 * run the same network on TensorFlow.js (WebAssembly) and pool in the bench (--skip-tfjs omits
 * them). Extraction cost is ms per image of the ONNX engine's forward passes (decode excluded),
 * measured in the same process, so compare within one run of this script; the CPU is shared.
 */
import { availableParallelism, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { tf } from '../services/extractor/engines/tf.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { builtinModelArtifacts } from '../services/extractor/engines/builtin-model.js';
import type { EngineDeps, FeatureEngine, FeatureSpec } from '../services/extractor/engines/engine.js';
import { graphNodeNames, resolveNode } from '../services/extractor/engines/graph-cut.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { useBackend } from '../services/extractor/engines/tfjs-backend.js';
import { decodeImage } from '../services/extractor/image.js';
import { assignSplits } from '../services/planner/plan.js';
import {
  DEFAULT_LAMBDAS,
  type LabelledMatrix,
  selectLambdaAndFit,
  selectLambdaByKFold,
} from '../services/trainer/lambda-selection.js';
import { fitLogisticRegression, predictLabels, predictProbaMatrix } from '../services/trainer/logreg.js';
import { applyStandardizer, fitStandardizer } from '../services/trainer/standardizer.js';
import { BUILTIN_BACKBONES } from '../shared/backbones.js';
import { type BuiltinModelId, inputLut } from '../shared/features.js';
import { transformFeatures } from '../shared/softmax-model.js';

const { values: args } = parseArgs({
  options: {
    'per-class': { type: 'string', default: '1000' },
    seeds: { type: 'string' },
    headline: { type: 'boolean', default: false },
    seed: { type: 'string', default: '42' },
    batch: { type: 'string', default: '8' },
    'skip-tfjs': { type: 'boolean', default: false },
    quick: { type: 'boolean', default: false },
  },
});
const PER_CLASS = Number(args['per-class']);
const SEEDS = Array.from({ length: Number(args.seeds ?? (args.headline ? 30 : 10)) }, (_, i) => Number(args.seed) + i);
const BATCH = Number(args.batch);
const MID = BUILTIN_BACKBONES.mobilenet_v2_mid;
const started = performance.now();
const log = (msg: string) => process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(0)}s] ${msg}\n`);

// ───────────── data ─────────────

const demo = await loadDemoImages({ perClass: PER_CLASS });
const classes = ['cat', 'dog'] as const;
const y = Int32Array.from(demo, (d) => classes.indexOf(d.label));
const keys = demo.map((d) => `${d.label}/${d.name}`);
const n = demo.length;
/** Row indices of train, val and test for each seed, from the planner's own split. */
const splits = SEEDS.map((seed) => {
  const planned = assignSplits(
    keys.map((key, i) => ({ key, label: classes[y[i]!]! })),
    { train: 0.7, val: 0.1, test: 0.2 },
    seed,
  );
  const split = new Map(planned.map((p) => [p.key, p.split]));
  const rows = { train: [] as number[], val: [] as number[], test: [] as number[] };
  keys.forEach((k, i) => {
    rows[split.get(k)!].push(i);
  });
  return rows;
});
log(
  `${n} images; seeds ${SEEDS.join(', ')}; train/val/test ${Object.values(splits[0]!)
    .map((r) => r.length)
    .join('/')}`,
);

const decoded = new Map<number, Uint8Array[]>();
async function imagesAt(size: number): Promise<Uint8Array[]> {
  let images = decoded.get(size);
  if (!images) {
    images = await Promise.all(demo.map((d) => decodeImage(d.png, { width: size, height: size, maxPixels: 1e8 })));
    decoded.set(size, images);
  }
  return images;
}
// ───────────── features ─────────────

interface FeatureSet {
  X: Float32Array;
  d: number;
  /** Forward-pass ms per image on the engine that would run it in the pipeline. */
  msPerImage: number;
}

const noObjects: EngineDeps['readObject'] = () => Promise.reject(new Error('builtin backbones read no objects'));

async function embedAll(engine: FeatureEngine, images: readonly Uint8Array[]): Promise<FeatureSet> {
  const X = new Float32Array(images.length * engine.dim);
  let ms = 0;
  for (let i = 0; i < images.length; i += BATCH) {
    const t0 = performance.now();
    const rows = await engine.embed(images.slice(i, i + BATCH));
    ms += performance.now() - t0;
    X.set(rows, i * engine.dim);
  }
  return { X, d: engine.dim, msPerImage: ms / images.length };
}

/**
 * A builtin backbone at `node` on its own engine, as the pipeline loads it; `flip` is the spec's
 * flip averaging (services/extractor/engines/flip.ts: image and mirror in one batch, averaged).
 */
async function builtin(
  id: BuiltinModelId,
  opts: { node?: string; flip?: boolean; multiScale?: boolean } = {},
): Promise<FeatureSet> {
  const spec: FeatureSpec = {
    kind: 'builtin',
    id,
    ...(opts.node ? { node: opts.node } : {}),
    ...(opts.flip ? { flip: true } : {}),
    ...(opts.multiScale ? { multiScale: true } : {}),
  };
  const engine = await loadEngine(spec, { readObject: noObjects, threads: availableParallelism() });
  const images = await imagesAt(engine.input.width);
  await engine.embed(images.slice(0, BATCH)); // warm-up outside the timing
  const out = await embedAll(engine, images);
  engine.dispose();
  return out;
}

/**
 * A builtin backbone run at another input side: its model.json with the input's height and
 * width freed (convolutional networks take any size; the files fix the training size), served to
 * loadEngine as a user's model at `size`.
 */
async function builtinAtSize(id: BuiltinModelId, node: string, size: number, flip = false): Promise<FeatureSet> {
  const a = await builtinModelArtifacts(id);
  const topo = structuredClone(a.modelTopology) as Record<string, unknown>;
  if (BUILTIN_BACKBONES[id].form === 'graph') {
    for (const nd of topo.node as Array<{ op: string; attr: { shape: { shape: { dim: { size: string }[] } } } }>) {
      if (nd.op === 'Placeholder') for (const i of [1, 2]) nd.attr.shape.shape.dim[i]!.size = '-1';
    }
  } else {
    const layers = (topo.model_config as { config: { layers: Array<{ config: Record<string, unknown> }> } }).config
      .layers;
    layers[0]!.config.batch_input_shape = [null, size, size, 3];
  }
  const json = JSON.stringify({
    format: a.format,
    generatedBy: a.generatedBy,
    convertedBy: a.convertedBy,
    modelTopology: topo,
    weightsManifest: [{ paths: ['w.bin'], weights: a.weightSpecs }],
  });
  const weights = new Uint8Array(a.weightData as ArrayBuffer);
  const engine = await loadEngine(
    {
      kind: 'tfjs',
      model: `/bench/${id}/model.json`,
      node,
      inputSize: size,
      inputRange: BUILTIN_BACKBONES[id].inputRange,
      ...(flip ? { flip: true } : {}),
    },
    {
      readObject: async (url) => (url.endsWith('model.json') ? new TextEncoder().encode(json) : weights),
      threads: availableParallelism(),
    },
  );
  const images = await imagesAt(size);
  await engine.embed(images.slice(0, BATCH));
  const out = await embedAll(engine, images);
  engine.dispose();
  return out;
}

/**
 * The default backbone's unpooled maps on TensorFlow.js, pooled three ways at the default node —
 * average (the pipeline's), average ‖ max, generalised mean (p = 3; the activations are ReLU6 outputs, so
 * non-negative) — plus the default node's average ‖ the final feature vector's (two nodes).
 */
async function midPoolings(): Promise<Record<'avgmax' | 'gem' | 'twoNodes' | 'avgTfjs', FeatureSet>> {
  const backend = await useBackend('auto');
  log(`pooling variants on TF.js (${backend})`);
  const artifacts = await builtinModelArtifacts('mobilenet_v2_mid');
  const model = await tf.loadGraphModel(tf.io.fromMemory(artifacts));
  const names = graphNodeNames(artifacts);
  const nodes = [MID.defaultNode, 'feature_vector/SpatialSqueeze'].map((c) => resolveNode(names, c, MID.id));
  const lut = inputLut(MID.inputRange);
  const images = await imagesAt(MID.inputSize);
  const parts: Record<string, Float32Array[]> = { avg: [], max: [], gem: [], last: [] };
  let ms = 0;
  for (let i = 0; i < n; i += BATCH) {
    const chunk = images.slice(i, i + BATCH);
    const t0 = performance.now();
    const outs = tf.tidy(() => {
      const flat = new Float32Array(chunk.length * MID.inputSize * MID.inputSize * 3);
      for (const [j, img] of chunk.entries())
        flat.set(
          Float32Array.from(img, (v) => lut[v]!),
          j * img.length,
        );
      const x = tf.tensor4d(flat, [chunk.length, MID.inputSize, MID.inputSize, 3]);
      const [map, last] = model.execute(x, nodes) as [tf.Tensor4D, tf.Tensor];
      const gem = map
        .clipByValue(1e-6, 1e6)
        .pow(3)
        .mean([1, 2])
        .pow(1 / 3);
      return [map.mean([1, 2]), map.max([1, 2]), gem, last.reshape([chunk.length, -1])];
    });
    const [avg, max, gem, last] = outs.map((o) => o.dataSync() as Float32Array);
    ms += performance.now() - t0;
    tf.dispose(outs);
    parts.avg!.push(avg!);
    parts.max!.push(max!);
    parts.gem!.push(gem!);
    parts.last!.push(last!);
    if ((i / BATCH) % 25 === 0) process.stderr.write(`\r  ${i + chunk.length}/${n}`);
  }
  process.stderr.write('\n');
  model.dispose();
  const join = (xs: Float32Array[]) => {
    const out = new Float32Array(xs.reduce((s, x) => s + x.length, 0));
    let o = 0;
    for (const x of xs) {
      out.set(x, o);
      o += x.length;
    }
    return out;
  };
  const avg = join(parts.avg!);
  const last = join(parts.last!);
  const d = avg.length / n;
  const msPerImage = ms / n;
  return {
    avgTfjs: { X: avg, d, msPerImage },
    avgmax: {
      ...concatColumns([
        { X: avg, d },
        { X: join(parts.max!), d },
      ]),
      msPerImage,
    },
    gem: { X: join(parts.gem!), d, msPerImage },
    twoNodes: {
      ...concatColumns([
        { X: avg, d },
        { X: last, d: last.length / n },
      ]),
      msPerImage,
    },
  };
}

function concatColumns(sets: ReadonlyArray<{ X: Float32Array; d: number }>): { X: Float32Array; d: number } {
  const d = sets.reduce((s, f) => s + f.d, 0);
  const X = new Float32Array(n * d);
  for (let r = 0; r < n; r++) {
    let o = r * d;
    for (const f of sets) {
      X.set(f.X.subarray(r * f.d, (r + 1) * f.d), o);
      o += f.d;
    }
  }
  return { X, d };
}

// ───────────── training and scoring ─────────────

/** The features through the head's signed-sqrt transform (shared/softmax-model.ts), as the trainer applies it. */
function signedSqrt(f: FeatureSet): FeatureSet {
  const X = Float32Array.from(f.X);
  transformFeatures('signed-sqrt', X);
  return { ...f, X };
}

type Selection = 'val-accuracy' | 'val-logloss' | 'kfold-accuracy' | 'kfold-logloss' | 'kfold-wide';
/** The default grid with two larger strengths: today's choice often sits on the grid's top, 1. */
const WIDE_LAMBDAS = [...DEFAULT_LAMBDAS, 3, 10];

function rowsOf(f: FeatureSet, rows: readonly number[]): LabelledMatrix {
  const X = new Float32Array(rows.length * f.d);
  rows.forEach((r, i) => {
    X.set(f.X.subarray(r * f.d, (r + 1) * f.d), i * f.d);
  });
  return { X, n: rows.length, y: Int32Array.from(rows, (r) => y[r]!) };
}

/** Test accuracy on one seed's split with the trainer's code and the given L2 selection. */
function testAccuracy(f: FeatureSet, s: number, selection: Selection): { accuracy: number; lambda: number } {
  const { train: trainRows, val: valRows, test: testRows } = splits[s]!;
  const trainVal = rowsOf(f, [...trainRows, ...valRows]);
  const std = fitStandardizer(trainVal.X, trainVal.n, f.d);
  applyStandardizer(trainVal.X, trainVal.n, f.d, std, trainVal.X);
  const test = rowsOf(f, testRows);
  applyStandardizer(test.X, test.n, f.d, std, test.X);
  const nt = trainRows.length;
  const train: LabelledMatrix = { X: trainVal.X.subarray(0, nt * f.d), n: nt, y: trainVal.y.subarray(0, nt) };
  const val: LabelledMatrix = { X: trainVal.X.subarray(nt * f.d), n: valRows.length, y: trainVal.y.subarray(nt) };
  let model: { W: Float64Array; b: Float64Array };
  let lambda: number;
  if (selection === 'val-accuracy') {
    ({ model, lambda } = selectLambdaAndFit({ train, val, d: f.d, k: 2 }));
  } else if (selection === 'val-logloss') {
    // The same path as selectLambdaAndFit, choosing the lowest validation log loss.
    let best = { lambda: 0, loss: Number.POSITIVE_INFINITY };
    let init: { W: Float64Array; b: Float64Array } | undefined;
    for (const l of [...DEFAULT_LAMBDAS].sort((a, b) => b - a)) {
      const r = fitLogisticRegression({ ...train, d: f.d, k: 2, lambda: l, init });
      init = { W: r.W, b: r.b };
      const P = predictProbaMatrix(init, val.X, val.n, f.d);
      let loss = 0;
      for (let i = 0; i < val.n; i++) loss -= Math.log(Math.max(P[i * 2 + val.y[i]!]!, 1e-15));
      if (loss < best.loss) best = { lambda: l, loss };
    }
    lambda = best.lambda;
    const r = fitLogisticRegression({ ...trainVal, d: f.d, k: 2, lambda });
    model = { W: r.W, b: r.b };
  } else {
    ({ model, lambda } = selectLambdaByKFold({
      data: trainVal,
      d: f.d,
      k: 2,
      seed: SEEDS[s]!,
      criterion: selection === 'kfold-logloss' ? 'logLoss' : 'accuracy',
      ...(selection === 'kfold-wide' ? { lambdas: WIDE_LAMBDAS } : {}),
    }));
  }
  const pred = predictLabels(model, test.X, test.n, f.d);
  let right = 0;
  for (let i = 0; i < test.n; i++) if (pred[i] === test.y[i]) right++;
  return { accuracy: right / test.n, lambda };
}

interface Row {
  lever: string;
  variant: string;
  d: number;
  selection: Selection;
  accs: number[];
  lambdas: number[];
  msPerImage: number;
}
const rows: Row[] = [];
const mean = (xs: readonly number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sd = (xs: readonly number[]) => {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, xs.length - 1));
};

function score(lever: string, variant: string, f: FeatureSet, selection: Selection = 'val-accuracy'): Row {
  const runs = SEEDS.map((_, s) => testAccuracy(f, s, selection));
  const row: Row = {
    lever,
    variant,
    d: f.d,
    selection,
    accs: runs.map((r) => r.accuracy),
    lambdas: runs.map((r) => r.lambda),
    msPerImage: f.msPerImage,
  };
  rows.push(row);
  log(
    `${lever} / ${variant} / ${selection}: ${(100 * mean(row.accs)).toFixed(1)}% ± ${(100 * sd(row.accs)).toFixed(1)}`,
  );
  return row;
}

// ───────────── the levers ─────────────

log(`load average ${loadavg()[0].toFixed(1)} on ${availableParallelism()} cores`);
const base = await builtin('mobilenet_v2_mid');
// "base" is the plain features (--no-flip); flip averaging is the default since it won here.
const baseRow = score('plain (base)', `mobilenet_v2_mid@${MID.defaultNode}, 224, avg pool, no flip`, base);
/** The rows of the defaults without flip and of the defaults, which every run scores. */
const scoreNoFlipDefaults = (multi: FeatureSet) =>
  score('multi-scale + signed sqrt', '224 ‖ 112, signed sqrt: the defaults with --no-flip', signedSqrt(multi));
const scoreDefaults = (flipMulti: FeatureSet) =>
  score(
    'flip + multi-scale + signed sqrt (defaults)',
    'flip, 224 ‖ 112, signed sqrt: the defaults',
    signedSqrt(flipMulti),
  );
if (args.headline) {
  // The defaults against plain features and against the defaults without flip, over more seeds
  // (30 unless --seeds): levers 1-2 points apart need them to rank.
  scoreNoFlipDefaults(await builtin('mobilenet_v2_mid', { multiScale: true }));
  scoreDefaults(await builtin('mobilenet_v2_mid', { flip: true, multiScale: true }));
} else {
  score('L2 selection', 'one val split, log loss', base, 'val-logloss');
  score('L2 selection', '5-fold CV on train+val, accuracy', base, 'kfold-accuracy');
  score('L2 selection', '5-fold CV on train+val, log loss', base, 'kfold-logloss');
  score('L2 selection', `5-fold CV, accuracy, λ grid ${WIDE_LAMBDAS.join(', ')}`, base, 'kfold-wide');
  const flip = await builtin('mobilenet_v2_mid', { flip: true });
  score('flip averaging', "features of image and mirror averaged (the spec's flip)", flip);
  score('flip + k-fold L2', 'flip averaging, 5-fold CV accuracy', flip, 'kfold-accuracy');
  score('signed sqrt', "sign(x)·√|x| before standardisation (the head's featureTransform)", signedSqrt(base));
  score('signed sqrt + k-fold L2', 'signed sqrt, 5-fold CV accuracy', signedSqrt(base), 'kfold-accuracy');
  score('flip + signed sqrt', 'flip averaging, then signed sqrt (the defaults before multi-scale)', signedSqrt(flip));
  score('flip + signed sqrt + k-fold L2', 'flip, signed sqrt, 5-fold CV accuracy', signedSqrt(flip), 'kfold-accuracy');
  const multi = await builtin('mobilenet_v2_mid', { multiScale: true });
  score('multi-scale', "224 ‖ 112 (2×2 means of the decoded pixels), concatenated (the spec's multiScale)", multi);
  scoreNoFlipDefaults(multi);
  const flipMulti = await builtin('mobilenet_v2_mid', { flip: true, multiScale: true });
  scoreDefaults(flipMulti);
  score(
    'flip + multi-scale + signed sqrt + k-fold L2',
    'the defaults, 5-fold CV accuracy',
    signedSqrt(flipMulti),
    'kfold-accuracy',
  );
  if (!args.quick) {
    for (const size of [160, 299]) {
      score(
        'input scale',
        `32×32 decoded to ${size}×${size}`,
        await builtinAtSize('mobilenet_v2_mid', MID.defaultNode, size),
      );
    }
    score(
      'flip + input scale',
      'flip averaging, 32×32 decoded to 160×160',
      await builtinAtSize('mobilenet_v2_mid', MID.defaultNode, 160, true),
    );
  }
  const backbones: Partial<Record<BuiltinModelId, FeatureSet>> = { mobilenet_v2_mid: base };
  for (const id of ['mobilenet_v2', 'inception_v3'] as const) {
    backbones[id] = await builtin(id);
    score('backbone', `${id}@${BUILTIN_BACKBONES[id].defaultNode}, ${BUILTIN_BACKBONES[id].inputSize}`, backbones[id]!);
  }
  const both = concatColumns([base, backbones.inception_v3!]);
  score('two backbones', 'mobilenet_v2_mid ‖ inception_v3 (default nodes)', {
    ...both,
    msPerImage: base.msPerImage + backbones.inception_v3!.msPerImage,
  });
  if (!args['skip-tfjs']) {
    const p = await midPoolings();
    // Cost: the same forward pass as the base's (pooling is negligible); the two-node cut runs to the end.
    // The two-node cut runs the network to its end: its cost is the ONNX engine's at the final node.
    const cost = (f: FeatureSet, ms = base.msPerImage) => ({ ...f, msPerImage: ms });
    score('pooling (TF.js)', 'average (the base, as a check of the TF.js path)', cost(p.avgTfjs));
    score('pooling (TF.js)', 'average ‖ max', cost(p.avgmax));
    score('pooling (TF.js)', 'generalised mean, p = 3', cost(p.gem));
    const endCost = (await builtin('mobilenet_v2_mid', { node: 'feature_vector/SpatialSqueeze' })).msPerImage;
    score('two nodes (TF.js)', `${MID.defaultNode} ‖ feature_vector (final, 1792)`, cost(p.twoNodes, endCost));
  }
}

// ───────────── report ─────────────

const pct = (v: number) => (100 * v).toFixed(1);
console.log(
  `\nDemo cats vs dogs: ${n} images, 32×32 sources; splits 0.7/0.1/0.2 by the planner, seeds ${SEEDS.join(', ')}; ` +
    `${availableParallelism()} cores, load ${loadavg()[0].toFixed(1)} at the end; ${((performance.now() - started) / 1000).toFixed(0)} s\n`,
);
console.log(
  '| lever | variant | dim | L2 selection | test accuracy (mean ± sd) | Δ vs base (paired mean ± sd) | seeds better | extraction ms/image | cost × |',
);
console.log('|---|---|---:|---|---:|---:|---:|---:|---:|');
for (const r of rows) {
  const diffs = r.accs.map((a, i) => a - baseRow.accs[i]!);
  const better = diffs.filter((x) => x > 0).length;
  console.log(
    `| ${r.lever} | ${r.variant} | ${r.d} | ${r.selection} | ${pct(mean(r.accs))}% ± ${pct(sd(r.accs))} | ` +
      `${r === baseRow ? '—' : `${diffs.every((x) => x === 0) ? '' : mean(diffs) >= 0 ? '+' : ''}${pct(mean(diffs))} ± ${pct(sd(diffs))}`} | ` +
      `${r === baseRow ? '—' : `${better}/${SEEDS.length}`} | ${r.msPerImage.toFixed(1)} | ${(r.msPerImage / base.msPerImage).toFixed(2)} |`,
  );
}
console.log(`\nλ chosen per seed: ${rows.map((r) => `${r.lever}/${r.selection}: ${r.lambdas.join(',')}`).join('; ')}`);
