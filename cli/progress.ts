/**
 * A run's progress while the CLI waits (`run --wait`, `status --watch`): a live bar (cli-progress)
 * when the stream is a terminal; otherwise — a log file, CI, a pipe — one plain line when the stage
 * changes and at most one every few seconds in between, so logs stay line by line instead of one
 * enormous line of carriage returns.
 */
import { Presets, SingleBar } from 'cli-progress';
import { isImageStage, type RunStatus } from '../shared/run-state.js';
import { terminalSafe } from '../shared/text.js';
import { formatDuration } from './format.js';

export interface RunProgress {
  update(s: RunStatus): void;
  /** Ends the bar (the cursor goes to a new line); the caller prints the final status. */
  stop(): void;
}

/** The stream the progress goes to: stderr, or a test's stand-in. */
export interface ProgressStream {
  write(text: string): unknown;
  readonly isTTY?: boolean;
}

/** Seconds between plain progress lines while the stage stays the same. */
export const PLAIN_PROGRESS_INTERVAL_MS = 5_000;

/** One line: `extracting 120/300 images, 2 failed, 45.1 images/s, eta 4s` (or `predicting …`). */
export function progressLine(s: RunStatus): string {
  const parts = [`${terminalSafe(s.stage)} ${s.done + s.failed}/${s.total} images`];
  if (s.failed > 0) parts.push(`${s.failed} failed`);
  if (s.imagesPerSecond) parts.push(`${s.imagesPerSecond.toFixed(1)} images/s`);
  if (s.etaSeconds !== null && Number.isFinite(s.etaSeconds) && isImageStage(s.stage))
    parts.push(`eta ${formatDuration(s.etaSeconds)}`);
  return parts.join(', ');
}

export function runProgress(
  stream: ProgressStream,
  options: { intervalMs?: number; now?: () => number } = {},
): RunProgress {
  return stream.isTTY
    ? barProgress(stream)
    : plainProgress(stream, options.intervalMs ?? PLAIN_PROGRESS_INTERVAL_MS, options.now ?? Date.now);
}

function plainProgress(stream: ProgressStream, intervalMs: number, now: () => number): RunProgress {
  let lastLine = '';
  let lastStage = '';
  let lastAt = -Infinity;
  return {
    update(s) {
      const line = progressLine(s);
      const t = now();
      if (line === lastLine) return;
      if (s.stage !== lastStage || t - lastAt >= intervalMs) {
        stream.write(`${line}\n`);
        lastLine = line;
        lastStage = s.stage;
        lastAt = t;
      }
    },
    stop() {},
  };
}

function barProgress(stream: ProgressStream): RunProgress {
  const bar = new SingleBar(
    {
      stream: stream as NodeJS.WritableStream,
      format: '{stage} |{bar}| {value}/{total} images{extra}',
      hideCursor: true,
      emptyOnZero: true,
      clearOnComplete: false,
    },
    Presets.shades_classic,
  );
  let started = false;
  return {
    update(s) {
      const extra = progressLine(s).split(', ').slice(1);
      const payload = {
        stage: terminalSafe(s.stage).padEnd(10),
        extra: extra.length > 0 ? ` | ${extra.join(' | ')}` : '',
      };
      if (!started) {
        bar.start(s.total, s.done + s.failed, payload);
        started = true;
      } else {
        bar.setTotal(s.total);
        bar.update(s.done + s.failed, payload);
      }
    },
    stop() {
      if (started) bar.stop();
    },
  };
}
