/**
 * The producer/reader side: enqueue a run, read its status, list workers, download a model.
 * Used by the CLI and by tests; never runs pipeline work itself.
 */
import { join } from 'node:path';
import { Redis } from 'ioredis';
import type { S3Client } from '@aws-sdk/client-s3';
import { requireRedisUrl, type Config } from '../shared/config.js';
import { BadRequestError, NotFoundError } from '../shared/errors.js';
import { isAbsolute } from 'node:path';
import { DEFAULT_FEATURES, type FeatureSpec } from '../shared/features.js';
import {
  connectionFromUrl,
  makeQueue,
  QUEUE_NAMES,
  runRequestSchema,
  type JobData,
  type QueueContext,
  type QueueName,
  type RunRequest,
  isPredictRequest,
} from '../shared/queues.js';
import {
  RUN_ID_PATTERN,
  RunStore,
  isFinalStage,
  newRunId,
  type ImageFailure,
  type RunStatus,
} from '../shared/run-state.js';
import { createS3Client, getObjectJson, getObjectText, parseS3Url, s3Url, splitS3Url } from '../shared/s3.js';
import { shardKey, type ShardRow } from '../shared/dataset.js';
import { predictionsShardKey } from '../shared/predictions.js';
import { readPublishedModel } from '../shared/published-model.js';
import { MAX_MESSAGE_CHARS, capText, quote } from '../shared/text.js';
import {
  MODEL_NAME_RULE,
  MODEL_VERSION_RULE,
  assertLatestPointer,
  isModelName,
  isModelVersion,
  latestKey,
  modelKey,
  type ModelArtifact,
} from '../shared/model-format.js';
import { WORKER_KIND, jobOptions, type WorkerKind } from '../shared/worker-kit.js';
import { downloadVersion } from './model-files.js';

export interface Client {
  readonly config: Config;
  readonly s3: S3Client;
  /** Absent when REDIS_URL is not set: only S3-backed reads (finished runs, downloads) work. */
  readonly redis: Redis | undefined;
  readonly runs: RunStore | undefined;
  readonly queues: QueueContext | undefined;
  close(): Promise<void>;
}

/**
 * The last connection error of a CLI client's Redis, with the URL it tried (credentials left
 * out): ioredis reports a command that gave up only as "max retries per request", so the
 * message the user sees (redisUnreachable) is made from this.
 */
let lastRedisFault: { url: string; reason: string } | undefined;

/** REDIS_URL without its user name and password, for messages. */
function shownRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    u.username = '';
    u.password = '';
    return u.toString();
  } catch {
    return 'REDIS_URL';
  }
}

/**
 * When `err` is ioredis giving up on a command because Redis cannot be reached: an error that
 * names the address, the reason and the fix (instead of "Reached the max retries per request
 * limit"); otherwise undefined.
 */
export function redisUnreachable(err: unknown): Error | undefined {
  if (!(err instanceof Error) || !/max retries per request/i.test(err.message) || !lastRedisFault) return undefined;
  const { url, reason } = lastRedisFault;
  return new Error(
    `cannot reach Redis at ${quote(url, 200)} (${quote(reason, 200)}): start redis-server there, ` +
      'or set REDIS_URL to one that runs; or, with no deployment, `run` and `predict` take --local ' +
      '(without REDIS_URL) to start their own Redis and workers for the command',
    { cause: err },
  );
}

export function createClient(config: Config): Client {
  const redis = config.redisUrl
    ? new Redis(config.redisUrl, { maxRetriesPerRequest: 3, lazyConnect: false })
    : undefined;
  // Handled, so ioredis does not print each failed connection attempt as an unhandled error.
  redis?.on('error', (err: NodeJS.ErrnoException) => {
    lastRedisFault = { url: shownRedisUrl(config.redisUrl!), reason: err.code ?? err.message };
  });
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
  /** RUN_LIMITS.priority; absent = the default. */
  priority?: number;
}

