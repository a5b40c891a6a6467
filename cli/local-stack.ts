/**
 * Real services on one machine, for the single-machine default and for tests: a `redis-server`
 * from PATH and the embedded S3 server (s3rver behind a guard, see embedded-s3.ts), each on
 * 127.0.0.1 and a free port, each in a child process that dies with this one. Both can be stopped
 * and restarted on the same port and data folder, so tests can simulate an outage; the S3 server
 * is also restarted by itself if its process dies.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as fsConstants, existsSync } from 'node:fs';
import { access, mkdir, mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface LocalRedis {
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  /** SIGTERM and wait for exit; the port is free when this resolves. Removes a data folder it created. */
  stop(): Promise<void>;
  /** Stop, stay down for downMs (an outage), then start again on the same port and folder (with AOF on, the data survives). */
  restart(downMs?: number): Promise<void>;
  /** The server process's id while one runs (for diagnostics, and for benchmarks that read its CPU). */
  readonly pid: number | undefined;
}

export interface LocalS3 {
  /** `http://127.0.0.1:<port>`; use path-style addressing. */
  readonly endpoint: string;
  readonly port: number;
  /** SIGTERM and wait for exit; the port is free when this resolves. The data folder is kept. */
  stop(): Promise<void>;
  /** Stop, then start again on the same port and folder; stored objects survive. */
  restart(): Promise<void>;
  /** The server process's id while one runs (for diagnostics, and for tests that kill it). */
  readonly pid: number | undefined;
}

export interface StartRedisOptions {
  /** Data folder (AOF files); created if missing, never removed. Default: a new temporary folder, removed by stop(). */
  dir?: string;
  /** Default true: durability as in production, and restart() keeps the data. */
  appendonly?: boolean;
  /** Default: a free port. */
  port?: number;
}

export interface StartS3Options {
  /** Folder s3rver keeps buckets and objects in; created if missing, never removed. */
  dir: string;
  /** Default: a free port chosen by the server itself. */
  port?: number;
  /** Buckets to create (existing ones are kept). */
  buckets?: string[];
  /**
   * Access key ids to accept besides s3rver's own `S3RVER`. s3rver does not verify SigV4
   * signatures (any secret passes) but answers InvalidAccessKeyId for an id it does not know.
   */
  accessKeyIds?: string[];
  /** Largest PutObject / UploadPart body, refused from its Content-Length; default 5 GiB (S3's limit). */
  maxObjectBytes?: number;
  /**
   * Told when the server process died unexpectedly and is being started again (or, after too many
   * deaths in a row, is not). Default: one line on stderr.
   */
  onUnexpectedExit?: (message: string) => void;
}

/** How long a server may take to answer before start fails. */
const START_TIMEOUT_MS = 10_000;
/** How long stop() waits for a clean exit before SIGKILL. */
const STOP_TIMEOUT_MS = 10_000;
/** Child output kept for error messages. */
const MAX_LOG_CHARS = 8_000;
/** An S3 server that dies more often than this within RESTART_WINDOW_MS is left down. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;

const CHILD_SCRIPT = fileURLToPath(new URL('./local-stack-child.mjs', import.meta.url));

/** Thrown when a local service cannot be started; the message carries the child's output. */
export class LocalStackError extends Error {
  /** The program that is not installed, when that is the problem (the user's to fix, not a fault). */
  readonly missing: string | undefined;
  constructor(message: string, options: { cause?: unknown; missing?: string } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'LocalStackError';
    this.missing = options.missing;
  }
}

/** A port that was free a moment ago: bind 127.0.0.1:0, read the port, close. */
export async function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => (port ? resolve(port) : reject(new Error('no port assigned'))));
    });
  });
}

