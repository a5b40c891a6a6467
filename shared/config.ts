/**
 * The one reader of process.env. `loadConfig(env)` validates every variable, reports every
 * problem at once (ConfigError), and returns a frozen, typed object. Tests pass plain objects.
 */
import os from 'node:os';
import path from 'node:path';
import { ConfigError } from './errors.js';

/**
 * The values of each choice setting, declared once: the parser, the help text (ENV_DOC) and the
 * engines' option types (services/extractor/engines/engine.ts) all derive from these.
 */
/** Which engine runs graph backbones (DEEPFEAT_ENGINE). */
export const ENGINE_CHOICES = ['auto', 'onnx', 'tfjs'] as const;
export type EngineChoice = (typeof ENGINE_CHOICES)[number];
/** Which TensorFlow.js backend (DEEPFEAT_TFJS_BACKEND); 'auto' prefers native TensorFlow, then WebAssembly, then plain JS. */
export const TFJS_BACKENDS = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
export type TfjsBackendChoice = (typeof TFJS_BACKENDS)[number];
/** ONNX Runtime execution provider (DEEPFEAT_ONNX_PROVIDER); 'auto' tries CUDA, then CPU. */
export const ONNX_PROVIDERS = ['auto', 'cuda', 'cpu'] as const;
export type OnnxProviderChoice = (typeof ONNX_PROVIDERS)[number];
/** Whether extractors look vectors up in, and add them to, the feature cache (DEEPFEAT_FEATURE_CACHE). */
export const FEATURE_CACHE_CHOICES = ['on', 'off'] as const;
/** Who decodes JPEGs: libjpeg-turbo directly where it gives sharp's pixels (services/extractor/jpeg-native.ts), or sharp always. */
export const JPEG_DECODERS = ['auto', 'sharp'] as const;
export type JpegDecoder = (typeof JPEG_DECODERS)[number];
export type FeatureCacheChoice = (typeof FEATURE_CACHE_CHOICES)[number];
/** pino's levels (LOG_LEVEL). */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export interface S3Config {
  /** Custom endpoint (MinIO, the embedded server); undefined means AWS S3. */
  readonly endpoint: string | undefined;
  readonly region: string;
  readonly accessKeyId: string | undefined;
  readonly secretAccessKey: string | undefined;
  readonly forcePathStyle: boolean;
  /** Attempts per S3 request (AWS SDK's standard retry with backoff); transient faults only. */
  readonly maxAttempts: number;
  /**
   * Seconds an S3 connection may take to open, or stay silent while a request or response is
   * under way, before the request fails as a transient fault (and is retried).
   */
  readonly timeoutSeconds: number;
  /**
   * Whole-object GETs after the SDK's first of a bucket go as one signed HTTP request instead of
   * through the SDK (shared/s3-fast-get.ts); S3_FAST_GET=false sends every GET through the SDK.
   * Unset (as in clients built outside loadConfig) means on.
   */
  readonly fastGet?: boolean;
}

