/**
 * The ONNX Runtime engine: the builtin TF.js backbone converted to ONNX in-process gives the same
 * features as TensorFlow.js on real images; the conversion is cached; graphs the converter does
 * not cover fall back to TF.js (auto) or fail clearly (onnx); engines in a worker thread keep the
 * caller's event loop free and carry errors across with their class.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import type * as tf from '@tensorflow/tfjs';
import { loadDemoImages } from '../cli/demo-data.js';
import { builtinModelArtifacts } from '../services/extractor/engines/builtin-model.js';
import type { EngineDeps, FeatureEngine } from '../services/extractor/engines/engine.js';
import { graphNodeNames, resolveNode } from '../services/extractor/engines/graph-cut.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { convertGraphToOnnx, UnsupportedGraphError } from '../services/extractor/engines/onnx/convert.js';
import { loadEngineInThread } from '../services/extractor/engines/thread.js';
import { decodeImage } from '../services/extractor/image.js';
import { DeepfeatError, ModelError } from '../shared/errors.js';
import type { FeatureSpec } from '../shared/features.js';
import { maxRowRelErr } from './helpers/compare.js';

const cacheDir = path.join(tmpdir(), `deepfeat-onnx-${randomUUID()}`);
const logs: Array<{ msg: string; extra?: object }> = [];
const deps = (over: Partial<EngineDeps> = {}): EngineDeps => ({
  readObject: async (url) => {
    throw new Error(`unexpected read of ${url}`);
  },
  log: (msg, extra) => logs.push({ msg, extra }),
  cacheDir,
  threads: 1,
  ...over,
});

/** 24 real CIFAR-10 images (12 cats, 12 dogs) decoded to the backbone's input. */
let images: Uint8Array[];

test.before(async () => {
  await mkdir(cacheDir, { recursive: true });
  const demo = await loadDemoImages({ perClass: 12 });
  images = await Promise.all(demo.map((d) => decodeImage(d.png, { width: 224, height: 224, maxPixels: 1e7 })));
});

test.after.always(async () => {
  await rm(cacheDir, { recursive: true, force: true });
});

async function withEngines<T>(
  spec: FeatureSpec,
  fn: (onnx: FeatureEngine, tfjs: FeatureEngine) => Promise<T>,
): Promise<T> {
  const onnx = await loadEngine(spec, deps({ engine: 'onnx' }));
  const tfjs = await loadEngine(spec, deps({ engine: 'tfjs', backend: 'wasm' }));
  try {
    return await fn(onnx, tfjs);
  } finally {
    onnx.dispose();
    tfjs.dispose();
  }
}

for (const node of [
  undefined,
  'expanded_conv_16/project/BatchNorm/FusedBatchNormV3',
  'feature_vector/SpatialSqueeze',
  'expanded_conv_2/add',
]) {
  test.serial(`ONNX Runtime and TF.js give the same features on real images (node ${node ?? 'default'})`, async (t) => {
    await withEngines({ kind: 'builtin', id: 'mobilenet_v2_mid', ...(node ? { node } : {}) }, async (onnx, tfjs) => {
      t.regex(onnx.backend, /^onnxruntime \(CPU, 1 thread\)$/);
      t.regex(tfjs.backend, /^tfjs /);
      t.is(onnx.id, tfjs.id, 'same model and node: same id, so their features may share a run');
      t.is(onnx.dim, tfjs.dim);
      t.deepEqual(onnx.input, tfjs.input);
      const [a, b] = [await onnx.embed(images), await tfjs.embed(images)];
      t.is(a.length, images.length * onnx.dim);
      const err = maxRowRelErr(a, b, onnx.dim);
      t.log(`${onnx.id}: dim ${onnx.dim}, worst relative error over ${images.length} images ${err.toExponential(2)}`);
      t.true(err < 1e-3, `relative error ${err}`);
      // Not trivially equal because both are zero or constant: images differ from each other.
      t.true(maxRowRelErr(a.subarray(0, onnx.dim), a.subarray(onnx.dim, 2 * onnx.dim), onnx.dim) > 0.05);
    });
  });
}

