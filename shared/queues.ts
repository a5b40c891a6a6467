/**
 * Queue names and job payloads, declared once. The code that adds a job and the handler that
 * runs it both use `JobMap`, and every handler validates its payload at run time (Redis gives
 * back plain JSON) with the schemas here.
 */
import { Queue, Worker, FlowProducer, type Processor, type WorkerOptions, type ConnectionOptions } from 'bullmq';
import { z } from 'zod';
import { BadRequestError } from './errors.js';
import {
  BUILTIN_MODELS,
  CHANNEL_STAT_LIMIT,
  INPUT_LAYOUTS,
  INPUT_RANGES,
  RAW_PIXELS_SIZE,
  type FeatureSpec,
} from './features.js';
import { SPLITS } from './dataset.js';
import { MODEL_NAME_PATTERN, MODEL_NAME_RULE, MODEL_VERSION_RULE, modelKey } from './model-format.js';
import { RUN_ID_PATTERN } from './run-state.js';
import { FEATURE_TRANSFORMS } from './softmax-model.js';

/**
 * Training runs use plan → extract → train → evaluate; prediction runs plan → predict → collect.
 * Which worker kind serves each queue is WORKER_KIND (shared/worker-kit.ts).
 */
export const QUEUE_NAMES = ['plan', 'extract', 'train', 'evaluate', 'predict', 'collect'] as const;
export type QueueName = (typeof QUEUE_NAMES)[number];

/** Bounds of a run request's numbers: the schema below and the CLI's flag checks use these. */
export const RUN_LIMITS = {
  /** The split's PRNG (mulberry32) takes 32 bits: a larger seed would alias a smaller one (2^32 splits as 0). */
  seed: { min: 0, max: 2 ** 32 - 1 },
  /** The same bounds as DEEPFEAT_SHARD_SIZE (shared/config.ts). */
  shardSize: { min: 1, max: 100_000 },
  /** Input side of a user's model: what the engines take (inputSide in services/extractor/engines). */
  modelInputSize: { min: 8, max: 2048 },
  /**
   * Labels per image a prediction run reports. The model's class count is the real bound (the
   * client and the planner check it); this one keeps a payload from asking for absurd rows.
   */
  top: { min: 1, max: 1000 },
  /**
   * A run's priority: a run of higher priority has its shards served first; runs of equal
   * priority share the extractors shard by shard (services/planner/fair-share.ts). Absent = default.
   */
  priority: { min: 0, max: 9, default: 5 },
} as const;

const channelStat = z.number().finite().min(-CHANNEL_STAT_LIMIT).max(CHANNEL_STAT_LIMIT);
const channelScale = z.number().finite().positive().max(CHANNEL_STAT_LIMIT);

/**
 * `multiScale` where it cannot be made (engines/multi-scale.ts): false or absent, refused at once
 * with the reason and the fix rather than when the first extract job loads the model.
 */
const noMultiScale = (why: string) =>
  z.literal(false, { errorMap: () => ({ message: `${why}: drop multiScale (or set it to false)` }) }).optional();

// Discriminated by kind, so a bad field is reported by its own path and message (e.g. the input
// ranges allowed), not as the union's bare "Invalid input".
const featureSpecSchema: z.ZodType<FeatureSpec> = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('raw-pixels'),
    size: z.number().int().min(RAW_PIXELS_SIZE.min).max(RAW_PIXELS_SIZE.max),
    multiScale: noMultiScale('raw pixels have one scale'),
  }),
  z.object({
    kind: z.literal('builtin'),
    id: z.enum(BUILTIN_MODELS),
    node: z.string().min(1).optional(),
    flip: z.boolean().optional(),
    multiScale: z.boolean().optional(),
  }),
  z.object({
    kind: z.literal('tfjs'),
    model: z.string().min(1),
    node: z.string().min(1),
    inputSize: z.number().int().min(RUN_LIMITS.modelInputSize.min).max(RUN_LIMITS.modelInputSize.max).optional(),
    inputRange: z.enum(INPUT_RANGES).optional(),
    flip: z.boolean().optional(),
    multiScale: z.boolean().optional(),
  }),
  z.object({
    kind: z.literal('onnx'),
    model: z.string().min(1),
    node: z.string().min(1),
    inputSize: z.number().int().min(RUN_LIMITS.modelInputSize.min).max(RUN_LIMITS.modelInputSize.max).optional(),
    inputLayout: z.enum(INPUT_LAYOUTS).optional(),
    inputRange: z.enum(INPUT_RANGES).optional(),
    mean: z.tuple([channelStat, channelStat, channelStat]).optional(),
    std: z.tuple([channelScale, channelScale, channelScale]).optional(),
    flip: z.boolean().optional(),
    multiScale: noMultiScale('an ONNX model runs at the input size it was written for'),
  }),
]);

