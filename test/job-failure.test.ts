/**
 * A job that fails on every attempt with a transient fault, on real parts (redis-server, a
 * planner process whose S3 endpoint refuses connections): the run's error, written after the
 * last attempt, says how many attempts were made and never "will retry"; the worker logs each
 * failure through pino's error serializer (type, code, stack), saying whether a retry follows.
 */
import test from 'ava';
import { createServer } from 'node:net';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { RAW_PIXELS } from '../shared/features.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

let dep: Deployment;
let planner: WorkerProcess | undefined;

/** A port nothing listens on: connections to it are refused at once. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise((r) => server.close(r));
  return port;
}

test.before(async () => {
  dep = await deployment({ DEEPFEAT_JOB_ATTEMPTS: '2' });
});

test.after.always(async () => {
  await planner?.stop('SIGKILL');
  await dep?.close();
});

test('after the last attempt the run says how many attempts failed, not that it will retry', async (t) => {
  t.timeout(90_000);
  const env = {
    ...dep.env,
    S3_ENDPOINT: `http://127.0.0.1:${await closedPort()}`,
    S3_MAX_ATTEMPTS: '1',
    LOG_LEVEL: 'info',
  };
  planner = spawnWorker(env, 'planner');
  const runId = await enqueueRun(dep.client, {
    source: `s3://${dep.dataBucket}/pets/`,
    name: 'refused',
    features: RAW_PIXELS,
  });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  t.is(s.stage, 'failed');
  t.is(s.error?.code, 'STORAGE_TRANSIENT');
  t.regex(
    s.error?.message ?? '',
    /^plan failed after 2 attempts: storage unavailable for "s3:\/\/[^ ]+" \(.*ECONNREFUSED.*\): check that the S3 endpoint is up/,
  );
  t.notRegex(s.error?.message ?? '', /will retry/);

  // The worker's log lines for the two failures: structured errors, the first one retried.
  let failures: Array<{ err: { type: string; code: string; stack: string }; retried: boolean; attempt: number }> = [];
  for (let i = 0; i < 100 && failures.length < 2; i++) {
    failures = planner
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l))
      .filter((l) => l.msg === 'job failed');
    if (failures.length < 2) await new Promise((r) => setTimeout(r, 100));
  }
  t.deepEqual(
    failures.map((f) => [f.attempt, f.retried, f.err.type, f.err.code]),
    [
      [1, true, 'StorageError', 'STORAGE_TRANSIENT'],
      [2, false, 'StorageError', 'STORAGE_TRANSIENT'],
    ],
  );
  t.regex(failures[0]!.err.stack, /\n\s+at /, 'the stack is kept');
});
