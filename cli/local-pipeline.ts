/**
 * The whole pipeline on this machine for as long as one command runs: `npm run demo`, and
 * `deepfeat run … --local` / `deepfeat predict … s3://… --local`. redis-server (unless REDIS_URL
 * is set) and the embedded S3 server (unless S3_ENDPOINT is set) as in local-stack.ts, then the
 * workers as separate processes — planner, trainer, evaluator and extractors, the cores shared
 * among the extractors — each `deepfeat worker KIND`, exactly as users start them on their hosts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../shared/config.js';
import { createClient, listWorkers, type Client } from './client.js';
import { ConfigError } from '../shared/errors.js';
import { LocalStackError, startRedis, startS3Server } from './local-stack.js';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));

/** How long workers may take to connect (each loads its libraries, an extractor its engine). */
const WORKERS_START_MS = 60_000;

export interface LocalServicesOptions {
  /** Folder for Redis's data (`redis/`) and the embedded S3 store (`s3/`); Redis in a temporary folder when unset. */
  dataDir?: string;
  /** Serve `dataDir/s3` when S3_ENDPOINT is unset: always (the demo creates it), or only if it exists (left by a demo). */
  embeddedS3: 'always' | 'if-present';
  say: (line: string) => void;
}

export interface LocalServices {
  /** The environment with REDIS_URL and, where the store is served here, S3_ENDPOINT and its keys. */
  readonly env: NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

/** Redis and S3 for this command, where the environment names none. */
export async function startLocalServices(base: NodeJS.ProcessEnv, opts: LocalServicesOptions): Promise<LocalServices> {
  const env: NodeJS.ProcessEnv = { ...base };
  const stops: Array<() => Promise<void>> = [];
  const stop = async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  try {
    if (!env.REDIS_URL) {
      const keep = opts.dataDir !== undefined;
      const redis = await startRedis(keep ? { dir: resolve(opts.dataDir!, 'redis') } : {});
      stops.push(() => redis.stop());
      env.REDIS_URL = redis.url;
      const where = keep ? `data in ${opts.dataDir}/redis` : 'data in a temporary folder';
      opts.say(`redis      started redis-server at ${redis.url} (${where})`);
    }
    const store = opts.dataDir ? resolve(opts.dataDir, 's3') : undefined;
    if (!env.S3_ENDPOINT && store && (opts.embeddedS3 === 'always' || existsSync(store))) {
      const s3 = await startS3Server({ dir: store });
      stops.push(() => s3.stop());
      env.S3_ENDPOINT = s3.endpoint;
      env.S3_ACCESS_KEY_ID ??= 'S3RVER';
      env.S3_SECRET_ACCESS_KEY ??= 'S3RVER';
      opts.say(`storage    embedded S3 server at ${s3.endpoint} (data in ${opts.dataDir}/s3)`);
    }
  } catch (err) {
    await stop();
    // A program that is not installed is the user's to fix (exit 2), as a bad setting is.
    if (err instanceof LocalStackError && err.missing) throw new ConfigError([err.message]);
    throw err;
  }
  return { env, stop };
}

/** A client for the services' environment; if none can be made (a bad setting), the services are stopped. */
export async function clientOf(services: LocalServices): Promise<Client> {
  try {
    return createClient(loadConfig(services.env));
  } catch (err) {
    await services.stop();
    throw err;
  }
}

export interface LocalWorkers {
  /** The kinds started, one process each. */
  readonly kinds: readonly string[];
  /** Why the workers cannot serve, if one of them has exited (its own error is on stderr above). */
  exited(): string | undefined;
  /** SIGTERM to every worker, and wait until each has exited (they finish or hand back their jobs). */
  stop(): Promise<void>;
}

/**
 * Set to this process's id in the workers' environment: a worker whose parent is no longer that
 * process stops as on SIGTERM (cli/main.ts), so workers never outlive the command that started them.
 */
export const EXIT_WITH_PARENT = 'DEEPFEAT_EXIT_WITH_PARENT';

/**
 * In a worker process started with EXIT_WITH_PARENT (by `deepfeat demo`, a `--local` command or a
 * benchmark): end with that parent, however it ends (even SIGKILL, which leaves it no chance to
 * stop us): once re-parented, stop as on SIGTERM.
 */
export function exitWithParent(): void {
  const parent = parentToWatch(process.env[EXIT_WITH_PARENT]);
  if (parent === undefined) return;
  setInterval(() => process.ppid !== parent && process.kill(process.pid, 'SIGTERM'), 1000).unref();
}

/**
 * EXIT_WITH_PARENT's process id, or undefined: only a plain decimal id up to Linux's largest.
 * Anything else ("1e3", "0x10", a 20-digit number) names no process this one could have as its
 * parent; read as a number it would make the worker stop itself at once.
 */
export function parentToWatch(value: string | undefined): number | undefined {
  if (value === undefined || !/^[1-9][0-9]{0,6}$/.test(value)) return undefined;
  const pid = Number(value);
  return pid <= MAX_PID ? pid : undefined;
}

/** The largest process id Linux gives (pid_max's ceiling, 2^22). */
const MAX_PID = 2 ** 22;

/** Extractor processes by default: one per core. */
export const DEFAULT_LOCAL_EXTRACTORS = Math.max(1, availableParallelism());

/**
 * Starts planner, trainer, evaluator and `extractors` extractor processes with `env`. Their output
 * goes to this process's stderr (stdout is the command's result); their log level is LOG_LEVEL,
 * else `opts.logLevel` (default warn).
 */
export function startLocalWorkers(
  env: NodeJS.ProcessEnv,
  extractors: number,
  say: (line: string) => void,
  opts: { logLevel?: string } = {},
): LocalWorkers {
  // Share the cores among the extractors rather than oversubscribe them.
  const threadsPerExtractor = Math.max(1, Math.floor(availableParallelism() / extractors));
  const kinds = ['planner', 'trainer', 'evaluator', ...Array.from({ length: extractors }, () => 'extractor')];
  const children: ChildProcess[] = kinds.map((kind) =>
    spawn(process.execPath, ['--import', 'tsx', resolve(ROOT, 'cli/main.ts'), 'worker', kind], {
      cwd: ROOT,
      env: {
        ...env,
        LOG_LEVEL: env.LOG_LEVEL ?? opts.logLevel ?? 'warn',
        [EXIT_WITH_PARENT]: String(process.pid),
        DEEPFEAT_ENGINE_THREADS: env.DEEPFEAT_ENGINE_THREADS ?? String(threadsPerExtractor),
      },
      stdio: ['ignore', 2, 2],
    }),
  );
  say(`workers    ${kinds.length} processes: planner, trainer, evaluator, ${extractors} extractor(s)`);
  let stopping = false;
  return {
    kinds,
    exited: () => {
      if (stopping) return undefined;
      const i = children.findIndex((c) => c.exitCode !== null || c.signalCode !== null);
      if (i < 0) return undefined;
      const c = children[i]!;
      return `the ${kinds[i]} worker exited (${c.signalCode ?? `code ${c.exitCode}`}); its error is printed above`;
    },
    stop: async () => {
      stopping = true;
      for (const c of children) c.kill('SIGTERM');
      await Promise.all(
        children.map((c) =>
          c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once('exit', r)),
        ),
      );
    },
  };
}

/** Resolves once every worker is connected to the client's Redis; throws if one exits, or after a minute. */
export async function waitForWorkers(client: Client, workers: LocalWorkers): Promise<void> {
  const deadline = Date.now() + WORKERS_START_MS;
  while (Date.now() < deadline) {
    const exited = workers.exited();
    if (exited) throw new Error(exited);
    if ((await listWorkers(client)).length >= workers.kinds.length) return;
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error('workers did not start within 60 s; run `deepfeat worker all` by hand to see why');
}
