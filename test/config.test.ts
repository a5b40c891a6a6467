import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { ENV_DOC, loadConfig, requireRedisUrl } from '../shared/config.js';
import { ConfigError } from '../shared/errors.js';

test('defaults from an empty env', (t) => {
  const c = loadConfig({});
  t.deepEqual(c, {
    redisUrl: undefined,
    queuePrefix: 'deepfeat',
    bucket: 'deepfeat',
    s3: {
      endpoint: undefined,
      region: 'us-east-1',
      accessKeyId: undefined,
      secretAccessKey: undefined,
      forcePathStyle: false,
      maxAttempts: 5,
      timeoutSeconds: 30,
      fastGet: true,
    },
    logLevel: 'info',
    jobAttempts: 3,
    jobLockMs: 15_000,
    featureCache: 'on',
    extractor: {
      shardSize: 256,
      batchSize: 0,
      fetchConcurrency: 8,
      maxImageBytes: 50 * 1024 * 1024,
      maxImagePixels: 100_000_000,
      tfjsBackend: 'auto',
      engine: 'auto',
      engineThreads: 0,
      engineTimeoutSeconds: 600,
      onnxProvider: 'auto',
      cacheDir: path.join(os.tmpdir(), 'deepfeat'),
      modelDirs: [],
      maxModelBytes: 1024 * 1024 * 1024,
      imageFormats: ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif'],
      decodeTimeoutSeconds: 20,
      decodeMemoryMiB: 1024,
      decodeThreads: 0,
      jpegDecoder: 'auto',
      prefetchBatches: 1,
    },
    trainer: { fitTimeoutSeconds: 3600, memoryMiB: 0 },
    maxManifestBytes: 256 * 1024 * 1024,
  });
});

test('DEEPFEAT_MODEL_DIRS: absolute folders separated by colons; a relative one is reported', (t) => {
  t.deepEqual(loadConfig({ DEEPFEAT_MODEL_DIRS: '/srv/models: /opt/m ::' }).extractor.modelDirs, [
    '/srv/models',
    '/opt/m',
  ]);
  const err = t.throws(() => loadConfig({ DEEPFEAT_MODEL_DIRS: '/srv/models:models' }), { instanceOf: ConfigError });
  t.regex(err.message, /DEEPFEAT_MODEL_DIRS=.*: "models" is not an absolute path/);
});

test('DEEPFEAT_IMAGE_FORMATS: a subset of the known formats; SVG only when asked for', (t) => {
  t.false(loadConfig({}).extractor.imageFormats.includes('svg'));
  t.deepEqual(loadConfig({ DEEPFEAT_IMAGE_FORMATS: 'PNG, jpeg,svg,png' }).extractor.imageFormats, [
    'png',
    'jpeg',
    'svg',
  ]);
  const err = t.throws(() => loadConfig({ DEEPFEAT_IMAGE_FORMATS: 'png,bmp' }), { instanceOf: ConfigError });
  t.regex(err.message, /DEEPFEAT_IMAGE_FORMATS="png,bmp": expected a comma-separated list of jpeg, png/);
  t.throws(() => loadConfig({ DEEPFEAT_IMAGE_FORMATS: ' , ' }), { instanceOf: ConfigError });
});

test('the ONNX cache goes under XDG_CACHE_HOME, else ~/.cache; an empty DEEPFEAT_CACHE_DIR turns it off', (t) => {
  t.is(loadConfig({ HOME: '/home/u' }).extractor.cacheDir, '/home/u/.cache/deepfeat');
  t.is(loadConfig({ HOME: '/home/u', XDG_CACHE_HOME: '/xdg' }).extractor.cacheDir, '/xdg/deepfeat');
  t.is(loadConfig({ HOME: '/home/u', DEEPFEAT_CACHE_DIR: '' }).extractor.cacheDir, '');
});

test('empty and whitespace-only values count as unset', (t) => {
  const c = loadConfig({ REDIS_URL: '', DEEPFEAT_SHARD_SIZE: '   ', S3_REGION: ' ', S3_ACCESS_KEY_ID: '' });
  t.is(c.redisUrl, undefined);
  t.is(c.extractor.shardSize, 256);
  t.is(c.s3.region, 'us-east-1');
  t.is(c.s3.accessKeyId, undefined);
});