/** True if nothing holds 127.0.0.1:port (we can bind it). */
async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Start `redis-server` from PATH with production-like settings on 127.0.0.1. */
export async function startRedis(opts: StartRedisOptions = {}): Promise<LocalRedis> {
  const command = await findOnPath('redis-server');
  if (!command) {
    throw new LocalStackError(
      'redis-server not found on PATH: install it (apt-get install redis-server) or set REDIS_URL',
      { missing: 'redis-server' },
    );
  }
  const ownsDir = opts.dir === undefined;
  const dir = opts.dir ? path.resolve(opts.dir) : await mkdtemp(path.join(os.tmpdir(), 'deepfeat-redis-'));
  await mkdir(dir, { recursive: true });
  const appendonly = opts.appendonly ?? true;
  const argsFor = (port: number) => [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    appendonly ? 'yes' : 'no',
    '--appendfsync',
    'everysec',
    '--dir',
    dir,
    '--maxmemory-policy',
    'noeviction',
    '--daemonize',
    'no',
  ];

  let child: ManagedChild | undefined;
  const launch = async (port: number): Promise<void> => {
    const started = startChild('redis', { command, args: argsFor(port) }, `redis-server on 127.0.0.1:${port}`);
    child = started;
    try {
      const answering = waitForPong(port, started.startAborted);
      answering.catch(() => undefined); // if start fails, startFailed reports it; this one is moot
      await Promise.race([started.startFailed, answering]);
      started.markReady();
    } catch (err) {
      await started.stop();
      throw err;
    }
  };
  const halt = async (): Promise<void> => {
    const current = child;
    child = undefined;
    await current?.stop();
  };

  // A free port can be taken between findFreePort() and redis binding it (tests start many
  // servers at once): when we chose the port and it is held by someone else now, try another.
  let port = opts.port ?? (await findFreePort());
  for (let attempt = 1; ; attempt++) {
    try {
      await launch(port);
      break;
    } catch (err) {
      if (opts.port === undefined && attempt < 3 && !(await portIsFree(port))) {
        port = await findFreePort();
        continue;
      }
      if (ownsDir) await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    get pid() {
      return child?.pid;
    },
    async stop() {
      await halt();
      if (ownsDir) await rm(dir, { recursive: true, force: true });
    },
    async restart(downMs = 0) {
      await halt();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      await launch(port);
    },
  };
}

/**
 * Start the embedded S3 server (s3rver behind the guard of embedded-s3.ts) in a child node process
 * on 127.0.0.1. The child runs with `--openssl-legacy-provider`: s3rver encrypts ListObjectsV2
 * continuation tokens with a cipher OpenSSL 3 only offers there, so without it listing past 1000
 * keys fails. s3rver accepts unsigned requests: never expose it beyond loopback.
 *
 * If the child dies unexpectedly it is started again on the same port and folder (clients see a
 * short outage, which they retry), at most MAX_RESTARTS times within RESTART_WINDOW_MS.
 */
export async function startS3Server(opts: StartS3Options): Promise<LocalS3> {
  const dir = path.resolve(opts.dir);
  await mkdir(dir, { recursive: true });
  const buckets = opts.buckets ?? [];
  const accessKeyIds = opts.accessKeyIds ?? [];
  const maxObjectBytes = opts.maxObjectBytes;
  const report = opts.onUnexpectedExit ?? ((message: string) => process.stderr.write(`deepfeat: ${message}\n`));
  let port = opts.port ?? 0;

  let child: ManagedChild | undefined;
  let relaunching: Promise<void> | undefined;
  let deaths: number[] = [];
  const what = `s3rver (data in ${dir})`;

  const launch = async (): Promise<void> => {
    const started = startChild('s3', { dir, port, buckets, accessKeyIds, maxObjectBytes }, what);
    child = started;
    try {
      const message = await Promise.race([started.startFailed, started.firstMessage]);
      if (message.event !== 'listening' || typeof message.port !== 'number') {
        started.failStart(`sent an unexpected message ${JSON.stringify(message)}`);
      }
      port = message.port as number;
      started.markReady();
    } catch (err) {
      if (child === started) child = undefined;
      await started.stop();
      throw err;
    }
    void started.exited.then((status) => {
      if (child !== started) return; // stopped on purpose
      child = undefined;
      const now = Date.now();
      deaths = [...deaths.filter((t) => now - t < RESTART_WINDOW_MS), now];
      if (deaths.length > MAX_RESTARTS) {
        report(
          `${what} died ${deaths.length} times within ${RESTART_WINDOW_MS / 1000} s (last: ${status}); not restarting it`,
        );
        return;
      }
      report(`${what} died unexpectedly (${status}); starting it again on 127.0.0.1:${port}`);
      relaunching = launch()
        .catch((err: unknown) => {
          report(`${what} could not be started again: ${err instanceof Error ? err.message : String(err)}`);
        })
        .finally(() => {
          relaunching = undefined;
        });
    });
  };
  const halt = async (): Promise<void> => {
    await relaunching;
    const current = child;
    child = undefined;
    await current?.stop();
  };

  await launch();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    get pid() {
      return child?.pid;
    },
    stop: halt,
    async restart() {
      await halt();
      await launch();
    },
  };
}

