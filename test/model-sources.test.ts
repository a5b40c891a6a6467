/**
 * Where a user's model may be read from, and what a hostile one can make a worker do: the model
 * source (local folders the operator allows, s3:// against a real S3 server, size bounds), the
 * TF.js artifact reader (weight paths, manifest sizes, parser messages), the engine thread
 * carrying its errors, and the ONNX cache whose file names no request can choose.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { EngineDeps } from '../services/extractor/engines/engine.js';
import { MAX_NODE_CHARS, loadEngine } from '../services/extractor/engines/load-engine.js';
import {
  MAX_MODEL_JSON_BYTES,
  MAX_WEIGHT_FILES,
  readTfjsArtifacts,
} from '../services/extractor/engines/tfjs-artifacts.js';
import { loadEngineInThread } from '../services/extractor/engines/thread.js';
import {
  createModelSource,
  isInside,
  parseModelS3Url,
  type ReadModelFile,
} from '../services/extractor/model-source.js';
import { type DeepfeatError, ModelError } from '../shared/errors.js';
import { getS3, makeS3Client, uniqueName, type TestS3 } from './helpers/services.js';
import { tinyGraphModel, tinyLayersModel, withWeightPaths, type ModelFiles } from './helpers/tiny-models.js';

const SECRET = `TOP-SECRET-${randomUUID()}`;
const SECRET_SIZE = 4_321;
let root: string;
let allowed: string;
let outside: string;
let secretFile: string;
let layers: ModelFiles;
let s3: TestS3 | undefined;
let client: S3Client | undefined;
const bucket = uniqueName('models');

test.before(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'deepfeat-model-source-'));
  allowed = path.join(root, 'allowed');
  outside = path.join(root, 'outside');
  await Promise.all([mkdir(path.join(allowed, 'm'), { recursive: true }), mkdir(outside)]);
  secretFile = path.join(outside, 'secret.txt');
  await writeFile(secretFile, Buffer.alloc(SECRET_SIZE, `${SECRET}\n`));
  layers = await tinyLayersModel();
  await writeFile(path.join(allowed, 'm', 'model.json'), layers.json);
  await writeFile(path.join(allowed, 'm', 'w.bin'), layers.weights);
  await symlink(secretFile, path.join(allowed, 'link-out.txt'));
  await symlink(path.join(allowed, 'm', 'w.bin'), path.join(allowed, 'link-in.bin'));
  await symlink(outside, path.join(allowed, 'dir-out'));
  await symlink(path.join(outside, 'nowhere'), path.join(allowed, 'dangling'));
  await symlink(allowed, path.join(root, 'allowed-link'));
  execFileSync('mkfifo', [path.join(allowed, 'fifo')]);
});

test.after.always(async () => {
  client?.destroy();
  await s3?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

const local = (over: { dirs?: string[]; max?: number } = {}): ReadModelFile =>
  createModelSource({ modelDirs: over.dirs ?? [allowed], maxModelBytes: over.max ?? 1024 * 1024 });

/** Nothing of a file outside the allowed folders in a message: no content, no size. */
function assertRevealsNothing(t: import('ava').ExecutionContext, message: string): void {
  t.false(message.includes(SECRET), message);
  t.notRegex(message, /root:|:0:0:|PATH=|HOME=/, message);
  t.false(message.includes(String(SECRET_SIZE)), message);
  t.notRegex(message, /\b\d+ bytes\b/, message);
}

async function refused(t: import('ava').ExecutionContext, p: Promise<unknown>): Promise<ModelError> {
  const err = (await t.throwsAsync(p, { instanceOf: ModelError })) as ModelError;
  t.is(err.code, 'MODEL_INVALID');
  t.true(err.permanent, 'a refused model fails the run at once');
  return err;
}

// ───────────────────────────── local folders ─────────────────────────────

