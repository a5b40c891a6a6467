import test from 'ava';
import { QUEUE_NAMES, connectionFromUrl, parseJobData, type QueueName } from '../shared/queues.js';
import { BadRequestError } from '../shared/errors.js';
import { defaultName } from '../cli/client.js';

const request = {
  source: 's3://b/data/',
  name: 'cats-dogs',
  features: { kind: 'builtin', id: 'mobilenet_v2_mid' },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 256,
};

const valid: Record<QueueName, unknown> = {
  plan: { runId: 'r20240101000000-abcdef', request },
  extract: {
    runId: 'r1',
    shard: 0,
    sourceBucket: 'b',
    features: { kind: 'tfjs', model: 's3://b/m/model.json', node: 'pool', inputSize: 224, inputRange: '-1,1' },
    manifest: { key: 'runs/r1/manifest.jsonl', start: 0, end: 60, count: 1 },
  },
  train: { runId: 'r1', shards: 3, classes: ['cat', 'dog'], lambdas: [0.1, 1] },
  evaluate: { runId: 'r1', shards: 3, name: 'cats-dogs', source: 's3://b/data/', features: request.features },
  predict: {
    runId: 'r1',
    shard: 2,
    sourceBucket: 'b',
    model: { name: 'pets', version: 'r20240101000000-abcdef', key: 'models/pets/r20240101000000-abcdef/model.json' },
    top: 3,
    manifest: { key: 'runs/r1/manifest.jsonl', start: 0, end: 20, count: 1 },
  },
  collect: { runId: 'r1', shards: 3, images: 700, top: 3 },
};

/** One malformed payload per queue and the path its error must name. */
const invalid: Record<QueueName, [unknown, string]> = {
  plan: [{ runId: 'r1', request: { ...request, split: { ...request.split, test: 0 } } }, 'request.split.test'],
  extract: [
    { ...(valid.extract as object), manifest: { key: 'runs/r1/manifest.jsonl', start: 0, end: 60, count: 0 } },
    'manifest.count',
  ],
  train: [{ runId: 'r1', shards: 3, classes: ['cat'] }, 'classes'],
  evaluate: [{ runId: 'r1', shards: 0, name: 'x' }, 'shards'],
  predict: [{ ...(valid.predict as object), top: 0 }, 'top'],
  collect: [{ runId: 'r1', shards: 3, images: 0, top: 3 }, 'images'],
};

test('every queue has a valid and an invalid fixture', (t) => {
  t.deepEqual(Object.keys(valid).sort(), [...QUEUE_NAMES].sort());
  t.deepEqual(Object.keys(invalid).sort(), [...QUEUE_NAMES].sort());
});

for (const name of QUEUE_NAMES) {
  test(`parseJobData(${name}) accepts a valid payload`, (t) => {
    t.deepEqual(parseJobData(name, valid[name]), valid[name]);
  });

  test(`parseJobData(${name}) rejects a malformed payload naming the bad path`, (t) => {
    const [data, path] = invalid[name];
    const err = t.throws(() => parseJobData(name, data), { instanceOf: BadRequestError });
    t.is(err!.code, 'BAD_REQUEST');
    t.true(err!.permanent);
    t.true(err!.message.startsWith(`invalid ${name} job payload: `), err!.message);
    t.true(err!.message.includes(`${path}: `), err!.message);
  });
}

test('parseJobData: a non-object payload is rejected at the root', (t) => {
  const err = t.throws(() => parseJobData('train', 'nope'), { instanceOf: BadRequestError });
  t.regex(err!.message, /\(root\): /);
});

