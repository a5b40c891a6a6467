/**
 * Queue names and job payloads, declared once. The code that adds a job and the handler that
 * runs it both use `JobMap`, and every handler validates its payload at run time (Redis gives
 * back plain JSON) with the schemas here.
 */
import { Queue, Worker, FlowProducer, type Processor, type WorkerOptions, type ConnectionOptions } from 'bullmq';
import { z } from 'zod';
import { BadRequestError } from './errors.js';
import type { FeatureSpec } from './features.js';
import { SPLITS } from './dataset.js';

export const QUEUE_NAMES = ['plan', 'extract', 'train', 'evaluate'] as const;
export type QueueName = (typeof QUEUE_NAMES)[number];

const featureSpecSchema: z.ZodType<FeatureSpec> = z.union([
  z.object({ kind: z.literal('raw-pixels'), size: z.number().int().min(1).max(1024) }),
  z.object({ kind: z.literal('builtin'), id: z.literal('mobilenet_v2_mid'), node: z.string().min(1).optional() }),
  z.object({
    kind: z.literal('tfjs'),
    model: z.string().min(1),
    node: z.string().min(1),
    inputSize: z.number().int().min(8).max(4096).optional(),
    inputRange: z.enum(['0,1', '-1,1', '0,255']).optional(),
  }),
]);

/** What a user asks for; stored in the run and in the plan job. */
export const runRequestSchema = z.object({
  /** s3://bucket/prefix/ (folders per class) or s3://bucket/manifest.{csv,jsonl} */
  source: z.string().startsWith('s3://'),
  /** Model name to publish under (models/<name>/...). */
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/),
  features: featureSpecSchema,
  seed: z.number().int(),
  /** Fractions for the seeded stratified split when the dataset has no split folders/column. */
  split: z.object({ train: z.number().positive(), val: z.number().min(0), test: z.number().positive() }),
  shardSize: z.number().int().min(1),
  /** L2 strengths to choose from on the validation split. */
  lambdas: z.array(z.number().positive()).min(1).optional(),
});
export type RunRequest = z.infer<typeof runRequestSchema>;

const itemSchema = z.object({ key: z.string(), label: z.string(), split: z.enum(SPLITS as [string, ...string[]]) });

const schemas = {
  plan: z.object({ runId: z.string(), request: runRequestSchema }),
  extract: z.object({
    runId: z.string(),
    shard: z.number().int().min(0),
    sourceBucket: z.string(),
    features: featureSpecSchema,
    items: z.array(itemSchema),
  }),
  train: z.object({
    runId: z.string(),
    shards: z.number().int().min(1),
    classes: z.array(z.string()).min(2),
    lambdas: z.array(z.number()).optional(),
  }),
  evaluate: z.object({ runId: z.string(), shards: z.number().int().min(1), name: z.string() }),
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
