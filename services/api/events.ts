/**
 * Server-sent events of runs: `GET /v1/runs/:id/events` streams a run's stage and progress until
 * it ends. One poll per run, not per stream: every open stream of a run shares one timer that
 * reads the run's status (the same `getStatus` as `deepfeat status`: one HGETALL, plus one HMGET
 * once shards have failures) every `intervalMs`, and each stream gets an event only when what it
 * shows changed. So Redis load grows with the runs watched, not with the people watching.
 */
import type { RunStatus } from '../../shared/run-state.js';

/** What one event carries: the progress fields of a status (the whole status is GET /v1/runs/:id). */
export interface RunProgress {
  runId: string;
  stage: RunStatus['stage'];
  total: number;
  done: number;
  failed: number;
  shards: number;
  shardsDone: number;
  imagesPerSecond: number | null;
  etaSeconds: number | null;
  engine: string | null;
  error: RunStatus['error'];
  model: RunStatus['model'];
  updatedAt: string;
}

export function progressOf(s: RunStatus): RunProgress {
  return {
    runId: s.runId,
    stage: s.stage,
    total: s.total,
    done: s.done,
    failed: s.failed,
    shards: s.shards,
    shardsDone: s.shardsDone,
    imagesPerSecond: s.imagesPerSecond,
    etaSeconds: s.etaSeconds,
    engine: s.engine,
    error: s.error,
    model: s.model,
    updatedAt: s.updatedAt,
  };
}

/** A stream's view of a run: called with each new status, and once with `end` when the run ends or cannot be read. */
export interface Subscriber {
  status(s: RunStatus): void;
  end(reason: { status?: RunStatus; error?: unknown }): void;
}

interface Watch {
  readonly subscribers: Set<Subscriber>;
  timer: NodeJS.Timeout | undefined;
  polling: boolean;
}

export class RunWatcher {
  private readonly watches = new Map<string, Watch>();
  /** Status reads made, for tests and the bench (one per run per interval, whatever the streams). */
  polls = 0;

  constructor(
    private readonly read: (runId: string) => Promise<RunStatus>,
    private readonly isTerminal: (s: RunStatus) => boolean,
    private readonly intervalMs: number,
  ) {}

  /** Open streams over all runs. */
  get streams(): number {
    let n = 0;
    for (const w of this.watches.values()) n += w.subscribers.size;
    return n;
  }

  /** Adds a stream to the run's shared poll; returns the function that removes it. */
  subscribe(runId: string, sub: Subscriber): () => void {
    let w = this.watches.get(runId);
    if (!w) {
      w = { subscribers: new Set(), timer: undefined, polling: false };
      this.watches.set(runId, w);
      this.schedule(runId, w);
    }
    w.subscribers.add(sub);
    return () => this.unsubscribe(runId, sub);
  }

  private unsubscribe(runId: string, sub: Subscriber): void {
    const w = this.watches.get(runId);
    if (!w) return;
    w.subscribers.delete(sub);
    if (w.subscribers.size === 0) {
      clearTimeout(w.timer);
      this.watches.delete(runId);
    }
  }

  private schedule(runId: string, w: Watch): void {
    w.timer = setTimeout(() => void this.poll(runId, w), this.intervalMs);
  }

  private async poll(runId: string, w: Watch): Promise<void> {
    if (w.polling || this.watches.get(runId) !== w) return;
    w.polling = true;
    this.polls++;
    try {
      const s = await this.read(runId);
      const subs = [...w.subscribers];
      if (this.isTerminal(s)) {
        this.watches.delete(runId);
        for (const sub of subs) sub.end({ status: s });
        return;
      }
      for (const sub of subs) sub.status(s);
    } catch (error) {
      this.watches.delete(runId);
      for (const sub of [...w.subscribers]) sub.end({ error });
      return;
    } finally {
      w.polling = false;
    }
    if (this.watches.get(runId) === w) this.schedule(runId, w);
  }

  /** Ends every stream (server shutdown). */
  close(): void {
    for (const [, w] of this.watches) {
      clearTimeout(w.timer);
      for (const sub of w.subscribers) sub.end({});
    }
    this.watches.clear();
  }
}

/** One SSE frame. `data` is JSON on one line (JSON.stringify escapes every line break), so it cannot end the frame early. */
export function sseFrame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}
