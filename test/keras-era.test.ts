/**
 * Keras-era TF.js model.json files — `modelTopology: {keras_version, backend, model_config}` and no
 * `format` — load as layers models and give the same features as the modern export of the same
 * model; a model.json with no nodes and no layers says what it is not, instead of listing nothing.
 */
import test from 'ava';
import type { EngineDeps } from '../services/extractor/engines/engine.js';
import { isLayersModel } from '../services/extractor/engines/graph-cut.js';
import { loadEngine } from '../services/extractor/engines/load-engine.js';
import { ModelError } from '../shared/errors.js';
import { kerasEraModel, tinyLayersModel, type ModelFiles } from './helpers/tiny-models.js';

function deps(files: ModelFiles): EngineDeps {
  return {
    readObject: async (url) => {
      if (url.endsWith('model.json')) return new TextEncoder().encode(files.json);
      if (url.endsWith('w.bin')) return files.weights;
      throw new Error(`unexpected read of ${url}`);
    },
    engine: 'tfjs',
    backend: 'cpu',
  };
}

test('a Keras-era model.json loads as a layers model and gives the modern export’s features', async (t) => {
  const modern = await tinyLayersModel();
  const old = kerasEraModel(modern);
  t.true(isLayersModel({ modelTopology: JSON.parse(old.json).modelTopology }));
  const spec = { kind: 'tfjs' as const, model: '/m/model.json', node: 'gap' };
  const [a, b] = await Promise.all([loadEngine(spec, deps(modern)), loadEngine(spec, deps(old))]);
  try {
    t.is(b.dim, 6);
    const img = Uint8Array.from({ length: 16 * 16 * 3 }, (_, i) => (i * 37) % 256);
    t.deepEqual(await b.embed([img]), await a.embed([img]));
    // Its layers are named in errors like any layers model's.
    await t.throwsAsync(loadEngine({ ...spec, node: 'nope' }, deps(old)), {
      instanceOf: ModelError,
      message: /layer "nope" not found .*conv, gap/,
    });
  } finally {
    a.dispose();
    b.dispose();
  }
});

test('a model.json with neither graph nodes nor layers says so', async (t) => {
  const empty = {
    json: JSON.stringify({ modelTopology: { something: 'else' }, weightsManifest: [] }),
    weights: Buffer.alloc(0),
  };
  await t.throwsAsync(loadEngine({ kind: 'tfjs', model: '/m/model.json', node: 'x' }, deps(empty)), {
    instanceOf: ModelError,
    message: /has no graph nodes to pool: its model.json is neither a TF.js graph model .* nor a layers model/,
  });
});
