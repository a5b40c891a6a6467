/**
 * Live state of runs, in one Redis hash per run (`<prefix>:run:<id>`). Every write is
 * idempotent: per-shard progress is a field of its own that a retried shard overwrites, so
 * counts never double. The evaluator copies the final state to runs/<id>/run.json, which is
 * what `status` reads once Redis no longer has the run.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { RunRequest } from './queues.js';

export type Stage = 'queued' | 'planning' | 'extracting' | 'training' | 'evaluating' | 'published' | 'failed';

export interface ImageFailure {
  readonly key: string;
  readonly reason: string;
}

export interface PublishedModel {
  readonly name: string;
  readonly version: string;
  readonly uri: string;
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
}

export interface RunStatus {
  readonly runId: string;
  readonly request: RunRequest;
  readonly stage: Stage;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly total: number;
  readonly shards: number;
  readonly shardsDone: number;
  readonly done: number;
  readonly failed: number;
  readonly failures: readonly ImageFailure[];
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
  readonly error: { code: string; message: string } | null;
}

/** Sortable, unique run ids: r<yyyymmddhhmmss>-<6 hex>. */
export function newRunId(now = new Date()): string {
  const t = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return `r${t}-${randomBytes(3).toString('hex')}`;
}

export const RUN_ID_PATTERN = /^r\d{14}-[0-9a-f]{6}$/;

interface ShardProgress {
  done: number;
  failed: number;
  complete: boolean;
  engine?: string;
  backend?: string;
  /** Engine input size, 'WxH'. */
  input?: string;
}

/**
 * RunStore.fail as one Redis script. KEYS[1] the run hash; ARGV: code, error JSON, updatedAt.
 * Never leaves 'published'; an existing error is replaced only when it is INTERNAL and the new
 * one is not.
 */
const FAIL_SCRIPT = `
local stage = redis.call('HGET', KEYS[1], 'stage')
if stage == 'published' then return 0 end
local previous = redis.call('HGET', KEYS[1], 'error')
if previous and (ARGV[1] == 'INTERNAL' or cjson.decode(previous).code ~= 'INTERNAL') then return 0 end
redis.call('HSET', KEYS[1], 'stage', 'failed', 'error', ARGV[2], 'updatedAt', ARGV[3])
return 1
`;

export class RunStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(runId: string): string {
    return `${this.prefix}:run:${runId}`;
  }

  async create(runId: string, request: RunRequest): Promise<void> {
    const now = new Date().toISOString();
    await this.redis
      .multi()
      .hset(this.key(runId), { request: JSON.stringify(request), stage: 'queued', createdAt: now, updatedAt: now })
      .zadd(`${this.prefix}:runs`, Date.now(), runId)
      .exec();
  }

  async exists(runId: string): Promise<boolean> {
    return (await this.redis.exists(this.key(runId))) === 1;
  }

  /** Moves the run forward; never out of 'failed' or 'published' (a late retry must not undo them). */
  async setStage(runId: string, stage: Stage, fields: Record<string, string | number> = {}): Promise<void> {
    const current = await this.redis.hget(this.key(runId), 'stage');
    if ((current === 'failed' || current === 'published') && stage !== current) return;
    await this.redis.hset(this.key(runId), { ...fields, stage, updatedAt: new Date().toISOString() });
  }

  async setPlan(runId: string, plan: { total: number; shards: number; classes: string[]; counts: Record<string, Record<string, number>> }): Promise<void> {
    await this.redis.hset(this.key(runId), {
      total: plan.total,
      shards: plan.shards,
      classes: JSON.stringify(plan.classes),
      counts: JSON.stringify(plan.counts),
      extractStartedAt: Date.now(),
    });
    await this.setStage(runId, 'extracting');
  }

  async setShardProgress(runId: string, shard: number, p: ShardProgress, failures?: readonly ImageFailure[]): Promise<void> {
    const fields: Record<string, string> = { [`shard:${shard}`]: JSON.stringify(p) };
    if (failures) fields[`failures:${shard}`] = JSON.stringify(failures);
    if (p.engine) fields.engine = p.engine;
    if (p.backend) fields.backend = p.backend;
    if (p.input) fields.engineInput = p.input;
    fields.lastShardAt = String(Date.now());
    await this.redis.hset(this.key(runId), fields);
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
    await this.redis.eval(FAIL_SCRIPT, 1, this.key(runId), code, JSON.stringify({ code, message }), new Date().toISOString());
  }

  async setResult(runId: string, metrics: RunMetrics, model: PublishedModel): Promise<void> {
    await this.redis.hset(this.key(runId), { metrics: JSON.stringify(metrics), model: JSON.stringify(model) });
    await this.setStage(runId, 'published', { finishedAt: Date.now() });
  }

  async get(runId: string): Promise<RunStatus | undefined> {
    const h = await this.redis.hgetall(this.key(runId));
    if (!h.request) return undefined;
    return statusFromHash(runId, h, Date.now());
  }

  /** Newest first. */
  async list(limit = 20): Promise<string[]> {
    return this.redis.zrevrange(`${this.prefix}:runs`, 0, limit - 1);
  }
}

function json<T>(s: string | undefined, fallback: T): T {
  return s === undefined ? fallback : (JSON.parse(s) as T);
}

/** Pure: the status a user sees, from the hash fields. Exported for unit tests. */
export function statusFromHash(runId: string, h: Record<string, string>, nowMs: number): RunStatus {
  let done = 0;
  let failed = 0;
  let shardsDone = 0;
  const failures: ImageFailure[] = [];
  for (const [field, value] of Object.entries(h)) {
    if (field.startsWith('shard:')) {
      const p = JSON.parse(value) as ShardProgress;
      done += p.done;
      failed += p.failed;
      if (p.complete) shardsDone++;
    } else if (field.startsWith('failures:')) {
      failures.push(...(JSON.parse(value) as ImageFailure[]));
    }
  }
  failures.sort((a, b) => a.key.localeCompare(b.key));
  const total = Number(h.total ?? 0);
  const started = Number(h.extractStartedAt ?? 0);
  const processed = done + failed;
  const extracting = h.stage === 'extracting';
  // Extraction throughput: up to now while extracting, then up to the last shard update (so
  // training and evaluation time do not dilute it).
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
    failures,
    classes: json(h.classes, []),
    counts: json(h.counts, {}),
    imagesPerSecond: rate,
    etaSeconds: extracting && rate ? Math.max(0, (total - processed) / rate) : null,
    engine: h.engine ?? null,
    backend: h.backend ?? null,
    engineInput: h.engineInput ?? null,
    metrics: json(h.metrics, null),
    model: json(h.model, null),
    error: json(h.error, null),
  };
}
