/**
 * Live state of runs in Redis: one hash per run (`<prefix>:run:<id>`) for stage, plan and per-shard
 * progress, and one hash of failure reasons beside it (`<prefix>:run:<id>:failures`, a field per
 * shard). Every write is idempotent: a shard's progress and its failures are fields of their own
 * that a retried shard overwrites, so counts never double. A status reads the run hash and only
 * the first page of failures, so its cost and size stay bounded however many images fail; every
 * failure is read shard by shard (`RunStore.failures`). The evaluator copies the final status to
 * runs/<id>/run.json, which is what `status` reads once Redis no longer has the run.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { AnyRequest } from './queues.js';
import { capText, MAX_MESSAGE_CHARS } from './text.js';
import { LeaseLostError, type JobLease } from './job-lease.js';

/** A training run's stages in the order it moves through them; 'failed' can follow any of them. */
export const STAGE_ORDER = ['queued', 'planning', 'extracting', 'training', 'evaluating', 'published'] as const;
/** A prediction run's stages, in order; the first two are the training run's. */
export const PREDICT_STAGE_ORDER = ['queued', 'planning', 'predicting', 'collecting', 'done'] as const;
export type ActiveStage = (typeof STAGE_ORDER)[number] | (typeof PREDICT_STAGE_ORDER)[number];
export type Stage = ActiveStage | 'failed';
/** The stages a run ends in besides 'failed': nothing moves a run out of them. */
export const FINAL_STAGES = ['published', 'done'] as const satisfies readonly ActiveStage[];
/** The stages in which images are fetched and run through the engine: throughput and ETA are measured there. */
export const IMAGE_STAGES = ['extracting', 'predicting'] as const satisfies readonly ActiveStage[];

export const isFinalStage = (stage: string): boolean => (FINAL_STAGES as readonly string[]).includes(stage);
export const isImageStage = (stage: string): boolean => (IMAGE_STAGES as readonly string[]).includes(stage);

/** At most this many skipped objects are listed in a run's state; the rest are only counted. */
export const MAX_SKIPPED_LISTED = 1000;

/**
 * At most this many failures are listed in a status (and run.json); `failuresTotal` counts them
 * all and `RunStore.failures` reads every one. With most of a million images failing, a status
 * that listed them all was ~60 MB of JSON.
 */
export const MAX_FAILURES_LISTED = 100;

export interface ImageFailure {
  readonly key: string;
  readonly reason: string;
}

/** An object under the run's source that planning did not use, and why. */
export interface SkippedObject {
  readonly key: string;
  readonly reason: string;
}

export interface PublishedModel {
  readonly name: string;
  readonly version: string;
  /** s3:// URI of model.json. */
  readonly uri: string;
  /** s3:// URI of classifier.onnx beside it, when the backbone could be written as ONNX. */
  readonly classifier?: string;
  /** Why the version has no classifier.onnx. */
  readonly classifierUnavailable?: string;
}

export interface RunMetrics {
  readonly accuracy: number;
  readonly macroF1: number;
  readonly perClass: ReadonlyArray<{ label: string; precision: number; recall: number; f1: number; support: number }>;
  readonly confusion: number[][];
  readonly classes: readonly string[];
  readonly testImages: number;
  readonly lambda: number;
  readonly validation: ReadonlyArray<{ lambda: number; accuracy: number; logLoss: number }>;
  /** Retrieval quality beside the regression's; absent from runs evaluated before it existed. */
  readonly knn?: KnnMetrics;
}

/**
 * k-nearest-neighbour test accuracy: each test image (query) takes the majority label of its k
 * most similar train+val images (cosine similarity of the L2-normalised pooled features; a tie
 * goes to the tied label of the nearest neighbour). At scale both sides are seeded samples by key
 * (services/retrieval/knn.ts), so the cost stays bounded; the counts say how many were used.
 */
export interface KnnMetrics {
  /** Accuracy for each k, in increasing k (1 and 5). */
  readonly accuracy: ReadonlyArray<{ readonly k: number; readonly accuracy: number }>;
  readonly similarity: 'cosine';
  /** Test images used as queries, of `testImages` in the run. */
  readonly queries: number;
  readonly testImages: number;
  /** Train+val images searched, of `databaseOf` in the run. */
  readonly database: number;
  readonly databaseOf: number;
  /** Seed of the samples (used only when a side is larger than its cap). */
  readonly seed: number;
}