export interface Config {
  readonly redisUrl: string | undefined;
  /** Prefix of every BullMQ and run-state key in Redis; lets several deployments (and tests) share one Redis. */
  readonly queuePrefix: string;
  /** Bucket holding runs/ and models/. */
  readonly bucket: string;
  readonly s3: S3Config;
  readonly logLevel: string;
  /** Attempts per job before the run is marked failed (transient faults are retried with backoff). */
  readonly jobAttempts: number;
  /**
   * Milliseconds a worker's job lock lasts without renewal (renewed at half of it); the stalled-job
   * check runs every third of it. A worker cut off for longer loses its job to another worker.
   */
  readonly jobLockMs: number;
  /**
   * Largest manifest (.csv/.jsonl) the planner reads, in bytes; a larger one fails the run unread.
   * It is parsed a chunk at a time (the planner's event loop keeps renewing its job lock), so the
   * bound is the planner's memory: the 256 MiB default holds a million images with long keys.
   */
  readonly maxManifestBytes: number;
  /**
   * The feature cache (services/extractor/feature-cache/): 'on' looks every image's vector up
   * before extracting it and adds the new ones; 'off' neither looks up nor writes.
   */
  readonly featureCache: FeatureCacheChoice;
  readonly extractor: {
    readonly shardSize: number;
    /** Images per forward pass; 0 = the engine's preferred batch (FeatureEngine.preferredBatch). */
    readonly batchSize: number;
    readonly fetchConcurrency: number;
    readonly maxImageBytes: number;
    readonly maxImagePixels: number;
    readonly tfjsBackend: TfjsBackendChoice;
    /** Which engine runs graph backbones: ONNX Runtime (converted from TF.js), TF.js, or auto. */
    readonly engine: EngineChoice;
    /** Intra-op threads for ONNX Runtime's CPU provider; 0 = one per core. */
    readonly engineThreads: number;
    /** Seconds one forward pass may take before the engine thread is replaced and the job retried. */
    readonly engineTimeoutSeconds: number;
    readonly onnxProvider: OnnxProviderChoice;
    /** Where converted ONNX models are cached; '' disables the cache. */
    readonly cacheDir: string;
    /**
     * Local folders a run's `--model PATH` may read from (resolved, symlinks followed). Empty by
     * default: a run request is untrusted input, so workers read user models from s3:// only.
     */
    readonly modelDirs: readonly string[];
    /** Largest model file (one weight file, one .onnx) a worker reads, and the cap on all of a model's weight files together, in bytes. */
    readonly maxModelBytes: number;
    /** Image formats (sharp's names) the extractor decodes; anything else is recorded as a failure. */
    readonly imageFormats: readonly string[];
    /** Seconds one image's decode and resize may take before it is recorded as a failure. */
    readonly decodeTimeoutSeconds: number;
    /** Memory (MiB) each decoder process may use; an image needing more is recorded as a failure. */
    readonly decodeMemoryMiB: number;
    /** Decoder processes per extractor, each decoding one image at a time on one thread; 0 = one per core. */
    readonly decodeThreads: number;
    /** Who decodes JPEGs (DEEPFEAT_JPEG_DECODER): auto = the libjpeg-turbo addon where built and exact, else sharp. */
    readonly jpegDecoder: JpegDecoder;
    /** Batches fetched and decoded ahead of the one in the engine (memory: that many batches of pixels). */
    readonly prefetchBatches: number;
  };
  readonly trainer: {
    /** Seconds one fit (L2 selection and refit) may take before its threads are ended and the job retried. */
    readonly fitTimeoutSeconds: number;
    /**
     * Memory (MiB) a train job may plan to use; a run whose feature matrix and fit would need more
     * is refused before any shard is read. 0 = 80% of the host's (or the container's) memory.
     */
    readonly memoryMiB: number;
  };
}

