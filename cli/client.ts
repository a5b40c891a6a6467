/**
 * The producer/reader side: enqueue a run, read its status, list workers, download a model.
 * Used by the CLI and by tests; never runs pipeline work itself.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { S3Client } from '@aws-sdk/client-s3';
import { requireRedisUrl, type Config } from '../shared/config.js';
import { BadRequestError, NotFoundError } from '../shared/errors.js';
import { DEFAULT_FEATURES, type FeatureSpec } from '../shared/features.js';
import {
  connectionFromUrl,
  makeQueue,
  QUEUE_NAMES,
  runRequestSchema,
  type QueueContext,
  type QueueName,
  type RunRequest,
} from '../shared/queues.js';
import { RUN_ID_PATTERN, RunStore, newRunId, type RunStatus } from '../shared/run-state.js';
import { createS3Client, getObjectJson, parseS3Url, s3Url } from '../shared/s3.js';
import { latestKey, modelKey, type LatestPointer, type ModelArtifact } from '../shared/model-format.js';
import { WORKER_KIND, jobOptions, type WorkerKind } from '../shared/worker-kit.js';

export interface Client {
  readonly config: Config;
  readonly s3: S3Client;
  /** Absent when REDIS_URL is not set: only S3-backed reads (finished runs, downloads) work. */
  readonly redis: Redis | undefined;
  readonly runs: RunStore | undefined;
  readonly queues: QueueContext | undefined;
  close(): Promise<void>;
}

export function createClient(config: Config): Client {
  const redis = config.redisUrl
    ? new Redis(config.redisUrl, { maxRetriesPerRequest: 3, lazyConnect: false })
    : undefined;
  const s3 = createS3Client(config.s3);
  return {
    config,
    s3,
    redis,
    runs: redis ? new RunStore(redis, config.queuePrefix) : undefined,
    queues: config.redisUrl
      ? { connection: connectionFromUrl(config.redisUrl), prefix: config.queuePrefix }
      : undefined,
    async close() {
      s3.destroy();
      await redis?.quit().catch(() => undefined);
    },
  };
}

export interface RunOptions {
  source: string;
  name?: string;
  features?: FeatureSpec;
  seed?: number;
  split?: RunRequest['split'];
  shardSize?: number;
  lambdas?: number[];
}

/** Model name from the source when none is given: the last path segment, made safe. */
export function defaultName(source: string): string {
  const { bucket, key } = parseS3Url(source);
  const last =
    key
      .replace(/\.(csv|jsonl|ndjson)$/i, '')
      .split('/')
      .filter(Boolean)
      .pop() ?? bucket;
  const safe = last.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '');
  return safe === '' ? 'model' : safe.slice(0, 100);
}

/** Records the run and adds its planning job; returns at once with the run id. */
export async function enqueueRun(client: Client, opts: RunOptions): Promise<string> {
  requireRedisUrl(client.config);
  parseS3Url(opts.source); // fail fast on a malformed URL, before anything is recorded
  const candidate = {
    source: opts.source,
    name: opts.name ?? defaultName(opts.source),
    features: opts.features ?? DEFAULT_FEATURES,
    seed: opts.seed ?? 42,
    split: opts.split ?? { train: 0.7, val: 0.1, test: 0.2 },
    shardSize: opts.shardSize ?? client.config.extractor.shardSize,
    ...(opts.lambdas ? { lambdas: opts.lambdas } : {}),
  };
  const parsed = runRequestSchema.safeParse(candidate);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new BadRequestError(`invalid run request: ${issues}`);
  }
  const runId = newRunId();
  await client.runs!.create(runId, parsed.data);
  const plan = makeQueue(client.queues!, 'plan');
  try {
    await plan.add('plan', { runId, request: parsed.data }, jobOptions(client.config, `${runId}-plan`));
  } finally {
    await plan.close();
  }
  return runId;
}

/** Live status from Redis, else the final run.json in the bucket; NotFoundError names the fix. */
export async function getStatus(client: Client, runId: string): Promise<RunStatus> {
  if (!RUN_ID_PATTERN.test(runId)) {
    throw new NotFoundError(
      `unknown run id ${JSON.stringify(runId)}: run ids look like r20261128093000-1a2b3c (printed by \`deepfeat run\`)`,
    );
  }
  const live = await client.runs?.get(runId);
  if (live) return live;
  try {
    const stored = await getObjectJson<RunStatus>(client.s3, client.config.bucket, `runs/${runId}/run.json`);
    if (stored && typeof stored === 'object' && 'stage' in stored && 'failures' in stored) return stored;
  } catch (err) {
    if (!(err instanceof NotFoundError)) throw err;
  }
  throw new NotFoundError(
    `unknown run id ${runId}: no such run in Redis (${client.config.queuePrefix}) or in s3://${client.config.bucket}/runs/`,
  );
}

