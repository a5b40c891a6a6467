/**
 * cli/progress.ts with stand-in streams: plain lines off a terminal (on a stage change, else at
 * most one per interval, never a carriage return), a cli-progress bar on a terminal.
 */
import test from 'ava';
import { runProgress } from '../cli/progress.js';
import type { RunStatus } from '../shared/run-state.js';

function status(stage: RunStatus['stage'], done: number, total: number, extra: Partial<RunStatus> = {}): RunStatus {
  return { stage, done, failed: 0, total, imagesPerSecond: null, etaSeconds: null, ...extra } as RunStatus;
}

test('off a terminal: a line per stage change, and at most one per interval within a stage', (t) => {
  let out = '';
  let now = 0;
  const p = runProgress({ isTTY: false, write: (s) => (out += s) }, { intervalMs: 5000, now: () => now });
  p.update(status('queued', 0, 0));
  p.update(status('queued', 0, 0)); // unchanged: nothing
  p.update(status('extracting', 0, 100)); // new stage: at once
  now = 1000;
  p.update(status('extracting', 10, 100)); // within the interval: held back
  now = 6000;
  p.update(status('extracting', 60, 100, { failed: 2, imagesPerSecond: 12.34, etaSeconds: 3 }));
  now = 6500;
  p.update(status('published', 100, 100));
  p.stop();
  t.deepEqual(out.split('\n'), [
    'queued 0/0 images',
    'extracting 0/100 images',
    'extracting 62/100 images, 2 failed, 12.3 images/s, eta 3s',
    'published 100/100 images',
    '',
  ]);
  t.notRegex(out, /[\r\x1b]/);
});

test('on a terminal: a progress bar with the stage and counts', (t) => {
  let out = '';
  const tty = {
    isTTY: true,
    columns: 120,
    write: (s: string) => {
      out += s;
      return true;
    },
    cursorTo: () => true,
    clearLine: () => true,
    moveCursor: () => true,
    on: () => tty,
    removeListener: () => tty,
  };
  const p = runProgress(tty);
  p.update(status('extracting', 10, 40));
  p.update(status('extracting', 30, 40));
  p.stop();
  t.regex(out, /extracting\s+\|[█░]+\| 30\/40 images/);
});

test('stage text from the run store cannot inject terminal controls', (t) => {
  let out = '';
  const p = runProgress({ isTTY: false, write: (s) => (out += s) });
  p.update(status('\x1b[2Jevil' as RunStatus['stage'], 0, 0));
  t.notRegex(out, /\x1b/);
  t.regex(out, /\\x1b\[2Jevil/);
});