/** What a user asks for when training; stored in the run and in the plan job. */
export const runRequestSchema = z.object({
  /**
   * Absent on every training request written before prediction runs existed, and on those
   * written since: a request without `kind` is a training run (see isPredictRequest).
   */
  kind: z.literal('train').optional(),
  /** s3://bucket/prefix/ (folders per class) or s3://bucket/manifest.{csv,jsonl} */
  source: z.string().startsWith('s3://'),
  /** Model name to publish under (models/<name>/...). */
  name: z.string().regex(MODEL_NAME_PATTERN, MODEL_NAME_RULE),
  features: featureSpecSchema,
  seed: z.number().int().min(RUN_LIMITS.seed.min).max(RUN_LIMITS.seed.max),
  /** Fractions for the seeded stratified split when the dataset has no split folders/column. */
  split: z.object({
    train: z.number().positive().finite(),
    val: z.number().min(0).finite(),
    test: z.number().positive().finite(),
  }),
  shardSize: z.number().int().min(RUN_LIMITS.shardSize.min).max(RUN_LIMITS.shardSize.max),
  /** L2 strengths to choose from on the validation split. */
  lambdas: z.array(z.number().positive()).min(1).optional(),
  /** RUN_LIMITS.priority: higher is served first; absent = the default. */
  priority: z.number().int().min(RUN_LIMITS.priority.min).max(RUN_LIMITS.priority.max).optional(),
});
export type RunRequest = z.infer<typeof runRequestSchema>;

/** A model name and version as a prediction run carries it; `key` is where its model.json is. */
const modelRefSchema = z
  .object({
    name: z.string().regex(MODEL_NAME_PATTERN, MODEL_NAME_RULE),
    version: z.string().regex(RUN_ID_PATTERN, MODEL_VERSION_RULE),
    key: z.string(),
  })
  .strict()
  // Only the published model of that name and version: a payload is not trusted to name another object.
  .refine((m) => m.key === modelKey(m.name, m.version), {
    message: 'must be models/<name>/<version>/model.json of the name and version given',
    path: ['key'],
  });

/**
 * A batch prediction: classify every image under a prefix (or listed in a manifest) with a
 * published model. Stored in the run and in the plan job like a training request; `kind`
 * tells them apart.
 */
export const predictRequestSchema = z.object({
  kind: z.literal('predict'),
  /** s3://bucket/prefix/ (every image under it, recursively) or s3://bucket/manifest.{csv,jsonl} */
  source: z.string().startsWith('s3://'),
  model: modelRefSchema,
  /** Labels per image, most probable first. */
  top: z.number().int().min(RUN_LIMITS.top.min).max(RUN_LIMITS.top.max),
  shardSize: z.number().int().min(RUN_LIMITS.shardSize.min).max(RUN_LIMITS.shardSize.max),
  /** As a training run's. */
  priority: z.number().int().min(RUN_LIMITS.priority.min).max(RUN_LIMITS.priority.max).optional(),
});
export type PredictRequest = z.infer<typeof predictRequestSchema>;

/** Either request, as a run stores it. */
export type AnyRequest = RunRequest | PredictRequest;

export function isPredictRequest(r: AnyRequest): r is PredictRequest {
  return r.kind === 'predict';
}

/**
 * A plan job's request, either kind. Dispatched on `kind` rather than a zod union, so a bad
 * field is reported by its own path and message (`request.top: …`), not as the union's bare
 * "Invalid input".
 */
const anyRequestSchema = z.unknown().transform((v, ctx): AnyRequest => {
  const predict = typeof v === 'object' && v !== null && (v as { kind?: unknown }).kind === 'predict';
  const r = (predict ? predictRequestSchema : runRequestSchema).safeParse(v);
  if (r.success) return r.data;
  for (const issue of r.error.issues) ctx.addIssue(issue);
  return z.NEVER;
});

/**
 * The longest line of a run's manifest.jsonl: the planner refuses an item whose line is longer,
 * and the extractor refuses a shard range over count × this before reading it (a payload is not
 * trusted). An S3 key is at most 1024 bytes; JSON escapes can make it up to 6× that.
 */
export const MAX_MANIFEST_LINE_BYTES = 8 * 1024;

/**
 * The version of an image the planner saw in the source's listing: its ETag (without quotes) and
 * size, the feature cache's key for it (services/extractor/feature-cache/). Optional: manifests
 * written before the cache have none, and a manifest source gives none (the planner never copies
 * an etag column a user wrote; the extractor asks the store with a HEAD instead).
 */
const objectVersionFields = {
  etag: z.string().min(1).max(1024).optional(),
  size: z.number().int().min(0).optional(),
};

/** One manifest.jsonl line: the planner writes it, the extractor reads its shard's lines back. */
export const itemSchema = z.object({
  key: z.string(),
  label: z.string(),
  split: z.enum(SPLITS),
  ...objectVersionFields,
});

/**
 * One manifest.jsonl line of a prediction run: the key, and the label when the source manifest
 * gave one (prediction needs none; a training manifest can be used as it is).
 */
export const predictItemSchema = z
  .object({ key: z.string(), label: z.string().optional(), ...objectVersionFields })
  .strict();
export type PredictItem = z.infer<typeof predictItemSchema>;