export const isTerminal = (s: RunStatus) => s.stage === 'published' || s.stage === 'failed';

/** Polls until the run is published or failed. */
export async function waitForRun(
  client: Client,
  runId: string,
  onUpdate?: (s: RunStatus) => void,
  intervalMs = 500,
): Promise<RunStatus> {
  for (;;) {
    const s = await getStatus(client, runId);
    onUpdate?.(s);
    if (isTerminal(s)) return s;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export interface WorkerInfo {
  /** planner, extractor, trainer or evaluator. */
  kind: WorkerKind;
  queue: QueueName;
  /** kind@host:pid */
  name: string;
  addr: string;
  age: number;
}

/** Live workers of every queue (from Redis CLIENT LIST via BullMQ). */
export async function listWorkers(client: Client): Promise<WorkerInfo[]> {
  requireRedisUrl(client.config);
  const out: WorkerInfo[] = [];
  for (const q of QUEUE_NAMES) {
    const queue = makeQueue(client.queues!, q);
    try {
      for (const w of await queue.getWorkers()) {
        // BullMQ names worker connections <prefix>:<queue>:w:<worker name>.
        const raw = String(w.rawname ?? w.name ?? '');
        const name = raw.includes(':w:') ? raw.slice(raw.indexOf(':w:') + 3) : raw;
        out.push({ kind: WORKER_KIND[q], queue: q, name, addr: String(w.addr ?? ''), age: Number(w.age ?? 0) });
      }
    } finally {
      await queue.close();
    }
  }
  return out;
}

export async function getQueueCounts(client: Client): Promise<Record<QueueName, Record<string, number>>> {
  const out = {} as Record<QueueName, Record<string, number>>;
  for (const q of QUEUE_NAMES) {
    const queue = makeQueue(client.queues!, q);
    try {
      out[q] = await queue.getJobCounts('waiting', 'active', 'delayed', 'waiting-children', 'completed', 'failed');
    } finally {
      await queue.close();
    }
  }
  return out;
}

/**
 * Resolves RUN | NAME | NAME@VERSION to a published model and reads it.
 */
export async function fetchModel(client: Client, ref: string): Promise<{ artifact: ModelArtifact; uri: string }> {
  const bucket = client.config.bucket;
  let key: string;
  if (RUN_ID_PATTERN.test(ref)) {
    const status = await getStatus(client, ref);
    if (!status.model) {
      throw new NotFoundError(
        `run ${ref} has not published a model (stage: ${status.stage}${status.error ? `, ${status.error.message}` : ''})`,
      );
    }
    key = modelKey(status.model.name, status.model.version);
  } else {
    const [name, version] = ref.split('@');
    if (!name || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) {
      throw new BadRequestError(`not a run id or model name: ${JSON.stringify(ref)}; use RUN, NAME or NAME@VERSION`);
    }
    if (version) key = modelKey(name, version);
    else {
      try {
        key = (await getObjectJson<LatestPointer>(client.s3, bucket, latestKey(name))).key;
      } catch (err) {
        if (err instanceof NotFoundError)
          throw new NotFoundError(
            `no model named ${name} in s3://${bucket}/models/: check the name (deepfeat run --name sets it)`,
          );
        throw err;
      }
    }
  }
  try {
    return { artifact: await getObjectJson<ModelArtifact>(client.s3, bucket, key), uri: s3Url(bucket, key) };
  } catch (err) {
    if (err instanceof NotFoundError) throw new NotFoundError(`model ${ref} not found at ${s3Url(bucket, key)}`);
    throw err;
  }
}

/** Writes model.json into dir; returns the file path. */
export async function downloadModel(
  client: Client,
  ref: string,
  dir: string,
): Promise<{ path: string; artifact: ModelArtifact }> {
  const { artifact } = await fetchModel(client, ref);
  await mkdir(dir, { recursive: true });
  const path = join(dir, 'model.json');
  await writeFile(path, `${JSON.stringify(artifact, null, 2)}\n`);
  return { path, artifact };
}