/** Where a prediction run's results are, once it is done. */
export interface PredictionsSummary {
  /** s3:// URI of runs/<id>/predictions.csv. */
  readonly uri: string;
  /** Rows in it: every image of the plan, once. */
  readonly images: number;
  /** Images classified; the others have their failure reason in the csv's error column. */
  readonly predicted: number;
  readonly failed: number;
}

export interface RunStatus {
  readonly runId: string;
  /** A training request, or a prediction request (`kind: 'predict'`, see isPredictRequest). */
  readonly request: AnyRequest;
  readonly stage: Stage;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly total: number;
  readonly shards: number;
  readonly shardsDone: number;
  readonly done: number;
  readonly failed: number;
  /**
   * The first MAX_FAILURES_LISTED failures recorded with their reasons, in manifest order (the
   * manifest is sorted by key, so this is key order): from the completed shards, lowest first.
   */
  readonly failures: readonly ImageFailure[];
  /**
   * How many failures are recorded with their reasons: those of every completed shard. `failed`
   * also counts images of shards still being extracted, whose reasons are written when the
   * shard completes.
   */
  readonly failuresTotal: number;
  /** Objects planning did not use (first MAX_SKIPPED_LISTED by key), with why. */
  readonly skipped: readonly SkippedObject[];
  /** How many objects planning skipped in all (can be more than `skipped` lists). */
  readonly skippedTotal: number;
  readonly classes: readonly string[];
  readonly counts: Readonly<Record<string, Readonly<Record<string, number>>>>;
  readonly imagesPerSecond: number | null;
  readonly etaSeconds: number | null;
  readonly engine: string | null;
  readonly backend: string | null;
  /** Input size the engine decoded images to, 'WxH'. */
  readonly engineInput: string | null;
  readonly metrics: RunMetrics | null;
  readonly model: PublishedModel | null;
  /** A prediction run's results once it is done; null otherwise (and absent from older run.json files). */
  readonly predictions?: PredictionsSummary | null;
  /**
   * Feature cache lookups of the run's images so far: hits were copied from the cache, misses
   * extracted. Null when no shard looked anything up (DEEPFEAT_FEATURE_CACHE=off, a user's model,
   * runs before the cache); absent from older run.json files.
   */
  readonly cache?: CacheCounts | null;
  readonly error: { code: string; message: string } | null;
}

/**
 * Skipped objects as a run keeps them: the first MAX_SKIPPED_LISTED by key, reasons capped, and
 * the total count.
 */
export function boundSkipped(all: readonly SkippedObject[]): { skipped: SkippedObject[]; skippedTotal: number } {
  const skipped = [...all]
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .slice(0, MAX_SKIPPED_LISTED)
    .map((o) => ({ key: o.key, reason: capText(o.reason, MAX_MESSAGE_CHARS) }));
  return { skipped, skippedTotal: all.length };
}

/** Sortable, unique run ids: r<yyyymmddhhmmss>-<6 hex>. */
export function newRunId(now = new Date()): string {
  const t = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return `r${t}-${randomBytes(3).toString('hex')}`;
}

export const RUN_ID_PATTERN = /^r\d{14}-[0-9a-f]{6}$/;

/** Feature cache lookups: images whose vector was found, and images looked up and not found. */
export interface CacheCounts {
  readonly hits: number;
  readonly misses: number;
}

interface ShardProgress {
  done: number;
  failed: number;
  complete: boolean;
  /** The shard's feature cache lookups so far; absent when it looked nothing up. */
  cache?: CacheCounts;
  engine?: string;
  backend?: string;
  /** Engine input size, 'WxH'. */
  input?: string;
}

/** Shard progress as a status reads it: one entry per shard field of the run hash. */
export interface ShardCounts {
  readonly shard: number;
  readonly done: number;
  readonly failed: number;
  readonly complete: boolean;
  readonly cache?: CacheCounts;
}

/**
 * A shard's progress written only while the job's lock is this attempt's (job-lease.ts), in one
 * script so that a write held up in the network is checked when it arrives. KEYS: the job's lock,
 * the run hash, the failures hash; ARGV: token, failures mode ('set' | 'del' | ''), the failures
 * field and value, then the run hash's field/value pairs.
 */