test('with no DEEPFEAT_MODEL_DIRS every local path is refused, and nothing is read', async (t) => {
  const read = local({ dirs: [] });
  for (const p of ['/etc/passwd', '/proc/self/environ', path.join(allowed, 'm', 'model.json'), 'relative/model.json']) {
    const err = await refused(t, read(p));
    t.regex(
      err.message,
      /local model paths are not allowed on this worker .*upload the model to s3:\/\/ or have the operator add its folder to DEEPFEAT_MODEL_DIRS/,
    );
    assertRevealsNothing(t, err.message);
  }
});

test('a file inside an allowed folder is read, also through a symlink that stays inside', async (t) => {
  const read = local();
  t.deepEqual(Buffer.from(await read(path.join(allowed, 'm', 'w.bin'))), layers.weights);
  t.deepEqual(Buffer.from(await read(path.join(allowed, 'link-in.bin'))), layers.weights);
  // The operator may list the folder by a symlinked name; the user may use either name.
  const viaLink = local({ dirs: [path.join(root, 'allowed-link')] });
  t.deepEqual(Buffer.from(await viaLink(path.join(allowed, 'm', 'w.bin'))), layers.weights);
  t.deepEqual(Buffer.from(await viaLink(path.join(root, 'allowed-link', 'm', 'w.bin'))), layers.weights);
});

