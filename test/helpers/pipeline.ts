/**
 * Helpers for integration and end-to-end tests: a per-test deployment (own queue prefix and
 * bucket on the shared test Redis and S3), a client, and real worker processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config } from '../../shared/config.js';
import type { RunStatus } from '../../shared/run-state.js';
import { getObjectJson, putObject } from '../../shared/s3.js';
import { createClient, isTerminal, type Client } from '../../cli/client.js';
import { getRedis, getS3, makeS3Client, uniqueName, type TestRedis, type TestS3 } from './services.js';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

export interface Deployment {
  readonly env: Record<string, string>;
  readonly config: Config;
  readonly client: Client;
  readonly dataBucket: string;
  readonly redis: TestRedis;
  readonly s3: TestS3;
  put(key: string, body: Uint8Array | string): Promise<void>;
  close(): Promise<void>;
}

/** A fresh deployment: unique Redis key prefix, artifacts bucket and data bucket. */
export async function deployment(extraEnv: Record<string, string> = {}): Promise<Deployment> {
  const bucket = uniqueName('artifacts');
  const dataBucket = uniqueName('data');
  const [redis, s3] = await Promise.all([getRedis(), getS3({ buckets: [bucket, dataBucket] })]);
  const creds = makeS3Client(s3.endpoint).config.credentials;
  const { accessKeyId, secretAccessKey } = await creds();
  const env: Record<string, string> = {
    REDIS_URL: redis.url,
    S3_ENDPOINT: s3.endpoint,
    S3_ACCESS_KEY_ID: accessKeyId,
    S3_SECRET_ACCESS_KEY: secretAccessKey,
    DEEPFEAT_BUCKET: bucket,
    DEEPFEAT_QUEUE_PREFIX: uniqueName('t'),
    LOG_LEVEL: 'warn',
    ...extraEnv,
  };
  const config = loadConfig(env);
  const client = createClient(config);
  return {
    env,
    config,
    client,
    dataBucket,
    redis,
    s3,
    put: (key, body) => putObject(client.s3, dataBucket, key, body),
    async close() {
      await client.close();
      await Promise.all([redis.stop(), s3.stop()]);
    },
  };
}

export interface WorkerProcess {
  readonly child: ChildProcess;
  readonly output: () => string;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Starts `deepfeat worker KIND` as a real child process with the deployment's environment. */
export function spawnWorker(env: Record<string, string>, kind: string): WorkerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), 'worker', kind], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    output: () => out,
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Runs the CLI to completion; returns exit code and output. */
export function runCli(
  env: Record<string, string>,
  args: string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = spawn(process.execPath, ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), ...args], {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // 'close', not 'exit': 'exit' can come before the last output is read from the pipes, and a
    // test then sees an empty stderr (seen once in CI under load).
    child.once('close', (code) => res({ code, stdout, stderr }));
  });
}

/**
 * The run's final status as stored in runs/<id>/run.json. The planner writes a first run.json; the
 * evaluator (or collector) rewrites it just after marking the run ended in Redis, so a test that
 * has seen the run end waits here for the rewrite instead of reading the planner's version.
 */
export async function storedFinalStatus(dep: Deployment, runId: string, timeoutMs = 60_000): Promise<RunStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stored = await getObjectJson<RunStatus>(dep.client.s3, dep.config.bucket, `runs/${runId}/run.json`).catch(
      () => undefined,
    );
    if (stored && isTerminal(stored)) return stored;
    if (Date.now() > deadline) throw new Error(`runs/${runId}/run.json did not get the run's final status`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