test.serial('batches of any size give the rows of single images', async (t) => {
  const e = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps());
  try {
    const all = await e.embed(images.slice(0, 5));
    const one = await e.embed([images[3]!]);
    t.true(maxRowRelErr(all.subarray(3 * e.dim, 4 * e.dim), one, e.dim) < 1e-5);
    t.is((await e.embed([])).length, 0);
    // Overlapping calls (the input buffer is reused only when free) each get their own rows.
    const [a, b] = await Promise.all([e.embed(images.slice(0, 3)), e.embed(images.slice(3, 5))]);
    t.true(maxRowRelErr(a, all.subarray(0, 3 * e.dim), e.dim) < 1e-5);
    t.true(maxRowRelErr(b, all.subarray(3 * e.dim), e.dim) < 1e-5);
  } finally {
    e.dispose();
  }
});

test.serial('the converted model is cached on disk and read back by the next load', async (t) => {
  const dir = path.join(cacheDir, 'cache-test');
  logs.length = 0;
  const first = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps({ cacheDir: dir }));
  first.dispose();
  t.true(logs.some((l) => l.msg === 'TF.js graph converted to ONNX'));
  const files = await readdir(dir);
  t.is(files.filter((f) => f.endsWith('.onnx')).length, 1, files.join());
  t.false(files.some((f) => f.endsWith('.tmp')));
  logs.length = 0;
  const second = await loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps({ cacheDir: dir }));
  const rows = await second.embed(images.slice(0, 2));
  second.dispose();
  t.true(logs.some((l) => l.msg === 'ONNX model read from cache'));
  t.false(logs.some((l) => l.msg === 'TF.js graph converted to ONNX'));
  t.is(rows.length, 2 * 816);
  // Another node is another model: a second file.
  const other = await loadEngine(
    { kind: 'builtin', id: 'mobilenet_v2_mid', node: 'expanded_conv_12/expand/Relu6' },
    deps({ cacheDir: dir }),
  );
  other.dispose();
  t.is((await readdir(dir)).filter((f) => f.endsWith('.onnx')).length, 2);
});

/** The builtin graph with one extra node after `expanded_conv_13/expand/Relu6`, of an op TF.js has but the converter does not. */
async function builtinWithExtraOp(op: string): Promise<{ artifacts: tf.io.ModelArtifacts; node: string }> {
  const a = await builtinModelArtifacts();
  const topo = structuredClone(a.modelTopology) as {
    node: Array<{ name: string; op: string; input?: string[]; attr?: object }>;
  };
  const from = resolveNode(graphNodeNames(a), 'expanded_conv_13/expand/Relu6', 'builtin');
  topo.node.push({ name: `extra/${op}`, op, input: [from], attr: { T: { type: 'DT_FLOAT' } } });
  return { artifacts: { ...a, modelTopology: topo }, node: `extra/${op}` };
}

test.serial('an op the converter does not cover is named in the error', async (t) => {
  const { artifacts, node } = await builtinWithExtraOp('Softplus');
  const err = t.throws(() => convertGraphToOnnx(artifacts, node, 'test'), { instanceOf: UnsupportedGraphError });
  t.regex(err!.message, /op Softplus \(node extra\/Softplus\) is not covered/);
});

test.serial('auto falls back to TF.js for such a graph; onnx refuses it with the fix', async (t) => {
  const { artifacts } = await builtinWithExtraOp('Softplus');
  // A user's model: model.json + weights as files, read through readObject.
  const dir = path.join(cacheDir, 'softplus');
  await mkdir(dir, { recursive: true });
  const weights = Buffer.from(artifacts.weightData as ArrayBuffer);
  await writeFile(path.join(dir, 'weights.bin'), weights);
  await writeFile(
    path.join(dir, 'model.json'),
    JSON.stringify({
      format: 'graph-model',
      modelTopology: artifacts.modelTopology,
      weightsManifest: [{ paths: ['weights.bin'], weights: artifacts.weightSpecs }],
    }),
  );
  const spec: FeatureSpec = { kind: 'tfjs', model: path.join(dir, 'model.json'), node: 'extra/Softplus' };
  const read = async (url: string) => new Uint8Array(await readFile(url));
  logs.length = 0;
  const auto = await loadEngine(spec, deps({ readObject: read, backend: 'wasm' }));
  try {
    t.regex(auto.backend, /^tfjs /);
    t.is(auto.dim, 816);
    t.true(
      logs.some(
        (l) =>
          l.msg === 'ONNX conversion not possible; using TensorFlow.js' && /Softplus/.test(JSON.stringify(l.extra)),
      ),
    );
  } finally {
    auto.dispose();
  }
  const err = await t.throwsAsync(loadEngine(spec, deps({ readObject: read, engine: 'onnx' })), {
    instanceOf: ModelError,
  });
  t.regex(err!.message, /cannot run on ONNX Runtime: op Softplus .*use DEEPFEAT_ENGINE=tfjs or auto/);
});