test('values are read, trimmed and typed', (t) => {
  const c = loadConfig({
    REDIS_URL: ' redis://:pw@redis:6380/1 ',
    DEEPFEAT_QUEUE_PREFIX: 'test_1',
    DEEPFEAT_BUCKET: 'my.bucket-1',
    S3_ENDPOINT: 'http://127.0.0.1:9000',
    S3_REGION: 'eu-west-1',
    S3_ACCESS_KEY_ID: 'AK',
    S3_SECRET_ACCESS_KEY: 'SK',
    S3_MAX_ATTEMPTS: '2',
    S3_TIMEOUT: '7',
    DEEPFEAT_JOB_ATTEMPTS: '7',
    DEEPFEAT_JOB_LOCK_MS: ' 4000 ',
    DEEPFEAT_SHARD_SIZE: '64',
    DEEPFEAT_BATCH_SIZE: '32',
    DEEPFEAT_FETCH_CONCURRENCY: '4',
    DEEPFEAT_MAX_IMAGE_BYTES: '1000',
    DEEPFEAT_MAX_IMAGE_PIXELS: '2000',
    DEEPFEAT_TFJS_BACKEND: 'wasm',
    DEEPFEAT_ENGINE: 'onnx',
    DEEPFEAT_ENGINE_THREADS: '1',
    DEEPFEAT_ENGINE_TIMEOUT: '90',
    DEEPFEAT_ONNX_PROVIDER: 'cpu',
    DEEPFEAT_CACHE_DIR: '/var/cache/df',
    DEEPFEAT_MODEL_DIRS: '/srv/models',
    DEEPFEAT_MAX_MODEL_BYTES: '5000',
    DEEPFEAT_IMAGE_FORMATS: 'png,jpeg',
    DEEPFEAT_DECODE_TIMEOUT: '3',
    DEEPFEAT_DECODE_MEMORY: '512',
    DEEPFEAT_DECODE_THREADS: '3',
    DEEPFEAT_JPEG_DECODER: ' sharp ',
    DEEPFEAT_PREFETCH_BATCHES: '2',
    DEEPFEAT_FIT_TIMEOUT: '60',
    DEEPFEAT_TRAINER_MEMORY: '2048',
    DEEPFEAT_MAX_MANIFEST_BYTES: '4096',
    S3_FAST_GET: 'false',
    LOG_LEVEL: 'debug',
  });
  t.is(c.redisUrl, 'redis://:pw@redis:6380/1');
  t.is(c.queuePrefix, 'test_1');
  t.is(c.bucket, 'my.bucket-1');
  t.deepEqual(c.s3, {
    endpoint: 'http://127.0.0.1:9000',
    region: 'eu-west-1',
    accessKeyId: 'AK',
    secretAccessKey: 'SK',
    forcePathStyle: true,
    maxAttempts: 2,
    timeoutSeconds: 7,
    fastGet: false,
  });
  t.is(c.jobAttempts, 7);
  t.is(c.jobLockMs, 4000);
  t.deepEqual(c.extractor, {
    shardSize: 64,
    batchSize: 32,
    fetchConcurrency: 4,
    maxImageBytes: 1000,
    maxImagePixels: 2000,
    tfjsBackend: 'wasm',
    engine: 'onnx',
    engineThreads: 1,
    engineTimeoutSeconds: 90,
    onnxProvider: 'cpu',
    cacheDir: '/var/cache/df',
    modelDirs: ['/srv/models'],
    maxModelBytes: 5000,
    imageFormats: ['png', 'jpeg'],
    decodeTimeoutSeconds: 3,
    decodeMemoryMiB: 512,
    decodeThreads: 3,
    jpegDecoder: 'sharp',
    prefetchBatches: 2,
  });
  t.deepEqual(c.trainer, { fitTimeoutSeconds: 60, memoryMiB: 2048 });
  t.is(c.maxManifestBytes, 4096);
  t.is(c.logLevel, 'debug');
});

test('all problems are reported at once in one ConfigError', (t) => {
  const err = t.throws(
    () => loadConfig({ REDIS_URL: 'http://localhost:6379', DEEPFEAT_SHARD_SIZE: '0', S3_ACCESS_KEY_ID: 'AKIA' }),
    {
      instanceOf: ConfigError,
    },
  );
  t.is(err!.code, 'CONFIG_INVALID');
  t.is(err!.problems.length, 3);
  t.true(err!.problems.some((p) => p.startsWith('REDIS_URL=') && p.includes('redis://')));
  t.true(err!.problems.some((p) => p.startsWith('DEEPFEAT_SHARD_SIZE="0"') && p.includes('1 to 100000')));
  t.true(err!.problems.some((p) => p.includes('S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY must be set together')));
  for (const p of err!.problems) t.true(err!.message.includes(`  - ${p}`), p);
  t.regex(err!.message, /^invalid configuration:/);
});