test('host files, ../ escapes and symlinks out of the allowed folder are refused alike, existing or not', async (t) => {
  const read = local();
  const outsidePaths = [
    '/etc/passwd',
    '/etc/shadow',
    '/proc/self/environ',
    secretFile,
    path.join(allowed, '..', 'outside', 'secret.txt'),
    path.join(allowed, 'm', '..', '..', '..', '..', 'etc', 'passwd'),
    path.join(allowed, 'link-out.txt'),
    path.join(allowed, 'dir-out', 'secret.txt'),
    path.join(allowed, 'dangling'),
    // and files that do not exist, outside or behind a symlink out
    '/etc/no-such-file',
    path.join(outside, 'no-such-file'),
    path.join(allowed, 'dir-out', 'no-such-file'),
    path.join(root, 'no-such-folder', 'model.json'),
  ];
  const words = new Set<string>();
  for (const p of outsidePaths) {
    const err = await refused(t, read(p));
    t.regex(
      err.message,
      /is not in a folder this worker allows \(DEEPFEAT_MODEL_DIRS\) or does not exist: upload the model to s3:\/\//,
    );
    assertRevealsNothing(t, err.message);
    words.add(err.message.replace(/^model file "[^"]*"/, 'model file …'));
  }
  t.is(words.size, 1, `one message for every outside path: ${[...words].join(' | ')}`);
  t.true(
    isInside('/a/b/c', '/a/b') &&
      !isInside('/a/b', '/a/b') &&
      !isInside('/a/bc', '/a/b') &&
      isInside('/a/b/..c', '/a/b'),
  );
});

test('inside an allowed folder: a missing file says so; folders, FIFOs and odd paths are refused without hanging', async (t) => {
  const read = local();
  const missing = await refused(t, read(path.join(allowed, 'm', 'nope.json')));
  t.regex(missing.message, /model file ".*nope\.json" does not exist: check the path/);
  const dir = await refused(t, read(path.join(allowed, 'm')));
  t.regex(dir.message, /is not a regular file/);
  const fifo = await refused(t, read(path.join(allowed, 'fifo')));
  t.regex(fifo.message, /is not a regular file/);
  const relative = await refused(t, read('m/model.json'));
  t.regex(relative.message, /is not an absolute path/);
  const control = await refused(t, read(`${allowed}/m/\u001b[2Jmodel.json`));
  t.regex(control.message, /is not an absolute path/);
  t.false(control.message.includes('\u001b'), 'control characters are escaped in the message');
  const long = await refused(t, read(`${allowed}/${'a'.repeat(5000)}`));
  t.true(long.message.length < 600, `message of ${long.message.length} characters quotes a capped path`);
  for (const url of ['http://example.com/model.json', 'file:///etc/passwd', 'gs://b/model.json']) {
    const err = await refused(t, read(url));
    t.regex(err.message, /is neither an s3:\/\/ URL nor a local path/);
  }
});

test('a file over the size limit is refused from its size, before its content is read', async (t) => {
  const big = path.join(allowed, 'm', 'big.bin');
  await writeFile(big, Buffer.alloc(5000, 7));
  const err = await refused(t, local({ max: 4999 })(big));
  t.regex(err.message, /is larger than 4999 bytes, the most a worker reads for it: .*DEEPFEAT_MAX_MODEL_BYTES/);
  // The caller's bound, when smaller, wins; the worker's limit can never be raised by it.
  await refused(t, local()(big, 100));
  await refused(t, local({ max: 100 })(big, 10_000));
  t.is((await local({ max: 5000 })(big)).length, 5000);
});

test('kernel files that report size 0 are still read only up to the limit', async (t) => {
  // /proc files stat as 0 bytes and have content: the read itself must stop at the limit.
  const read = local({ dirs: ['/proc/self'], max: 16 });
  const err = await refused(t, read('/proc/self/environ'));
  t.regex(err.message, /is larger than 16 bytes/);
  t.notRegex(err.message, /=/, 'no environment in the message');
  const whole = await local({ dirs: ['/proc/self'], max: 1 << 20 })('/proc/self/cmdline');
  t.true(whole.length > 0 && whole.length < 1 << 20);
});

// ───────────────────────────── s3:// ─────────────────────────────

async function s3Reader(max = 1024 * 1024): Promise<ReadModelFile> {
  if (!s3) {
    s3 = await getS3({ buckets: [bucket] });
    client = makeS3Client(s3.endpoint);
  }
  return createModelSource({ s3: client, modelDirs: [], maxModelBytes: max });
}

test.serial(
  's3:// models: read from a real S3 server, bounded, missing and malformed URLs are permanent model errors',
  async (t) => {
    const read = await s3Reader(2000);
    await client!.send(new PutObjectCommand({ Bucket: bucket, Key: 'team/m/model.json', Body: layers.json }));
    await client!.send(new PutObjectCommand({ Bucket: bucket, Key: 'team/m/big.bin', Body: Buffer.alloc(2001) }));
    t.is(Buffer.from(await read(`s3://${bucket}/team/m/model.json`)).toString(), layers.json);

    const missing = await refused(t, read(`s3://${bucket}/team/m/nope.json`));
    t.regex(missing.message, /model file "s3:\/\/.*nope\.json" does not exist: check the URL/);
    const big = await refused(t, read(`s3://${bucket}/team/m/big.bin`));
    t.regex(big.message, /is larger than 2000 bytes/);
    t.notRegex(big.message, /2001/, 'the object size is not shown');
    const small = await refused(t, read(`s3://${bucket}/team/m/model.json`, 10));
    t.regex(small.message, /is larger than 10 bytes/);

    for (const url of [
      's3://',
      's3:///model.json',
      `s3://${bucket}`,
      `s3://${bucket}/`,
      `s3://${bucket}/team/m/`,
      's3://Bad_Bucket/model.json',
      's3://a..b/model.json',
      `s3://${bucket}/${'k'.repeat(1025)}`,
      `s3://${bucket}/team/\u0007model.json`,
    ]) {
      const err = await refused(t, read(url));
      t.regex(err.message, /does not name an S3 object: expected s3:\/\/bucket\/path\/model\.json/, url);
      t.true(err.message.length < 600, `message of ${err.message.length} characters`);
    }
    t.deepEqual(parseModelS3Url(`s3://${bucket}/a/b/model.json`), { bucket, key: 'a/b/model.json' });
  },
);

// ───────────────────────────── the TF.js artifact reader ─────────────────────────────

/** A reader over in-memory files that records what was asked for, and with which bound. */
function memoryReader(files: Record<string, Uint8Array | string>): {
  read: EngineDeps['readObject'];
  calls: Array<[string, number | undefined]>;
} {
  const calls: Array<[string, number | undefined]> = [];
  return {
    calls,
    read: async (url, maxBytes) => {
      calls.push([url, maxBytes]);
      const f = files[url];
      if (f === undefined) throw new Error(`NoSuchKey: ${url}`);
      return typeof f === 'string' ? Buffer.from(f) : f;
    },
  };
}

test('weight paths that climb out, are absolute or name another store are refused before any weight is read', async (t) => {
  for (const bad of [
    '../w.bin',
    `${'../'.repeat(10)}etc/shadow`,
    'sub/../../w.bin',
    '/etc/shadow',
    's3://other-bucket/w.bin',
    'file:///etc/passwd',
    'C:\\weights\\w.bin',
    'a//w.bin',
    'sub/',
    '',
    'w\u0000.bin',
  ]) {
    for (const modelUrl of ['s3://models/team/m/model.json', '/srv/models/m/model.json']) {
      const { read, calls } = memoryReader({ [modelUrl]: withWeightPaths(layers, [bad]) });
      const err = await refused(t, readTfjsArtifacts(modelUrl, read));
      t.regex(err.message, /weight path .* must name a file in the folder of model\.json or below it/, bad);
      t.deepEqual(
        calls.map((c) => c[0]),
        [modelUrl],
        'only model.json was read',
      );
    }
  }
  // A path that is not a string at all.
  const { read } = memoryReader({ 's3://m/x/model.json': withWeightPaths(layers, [{ evil: true }]) });
  await refused(t, readTfjsArtifacts('s3://m/x/model.json', read));
  // Sub-folders and './' stay allowed: they are below model.json.
  const ok = memoryReader({
    's3://m/x/model.json': withWeightPaths(layers, ['./shards/w.bin']),
    's3://m/x/shards/w.bin': layers.weights,
  });
  const artifacts = await readTfjsArtifacts('s3://m/x/model.json', ok.read);
  t.is(artifacts.weightData && (artifacts.weightData as ArrayBuffer).byteLength, layers.weights.length);
});

test('model.json and weights are read with bounds: 64 MiB for model.json, the rest of the model budget for each weight file', async (t) => {
  const { read, calls } = memoryReader({ 's3://m/x/model.json': layers.json, 's3://m/x/w.bin': layers.weights });
  await readTfjsArtifacts('s3://m/x/model.json', read, 1_000_000);
  t.deepEqual(calls, [
    ['s3://m/x/model.json', 1_000_000],
    ['s3://m/x/w.bin', 1_000_000],
  ]);
  const big = memoryReader({ 's3://m/x/model.json': layers.json, 's3://m/x/w.bin': layers.weights });
  await readTfjsArtifacts('s3://m/x/model.json', big.read, 2 ** 40);
  t.is(big.calls[0]![1], MAX_MODEL_JSON_BYTES);
  // A reader that ignores the bound does not get past it.
  const ignoring = memoryReader({ 's3://m/x/model.json': layers.json, 's3://m/x/w.bin': layers.weights });
  t.true(layers.json.length > 700 && layers.weights.length <= 700);
  const err = await refused(t, readTfjsArtifacts('s3://m/x/model.json', ignoring.read, 700));
  t.regex(
    err.message,
    /^model\.json at "s3:\/\/m\/x\/model\.json" is larger than 700 bytes, the most a worker reads for it/,
  );
});

test('a manifest declaring enormous weights or thousands of files is refused before any weight file is read', async (t) => {
  const json = JSON.parse(layers.json) as {
    weightsManifest: Array<{ paths: string[]; weights: Array<{ shape: number[] }> }>;
  };
  json.weightsManifest[0]!.weights[0]!.shape = [1e9, 1e9, 1e9, 1e9];
  const huge = memoryReader({ 's3://m/x/model.json': JSON.stringify(json) });
  const err = await refused(t, readTfjsArtifacts('s3://m/x/model.json', huge.read, 1 << 30));
  t.regex(err.message, /its weights need more than 1073741824 bytes, the most a worker loads for one model/);
  t.is(huge.calls.length, 1);

  json.weightsManifest[0]!.weights[0]!.shape = [-1, 3];
  await refused(
    t,
    readTfjsArtifacts('s3://m/x/model.json', memoryReader({ 's3://m/x/model.json': JSON.stringify(json) }).read),
  );

  const many = JSON.parse(layers.json) as { weightsManifest: Array<{ paths: string[] }> };
  many.weightsManifest[0]!.paths = Array.from({ length: MAX_WEIGHT_FILES + 1 }, (_, i) => `w${i}.bin`);
  const m = memoryReader({ 's3://m/x/model.json': JSON.stringify(many) });
  const tooMany = await refused(t, readTfjsArtifacts('s3://m/x/model.json', m.read));
  t.regex(
    tooMany.message,
    new RegExp(`names more than ${MAX_WEIGHT_FILES} weight files: re-export the model with larger shards`),
  );
  t.is(m.calls.length, 1);
});

test('messages hold neither the text nor the size of what was read', async (t) => {
  // Not JSON, but starting like it: V8's parser message would quote the text around the error.
  const notJson = memoryReader({ 's3://m/x/model.json': `{"modelTopology": ${SECRET}` });
  const parse = await refused(t, readTfjsArtifacts('s3://m/x/model.json', notJson.read));
  t.regex(
    parse.message,
    /^"s3:\/\/m\/x\/model\.json" is not valid JSON; point the spec at a TensorFlow\.js model\.json$/,
  );
  t.is(parse.cause, undefined, 'no parser error kept as the cause either');
  // Weights of another size than the manifest says.
  const short = memoryReader({ 's3://m/x/model.json': layers.json, 's3://m/x/w.bin': Buffer.alloc(SECRET_SIZE) });
  const mismatch = await refused(t, readTfjsArtifacts('s3://m/x/model.json', short.read));
  t.regex(mismatch.message, /weight files do not match the manifest: re-export the model/);
  assertRevealsNothing(t, parse.message + mismatch.message);
});

// ───────────────────────────── engines ─────────────────────────────

test('an unknown, overlong or control-character node is a permanent MODEL_INVALID error with a capped quote', async (t) => {
  const deps: EngineDeps = { engine: 'tfjs', backend: 'wasm', readObject: local() };
  const model = path.join(allowed, 'm', 'model.json');
  const unknown = await refused(t, loadEngine({ kind: 'tfjs', model, node: 'no_such_layer' }, deps));
  t.regex(unknown.message, /layer "no_such_layer" not found/);
  const long = await refused(t, loadEngine({ kind: 'tfjs', model, node: 'x'.repeat(100_000) }, deps));
  t.regex(long.message, new RegExp(`is not a node name \\(at most ${MAX_NODE_CHARS} characters`));
  t.true(long.message.length < 600, `message of ${long.message.length} characters`);
  const control = await refused(t, loadEngine({ kind: 'builtin', id: 'mobilenet_v2_mid', node: 'a\u001b[31mb' }, deps));
  t.false(control.message.includes('\u001b'));
  const longModel = await refused(
    t,
    loadEngine({ kind: 'tfjs', model: `/${'m'.repeat(100_000)}`, node: 'conv' }, deps),
  );
  t.true(longModel.message.length < 600, `message of ${longModel.message.length} characters`);
});

test('a model inside an allowed folder loads through the model source and gives features', async (t) => {
  const e = await loadEngine(
    { kind: 'tfjs', model: path.join(allowed, 'm', 'model.json'), node: 'conv' },
    { engine: 'tfjs', backend: 'wasm', readObject: local() },
  );
  try {
    t.deepEqual(e.input, { width: 16, height: 16 });
    t.is(e.dim, 6);
    const rows = await e.embed([Uint8Array.from({ length: 16 * 16 * 3 }, (_, i) => (i * 37) % 256)]);
    t.is(rows.length, 6);
    t.true(rows.some((v) => v > 0));
  } finally {
    e.dispose();
  }
});

test.serial(
  'through the engine thread: reads keep their bound; /etc/passwd is a permanent MODEL_INVALID, nothing of it shown',
  async (t) => {
    const calls: Array<[string, number | undefined]> = [];
    const read = local();
    const recording: EngineDeps['readObject'] = (url, maxBytes) => {
      calls.push([url, maxBytes]);
      return read(url, maxBytes);
    };
    const err = await t.throwsAsync(
      loadEngineInThread(
        { kind: 'tfjs', model: '/etc/passwd', node: 'x' },
        { readObject: recording, maxModelBytes: 1 << 20 },
      ),
      { instanceOf: ModelError },
    );
    t.true((err as DeepfeatError).permanent);
    t.regex(err!.message, /is not in a folder this worker allows \(DEEPFEAT_MODEL_DIRS\) or does not exist/);
    assertRevealsNothing(t, err!.message);
    t.deepEqual(calls, [['/etc/passwd', 1 << 20]], 'the bound crosses the thread boundary with the read');

    calls.length = 0;
    const model = path.join(allowed, 'm', 'model.json');
    const e = await loadEngineInThread(
      { kind: 'tfjs', model, node: 'gap' },
      { readObject: recording, engine: 'tfjs', backend: 'wasm' },
    );
    try {
      t.is(e.dim, 6);
    } finally {
      e.dispose();
    }
    t.deepEqual(calls, [
      [model, MAX_MODEL_JSON_BYTES],
      [path.join(allowed, 'm', 'w.bin'), 1024 ** 3],
    ]);
  },
);

test.serial('the ONNX cache file name comes from the model content, never from its path or node names', async (t) => {
  const cacheDir = path.join(root, 'cache', 'onnx');
  // Node names that would climb out of the cache folder if a name were ever used as a file name.
  const hostile = tinyGraphModel('../../../escaped/');
  for (const dir of ['g1', 'g2']) {
    await mkdir(path.join(allowed, dir), { recursive: true });
    await writeFile(path.join(allowed, dir, 'model.json'), hostile.json);
    await writeFile(path.join(allowed, dir, 'w.bin'), hostile.weights);
  }
  const deps: EngineDeps = { engine: 'onnx', threads: 1, cacheDir, readObject: local() };
  for (const dir of ['g1', 'g2']) {
    const e = await loadEngine(
      { kind: 'tfjs', model: path.join(allowed, dir, '..', dir, 'model.json'), node: '../../../escaped/relu' },
      deps,
    );
    t.regex(e.backend, /^onnxruntime/);
    t.is(e.dim, 4);
    e.dispose();
  }
  const files = await readdir(cacheDir);
  t.is(files.length, 1, `one cached conversion for the same content under two names: ${files.join(', ')}`);
  t.regex(files[0]!, /^onnx-[0-9a-f]{32}\.onnx$/);
  t.deepEqual((await readdir(path.join(root, 'cache'))).sort(), ['onnx']);
  t.deepEqual(
    (await readdir(root)).filter((f) => f.includes('escaped')),
    [],
  );
});

test('a model.json declaring a huge input size is refused before any image-sized buffer is made', async (t) => {
  // A graph model whose Placeholder says 100000×100000: the warm-up alone would need 30 GB.
  for (const side of [100_000, 4096, 4]) {
    const files = tinyGraphModel();
    const json = files.json.replace('{"size":"16"},{"size":"16"}', `{"size":"${side}"},{"size":"${side}"}`);
    t.not(json, files.json);
    const { read } = memoryReader({ 's3://m/g/model.json': json, 's3://m/g/w.bin': files.weights });
    for (const engine of ['onnx', 'tfjs'] as const) {
      const err = await refused(
        t,
        loadEngine(
          { kind: 'tfjs', model: 's3://m/g/model.json', node: 'relu' },
          { engine, backend: 'wasm', threads: 1, readObject: read },
        ),
      );
      t.regex(err.message, new RegExp(`takes ${side}×${side} input; input sides from 8 to 2048 are supported`), engine);
    }
  }
});