/** Model name from the source when none is given: the last path segment, made safe. */
export function defaultName(source: string): string {
  // Only a name is derived here; enqueueRun checks the bucket.
  const { bucket, key } = splitS3Url(source);
  const last =
    key
      .replace(/\.(csv|jsonl|ndjson)$/i, '')
      .split('/')
      .filter(Boolean)
      .pop() ?? bucket;
  const safe = last.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[^A-Za-z0-9]+/, '');
  return safe === '' ? 'model' : safe.slice(0, 100);
}

/** The value at `path` in `obj`, as a message quotes it. */
function shownValue(obj: unknown, path: ReadonlyArray<string | number>): string {
  let v: unknown = obj;
  for (const p of path)
    v = v !== null && typeof v === 'object' ? (v as Record<string | number, unknown>)[p] : undefined;
  return typeof v === 'string' ? quote(v, 100) : capText(JSON.stringify(v) ?? String(v), 100);
}

/**
 * A user model's reference, as every producer of a run request must give it (the CLI's --model
 * makes it so; the HTTP API passes the body as it came): an s3:// URL of an object without empty,
 * `.` or `..` key segments, or an absolute local path (which workers read only inside
 * DEEPFEAT_MODEL_DIRS). Any other scheme (file:, http:) or a relative path is refused here,
 * before anything is recorded, instead of failing in a worker later.
 */
export function checkModelRef(spec: FeatureSpec): void {
  if (spec.kind !== 'tfjs' && spec.kind !== 'onnx') return;
  const model = spec.model;
  if (typeof model !== 'string') return; // the schema names it
  const fix = {
    segments: 'give s3://bucket/key of the model file, without empty, "." or ".." key segments',
    scheme: 'give an s3:// URL or an absolute local path (other URL schemes are not read)',
    relative: 'give an absolute path (workers read local models only inside DEEPFEAT_MODEL_DIRS) or an s3:// URL',
  };
  const fault = modelRefFault(model);
  if (fault) throw new BadRequestError(`features.model ${quote(model, 100)}: ${fix[fault]}`);
}

/**
 * What is wrong with a model reference, if anything: an s3:// URL with no key or an empty, `.` or
 * `..` key segment; another URL scheme; or a relative local path. The CLI's --model resolves a
 * relative path before asking.
 */
export function modelRefFault(model: string): 'segments' | 'scheme' | 'relative' | undefined {
  if (model.startsWith('s3://')) {
    const rest = model.slice('s3://'.length);
    const slash = rest.indexOf('/');
    const key = slash < 0 ? '' : rest.slice(slash + 1);
    const bad = slash <= 0 || key === '' || key.split('/').some((seg) => seg === '' || seg === '.' || seg === '..');
    return bad ? 'segments' : undefined;
  }
  if (/^[a-z][a-z0-9+.-]*:/i.test(model)) return 'scheme';
  return isAbsolute(model) ? undefined : 'relative';
}

/** The other way out when a run is asked for with no Redis: the CLI's --local. */
export const RUN_HERE = 'add --local to run it on this machine (starts redis-server and the workers for this command)';

/** Records the run and adds its planning job; returns at once with the run id. */
export async function enqueueRun(client: Client, opts: RunOptions): Promise<string> {
  requireRedisUrl(client.config, RUN_HERE);
  // A malformed URL or a bucket name S3 would refuse fails here, before anything is recorded.
  parseS3Url(opts.source);
  const candidate = {
    source: opts.source,
    name: opts.name ?? defaultName(opts.source),
    features: opts.features ?? DEFAULT_FEATURES,
    seed: opts.seed ?? 42,
    split: opts.split ?? { train: 0.7, val: 0.1, test: 0.2 },
    shardSize: opts.shardSize ?? client.config.extractor.shardSize,
    ...(opts.lambdas ? { lambdas: opts.lambdas } : {}),
    ...(opts.priority !== undefined ? { priority: opts.priority } : {}),
  };
  checkModelRef(candidate.features);
  const parsed = runRequestSchema.safeParse(candidate);
  if (!parsed.success) {
    // Each problem with the value it is about (quoted: user text), so the message says what to change.
    const issues = parsed.error.issues.map((i) => `${i.path.join('.')} ${shownValue(candidate, i.path)}: ${i.message}`);
    throw new BadRequestError(`invalid run request: ${issues.join('; ')}`);
  }
  return queueRun(client, parsed.data);
}