test('each kind of bad value is a problem', (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ REDIS_URL: 'not a url' }, /^REDIS_URL=/],
    [{ S3_ENDPOINT: 'redis://x' }, /^S3_ENDPOINT=.*http:\/\/ or https:\/\//],
    [{ S3_SECRET_ACCESS_KEY: 'SK' }, /must be set together/],
    [{ DEEPFEAT_BUCKET: 'Bad_Bucket' }, /^DEEPFEAT_BUCKET=/],
    [{ DEEPFEAT_QUEUE_PREFIX: 'a:b' }, /^DEEPFEAT_QUEUE_PREFIX=/],
    [{ S3_FORCE_PATH_STYLE: 'maybe' }, /^S3_FORCE_PATH_STYLE=.*true or false/],
    [{ S3_MAX_ATTEMPTS: '21' }, /^S3_MAX_ATTEMPTS=/],
    [{ S3_TIMEOUT: '0' }, /^S3_TIMEOUT=/],
    [{ DEEPFEAT_BATCH_SIZE: '1.5' }, /^DEEPFEAT_BATCH_SIZE=/],
    [{ DEEPFEAT_FETCH_CONCURRENCY: 'eight' }, /^DEEPFEAT_FETCH_CONCURRENCY=/],
    [{ DEEPFEAT_TFJS_BACKEND: 'gpu' }, /^DEEPFEAT_TFJS_BACKEND=.*auto, tensorflow, wasm, cpu/],
    [{ DEEPFEAT_ENGINE: 'tensorrt' }, /^DEEPFEAT_ENGINE=.*auto, onnx, tfjs/],
    [{ DEEPFEAT_ENGINE_THREADS: '-1' }, /^DEEPFEAT_ENGINE_THREADS=/],
    [{ DEEPFEAT_ENGINE_TIMEOUT: '0' }, /^DEEPFEAT_ENGINE_TIMEOUT=/],
    [{ DEEPFEAT_ONNX_PROVIDER: 'rocm' }, /^DEEPFEAT_ONNX_PROVIDER=.*auto, cuda, cpu/],
    [{ DEEPFEAT_JPEG_DECODER: 'libjpeg' }, /^DEEPFEAT_JPEG_DECODER=.*auto, sharp/],
    [{ LOG_LEVEL: 'loud' }, /^LOG_LEVEL=/],
  ];
  for (const [env, re] of cases) {
    const err = t.throws(() => loadConfig(env), { instanceOf: ConfigError }, JSON.stringify(env));
    t.is(err!.problems.length, 1, JSON.stringify(env));
    t.regex(err!.problems[0]!, re);
  }
});

test('the returned config is deeply frozen', (t) => {
  const c = loadConfig({});
  t.true(Object.isFrozen(c));
  t.true(Object.isFrozen(c.s3));
  t.true(Object.isFrozen(c.extractor));
  t.throws(
    () => {
      (c as { bucket: string }).bucket = 'x';
    },
    { instanceOf: TypeError },
  );
  t.throws(
    () => {
      (c.s3 as { region: string }).region = 'x';
    },
    { instanceOf: TypeError },
  );
  t.throws(
    () => {
      (c.extractor as { shardSize: number }).shardSize = 1;
    },
    { instanceOf: TypeError },
  );
  t.is(c.s3.region, 'us-east-1');
  t.is(c.extractor.shardSize, 256);
});

test('S3_FORCE_PATH_STYLE defaults to true only when S3_ENDPOINT is set, and can be overridden', (t) => {
  t.false(loadConfig({}).s3.forcePathStyle);
  t.true(loadConfig({ S3_ENDPOINT: 'http://minio:9000' }).s3.forcePathStyle);
  t.false(loadConfig({ S3_ENDPOINT: 'http://minio:9000', S3_FORCE_PATH_STYLE: 'false' }).s3.forcePathStyle);
  t.false(loadConfig({ S3_ENDPOINT: 'https://minio', S3_FORCE_PATH_STYLE: 'No' }).s3.forcePathStyle);
  t.true(loadConfig({ S3_FORCE_PATH_STYLE: 'true' }).s3.forcePathStyle);
  t.true(loadConfig({ S3_FORCE_PATH_STYLE: '1' }).s3.forcePathStyle);
});

test('requireRedisUrl returns the URL or throws a ConfigError naming REDIS_URL', (t) => {
  t.is(requireRedisUrl(loadConfig({ REDIS_URL: 'rediss://h:6380' })), 'rediss://h:6380');
  const err = t.throws(() => requireRedisUrl(loadConfig({})), { instanceOf: ConfigError });
  t.is(err!.problems.length, 1);
  t.regex(err!.message, /REDIS_URL is not set/);
  t.regex(err!.message, /redis:\/\//);
  // A command with another way out names it instead of the demo.
  const run = t.throws(() => requireRedisUrl(loadConfig({}), 'add --local'), { instanceOf: ConfigError });
  t.regex(run!.message, /REDIS_URL=redis:\/\/127\.0\.0\.1:6379; or add --local$/);
});

test('every variable in ENV_DOC (except free-text ones) is validated by loadConfig', (t) => {
  // A typo between ENV_DOC and loadConfig would make garbage pass silently.
  const free = new Set(['S3_REGION', 'S3_ACCESS_KEY_ID', 'S3_SECRET_ACCESS_KEY', 'DEEPFEAT_CACHE_DIR']);
  for (const name of Object.keys(ENV_DOC)) {
    if (free.has(name)) continue;
    const err = t.throws(() => loadConfig({ [name]: '!!bad!!' }), { instanceOf: ConfigError }, name);
    t.true(
      err!.problems.some((p) => p.startsWith(`${name}=`)),
      name,
    );
  }
});