test('parseJobData: plan request checks source, name and feature spec', (t) => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ ...request, source: 'http://b/data/' }, 'request.source'],
    [{ ...request, name: '../evil' }, 'request.name'],
    [{ ...request, features: { kind: 'raw-pixels', size: 0 } }, 'request.features'],
    [{ ...request, seed: 1.5 }, 'request.seed'],
    [{ ...request, lambdas: [] }, 'request.lambdas'],
  ];
  for (const [req, path] of cases) {
    const err = t.throws(
      () => parseJobData('plan', { runId: 'r1', request: req }),
      { instanceOf: BadRequestError },
      path,
    );
    t.true(err!.message.includes(path), err!.message);
  }
});

test('connectionFromUrl: host, port, password, db and maxRetriesPerRequest null', (t) => {
  t.deepEqual(connectionFromUrl('redis://:s3cr%40t@redis.example:6380/2'), {
    host: 'redis.example',
    port: 6380,
    password: 's3cr@t',
    db: 2,
    maxRetriesPerRequest: null,
  });
});

test('connectionFromUrl: defaults, username and TLS', (t) => {
  t.deepEqual(connectionFromUrl('redis://127.0.0.1'), { host: '127.0.0.1', port: 6379, maxRetriesPerRequest: null });
  t.deepEqual(connectionFromUrl('redis://localhost:6379/'), {
    host: 'localhost',
    port: 6379,
    maxRetriesPerRequest: null,
  });
  t.deepEqual(connectionFromUrl('rediss://user:pw@h:6390/0'), {
    host: 'h',
    port: 6390,
    username: 'user',
    password: 'pw',
    db: 0,
    tls: {},
    maxRetriesPerRequest: null,
  });
});

test('defaultName: last folder of a prefix, manifest name without extension', (t) => {
  t.is(defaultName('s3://b/data/cats-dogs/'), 'cats-dogs');
  t.is(defaultName('s3://b/data/cats-dogs'), 'cats-dogs');
  t.is(defaultName('s3://b/x/labels.csv'), 'labels');
  t.is(defaultName('s3://b/x/labels.JSONL'), 'labels');
  t.is(defaultName('s3://b/x/v1.2_set'), 'v1.2_set');
  t.is(defaultName('s3://my-bucket/'), 'my-bucket');
  t.is(defaultName('s3://my-bucket'), 'my-bucket');
});

test('defaultName: odd characters made safe for a model name', (t) => {
  const nameRe = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
  const cases: Array<[string, string]> = [
    ['s3://b/data/my cats & dogs/', 'my-cats-dogs'],
    ['s3://b/data/..hidden/', 'hidden'],
    ['s3://b/data/-x/', 'x'],
    ['s3://b/data/été/', 't-'],
    ['s3://b/data/@@@/', 'model'],
    [`s3://b/${'a'.repeat(150)}/`, 'a'.repeat(100)],
  ];
  for (const [src, expected] of cases) {
    const name = defaultName(src);
    t.is(name, expected, src);
    t.regex(name, nameRe, src);
  }
});

test('defaultName: a malformed URL is a BadRequestError', (t) => {
  t.throws(() => defaultName('b/data/'), { instanceOf: BadRequestError });
});

test('parseJobData(extract): a manifest range must be non-empty, and the old payload with items is refused', (t) => {
  const base = valid.extract as Record<string, unknown>;
  const m = { key: 'runs/r1/manifest.jsonl', start: 60, end: 60, count: 1 };
  const empty = t.throws(() => parseJobData('extract', { ...base, manifest: m }), { instanceOf: BadRequestError });
  t.true(empty!.message.includes('manifest.end: '), empty!.message);
  const extra = t.throws(() => parseJobData('extract', { ...base, manifest: { ...m, end: 61, items: [] } }), {
    instanceOf: BadRequestError,
  });
  t.true(extra!.message.includes('manifest: '), extra!.message);
  const { manifest: _, ...old } = base;
  const itemsOnly = { ...old, items: [{ key: 'data/cat/1.jpg', label: 'cat', split: 'train' }] };
  const err = t.throws(() => parseJobData('extract', itemsOnly), { instanceOf: BadRequestError });
  t.true(err!.message.includes('manifest: '), err!.message);
});
