/**
 * The right to write a job's output, held by one attempt at a time: the job's BullMQ lock.
 *
 * Why: a worker cut off from Redis for longer than the lock loses its job to another worker while
 * it still runs, and once the network heals it goes on where it stopped. Without a fence its late
 * writes would land after the new owner's: a shard's `.npy` from one attempt beside the `.jsonl`
 * of another, a complete shard overwritten after the trainer read it, progress that goes back.
 * So the writes a stale attempt could make late go through its lease:
 * - an object (a shard's `.npy`, then its `.jsonl`) is written only right after `renew()` has set
 *   the lock for another `lockMs` under this attempt's token — no other attempt can own the job
 *   until then — and the write is abandoned if it has not ended by `deadline` (half the lock);
 * - a Redis write (the shard's progress, run-state.ts) checks the lock in the same script, so a
 *   command held up in the network is refused when it finally arrives.
 * A stale attempt therefore stops at its next write with LeaseLostError; BullMQ then also refuses
 * its completion (the lock is not its own), and the worker goes on to its next job.
 */
import { PutObjectCommand, type PutObjectCommandInput, type S3Client } from '@aws-sdk/client-s3';
import type { Job } from 'bullmq';
import { DeepfeatError, StorageError } from './errors.js';
import { storageError } from './s3.js';

/** This attempt no longer holds its job: another worker took it over (or finished it). Not a run failure. */
export class LeaseLostError extends DeepfeatError {
  constructor(what: string) {
    super(
      'INTERNAL',
      `${what}: this attempt no longer holds the job's lock (it was cut off longer than the lock and another ` +
        'worker took the job over, or finished it), so its results are not written',
      { permanent: false },
    );
  }
}

export interface JobLease {
  /** Names the job in LeaseLostError messages. */
  readonly what: string;
  /** BullMQ's lock key of the job and this attempt's token: what a Redis-side check compares. */
  readonly key: string;
  readonly token: string;
  /**
   * Extends the lock by the lock duration under this attempt's token, or throws LeaseLostError if
   * the lock is another's (or gone). Returns the time (ms since the epoch) by which a write started
   * now must have ended.
   */
  renew(): Promise<number>;
}

/** The lease of the job a worker is processing now; undefined for a job without a lock token. */
export function jobLease(job: Job, lockMs: number, what: string): JobLease | undefined {
  const token = job.token;
  if (!token || job.id === undefined) return undefined;
  return {
    what,
    key: `${job.queueQualifiedName}:${job.id}:lock`,
    token,
    async renew() {
      // Taken before the request: the lock lasts lockMs from when Redis runs it, which is later.
      const start = Date.now();
      if ((await job.extendLock(token, lockMs)) !== 1) throw new LeaseLostError(what);
      return start + lockMs / 2;
    },
  };
}

/**
 * putObject under the lease: renewed before the write starts and again every third of the margin
 * while it runs (a large shard on a slow link is not cut short while this attempt can still reach
 * Redis), and abandoned once the last renewal's deadline passes or a renewal finds the job gone —
 * an attempt cut off from Redis, or whose job another worker took over, never lands the object.
 */
export async function leasedPutObject(
  lease: JobLease,
  s3: S3Client,
  bucket: string,
  key: string,
  body: PutObjectCommandInput['Body'],
  contentType = 'application/octet-stream',
): Promise<void> {
  let deadline = await lease.renew();
  const period = Math.max(50, (deadline - Date.now()) / 3);
  const controller = new AbortController();
  let lost: unknown;
  let renewing = false;
  const tick = setInterval(() => {
    if (Date.now() >= deadline) controller.abort();
    if (renewing || controller.signal.aborted) return;
    renewing = true;
    lease.renew().then(
      (d) => {
        deadline = d;
        renewing = false;
      },
      (err) => {
        lost = err;
        controller.abort();
      },
    );
  }, period);
  try {
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType }), {
      abortSignal: controller.signal,
    });
  } catch (err) {
    if (lost !== undefined) throw lost;
    if (controller.signal.aborted) {
      throw new StorageError(
        `writing s3://${bucket}/${key} did not end within the job's lock (${lease.what}): this attempt could not renew the lock in time (cut off from Redis?); the job is retried`,
        { cause: err, permanent: false },
      );
    }
    throw storageError(err, { bucket, key });
  } finally {
    clearInterval(tick);
  }
}
