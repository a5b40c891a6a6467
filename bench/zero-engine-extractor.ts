/**
 * Bench only: an extractor process whose engine returns zeros at no cost (zero-engine-thread-main.ts),
 * otherwise exactly `deepfeat worker extractor`: the same config, queues, S3 fetches, decoder
 * processes, hand-off to the engine thread, shard writes and run-state updates. bench/feed.ts
 * starts it as `node --import tsx bench/zero-engine-extractor.ts`; users cannot select the zero
 * engine (it is swapped in by code here, not by any flag, request or environment variable).
 */
import { rename, writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import path from 'node:path';
import { startWorkers } from '../cli/workers.js';
import { useEngineThreadModule } from '../services/extractor/resources.js';
import { loadConfig } from '../shared/config.js';

useEngineThreadModule(new URL('./zero-engine-thread-main.ts', import.meta.url));
startWorkers(loadConfig(), 'extractor', 1);
// End with the bench (bench/stack.ts sets DEEPFEAT_EXIT_WITH_PARENT), however it ends. Imported
// as it comes: a --baseline tree (bench/feed.ts) may predate exitWithParent, or the module.
await import('../cli/local-pipeline.js')
  .then((m: { exitWithParent?: () => void }) => m.exitWithParent?.())
  .catch(() => undefined);

// Where the main thread's CPU goes, for bench/feed.ts: SIGUSR2 starts V8's sampling profiler,
// the next SIGUSR2 stops it and writes profile-<n>.cpuprofile into FEED_PROFILE_DIR (a bench
// variable, read only here). So the profile covers the timed runs, not start-up or warm-up.
const profileDir = process.env.FEED_PROFILE_DIR;
if (profileDir) {
  const session = new Session();
  session.connect();
  let profiling = false;
  let n = 0;
  process.on('SIGUSR2', async () => {
    if (!profiling) {
      profiling = true;
      await session.post('Profiler.enable');
      await session.post('Profiler.setSamplingInterval', { interval: 500 });
      await session.post('Profiler.start');
      return;
    }
    profiling = false;
    const { profile } = await session.post('Profiler.stop');
    const file = path.join(profileDir, `profile-${n++}.cpuprofile`);
    await writeFile(`${file}.tmp`, JSON.stringify(profile));
    await rename(`${file}.tmp`, file); // whole, or not there: the bench waits for the name
  });
}
await new Promise(() => undefined); // runs until SIGTERM closes it (closeOnSignal)