const LEASED_PROGRESS_SCRIPT = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
if ARGV[2] == 'set' then redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
elseif ARGV[2] == 'del' then redis.call('HDEL', KEYS[3], ARGV[3]) end
if redis.call('HGET', KEYS[2], 'stage') == 'failed' then return 2 end
return 1
`;

/** Lua table of the final stages, for the scripts below. */
const FINAL_LUA = `{${FINAL_STAGES.map((s) => `${s} = true`).join(', ')}}`;

/**
 * RunStore.fail as one Redis script. KEYS[1] the run hash; ARGV: code, error JSON, updatedAt.
 * Never leaves a final stage ('published', 'done'); an existing error is replaced only when it
 * is INTERNAL and the new one is not.
 */
const FAIL_SCRIPT = `
local final = ${FINAL_LUA}
local stage = redis.call('HGET', KEYS[1], 'stage')
if stage and final[stage] then return 0 end
local previous = redis.call('HGET', KEYS[1], 'error')
if previous and (ARGV[1] == 'INTERNAL' or cjson.decode(previous).code ~= 'INTERNAL') then return 0 end
redis.call('HSET', KEYS[1], 'stage', 'failed', 'error', ARGV[2], 'updatedAt', ARGV[3])
return 1
`;

/**
 * Each stage's rank in its order, and the track ('train' or 'predict') of the stages the two
 * orders do not share. A run moves only forward in rank and only onto its own track (the run
 * hash's `kind`, written by create(); a hash without one is a training run's, as every run
 * before prediction runs), so a training run's order is exactly STAGE_ORDER, and a prediction
 * run's PREDICT_STAGE_ORDER.
 */
function stageTables(): { rank: string; track: string } {
  const rank = new Map<string, number>();
  const track = new Map<string, string>();
  for (const [name, order] of [
    ['train', STAGE_ORDER],
    ['predict', PREDICT_STAGE_ORDER],
  ] as const) {
    order.forEach((s, i) => {
      rank.set(s, i);
      if (!(STAGE_ORDER as readonly string[]).includes(s) || !(PREDICT_STAGE_ORDER as readonly string[]).includes(s))
        track.set(s, name);
    });
  }
  const lua = (m: Map<string, string | number>) =>
    `{${[...m].map(([k, v]) => `${k} = ${typeof v === 'number' ? v : `'${v}'`}`).join(', ')}}`;
  return { rank: lua(rank), track: lua(track) };
}
const STAGE_TABLES = stageTables();

/**
 * Lua: moveStage(key, to, updatedAt, extra) moves the run forward along its order (STAGE_ORDER
 * or PREDICT_STAGE_ORDER) and writes the `extra` field/value pairs with it; a move backwards,
 * sideways, to the other order's track, or out of 'failed' or a final stage changes nothing.
 * Returns 1 when it moved.
 */
const MOVE_STAGE_LUA = `
local rank = ${STAGE_TABLES.rank}
local track = ${STAGE_TABLES.track}
local final = ${FINAL_LUA}
local function moveStage(key, to, now, extra)
  local cur = redis.call('HGET', key, 'stage')
  if cur == 'failed' or (cur and final[cur]) then return 0 end
  local from = (cur and rank[cur]) or 0
  local target = rank[to]
  if target == nil or target <= from then return 0 end
  local kind = redis.call('HGET', key, 'kind') or 'train'
  if track[to] and track[to] ~= kind then return 0 end
  redis.call('HSET', key, 'stage', to, 'updatedAt', now, unpack(extra))
  return 1
end
local function rest(from)
  local t = {}
  for i = from, #ARGV do t[#t + 1] = ARGV[i] end
  return t