/** Every variable deepfeat reads, with its meaning, for `--help` and the README. */
export const ENV_DOC: Readonly<Record<string, string>> = {
  REDIS_URL: 'Redis for queues and run state, e.g. redis://127.0.0.1:6379 (required by workers and `run`)',
  DEEPFEAT_QUEUE_PREFIX: 'prefix of all Redis keys (default deepfeat)',
  DEEPFEAT_BUCKET: 'artifacts bucket for runs/ and models/ (default deepfeat)',
  S3_ENDPOINT:
    'S3 API endpoint for MinIO or the embedded server; unset = AWS S3 (CLI: embedded server over .deepfeat/s3)',
  S3_REGION: 'S3 region (default us-east-1)',
  S3_ACCESS_KEY_ID: 'S3 access key (default: the AWS SDK credential chain)',
  S3_SECRET_ACCESS_KEY: 'S3 secret key (required when S3_ACCESS_KEY_ID is set)',
  S3_FORCE_PATH_STYLE: 'true|false; default true when S3_ENDPOINT is set',
  S3_MAX_ATTEMPTS: 'attempts per S3 request for transient faults (default 5)',
  S3_TIMEOUT:
    'seconds an S3 connection may take to open or stay silent mid-request before the request is retried (default 30)',
  S3_FAST_GET: 'true|false: whole-object GETs without the AWS SDK after its first of a bucket (default true)',
  DEEPFEAT_JOB_ATTEMPTS: 'attempts per pipeline job (default 3)',
  DEEPFEAT_JOB_LOCK_MS:
    "milliseconds a job's lock lasts unrenewed; a worker cut off longer loses the job to another (default 15000)",
  DEEPFEAT_SHARD_SIZE: 'images per extract job (default 256)',
  DEEPFEAT_MAX_MANIFEST_BYTES:
    'largest manifest .csv/.jsonl the planner reads (default 268435456 = 256 MiB, over a million images)',
  DEEPFEAT_FEATURE_CACHE: `${FEATURE_CACHE_CHOICES.join('|')}: reuse feature vectors already extracted for the same object version and feature spec (default on; off = no lookups, no writes)`,
  DEEPFEAT_BATCH_SIZE: "images per forward pass (default 0 = the engine's choice: 8 on CPU, 32 on GPU)",
  DEEPFEAT_FETCH_CONCURRENCY:
    'parallel S3 downloads per extractor (default 8; at least DEEPFEAT_DECODE_THREADS are in flight)',
  DEEPFEAT_DECODE_THREADS:
    'decoder processes per extractor, one image and one thread each (default 0 = one per core available to the process)',
  DEEPFEAT_JPEG_DECODER: `${JPEG_DECODERS.join('|')}: auto (default) decodes JPEGs with deepfeat's libjpeg-turbo addon where it is built and gives sharp's pixels (about half the CPU), sharp = always through sharp`,
  DEEPFEAT_PREFETCH_BATCHES:
    'batches fetched and decoded ahead of the one in the engine (default 1; 2-4 for a GPU fed from distant storage)',
  DEEPFEAT_MAX_IMAGE_BYTES: 'larger objects are recorded as failures, not read (default 52428800)',
  DEEPFEAT_MAX_IMAGE_PIXELS: 'decoded-size limit against decompression bombs (default 100000000)',
  DEEPFEAT_ENGINE: `${ENGINE_CHOICES.join('|')}: engine for graph backbones (default auto: ONNX Runtime, or TF.js where the graph does not convert or tfjs-node-gpu has a GPU that ONNX Runtime cannot use)`,
  DEEPFEAT_ENGINE_THREADS:
    'ONNX Runtime CPU threads per extractor process (default 0 = one per core; with N extractors on one host use cores/N)',
  DEEPFEAT_ENGINE_TIMEOUT:
    'seconds one batch may spend in the engine before its thread is restarted and the job retried (default 600)',
  DEEPFEAT_ONNX_PROVIDER: `${ONNX_PROVIDERS.join('|')} (default auto: CUDA where onnxruntime-node has its CUDA binaries, else CPU)`,
  DEEPFEAT_CACHE_DIR:
    'cache of backbones converted to ONNX (default $XDG_CACHE_HOME/deepfeat or ~/.cache/deepfeat; empty = no cache)',
  DEEPFEAT_MODEL_DIRS:
    "folders (':'-separated) a run's local --model path may be in; default none: user models come from s3:// only",
  DEEPFEAT_MAX_MODEL_BYTES:
    'largest model file a worker reads, and the most all weight files of one model may hold together (default 1073741824)',
  DEEPFEAT_IMAGE_FORMATS:
    'comma-separated image formats the extractor decodes (default jpeg,png,webp,gif,tiff,avif; svg and heif can be added)',
  DEEPFEAT_DECODE_TIMEOUT:
    'seconds one image may take to decode and resize before it is recorded as a failure (default 20)',
  DEEPFEAT_DECODE_MEMORY:
    'MiB of memory each image decoder process may use (its data limit); an image needing more is recorded as a failure (default 1024)',
  DEEPFEAT_FIT_TIMEOUT:
    'seconds one trainer fit may take before its threads are ended and the job retried (default 3600)',
  DEEPFEAT_TRAINER_MEMORY:
    "MiB a train job may use; a larger fit is refused before reading features (default 0 = 80% of the host's memory)",
  DEEPFEAT_TFJS_BACKEND: `${TFJS_BACKENDS.join('|')} (default auto: tfjs-node-gpu, tfjs-node, then wasm)`,
  LOG_LEVEL: `${LOG_LEVELS.join('|')}: pino level for workers (default info)`,
};

type Env = Readonly<Record<string, string | undefined>>;

/** Collects problems instead of throwing at the first, so a user fixes them all in one go. */
class Reader {
  readonly problems: string[] = [];
  constructor(private readonly env: Env) {}

  str(name: string, fallback: string): string;
  str(name: string): string | undefined;
  str(name: string, fallback?: string): string | undefined {
    const v = this.env[name]?.trim();
    return v === undefined || v === '' ? fallback : v;
  }

  int(name: string, fallback: number, min: number, max: number): number {
    const raw = this.str(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) {
      this.problems.push(`${name}=${JSON.stringify(raw)}: expected a whole number from ${min} to ${max}`);
      return fallback;
    }
    return n;
  }

