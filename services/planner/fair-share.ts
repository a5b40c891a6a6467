/**
 * Fair sharing of the extractors between runs (issue 15 item 8). Every image job (extract, predict)
 * gets a BullMQ priority computed from its run's priority and its shard number:
 *
 *   priority(run p, shard i) = (max − p) × SPAN + min(i, SPAN − 1) + 1       (lower = sooner)
 *
 * - Runs of equal priority share the extractors shard by shard: shard i of every run ranks
 *   before shard i+1 of any run, so a run queued behind a big one starts at once (its shard 0
 *   outranks the big run's remaining shards) and a small run finishes after about as many
 *   of the big run's shards as it has itself, not after all of them. Equal ranks are served in
 *   the order they were added (BullMQ keeps FIFO within a priority).
 * - A run of higher priority (RUN_LIMITS.priority, `--priority`) is served before every run of
 *   lower priority, still shard by shard among its peers.
 * Every job has a priority ≥ 1: BullMQ serves jobs without one before all prioritized jobs, so a
 * job added without one would jump the queue.
 */
import { RUN_LIMITS } from '../../shared/queues.js';

/** BullMQ's largest priority (PRIORITY_LIMIT in bullmq's job.ts: 2^21 − 1). */
const BULLMQ_MAX_PRIORITY = 2 ** 21 - 1;
const LEVELS = RUN_LIMITS.priority.max - RUN_LIMITS.priority.min + 1;
/** Ranks per priority level: shards past it share the level's last rank (over 200,000 shards). */
export const SPAN = Math.floor(BULLMQ_MAX_PRIORITY / LEVELS);

/** The BullMQ priority of shard `shard` of a run of priority `runPriority` (absent = the default). */
export function shardJobPriority(runPriority: number | undefined, shard: number): number {
  const p = Math.min(
    RUN_LIMITS.priority.max,
    Math.max(RUN_LIMITS.priority.min, Math.trunc(runPriority ?? RUN_LIMITS.priority.default)),
  );
  const rank = Math.min(Math.max(0, Math.trunc(shard)), SPAN - 1);
  return (RUN_LIMITS.priority.max - p) * SPAN + rank + 1;
}