end
`;

/** RunStore.setStage. KEYS[1] the run hash; ARGV: stage, updatedAt, then field/value pairs. */
const STAGE_SCRIPT = `${MOVE_STAGE_LUA}
return moveStage(KEYS[1], ARGV[1], ARGV[2], rest(3))
`;

/**
 * RunStore.setPlan. KEYS[1] the run hash; ARGV: updatedAt, extractStartedAt (ms), the stage to
 * move to ('extracting' or 'predicting'), then the plan's field/value pairs. The first
 * extractStartedAt stays: a re-run plan job must not restart the throughput clock of a run that
 * is already extracting.
 */
const PLAN_SCRIPT = `${MOVE_STAGE_LUA}
redis.call('HSET', KEYS[1], unpack(rest(4)))
redis.call('HSETNX', KEYS[1], 'extractStartedAt', ARGV[2])
return moveStage(KEYS[1], ARGV[3], ARGV[1], {})
`;

export class RunStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(runId: string): string {
    return `${this.prefix}:run:${runId}`;
  }

  /** Failure reasons of the run's shards: field = shard number, value = JSON array of ImageFailure. */
  private failuresKey(runId: string): string {
    return `${this.prefix}:run:${runId}:failures`;
  }

  async create(runId: string, request: AnyRequest): Promise<void> {
    const now = new Date().toISOString();
    // The run's track of stages (MOVE_STAGE_LUA); read from the request here, not with
    // isPredictRequest, which would make this module import queues.ts at run time (a cycle).
    const kind = request.kind === 'predict' ? 'predict' : 'train';
    await this.redis
      .multi()
      .hset(this.key(runId), {
        request: JSON.stringify(request),
        kind,
        stage: 'queued',
        createdAt: now,
        updatedAt: now,
      })
      .zadd(`${this.prefix}:runs`, Date.now(), runId)
      .exec();
  }

  async exists(runId: string): Promise<boolean> {
    return (await this.redis.exists(this.key(runId))) === 1;
  }

  /**
   * Moves the run forward along its order (STAGE_ORDER or PREDICT_STAGE_ORDER), with `fields`;
   * never backwards, never to the other order, and never out of 'failed' or a final stage. One script, so the check and the write are atomic: a retried or
   * re-run job (a plan job after its run reached extraction, a late stage move racing fail())
   * can neither move a live run back nor bring a failed one back to life. Returns whether it moved.
   */
  async setStage(
    runId: string,
    stage: ActiveStage,
    fields: Record<string, string | number> = {},
    at = new Date(),
  ): Promise<boolean> {
    const pairs = Object.entries(fields).flatMap(([k, v]) => [k, String(v)]);
    return (await this.redis.eval(STAGE_SCRIPT, 1, this.key(runId), stage, at.toISOString(), ...pairs)) === 1;
  }

  /**
   * Records the plan and moves the run to `stage` — 'extracting', or 'predicting' for a
   * prediction run — (if it is not further on). Keeps the first extractStartedAt. Skipped
   * objects: the first MAX_SKIPPED_LISTED (by key) are listed, the others only counted, so a
   * prefix with a million stray files cannot blow up the run's state.
   */
  async setPlan(
    runId: string,
    plan: {
      total: number;
      shards: number;
      classes: readonly string[];
      counts: Readonly<Record<string, Readonly<Record<string, number>>>>;
      skipped?: readonly SkippedObject[];
    },
    stage: (typeof IMAGE_STAGES)[number] = 'extracting',
  ): Promise<void> {
    const { skipped, skippedTotal } = boundSkipped(plan.skipped ?? []);
    const fields: Record<string, string> = {
      total: String(plan.total),
      shards: String(plan.shards),
      classes: JSON.stringify(plan.classes),
      counts: JSON.stringify(plan.counts),
      skipped: JSON.stringify(skipped),
      skippedTotal: String(skippedTotal),
    };
    const pairs = Object.entries(fields).flat();
    const now = new Date().toISOString();
    await this.redis.eval(PLAN_SCRIPT, 1, this.key(runId), now, String(Date.now()), stage, ...pairs);
  }

  /**
   * One shard's progress, and when the shard is complete its failures (reasons capped: they may
   * quote image data). The failures replace the shard's earlier ones, so a retried shard never
   * adds to them; both writes are one transaction, so a status never sees the counts of one
   * attempt with the reasons of another. Says whether the run has failed meanwhile (read in the
   * same transaction): a shard of a failed run stops at its next batch (shard-loop.ts).
   */
  async setShardProgress(
    runId: string,
    shard: number,
    p: ShardProgress,
    failures?: readonly ImageFailure[],
    lease?: JobLease,
  ): Promise<{ runFailed: boolean }> {
    // Engine, backend and input size are run-wide fields: a status reads every shard field, so
    // those stay small.
    const counts = { done: p.done, failed: p.failed, complete: p.complete, ...(p.cache ? { cache: p.cache } : {}) };
    const fields: Record<string, string> = { [`shard:${shard}`]: JSON.stringify(counts) };
    if (p.engine) fields.engine = p.engine;
    if (p.backend) fields.backend = p.backend;
    if (p.input) fields.engineInput = p.input;
    fields.lastShardAt = String(Date.now());
    if (lease) {
      const capped = failures?.map((f) => ({ key: f.key, reason: capText(f.reason, MAX_MESSAGE_CHARS) }));
      const mode = !failures ? '' : failures.length > 0 ? 'set' : 'del';
      const written = await this.redis.eval(
        LEASED_PROGRESS_SCRIPT,
        3,
        lease.key,
        this.key(runId),
        this.failuresKey(runId),
        lease.token,
        mode,
        String(shard),
        capped && capped.length > 0 ? JSON.stringify(capped) : '',
        ...Object.entries(fields).flat(),
      );
      if (written === 0) throw new LeaseLostError(lease.what);
      return { runFailed: written === 2 };
    }
    const tx = this.redis.multi().hset(this.key(runId), fields);
    if (failures && failures.length > 0) {
      const capped = failures.map((f) => ({ key: f.key, reason: capText(f.reason, MAX_MESSAGE_CHARS) }));
      tx.hset(this.failuresKey(runId), String(shard), JSON.stringify(capped));
    } else if (failures) {
      tx.hdel(this.failuresKey(runId), String(shard));
    }
    tx.hget(this.key(runId), 'stage');
    const results = await tx.exec();
    return { runFailed: results?.at(-1)?.[1] === 'failed' };
  }

  /**
   * Marks the run failed. The first specific cause wins: when a child job fails, BullMQ also
   * fails its parents ("child … failed", reported as INTERNAL), in either order; that generic
   * report must neither hide nor replace the child's own reason.
   */
  async fail(runId: string, code: string, message: string): Promise<void> {
    // One script, so the check and the write are atomic: the child and its parent fail in
    // different processes at nearly the same moment, and a read-then-write from each let the
    // generic report overwrite the specific one.
    // The message is capped here as a last guard: messages are built capped, but a run's error
    // is read by every status call and must stay small whatever a job threw.
    const error = JSON.stringify({ code, message: capText(message, MAX_MESSAGE_CHARS) });
    await this.redis.eval(FAIL_SCRIPT, 1, this.key(runId), code, error, new Date().toISOString());
  }

  /** A training run's results: recorded, then the run moves to 'published' (finish). */
  async setResult(runId: string, metrics: RunMetrics, model: PublishedModel): Promise<boolean> {
    return this.finish(runId, { stage: 'published', metrics, model });
  }

  /** A prediction run's results: recorded, then the run moves to 'done' (finish). */
  async setPredictions(runId: string, predictions: PredictionsSummary): Promise<boolean> {
    return this.finish(runId, { stage: 'done', predictions });
  }

  /**
   * Records how the run ended, then moves it to `end.stage` (true if it moved; a failed or
   * already final run stays as it is). `at` is its finishedAt and updatedAt, so that
   * finishedStatus(…, at) read before is what Redis holds after.
   */
  async finish(runId: string, end: RunEnd, at = new Date()): Promise<boolean> {
    await this.redis.hset(this.key(runId), endFields(end));
    return this.setStage(runId, end.stage, { finishedAt: at.getTime() }, at);
  }

  /**
   * The status the run will have once finish records `end` at `at`, read
   * now (undefined if Redis has no such run). The evaluator writes it to runs/<id>/run.json
   * before Redis says the run is final, so that a client that sees 'published' or 'done' finds
   * run.json there.
   */
  async finishedStatus(runId: string, end: RunEnd, at: Date): Promise<RunStatus | undefined> {
    return this.get(runId, {
      ...endFields(end),
      stage: end.stage,
      updatedAt: at.toISOString(),
      finishedAt: String(at.getTime()),
    });
  }

  /**
   * The run's status, with the first MAX_FAILURES_LISTED failures: two reads whatever the number
   * of failures (the run hash, then the failure fields of the first shards that hold enough).
   */
  async get(runId: string, overlay: Readonly<Record<string, string>> = {}): Promise<RunStatus | undefined> {
    const h = { ...(await this.redis.hgetall(this.key(runId))), ...overlay };
    if (!h.request) return undefined;
    const shards = shardCounts(h);
    const page: number[] = [];
    let listed = 0;
    for (const p of shards) {
      if (listed >= MAX_FAILURES_LISTED) break;
      if (!p.complete || p.failed === 0) continue;
      page.push(p.shard);
      listed += p.failed;
    }
    const values = page.length > 0 ? await this.redis.hmget(this.failuresKey(runId), ...page.map(String)) : [];
    const failures = values.flatMap((v) => (v === null ? [] : (JSON.parse(v) as ImageFailure[])));
    return statusFromHash(runId, h, Date.now(), failures.slice(0, MAX_FAILURES_LISTED), shards);
  }

  /**
   * Every recorded failure of the run's first `shards` shards, shard by shard in manifest order;
   * holds one batch of shards in memory at a time.
   */
  async *failures(runId: string, shards: number, batch = 64): AsyncGenerator<ImageFailure> {
    for (let start = 0; start < shards; start += batch) {
      const fields = Array.from({ length: Math.min(batch, shards - start) }, (_, i) => String(start + i));
      for (const v of await this.redis.hmget(this.failuresKey(runId), ...fields)) {
        if (v !== null) yield* JSON.parse(v) as ImageFailure[];
      }
    }
  }

  /** Newest first. */
  async list(limit = 20): Promise<string[]> {
    return this.redis.zrevrange(`${this.prefix}:runs`, 0, limit - 1);
  }
}

/** How a run ends well: a training run's results, or a prediction run's. */
export type RunEnd =
  | { stage: 'published'; metrics: RunMetrics; model: PublishedModel }
  | { stage: 'done'; predictions: PredictionsSummary };

/** The run hash's fields that record `end` (besides its stage and times). */
function endFields(end: RunEnd): Record<string, string> {
  return end.stage === 'published'
    ? { metrics: JSON.stringify(end.metrics), model: JSON.stringify(end.model) }
    : { predictions: JSON.stringify(end.predictions) };
}

function json<T>(s: string | undefined, fallback: T): T {
  return s === undefined ? fallback : (JSON.parse(s) as T);
}

/** Every `shard:<n>` field of a run hash, by shard number. */
function shardCounts(h: Record<string, string>): ShardCounts[] {
  const out: ShardCounts[] = [];
  for (const [field, value] of Object.entries(h)) {
    if (!field.startsWith('shard:')) continue;
    const p = JSON.parse(value) as ShardProgress;
    out.push({
      shard: Number(field.slice(6)),
      done: p.done,
      failed: p.failed,
      complete: p.complete,
      ...(p.cache ? { cache: p.cache } : {}),
    });
  }
  return out.sort((a, b) => a.shard - b.shard);
}

/**
 * Pure: the status a user sees, from the run hash's fields and the page of failures read beside
 * it (the first MAX_FAILURES_LISTED, see RunStore.get). Exported for unit tests.
 */
export function statusFromHash(
  runId: string,
  h: Record<string, string>,
  nowMs: number,
  failures: readonly ImageFailure[] = [],
  shards: readonly ShardCounts[] = shardCounts(h),
): RunStatus {
  let done = 0;
  let failed = 0;
  let shardsDone = 0;
  let failuresTotal = 0;
  let cache: { hits: number; misses: number } | null = null;
  for (const p of shards) {
    done += p.done;
    failed += p.failed;
    if (p.cache) {
      cache ??= { hits: 0, misses: 0 };
      cache.hits += p.cache.hits;
      cache.misses += p.cache.misses;
    }
    if (p.complete) {
      shardsDone++;
      failuresTotal += p.failed;
    }
  }
  const total = Number(h.total ?? 0);
  const started = Number(h.extractStartedAt ?? 0);
  const processed = done + failed;
  // Images are extracted (training) or classified (prediction) in one stage each.
  const extracting = isImageStage(h.stage ?? '');
  // Extraction throughput: up to now while extracting, then up to the last shard update (so
  // training and evaluation, or collecting, do not dilute it).
  const end = extracting ? nowMs : Number(h.lastShardAt ?? h.finishedAt ?? nowMs);
  const elapsed = (end - started) / 1000;
  const rate = started > 0 && processed > 0 && elapsed > 0 ? processed / elapsed : null;
  return {
    runId,
    request: JSON.parse(h.request!),
    stage: (h.stage ?? 'queued') as Stage,
    createdAt: h.createdAt ?? '',
    updatedAt: h.updatedAt ?? '',
    total,
    shards: Number(h.shards ?? 0),
    shardsDone,
    done,
    failed,
    failures: failures.slice(0, MAX_FAILURES_LISTED),
    failuresTotal,
    skipped: json(h.skipped, []),
    skippedTotal: Number(h.skippedTotal ?? 0),
    classes: json(h.classes, []),
    counts: json(h.counts, {}),
    imagesPerSecond: rate,
    etaSeconds: extracting && rate ? Math.max(0, (total - processed) / rate) : null,
    engine: h.engine ?? null,
    backend: h.backend ?? null,
    engineInput: h.engineInput ?? null,
    metrics: json(h.metrics, null),
    model: json(h.model, null),
    predictions: json(h.predictions, null),
    cache,
    error: json(h.error, null),
  };
}