  bool(name: string, fallback: boolean): boolean {
    const raw = this.str(name);
    if (raw === undefined) return fallback;
    if (/^(true|1|yes)$/i.test(raw)) return true;
    if (/^(false|0|no)$/i.test(raw)) return false;
    this.problems.push(`${name}=${JSON.stringify(raw)}: expected true or false`);
    return fallback;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const raw = this.str(name);
    if (raw === undefined) return fallback;
    if ((allowed as readonly string[]).includes(raw)) return raw as T;
    this.problems.push(`${name}=${JSON.stringify(raw)}: expected one of ${allowed.join(', ')}`);
    return fallback;
  }

  /** ':'-separated absolute folders (PATH style). */
  dirList(name: string): string[] {
    const raw = this.str(name);
    if (raw === undefined) return [];
    const dirs = raw
      .split(':')
      .map((d) => d.trim())
      .filter((d) => d !== '');
    for (const d of dirs) {
      if (!path.isAbsolute(d)) {
        this.problems.push(
          `${name}=${JSON.stringify(raw)}: ${JSON.stringify(d)} is not an absolute path; list absolute folders separated by ':'`,
        );
      }
    }
    return dirs.filter((d) => path.isAbsolute(d));
  }

  /** Comma-separated subset of `allowed`. */
  subsetOf<T extends string>(name: string, allowed: readonly T[], fallback: readonly T[]): T[] {
    const raw = this.str(name);
    if (raw === undefined) return [...fallback];
    const items = raw
      .split(',')
      .map((x) => x.trim().toLowerCase())
      .filter((x) => x !== '');
    const bad = items.filter((x) => !(allowed as readonly string[]).includes(x));
    if (bad.length > 0 || items.length === 0) {
      this.problems.push(`${name}=${JSON.stringify(raw)}: expected a comma-separated list of ${allowed.join(', ')}`);
      return [...fallback];
    }
    return [...new Set(items)] as T[];
  }

  url(name: string, protocols: readonly string[]): string | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    try {
      const u = new URL(raw);
      if (!protocols.includes(u.protocol)) throw new Error('protocol');
      return raw;
    } catch {
      this.problems.push(
        `${name}=${JSON.stringify(raw)}: expected a URL starting with ${protocols.map((p) => `${p}//`).join(' or ')}`,
      );
      return undefined;
    }
  }
}

/** Image formats sharp can be asked to decode (its `metadata().format` names). */
export const IMAGE_FORMATS = ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif', 'heif', 'svg'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];
/**
 * Decoded unless the operator says otherwise. SVG is off: it is a document, not a photograph,
 * and rendering it runs a vector renderer over attacker-controlled content (embedded images,
 * filters) whose time and memory the pixel limit does not bound. HEIF is off because sharp's
 * prebuilt libvips decodes only its AV1 flavour (AVIF, listed separately).
 */
export const DEFAULT_IMAGE_FORMATS: readonly ImageFormat[] = ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif'];

const BUCKET_NAME = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