/**
 * Records a checked request (training or prediction) as a new run and adds its planning job;
 * returns the run id. Planning is always a planner's: nothing else happens here.
 */
export async function queueRun(client: Client, request: JobData<'plan'>['request']): Promise<string> {
  const runId = newRunId();
  await client.runs!.create(runId, request);
  const plan = makeQueue(client.queues!, 'plan');
  try {
    await plan.add('plan', { runId, request }, jobOptions(client.config, `${runId}-plan`));
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

/** The run has ended: published (training), done (prediction) or failed. */
export const isTerminal = (s: Pick<RunStatus, 'stage'>) => s.stage === 'failed' || isFinalStage(s.stage);

/**
 * Every failed image of a run with its reason, shard by shard in manifest order (a status lists
 * only the first MAX_FAILURES_LISTED). From Redis while it holds the run, else from the shards'
 * row metadata in the bucket (runs/<id>/features/<shard>.jsonl), a few shards at a time: memory
 * holds a few shards' failures, however many images failed.
 */
export async function* getFailures(client: Client, runId: string): AsyncGenerator<ImageFailure> {
  const status = await getStatus(client, runId); // checks the id; NotFoundError names the fix
  if (client.runs && (await client.runs.exists(runId))) {
    yield* client.runs.failures(runId, status.shards);
    return;
  }
  const bucket = client.config.bucket;
  // A training run's rows are its features' metadata; a prediction run's, its predictions (both
  // lines carry the key and, for a failed image, the error).
  const rowsKey = (s: number) =>
    isPredictRequest(status.request) ? predictionsShardKey(runId, s) : shardKey(runId, s, 'jsonl');
  // A shard that never completed (a failed run) has no metadata: it has no recorded failures either.
  const fetchShard = (s: number) =>
    getObjectText(client.s3, bucket, rowsKey(s)).catch((err: unknown) => {
      if (err instanceof NotFoundError) return '';
      throw err;
    });
  const ahead: Array<Promise<string>> = [];
  let next = 0;
  for (let s = 0; s < status.shards; s++) {
    while (next < status.shards && ahead.length < 4) {
      const p = fetchShard(next++);
      p.catch(() => undefined); // observed when awaited below, or dropped if the reader stops early
      ahead.push(p);
    }
    for (const line of (await ahead.shift()!).split('\n')) {
      if (line === '') continue;
      const row = JSON.parse(line) as ShardRow;
      // Capped as Redis holds them: a reason may quote image data.
      if ('error' in row) yield { key: row.key, reason: capText(row.error, MAX_MESSAGE_CHARS) };
    }
  }
}

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
  /** The kind's main queue (an extractor's is extract, an evaluator's evaluate). */
  queue: QueueName;
  /** Every queue the worker serves: an extractor also runs predict jobs, an evaluator collect jobs. */
  queues: QueueName[];
  /** kind@host:pid */
  name: string;
  addr: string;
  age: number;
}

/**
 * Live workers (from Redis CLIENT LIST via BullMQ), one per worker of a process: a process
 * serving several queues of its kind (an extractor serves extract and predict) is one worker,
 * with those queues, so counts of workers mean processes of each kind, as users start them.
 */
export async function listWorkers(client: Client): Promise<WorkerInfo[]> {
  requireRedisUrl(client.config);
  // BullMQ's connections retry forever: an unreachable Redis must fail here, with its reason.
  await client.redis?.ping();
  const byName = new Map<string, WorkerInfo>();
  for (const q of QUEUE_NAMES) {
    const queue = makeQueue(client.queues!, q);
    try {
      for (const w of await queue.getWorkers()) {
        // BullMQ names worker connections <prefix>:<queue>:w:<worker name>.
        const raw = String(w.rawname ?? w.name ?? '');
        const name = raw.includes(':w:') ? raw.slice(raw.indexOf(':w:') + 3) : raw;
        const seen = byName.get(name);
        if (seen) {
          if (!seen.queues.includes(q)) seen.queues.push(q);
          continue;
        }
        const kind = WORKER_KIND[q];
        byName.set(name, { kind, queue: q, queues: [q], name, addr: String(w.addr ?? ''), age: Number(w.age ?? 0) });
      }
    } finally {
      await queue.close();
    }
  }
  return [...byName.values()];
}

export async function getQueueCounts(client: Client): Promise<Record<QueueName, Record<string, number>>> {
  await client.redis?.ping(); // as in listWorkers
  const out = {} as Record<QueueName, Record<string, number>>;
  for (const q of QUEUE_NAMES) {
    const queue = makeQueue(client.queues!, q);
    try {
      const c = await queue.getJobCounts(
        'waiting',
        'prioritized',
        'active',
        'delayed',
        'waiting-children',
        'completed',
        'failed',
      );
      // Image jobs carry a priority (services/planner/fair-share.ts), and BullMQ keeps those apart
      // from its wait list: both are jobs ready to run, so 'waiting' counts both.
      const { prioritized = 0, ...rest } = c;
      out[q] = { ...rest, waiting: (rest.waiting ?? 0) + prioritized };
    } finally {
      await queue.close();
    }
  }
  return out;
}

/** How `download` takes its argument, for messages. */
const REF_FORMS = 'use RUN (a run id like r20261128093000-1a2b3c), NAME (its latest version) or NAME@VERSION';

/**
 * Resolves RUN | NAME | NAME@VERSION to a published model and reads it. Every part is checked
 * before it becomes part of a key, and what is read is checked to be a whole model.
 */
export async function fetchModel(client: Client, ref: string): Promise<{ artifact: ModelArtifact; uri: string }> {
  const bucket = client.config.bucket;
  let key: string;
  if (RUN_ID_PATTERN.test(ref)) {
    const status = await getStatus(client, ref);
    if (isPredictRequest(status.request)) {
      const m = status.request.model;
      throw new BadRequestError(
        `run ${ref} is a prediction run (it used ${quote(`${m.name}@${m.version}`)}), not a training run: give the ` +
          'id of the run that published a model, or NAME[@VERSION]',
      );
    }
    if (!status.model) {
      throw new NotFoundError(
        `run ${ref} has not published a model (stage: ${status.stage}${status.error ? `, ${status.error.message}` : ''})`,
      );
    }
    key = modelKey(status.model.name, status.model.version);
  } else {
    const at = ref.indexOf('@');
    const name = at < 0 ? ref : ref.slice(0, at);
    const version = at < 0 ? undefined : ref.slice(at + 1);
    if (!isModelName(name)) {
      throw new BadRequestError(`not a run id or model name: ${quote(ref)}; ${REF_FORMS}, where ${MODEL_NAME_RULE}`);
    }
    if (version !== undefined) {
      if (!isModelVersion(version)) {
        throw new BadRequestError(
          `invalid version ${quote(version, 100)} in ${quote(ref)}: ${MODEL_VERSION_RULE}; or give ${name} alone for its latest version`,
        );
      }
      key = modelKey(name, version);
    } else {
      const pointer = latestKey(name);
      let latest: unknown;
      try {
        latest = await getObjectJson<unknown>(client.s3, bucket, pointer);
      } catch (err) {
        if (err instanceof NotFoundError)
          throw new NotFoundError(
            `no model named ${name} in s3://${bucket}/models/: check the name (deepfeat run --name sets it)`,
          );
        throw err;
      }
      key = assertLatestPointer(latest, name, s3Url(bucket, pointer)).key;
    }
  }
  const uri = s3Url(bucket, key);
  try {
    return { artifact: await readPublishedModel(client.s3, bucket, key, client.config.extractor.maxModelBytes), uri };
  } catch (err) {
    if (err instanceof NotFoundError) throw new NotFoundError(`model ${quote(ref)} not found at ${quote(uri)}`);
    throw err;
  }
}

/**
 * Writes the published version's folder into dir (model.json, classifier.onnx, see
 * model-files.ts); returns model.json's path and the files written. File-system problems name
 * the folder and the fix.
 */
export async function downloadModel(
  client: Client,
  ref: string,
  dir: string,
): Promise<{ path: string; artifact: ModelArtifact; files: string[] }> {
  const { artifact, uri } = await fetchModel(client, ref);
  const files = await downloadVersion(client, artifact, uri, dir);
  return { path: join(dir, 'model.json'), artifact, files };
}