test.serial('an engine in a worker thread gives the same rows and leaves the event loop free', async (t) => {
  // TF.js WebAssembly: the engine that would block the loop for the whole batch on the main thread.
  const threaded = await loadEngineInThread(
    { kind: 'builtin', id: 'mobilenet_v2_mid' },
    deps({ engine: 'tfjs', backend: 'wasm' }),
  );
  const local = await loadEngine(
    { kind: 'builtin', id: 'mobilenet_v2_mid' },
    deps({ engine: 'tfjs', backend: 'wasm' }),
  );
  try {
    t.is(threaded.id, local.id);
    t.regex(threaded.backend, /^tfjs wasm$/);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const rows = await threaded.embed(images.slice(0, 16));
    clearInterval(timer);
    // 16 images take hundreds of milliseconds of pure compute; a blocked loop would tick ~once.
    t.true(ticks >= 5, `event loop ticked ${ticks} times during a threaded batch`);
    const ref = await local.embed(images.slice(0, 16));
    t.true(maxRowRelErr(rows, ref, local.dim) < 1e-6);
  } finally {
    threaded.dispose();
    local.dispose();
  }
});

test.serial('a batch with no answer in time ends the engine thread with a retryable error', async (t) => {
  // 24 images take ONNX Runtime on one thread well over 100 ms; 10 ms cannot be met.
  const engine = await loadEngineInThread({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps({ engine: 'onnx' }), {
    timeoutMs: 10,
    timeoutSetting: 'DEEPFEAT_ENGINE_TIMEOUT',
  });
  const exits: string[] = [];
  engine.onExit((reason) => exits.push(reason));
  try {
    const err = await t.throwsAsync(engine.embed(images), { instanceOf: DeepfeatError });
    t.false(err!.permanent, 'a timeout is retried by BullMQ, not a failed run');
    t.regex(
      err!.message,
      /feature engine thread ended: no answer to a batch of 24 within 0\.01 s \(DEEPFEAT_ENGINE_TIMEOUT\)/,
    );
    t.deepEqual(exits, ['no answer to a batch of 24 within 0.01 s (DEEPFEAT_ENGINE_TIMEOUT)']);
    // The engine stays dead: later calls fail at once instead of waiting on a terminated thread.
    const again = await t.throwsAsync(engine.embed(images.slice(0, 1)), { instanceOf: DeepfeatError });
    t.regex(again!.message, /feature engine thread ended/);
  } finally {
    engine.dispose();
  }
  // Within the limit the same engine answers normally.
  const ok = await loadEngineInThread({ kind: 'builtin', id: 'mobilenet_v2_mid' }, deps({ engine: 'onnx' }), {
    timeoutMs: 60_000,
  });
  try {
    t.is((await ok.embed(images.slice(0, 2))).length, 2 * ok.dim);
  } finally {
    ok.dispose();
  }
});

test.serial('errors from the engine thread keep their class and message', async (t) => {
  const err = await t.throwsAsync(
    loadEngineInThread({ kind: 'builtin', id: 'mobilenet_v2_mid', node: 'no/such/node' }, deps()),
    {
      instanceOf: ModelError,
    },
  );
  t.regex(err!.message, /node "no\/such\/node" not found in mobilenet_v2_mid/);
  // A model the thread reads through the caller's storage, which fails.
  const missing = await t.throwsAsync(
    loadEngineInThread(
      { kind: 'tfjs', model: '/nonexistent/model.json', node: 'x' },
      deps({ readObject: () => Promise.reject(new Error('ENOENT: no such file')) }),
    ),
    { instanceOf: ModelError },
  );
  t.regex(missing!.message, /cannot read model\.json at \/nonexistent\/model\.json: ENOENT/);
});
