/**
 * Prometheus `/metrics`: what Redis says about the pipeline at scrape time. Nothing is counted in
 * this process (an API may restart, several may run): queue figures come from BullMQ itself
 * (`Queue.exportPrometheusMetrics`: job counts by state, completed and failed totals), the rest
 * from the run hashes and job records in Redis. A scrape reads a bounded amount whatever the
 * history (the newest RECENT_RUNS runs, the last RECENT_JOBS completed jobs of each queue) and is
 * cached for CACHE_MS, so frequent scrapers do not multiply the load.
 */
import { Gauge, Registry } from 'prom-client';
import type { Client } from '../../cli/client.js';
import { listWorkers } from '../../cli/client.js';
import { makeQueue, QUEUE_NAMES } from '../../shared/queues.js';
import { KIND_QUEUES } from '../../shared/worker-kit.js';

/** Runs (newest first) whose state a scrape reads. */
export const RECENT_RUNS = 200;
/** Completed jobs per queue whose durations a scrape reads. */
export const RECENT_JOBS = 100;
const CACHE_MS = 5000;
/** Distinct failure reasons reported per scrape; the rest are counted as `other`. */
const MAX_REASONS = 20;

/**
 * A failure reason's class, for a label: its text up to the first `:` or `(`, digits as N, at
 * most 60 characters — "image too large: 20000×20000 pixels…" → "image too large". Reasons quote
 * keys and sizes; their classes are few.
 */
export function reasonClass(reason: string): string {
  const head = reason.split(/[:(]/, 1)[0]!.replace(/\d+/g, 'N').replace(/\s+/g, ' ').trim();
  return head === '' ? 'other' : head.slice(0, 60);
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/**
 * BullMQ's per-queue texts as one exposition: each metric family's HELP and TYPE once, its samples
 * together (Prometheus refuses a family declared twice, which concatenating the texts would do).
 */
export function mergeFamilies(texts: readonly string[]): string {
  const families = new Map<string, { head: string[]; samples: string[] }>();
  const family = (name: string) => {
    let f = families.get(name);
    if (!f) {
      f = { head: [], samples: [] };
      families.set(name, f);
    }
    return f;
  };
  for (const text of texts) {
    for (const line of text.split('\n')) {
      const m = /^# (HELP|TYPE) (\S+)/.exec(line);
      if (m) {
        const f = family(m[2]!);
        if (!f.head.some((h) => h.startsWith(`# ${m[1]} `))) f.head.push(line);
      } else if (line.trim() !== '' && !line.startsWith('#')) {
        family(/^[^{\s]+/.exec(line)![0]).samples.push(line);
      }
    }
  }
  return `${[...families.values()].map((f) => [...f.head, ...f.samples].join('\n')).join('\n')}\n`;
}

export class Metrics {
  private readonly registry = new Registry();
  private cached: { at: number; text: Promise<string> } | undefined;
  private readonly runs = new Gauge({
    name: 'deepfeat_runs',
    help: `Runs among the newest ${RECENT_RUNS} in Redis, by stage (published, done and failed are final)`,
    labelNames: ['stage'],
    registers: [this.registry],
  });
  private readonly images = new Gauge({
    name: 'deepfeat_run_images',
    help: `Images of the newest ${RECENT_RUNS} runs in Redis, by state (processed = extracted or classified)`,
    labelNames: ['state'],
    registers: [this.registry],
  });
  private readonly failures = new Gauge({
    name: 'deepfeat_run_image_failures',
    help: `Failed images listed in the newest ${RECENT_RUNS} runs' statuses, by reason class`,
    labelNames: ['reason'],
    registers: [this.registry],
  });
  private readonly jobSeconds = new Gauge({
    name: 'deepfeat_job_duration_seconds',
    help: `Processing time of the last ${RECENT_JOBS} completed jobs per queue (plan, train, evaluate, collect: one job per run, so the stage's duration; extract, predict: one shard)`,
    labelNames: ['queue', 'quantile'],
    registers: [this.registry],
  });
  private readonly engines = new Gauge({
    name: 'deepfeat_engine_runs',
    help: `Runs among the newest ${RECENT_RUNS} whose images ran on this engine and backend`,
    labelNames: ['engine', 'backend'],
    registers: [this.registry],
  });
  private readonly workers = new Gauge({
    name: 'deepfeat_workers',
    help: 'Live worker processes by kind (BullMQ worker connections to Redis)',
    labelNames: ['kind'],
    registers: [this.registry],
  });
  private readonly scrapeSeconds = new Gauge({
    name: 'deepfeat_metrics_scrape_seconds',
    help: 'Time the last scrape took to read Redis',
    registers: [this.registry],
  });

  constructor(private readonly client: Client) {}

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition text; cached for a few seconds. */
  render(now = Date.now()): Promise<string> {
    if (this.cached && now - this.cached.at < CACHE_MS) return this.cached.text;
    const text = this.collect();
    this.cached = { at: now, text };
    text.catch(() => (this.cached = undefined));
    return text;
  }

  private async collect(): Promise<string> {
    const started = process.hrtime.bigint();
    const client = this.client;
    if (!client.queues || !client.runs || !client.redis) return '';
    const queueTexts: string[] = [];
    for (const g of [this.runs, this.images, this.failures, this.jobSeconds, this.engines, this.workers]) g.reset();
    for (const q of QUEUE_NAMES) {
      const queue = makeQueue(client.queues, q);
      try {
        queueTexts.push(await queue.exportPrometheusMetrics());
        const jobs = await queue.getJobs(['completed'], 0, RECENT_JOBS - 1);
        const secs = jobs
          .filter((j) => j?.processedOn && j.finishedOn)
          .map((j) => (j.finishedOn! - j.processedOn!) / 1000)
          .sort((a, b) => a - b);
        if (secs.length > 0) {
          for (const [label, qv] of [
            ['0.5', 0.5],
            ['0.95', 0.95],
            ['1', 1],
          ] as const) {
            this.jobSeconds.set({ queue: q, quantile: label }, quantile(secs, qv));
          }
        }
      } finally {
        await queue.close();
      }
    }
    const ids = await client.runs.list(RECENT_RUNS);
    const reasons = new Map<string, number>();
    let processed = 0;
    let failed = 0;
    let total = 0;
    for (const id of ids) {
      const s = await client.runs.get(id);
      if (!s) continue;
      this.runs.inc({ stage: s.stage });
      processed += s.done;
      failed += s.failed;
      total += s.total;
      if (s.engine) this.engines.inc({ engine: s.engine, backend: s.backend ?? '' });
      for (const f of s.failures) {
        const c = reasonClass(f.reason);
        const key = reasons.has(c) || reasons.size < MAX_REASONS ? c : 'other';
        reasons.set(key, (reasons.get(key) ?? 0) + 1);
      }
    }
    this.images.set({ state: 'processed' }, processed);
    this.images.set({ state: 'failed' }, failed);
    this.images.set({ state: 'planned' }, total);
    for (const [reason, n] of reasons) this.failures.set({ reason }, n);
    const live = await listWorkers(client);
    for (const kind of KIND_QUEUES.keys()) this.workers.set({ kind }, live.filter((w) => w.kind === kind).length);
    this.scrapeSeconds.set(Number(process.hrtime.bigint() - started) / 1e9);
    return `${await this.registry.metrics()}\n${mergeFamilies(queueTexts)}`;
  }
}