/** A shard's lines of the run's manifest.jsonl: bytes [start, end), `count` lines. */
const manifestRangeSchema = z
  .object({
    key: z.string().min(1),
    start: z.number().int().min(0),
    end: z.number().int().min(1),
    count: z.number().int().min(1).max(RUN_LIMITS.shardSize.max),
  })
  .strict()
  .refine((m) => m.end > m.start, { message: 'end must be after start', path: ['end'] });

const schemas = {
  plan: z.object({ runId: z.string(), request: anyRequestSchema }),
  extract: z.object({
    runId: z.string(),
    shard: z.number().int().min(0),
    sourceBucket: z.string(),
    features: featureSpecSchema,
    /**
     * The shard's items: bytes [start, end) of the run's manifest.jsonl (`count` lines), not the
     * items themselves — at a million images their keys would be most of the run's Redis memory.
     */
    manifest: manifestRangeSchema,
  }),
  train: z.object({
    runId: z.string(),
    shards: z.number().int().min(1),
    classes: z.array(z.string()).min(2),
    lambdas: z.array(z.number()).optional(),
    /** Train + val images in the plan: the most rows the fit can have (the trainer's memory check). */
    fitImages: z.number().int().min(0).optional(),
    /** Applied to the features before standardisation (shared/softmax-model.ts); absent = none. */
    featureTransform: z.enum(FEATURE_TRANSFORMS).optional(),
  }),
  evaluate: z.object({
    runId: z.string(),
    shards: z.number().int().min(1),
    name: z.string(),
    /** The run request's source and feature spec, recorded in the published model as they travelled with the run. */
    source: z.string(),
    features: featureSpecSchema,
  }),
  /** One shard of a prediction run: classify its images with the model, write predictions/<shard>.jsonl. */
  predict: z.object({
    runId: z.string(),
    shard: z.number().int().min(0),
    sourceBucket: z.string(),
    model: modelRefSchema,
    top: z.number().int().min(RUN_LIMITS.top.min).max(RUN_LIMITS.top.max),
    /** As for extract: the shard's byte range of the run's manifest.jsonl, not its keys. */
    manifest: manifestRangeSchema,
  }),
  /** The end of a prediction run: join the shards' predictions into predictions.csv. */
  collect: z.object({
    runId: z.string(),
    shards: z.number().int().min(1),
    /** Images in the plan: every one must be in the shards' files exactly once. */
    images: z.number().int().min(1),
    top: z.number().int().min(RUN_LIMITS.top.min).max(RUN_LIMITS.top.max),
  }),
};

/** Queue name → { data, result }. */
export interface JobMap {
  plan: { data: z.infer<typeof schemas.plan>; result: { images: number; shards: number; classes: string[] } };
  extract: {
    data: z.infer<typeof schemas.extract>;
    result: { shard: number; rows: number; failed: number; engine: string; backend: string };
  };
  train: {
    data: z.infer<typeof schemas.train>;
    result: { lambda: number; trainImages: number; valImages: number; dim: number };
  };
  evaluate: { data: z.infer<typeof schemas.evaluate>; result: { model: string; accuracy: number } };
  predict: {
    data: z.infer<typeof schemas.predict>;
    result: { shard: number; rows: number; failed: number; engine: string; backend: string };
  };
  collect: {
    data: z.infer<typeof schemas.collect>;
    result: { predictions: string; images: number; predicted: number; failed: number };
  };
}
export type JobData<N extends QueueName> = JobMap[N]['data'];
export type JobResult<N extends QueueName> = JobMap[N]['result'];

/** Validates a payload read from Redis; a malformed one can never succeed, so it is permanent. */
export function parseJobData<N extends QueueName>(name: N, data: unknown): JobData<N> {
  const r = schemas[name].safeParse(data);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new BadRequestError(`invalid ${name} job payload: ${issues}`);
  }
  return r.data as JobData<N>;
}

export interface QueueContext {
  readonly connection: ConnectionOptions;
  readonly prefix: string;
}

export function makeQueue<N extends QueueName>(ctx: QueueContext, name: N): Queue<JobData<N>, JobResult<N>, string> {
  return new Queue<JobData<N>, JobResult<N>, string>(name, { connection: ctx.connection, prefix: ctx.prefix });
}

export function makeFlowProducer(ctx: QueueContext): FlowProducer {
  return new FlowProducer({ connection: ctx.connection, prefix: ctx.prefix });
}

export function makeWorker<N extends QueueName>(
  ctx: QueueContext,
  name: N,
  processor: Processor<JobData<N>, JobResult<N>, string>,
  opts: Omit<WorkerOptions, 'connection' | 'prefix'> = {},
): Worker<JobData<N>, JobResult<N>, string> {
  return new Worker<JobData<N>, JobResult<N>, string>(name, processor, {
    ...opts,
    connection: ctx.connection,
    prefix: ctx.prefix,
  });
}

/** Connection options from a redis:// URL; workers need maxRetriesPerRequest: null (BullMQ blocks). */
export function connectionFromUrl(url: string): ConnectionOptions {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
    ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    maxRetriesPerRequest: null,
  };
}
