/**
 * What every pipeline worker process shares: the context (config, logger, Redis, S3, run
 * store), BullMQ settings, and the one wrapper that validates payloads, turns permanent errors
 * into UnrecoverableError (fail now, no retry) and marks the run failed after the last attempt.
 */
import { hostname } from 'node:os';
import { UnrecoverableError, type Job, type JobsOptions, type Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { S3Client } from '@aws-sdk/client-s3';
import { requireRedisUrl, type Config } from './config.js';
import { DeepfeatError } from './errors.js';
import { createLogger, type Logger } from './logger.js';
import {
  QUEUE_NAMES,
  connectionFromUrl,
  makeWorker,
  parseJobData,
  type JobData,
  type JobResult,
  type QueueContext,
  type QueueName,
} from './queues.js';
import { RunStore } from './run-state.js';
import { createS3Client } from './s3.js';

export interface ServiceContext {
  readonly config: Config;
  readonly log: Logger;
  readonly redis: Redis;
  readonly s3: S3Client;
  readonly runs: RunStore;
  readonly queues: QueueContext;
}

export function createContext(config: Config, service: string): ServiceContext {
  const redisUrl = requireRedisUrl(config);
  const connection = connectionFromUrl(redisUrl);
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null });
  return {
    config,
    log: createLogger(service, config.logLevel),
    redis,
    s3: createS3Client(config.s3),
    runs: new RunStore(redis, config.queuePrefix),
    queues: { connection, prefix: config.queuePrefix },
  };
}

export async function closeContext(ctx: ServiceContext): Promise<void> {
  ctx.s3.destroy();
  await ctx.redis.quit().catch(() => undefined);
}

/** Options for every job the pipeline adds: retries with backoff, bounded history in Redis. */
export function jobOptions(config: Config, jobId: string): JobsOptions {
  return {
    jobId,
    attempts: config.jobAttempts,
    backoff: { type: 'exponential', delay: 1000 },
    removeOnComplete: { age: 7 * 24 * 3600 },
    removeOnFail: { age: 30 * 24 * 3600 },
  };
}

export type Handler<N extends QueueName> = (
  data: JobData<N>,
  job: Job<JobData<N>, JobResult<N>>,
  log: Logger,
) => Promise<JobResult<N>>;

/**
 * The kind of worker that serves each queue: what users start (`deepfeat worker KIND`) and see.
 * A kind may serve several queues: extractor processes run prediction shards too (they hold the
 * engines and decoders), and evaluators collect a prediction run's results, so batch prediction
 * needs no new kind of process to deploy.
 */
export const WORKER_KIND = {
  plan: 'planner',
  extract: 'extractor',
  train: 'trainer',
  evaluate: 'evaluator',
  predict: 'extractor',
  collect: 'evaluator',
} as const satisfies Record<QueueName, string>;
export type WorkerKind = (typeof WORKER_KIND)[QueueName];

/** Each kind with the queues it serves, in QUEUE_NAMES order (its first queue is its main one). */
export const KIND_QUEUES: ReadonlyMap<WorkerKind, readonly QueueName[]> = (() => {
  const m = new Map<WorkerKind, QueueName[]>();
  for (const q of QUEUE_NAMES) {
    const kind = WORKER_KIND[q];
    const queues = m.get(kind);
    if (queues) queues.push(q);
    else m.set(kind, [q]);
  }
  return m;
})();

/** A worker's name as `deepfeat workers` shows it: `kind@host:pid`. */
export function workerName(queue: QueueName, host = hostname(), pid = process.pid): string {
  return `${WORKER_KIND[queue]}@${host}:${pid}`;
}

/**
 * Starts a worker for one queue. The lock is short and renewed often so a crashed worker's job
 * is picked up again within seconds; the worker's name (kind@host:pid) shows in `deepfeat workers`.
 */
