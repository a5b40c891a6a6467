/**
 * runs/<id>/run.json: a run's final status, which `status` reads once Redis no longer has the run
 * (bounded like every status: the first failures and their count).
 */
import type { Logger } from '../../shared/logger.js';
import type { RunEnd } from '../../shared/run-state.js';
import { deleteObject, getObjectBytes, putJson, putObject } from '../../shared/s3.js';
import type { ServiceContext } from '../../shared/worker-kit.js';

/**
 * Records how the run ended: run.json first, then Redis moves the run to its final stage, so a
 * client that sees 'published' or 'done' finds run.json there. run.json is written from the
 * status the run will have (RunStore.finishedStatus, the same times as the move), and written
 * again from Redis if the run did not move (it had failed, or was already final); if the move
 * itself fails, run.json is put back as it was (the planner's, or none). A crash between the write and the move is healed by
 * the job's retry, which writes both again (only a crash followed by every retry failing leaves
 * a run.json that says more than Redis).
 */
export async function publishRunRecord(
  ctx: ServiceContext,
  bucket: string,
  runId: string,
  end: RunEnd,
  log: Logger,
): Promise<void> {
  const key = `runs/${runId}/run.json`;
  const at = new Date();
  const final = await ctx.runs.finishedStatus(runId, end, at);
  // The planner wrote a run.json of its own (the plan, stage 'extracting'): kept to put back.
  const before = final ? await getObjectBytes(ctx.s3, bucket, key).catch(() => undefined) : undefined;
  if (final) await putJson(ctx.s3, bucket, key, final);
  let moved: boolean;
  try {
    moved = await ctx.runs.finish(runId, end, at);
  } catch (err) {
    // Redis did not take the move (unreachable, …): run.json must not say more than Redis, so
    // it is what it was before. The job's retry writes both again.
    if (final) {
      const restore =
        before === undefined
          ? deleteObject(ctx.s3, bucket, key)
          : putObject(ctx.s3, bucket, key, before, 'application/json');
      await restore.catch(() => undefined);
    }
    throw err;
  }
  if (!final) {
    log.warn({ runId }, `the run has no status in Redis; ${end.stage}, run.json not written`);
    return;
  }
  if (!moved) {
    const actual = await ctx.runs.get(runId);
    if (actual) await putJson(ctx.s3, bucket, key, actual);
  }
}