// ---------------------------------------------------------------------------------------------

interface ChildMessage {
  event?: string;
  port?: unknown;
  pid?: unknown;
}

interface ManagedChild {
  readonly pid: number | undefined;
  /** First JSON line the child printed on stdout. */
  readonly firstMessage: Promise<ChildMessage>;
  /** Resolves when the child has gone, with how it ended ("exit code 1", "signal SIGKILL"). */
  readonly exited: Promise<string>;
  /**
   * Rejects with a LocalStackError (quoting the child's output) if the child exits, or cannot be
   * spawned, before markReady(), or if START_TIMEOUT_MS pass first (the child is then killed).
   */
  readonly startFailed: Promise<never>;
  /** Aborted when startFailed rejects, so pollers stop. */
  readonly startAborted: AbortSignal;
  /** Throws a LocalStackError naming the service and quoting its output. */
  failStart(reason: string): never;
  /** Start succeeded: stop the start timer and let this process exit without waiting for the child. */
  markReady(): void;
  /** SIGTERM, wait for exit (SIGKILL after STOP_TIMEOUT_MS). */
  stop(): Promise<void>;
}

/** Every live child, killed if this process exits while some still run. */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of liveChildren) child.kill('SIGTERM');
  });
}

function startChild(mode: 's3' | 'redis', options: Record<string, unknown>, what: string): ManagedChild {
  installExitHook();
  const payload = JSON.stringify({ ...options, parentPid: process.pid });
  const proc = spawn(process.execPath, ['--openssl-legacy-provider', CHILD_SCRIPT, mode, payload], {
    stdio: ['pipe', 'pipe', 'pipe'],
    // A process group of its own: a terminal's Ctrl-C reaches this process (which may still need
    // the service, e.g. to record that a --local run was interrupted) and not the service directly.
    // The child still ends with this process however it ends: its stdin closes, or it is re-parented.
    detached: true,
    // Our own loader and inspector flags must not leak into the child.
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  liveChildren.add(proc);

  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-MAX_LOG_CHARS);
  };
  proc.stderr!.on('data', keep);

  const describe = (reason: string, cause?: unknown) => {
    const details = output.trim() ? `\n--- output ---\n${output.trim()}` : '';
    return new LocalStackError(`${what} failed to start: ${reason}${details}`, { cause });
  };

  let spawnError: Error | undefined;
  const exited = new Promise<string>((resolve) => {
    proc.on('error', (err) => {
      spawnError = err;
      liveChildren.delete(proc);
      resolve(`could not start: ${err.message}`);
    });
    proc.on('exit', (code, signal) => {
      liveChildren.delete(proc);
      resolve(signal ? `signal ${signal}` : `exit code ${code}`);
    });
  });

  const abort = new AbortController();
  let ready = false;
  let rejectStart: (err: Error) => void = () => undefined;
  const startFailed = new Promise<never>((_, reject) => {
    rejectStart = (err) => {
      if (ready || abort.signal.aborted) return;
      abort.abort(err);
      reject(err);
    };
  });
  startFailed.catch(() => undefined); // handled by whoever races it; never unhandled
  const startTimer = setTimeout(() => {
    rejectStart(describe(`no answer after ${START_TIMEOUT_MS / 1000} s`));
    proc.kill('SIGKILL');
  }, START_TIMEOUT_MS);
  // After the exit, the child's last output may still be in its pipes: the failure quotes it once
  // stderr has ended (or after a moment, should something else hold the pipe open).
  const drained = new Promise<void>((resolve) => {
    if (proc.stderr!.readableEnded) resolve();
    proc.stderr!.once('end', () => resolve());
    proc.stderr!.once('close', () => resolve());
  });
  void exited.then(async () => {
    clearTimeout(startTimer);
    await Promise.race([drained, new Promise((r) => setTimeout(r, 500))]);
    const status = proc.exitCode ?? proc.signalCode;
    rejectStart(describe(spawnError ? spawnError.message : `exited early (${status})`, spawnError));
  });

  const firstMessage = new Promise<ChildMessage>((resolve) => {
    let buffered = '';
    proc.stdout!.on('data', (chunk: Buffer) => {
      keep(chunk);
      buffered += chunk.toString('utf8');
      for (let newline = buffered.indexOf('\n'); newline >= 0; newline = buffered.indexOf('\n')) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        try {
          resolve(JSON.parse(line) as ChildMessage);
          return;
        } catch {
          // not a protocol line; keep reading
        }
      }
    });
  });

  return {
    pid: proc.pid,
    firstMessage,
    exited,
    startFailed,
    startAborted: abort.signal,
    failStart(reason) {
      throw describe(reason);
    },
    markReady() {
      ready = true;
      clearTimeout(startTimer);
      // Let this process end on its own; the child notices (its stdin closes) and ends too.
      proc.unref();
      for (const stream of [proc.stdin, proc.stdout, proc.stderr]) {
        (stream as unknown as { unref?: () => void } | null)?.unref?.();
      }
    },
    async stop() {
      ready = true; // a stop is not a failed start
      clearTimeout(startTimer);
      if (proc.exitCode !== null || proc.signalCode !== null || spawnError) return;
      // This timer is ref'ed: it keeps the event loop alive until the child has gone.
      const kill = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
      proc.kill('SIGTERM');
      await exited;
      clearTimeout(kill);
    },
  };
}