export function loadConfig(env: Env = process.env): Config {
  const r = new Reader(env);
  const endpoint = r.url('S3_ENDPOINT', ['http:', 'https:']);
  const accessKeyId = r.str('S3_ACCESS_KEY_ID');
  const secretAccessKey = r.str('S3_SECRET_ACCESS_KEY');
  if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
    r.problems.push(
      'S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY must be set together (or neither, to use the AWS credential chain)',
    );
  }
  const bucket = r.str('DEEPFEAT_BUCKET', 'deepfeat');
  if (!BUCKET_NAME.test(bucket)) {
    r.problems.push(`DEEPFEAT_BUCKET=${JSON.stringify(bucket)}: not a valid bucket name (3-63 of a-z, 0-9, '.', '-')`);
  }
  const queuePrefix = r.str('DEEPFEAT_QUEUE_PREFIX', 'deepfeat');
  if (!/^[A-Za-z0-9_-]+$/.test(queuePrefix)) {
    r.problems.push(`DEEPFEAT_QUEUE_PREFIX=${JSON.stringify(queuePrefix)}: use letters, digits, '_' and '-' only`);
  }
  const config: Config = {
    redisUrl: r.url('REDIS_URL', ['redis:', 'rediss:']),
    queuePrefix,
    bucket,
    s3: {
      endpoint,
      region: r.str('S3_REGION', 'us-east-1'),
      accessKeyId,
      secretAccessKey,
      forcePathStyle: r.bool('S3_FORCE_PATH_STYLE', endpoint !== undefined),
      maxAttempts: r.int('S3_MAX_ATTEMPTS', 5, 1, 20),
      timeoutSeconds: r.int('S3_TIMEOUT', 30, 1, 3600),
      fastGet: r.bool('S3_FAST_GET', true),
    },
    logLevel: r.oneOf('LOG_LEVEL', LOG_LEVELS, 'info'),
    jobAttempts: r.int('DEEPFEAT_JOB_ATTEMPTS', 3, 1, 50),
    jobLockMs: r.int('DEEPFEAT_JOB_LOCK_MS', 15_000, 1000, 3_600_000),
    maxManifestBytes: r.int('DEEPFEAT_MAX_MANIFEST_BYTES', 256 * 1024 * 1024, 1, 1024 * 1024 * 1024),
    featureCache: r.oneOf('DEEPFEAT_FEATURE_CACHE', FEATURE_CACHE_CHOICES, 'on'),
    extractor: {
      shardSize: r.int('DEEPFEAT_SHARD_SIZE', 256, 1, 100_000),
      batchSize: r.int('DEEPFEAT_BATCH_SIZE', 0, 0, 1024),
      fetchConcurrency: r.int('DEEPFEAT_FETCH_CONCURRENCY', 8, 1, 256),
      maxImageBytes: r.int('DEEPFEAT_MAX_IMAGE_BYTES', 50 * 1024 * 1024, 1, 2 ** 31 - 1),
      maxImagePixels: r.int('DEEPFEAT_MAX_IMAGE_PIXELS', 100_000_000, 1, 2 ** 31 - 1),
      tfjsBackend: r.oneOf('DEEPFEAT_TFJS_BACKEND', TFJS_BACKENDS, 'auto'),
      engine: r.oneOf('DEEPFEAT_ENGINE', ENGINE_CHOICES, 'auto'),
      engineThreads: r.int('DEEPFEAT_ENGINE_THREADS', 0, 0, 256),
      engineTimeoutSeconds: r.int('DEEPFEAT_ENGINE_TIMEOUT', 600, 1, 86_400),
      onnxProvider: r.oneOf('DEEPFEAT_ONNX_PROVIDER', ONNX_PROVIDERS, 'auto'),
      cacheDir: env.DEEPFEAT_CACHE_DIR !== undefined ? env.DEEPFEAT_CACHE_DIR.trim() : defaultCacheDir(env),
      modelDirs: r.dirList('DEEPFEAT_MODEL_DIRS'),
      maxModelBytes: r.int('DEEPFEAT_MAX_MODEL_BYTES', 1024 * 1024 * 1024, 1, 2 ** 40),
      imageFormats: r.subsetOf('DEEPFEAT_IMAGE_FORMATS', IMAGE_FORMATS, DEFAULT_IMAGE_FORMATS),
      decodeTimeoutSeconds: r.int('DEEPFEAT_DECODE_TIMEOUT', 20, 1, 3600),
      decodeMemoryMiB: r.int('DEEPFEAT_DECODE_MEMORY', 1024, 256, 1024 * 1024),
      decodeThreads: r.int('DEEPFEAT_DECODE_THREADS', 0, 0, 1024),
      jpegDecoder: r.oneOf('DEEPFEAT_JPEG_DECODER', JPEG_DECODERS, 'auto'),
      prefetchBatches: r.int('DEEPFEAT_PREFETCH_BATCHES', 1, 1, 64),
    },
    trainer: {
      fitTimeoutSeconds: r.int('DEEPFEAT_FIT_TIMEOUT', 3600, 1, 7 * 86_400),
      memoryMiB: r.int('DEEPFEAT_TRAINER_MEMORY', 0, 0, 1024 * 1024 * 1024),
    },
  };
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return deepFreeze(config);
}

/** $XDG_CACHE_HOME/deepfeat, else ~/.cache/deepfeat, else a folder in the system temp dir. */
function defaultCacheDir(env: Env): string {
  const base = env.XDG_CACHE_HOME?.trim() || (env.HOME?.trim() ? path.join(env.HOME.trim(), '.cache') : os.tmpdir());
  return path.join(base, 'deepfeat');
}

/** Workers and `run` cannot do without Redis; say so with the fix (`orElse`: another way out, for this command). */
export function requireRedisUrl(config: Config, orElse?: string): string {
  if (config.redisUrl === undefined) {
    throw new ConfigError([
      'REDIS_URL is not set: point it at your Redis, e.g. REDIS_URL=redis://127.0.0.1:6379' +
        (orElse ? `; or ${orElse}` : ' (`npm run demo` starts a Redis of its own, and stops it when it ends)'),
    ]);
  }
  return config.redisUrl;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