export function startWorker<N extends QueueName>(
  ctx: ServiceContext,
  name: N,
  handler: Handler<N>,
  concurrency = 1,
): Worker<JobData<N>, JobResult<N>, string> {
  const log = ctx.log.child({ queue: name });
  const worker = makeWorker(
    ctx.queues,
    name,
    async (job) => {
      const attempts = job.opts.attempts ?? 1;
      const jlog = log.child({ jobId: job.id, attempt: job.attemptsMade + 1 });
      try {
        const data = parseJobData(name, job.data);
        jlog.info('job started');
        const t0 = performance.now();
        const result = await handler(data, job, jlog);
        jlog.info({ ms: Math.round(performance.now() - t0) }, 'job done');
        return result;
      } catch (err) {
        // pino's error serializer keeps the stack, the cause chain and the code.
        const retried = !(err instanceof DeepfeatError && err.permanent) && job.attemptsMade + 1 < attempts;
        jlog.error({ err, retried, attemptsLeft: retried ? attempts - job.attemptsMade - 1 : 0 }, 'job failed');
        if (err instanceof DeepfeatError && err.permanent) {
          const u = new UnrecoverableError(err.message);
          (u as Error & { code?: string }).code = err.code;
          u.cause = err;
          throw u;
        }
        throw err;
      }
    },
    {
      concurrency,
      name: workerName(name),
      lockDuration: ctx.config.jobLockMs,
      stalledInterval: Math.round(ctx.config.jobLockMs / 3),
      maxStalledCount: 2,
    },
  );
  worker.on('failed', (job, err) => {
    if (!job) return;
    const permanent = err instanceof UnrecoverableError;
    const final = permanent || job.attemptsMade >= (job.opts.attempts ?? 1);
    const runId = (job.data as { runId?: unknown }).runId;
    if (final && typeof runId === 'string') {
      const code = (err as Error & { code?: string }).code ?? 'INTERNAL';
      // The run's last word: say that the retries are over, never that one is coming.
      const tries = !permanent && job.attemptsMade > 1 ? ` after ${job.attemptsMade} attempts` : '';
      ctx.runs
        .fail(runId, code, `${name} failed${tries}: ${err.message}`)
        .catch((e) => log.error({ err: e, runId }, 'could not record run failure'));
    }
  });
  worker.on('error', (err) => log.error({ err }, 'worker error'));
  return worker;
}

/** How long a shutdown may take in all (closeOnSignal); the last EXIT_WORK_GRACE_MS are the exit work's. */
const SHUTDOWN_MS = 30_000;
const EXIT_WORK_GRACE_MS = 5_000;

/** Work a shutdown waits for once the workers have closed, per context (beforeExit). */
const exitWork = new WeakMap<ServiceContext, Array<() => Promise<void>>>();

/**
 * Registers `work` for closeOnSignal to await after the workers have closed and before the
 * process exits: an extractor's engine threads must end before the process does (one that
 * exits while a batch is inside ONNX Runtime's native code aborts with a C++ error).
 */
export function beforeExit(ctx: ServiceContext, work: () => Promise<void>): void {
  const list = exitWork.get(ctx) ?? [];
  list.push(work);
  exitWork.set(ctx, list);
}

/**
 * Closes workers and the context on SIGTERM/SIGINT: the current job finishes or is handed back,
 * then the work registered with beforeExit; all within 30 s. A job still running after 25 s is
 * left (its lock lapses and another worker takes it up), but the exit work still runs, for at
 * most the last 5 s, before the process exits.
 */
export function closeOnSignal(ctx: ServiceContext, workers: ReadonlyArray<Worker>): void {
  let closing = false;
  const runExitWork = () => Promise.all((exitWork.get(ctx) ?? []).map((work) => work().catch(() => undefined)));
  const close = async (signal: string) => {
    if (closing) return;
    closing = true;
    ctx.log.info({ signal }, 'shutting down');
    const timer = setTimeout(async () => {
      ctx.log.warn('shutdown took too long; exiting (unfinished jobs will be picked up again)');
      // The exit work still runs, briefly: an engine thread ends after the batch it is in (a job
      // still running then fails that attempt and is retried), rather than being torn down in it.
      await Promise.race([runExitWork(), new Promise((r) => setTimeout(r, EXIT_WORK_GRACE_MS).unref())]);
      process.exit(1);
    }, SHUTDOWN_MS - EXIT_WORK_GRACE_MS);
    timer.unref();
    await Promise.all(workers.map((w) => w.close()));
    await runExitWork();
    await closeContext(ctx);
    process.exit(0);
  };
  process.once('SIGTERM', () => void close('SIGTERM'));
  process.once('SIGINT', () => void close('SIGINT'));
}