/** Poll PING on the port until +PONG (not -LOADING while the AOF loads), or until start fails. */
async function waitForPong(port: number, aborted: AbortSignal): Promise<void> {
  while (!aborted.aborted) {
    try {
      const reply = await pingOnce(port);
      if (reply.startsWith('+PONG')) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw aborted.reason;
}

function pingOnce(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let reply = '';
    const done = (err?: Error) => {
      socket.destroy();
      if (err) reject(err);
      else resolve(reply);
    };
    socket.setTimeout(1000, () => done(new Error('PING timed out')));
    socket.on('error', done);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) done();
    });
  });
}

async function findOnPath(command: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, command);
    try {
      await access(candidate, fsConstants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Where `npm run demo` keeps its Redis and S3 data, relative to the folder it ran in. */
export const LOCAL_DIR = '.deepfeat';

/**
 * The environment a CLI command runs with: when S3_ENDPOINT is unset and this folder holds the
 * demo's store (./.deepfeat/s3), that store is served on a free loopback port for as long as the
 * command runs, so `status`, `download`, `predict`, `similar` and `serve` work on the demo's models
 * from the demo's folder. `stop` ends the server (a no-op otherwise).
 */
export async function localDemoEnv(
  base: NodeJS.ProcessEnv = process.env,
): Promise<{ env: NodeJS.ProcessEnv; stop: () => Promise<void> }> {
  const env = { ...base };
  if (env.S3_ENDPOINT || !existsSync(path.resolve(LOCAL_DIR, 's3'))) return { env, stop: async () => undefined };
  const s3 = await startS3Server({ dir: path.resolve(LOCAL_DIR, 's3') });
  env.S3_ENDPOINT = s3.endpoint;
  env.S3_ACCESS_KEY_ID ??= 'S3RVER';
  env.S3_SECRET_ACCESS_KEY ??= 'S3RVER';
  return { env, stop: () => s3.stop() };
}
