/**
 * A multi-host test harness on Linux network namespaces: Redis and the S3 server each on their own
 * namespace "host", and N worker hosts, each joined to the Redis host and to the S3 host by its own
 * veth link (10.77.i.0/24 to Redis, 10.78.i.0/24 to S3, i = 1…N). A namespace's only routes are
 * its own links — there is no default route anywhere in the cluster — so a cut link means
 * "unreachable", never "somewhere else", and no test traffic can leave the machine.
 *
 *   worker host i ── r0 ═══ veth ═══ wi ── Redis host   (redis-server, 0.0.0.0:6379)
 *                 └─ s0 ═══ veth ═══ wi ── S3 host      (relay 0.0.0.0:9000 → embedded S3 server)
 *
 * Workers on host i use REDIS_URL=redis://10.77.i.1:6379 and, for S3, a gateway process in their
 * own namespace (netns-gateway.ts): the tests' fault proxy on 127.0.0.1 (so the S3 server's
 * loopback Host check holds) relaying over the host's S3 link. The proxy adds what the kernel
 * cannot here (it has no netem): held requests, latency, connection resets.
 *
 * Faults are made inside the worker host's namespace: `cut('redis')` sets its Redis link down,
 * `cut('s3')` its S3 link, `cut()` both; `heal()` sets them up again (the kernel restores the
 * link's route). The test process itself (the observer: enqueue, status, reading the bucket) is
 * not under test and reaches Redis and S3 over Unix sockets through the filesystem, never by a
 * network address.
 *
 * Names: every namespace is `dfmh-<tag>-<pid>-<role>`; a crashed earlier run's namespaces with
 * the same tag (owner pid gone) are removed with their processes before a new cluster starts,
 * and this process removes its own at close and at exit. Needs root and iproute2's `ip`;
 * `netnsUnavailable()` says why not, for a visible skip.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { loadConfig, type Config } from '../../shared/config.js';
import { putObject } from '../../shared/s3.js';
import { createClient, type Client } from '../../cli/client.js';
import type { FaultProxyStats } from './fault-proxy.js';
import { startRelay, type Relay } from './netns-relay.js';
import { ROOT, type WorkerProcess } from './pipeline.js';
import { makeS3Client, uniqueName } from './services.js';
import { CreateBucketCommand } from '@aws-sdk/client-s3';

const run = promisify(execFile);
const PREFIX = 'dfmh';
const REDIS_PORT = 6379;
const S3_PORT = 9000;
const START_TIMEOUT_MS = 30_000;

/** Why namespaces cannot be made here (not root, no `ip`, no redis-server, `ip netns add` refused), or undefined. */
export function netnsUnavailable(): string | undefined {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return 'network namespaces need root (run the tests as root, as CI does)';
  for (const [command, args, pkg] of [
    ['ip', ['-V'], 'iproute2'],
    ['redis-server', ['--version'], 'redis-server'],
  ] as const) {
    try {
      execFileSync(command, args, { stdio: 'ignore' });
    } catch {
      return `${command} not found: apt-get install ${pkg}`;
    }
  }
  const probe = `${PREFIX}-probe-${process.pid}`;
  try {
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'pipe' });
    execFileSync('ip', ['netns', 'del', probe], { stdio: 'pipe' });
  } catch (err) {
    return `ip netns add failed: ${String((err as { stderr?: Buffer }).stderr ?? err).trim()}`;
  }
  return undefined;
}

export type LinkPath = 'all' | 'redis' | 's3';

/** A request parked by a worker host's gateway. */
export interface GatewayHold {
  /** Resolves when the first matching request is parked. */
  readonly hit: Promise<void>;
  /** Forwards the parked requests (over the host's link as it is then) and ends the hold. */
  release(): Promise<{ parked: number; dropped: number }>;
}

export interface WorkerHost {
  readonly name: string;
  readonly ns: string;
  /** Environment for workers on this host: REDIS_URL and S3_ENDPOINT as this host reaches them. */
  readonly env: Record<string, string>;
  /** `deepfeat worker KIND` inside this host's namespace. */
  spawnWorker(kind: string, extraEnv?: Record<string, string>): WorkerProcess;
  /** Sets this host's link(s) down, inside its namespace. */
  cut(which?: LinkPath): Promise<void>;
  /** Sets them up again. */
  heal(which?: LinkPath): Promise<void>;
  /** Parks this host's S3 requests whose path contains `pathPart` (and whose method is `method`, if given). */
  hold(pathPart: string, method?: string): Promise<GatewayHold>;
  /** Latency per S3 request and the chance of a reset connection, on this host's path to S3. */
  slow(opts: { latencyMs?: number; resetRate?: number }): Promise<void>;
  gatewayStats(): Promise<FaultProxyStats>;
}

export interface Cluster {
  /** The observer's environment (the test process): Redis and S3 through Unix sockets. */
  readonly env: Record<string, string>;
  readonly config: Config;
  readonly client: Client;
  readonly dataBucket: string;
  readonly hosts: readonly WorkerHost[];
  put(key: string, body: Uint8Array | string): Promise<void>;
  close(): Promise<void>;
}

export interface ClusterOptions {
  /** Short tag unique to the test file (letters and digits): namespaces are dfmh-<tag>-<pid>-*. */
  tag: string;
  /** Worker hosts to make (at least 1). */
  workerHosts: number;
  /** Extra environment for every worker. */
  env?: Record<string, string>;
}

const ip = (...args: string[]) => run('ip', args);
const inNs = (ns: string, ...args: string[]) => run('ip', ['-n', ns, ...args]);

async function listNamespaces(): Promise<string[]> {
  const { stdout } = await ip('netns', 'list');
  return stdout
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter(Boolean);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Kills the processes left in a namespace (all of them started by this harness) and removes it. */
function removeNamespaceSync(ns: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split(/\s+/).filter(Boolean);
    for (const pid of pids) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  } catch {
    // gone already
  }
}

/** Removes namespaces of this tag whose owning process is gone (a crashed earlier run). */
async function removeStale(tag: string): Promise<void> {
  const mine = new RegExp(`^${PREFIX}-${tag}-(\\d+)-`);
  for (const ns of await listNamespaces()) {
    const m = mine.exec(ns);
    if (m && !alive(Number(m[1]))) {
      console.error(`[netns] removing stale namespace ${ns} from a run that did not clean up`);
      removeNamespaceSync(ns);
    }
  }
}

/** A child process whose stdout speaks JSON lines: the first `{"event":"ready"}` and answers by id. */
interface LineChild {
  readonly child: ChildProcess;
  readonly ready: Promise<Record<string, unknown>>;
  call(message: Record<string, unknown>): Promise<Record<string, unknown>>;
  on(event: string, listener: (m: Record<string, unknown>) => void): void;
  output(): string;
}

function lineChild(ns: string, args: string[], env: NodeJS.ProcessEnv): LineChild {
  const child = spawn('ip', ['netns', 'exec', ns, ...args], { cwd: ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d) => (err = (err + d).slice(-8000)));
  const waiting = new Map<number, { resolve: (m: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  const listeners = new Map<string, Array<(m: Record<string, unknown>) => void>>();
  let nextId = 1;
  let onReady!: (m: Record<string, unknown>) => void;
  let onFail!: (e: Error) => void;
  const ready = new Promise<Record<string, unknown>>((res, rej) => {
    onReady = res;
    onFail = rej;
  });
  ready.catch(() => undefined);
  const timer = setTimeout(
    () => onFail(new Error(`${args.join(' ')} in ${ns}: not ready in time\n${err}`)),
    START_TIMEOUT_MS,
  );
  child.once('exit', (code, signal) => {
    clearTimeout(timer);
    const gone = new Error(`${args.join(' ')} in ${ns} exited (${code ?? signal})\n${err}`);
    onFail(gone); // no-op once ready
    for (const w of waiting.values()) w.reject(gone);
    waiting.clear();
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if (m.event === 'ready') {
      clearTimeout(timer);
      onReady(m);
    } else if (typeof m.event === 'string') {
      for (const l of listeners.get(m.event) ?? []) l(m);
    } else if (typeof m.id === 'number') {
      waiting.get(m.id)?.resolve(m);
      waiting.delete(m.id);
    }
  });
  return {
    child,
    ready,
    call(message) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          reject(new Error(`${args.join(' ')} in ${ns} is not running\n${err}`));
          return;
        }
        waiting.set(id, { resolve, reject });
        child.stdin!.write(`${JSON.stringify({ ...message, id })}\n`);
      });
    },
    on(event, listener) {
      listeners.set(event, [...(listeners.get(event) ?? []), listener]);
    },
    output: () => err,
  };
}

async function waitForRedis(socket: string): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ path: socket });
      let reply = '';
      s.setTimeout(1000, () => {
        s.destroy();
        resolve(false);
      });
      s.on('error', () => resolve(false));
      s.on('connect', () => s.write('PING\r\n'));
      s.on('data', (d) => {
        reply += d;
        if (reply.includes('\r\n')) {
          s.destroy();
          resolve(reply.startsWith('+PONG'));
        }
      });
    });
    if (ok) return;
    if (Date.now() - t0 > START_TIMEOUT_MS) throw new Error(`redis-server did not answer on ${socket}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Builds the namespaces, links and services; the caller closes it (also done at process exit). */
export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  if (!/^[a-z0-9]{1,8}$/.test(opts.tag)) throw new Error(`cluster tag ${opts.tag}: 1-8 lower-case letters or digits`);
  await removeStale(opts.tag);
  const base = `${PREFIX}-${opts.tag}-${process.pid}`;
  const redisNs = `${base}-redis`;
  const s3Ns = `${base}-s3`;
  const hostNs = Array.from({ length: opts.workerHosts }, (_, i) => `${base}-h${i + 1}`);
  const all = [redisNs, s3Ns, ...hostNs];
  const children: ChildProcess[] = [];
  const relays: Relay[] = [];
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'deepfeat-netns-'));
  let closed = false;
  const cleanupSync = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const ns of all) removeNamespaceSync(ns);
  };
  process.once('exit', cleanupSync);
  // A test run stopped from outside (Ctrl-C, a CI timeout) still removes its hosts.
  const onSignal = (signal: NodeJS.Signals) => {
    cleanupSync();
    process.kill(process.pid, signal);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const close = async () => {
    if (closed) return;
    closed = true;
    process.off('exit', cleanupSync);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await Promise.all(relays.map((r) => r.close()));
    cleanupSync();
    await rm(tmp, { recursive: true, force: true });
  };

  try {
    for (const ns of all) {
      await ip('netns', 'add', ns);
      await inNs(ns, 'link', 'set', 'lo', 'up');
    }
    for (const [i, ns] of hostNs.entries()) {
      const n = i + 1;
      for (const [server, link, net] of [
        [redisNs, 'r0', 77],
        [s3Ns, 's0', 78],
      ] as const) {
        await inNs(server, 'link', 'add', `w${n}`, 'type', 'veth', 'peer', 'name', link, 'netns', ns);
        await inNs(server, 'addr', 'add', `10.${net}.${n}.1/24`, 'dev', `w${n}`);
        await inNs(ns, 'addr', 'add', `10.${net}.${n}.2/24`, 'dev', link);
        await inNs(server, 'link', 'set', `w${n}`, 'up');
        await inNs(ns, 'link', 'set', link, 'up');
      }
    }

    // Redis host: TCP on every link, a Unix socket for the observer.
    const redisSocket = path.join(tmp, 'redis.sock');
    const redis = spawn(
      'ip',
      [
        'netns',
        'exec',
        redisNs,
        'redis-server',
        '--port',
        String(REDIS_PORT),
        '--bind',
        '0.0.0.0',
        '--protected-mode',
        'no',
        '--unixsocket',
        redisSocket,
        '--unixsocketperm',
        '700',
        '--save',
        '',
        '--appendonly',
        'no',
        '--dir',
        tmp,
        '--maxmemory-policy',
        'noeviction',
      ],
      { stdio: 'ignore' },
    );
    children.push(redis);

    // S3 host.
    const s3Socket = path.join(tmp, 's3.sock');
    const s3 = lineChild(
      s3Ns,
      [
        process.execPath,
        '--import',
        'tsx',
        path.join(ROOT, 'test/helpers/netns-s3-host.ts'),
        JSON.stringify({ dir: path.join(tmp, 's3'), port: S3_PORT, socket: s3Socket }),
      ],
      { ...process.env, NODE_OPTIONS: '' },
    );
    children.push(s3.child);

    // Gateways: each worker host's path to S3.
    const gateways = hostNs.map((ns, i) =>
      lineChild(
        ns,
        [
          process.execPath,
          '--import',
          'tsx',
          path.join(ROOT, 'test/helpers/netns-gateway.ts'),
          JSON.stringify({ s3Host: `10.78.${i + 1}.1`, s3Port: S3_PORT }),
        ],
        { ...process.env, NODE_OPTIONS: '' },
      ),
    );
    children.push(...gateways.map((g) => g.child));
    const [, , ...gatewayReady] = await Promise.all([
      waitForRedis(redisSocket),
      s3.ready,
      ...gateways.map((g) => g.ready),
    ]);

    // The observer's way in: loopback relays in this process to the Unix sockets.
    const redisRelay = await startRelay({ host: '127.0.0.1', port: 0 }, { path: redisSocket });
    const s3Relay = await startRelay({ host: '127.0.0.1', port: 0 }, { path: s3Socket });
    relays.push(redisRelay, s3Relay);

    const bucket = uniqueName('artifacts');
    const dataBucket = uniqueName('data');
    const s3Endpoint = `http://127.0.0.1:${s3Relay.port}`;
    const admin = makeS3Client(s3Endpoint);
    try {
      for (const b of [bucket, dataBucket]) await admin.send(new CreateBucketCommand({ Bucket: b }));
    } finally {
      admin.destroy();
    }
    const common: Record<string, string> = {
      S3_ACCESS_KEY_ID: 'minioadmin',
      S3_SECRET_ACCESS_KEY: 'minioadmin',
      DEEPFEAT_BUCKET: bucket,
      DEEPFEAT_QUEUE_PREFIX: uniqueName('mh'),
      LOG_LEVEL: 'warn',
      ...opts.env,
    };
    const env = { ...common, REDIS_URL: `redis://127.0.0.1:${redisRelay.port}`, S3_ENDPOINT: s3Endpoint };
    const config = loadConfig(env);
    const client = createClient(config);

    const hosts = hostNs.map((ns, i): WorkerHost => {
      const n = i + 1;
      const gateway = gateways[i]!;
      const hostEnv = {
        ...common,
        REDIS_URL: `redis://10.77.${n}.1:${REDIS_PORT}`,
        S3_ENDPOINT: `http://127.0.0.1:${(gatewayReady[i] as { port: number }).port}`,
      };
      const links = (which: LinkPath) => (which === 'all' ? ['r0', 's0'] : which === 'redis' ? ['r0'] : ['s0']);
      const hits = new Map<number, () => void>();
      gateway.on('hit', (m) => hits.get(m.hold as number)?.());
      return {
        name: `h${n}`,
        ns,
        env: hostEnv,
        spawnWorker(kind, extraEnv = {}) {
          const child = spawn(
            'ip',
            ['netns', 'exec', ns, process.execPath, '--import', 'tsx', path.join(ROOT, 'cli/main.ts'), 'worker', kind],
            { cwd: ROOT, env: { ...process.env, ...hostEnv, ...extraEnv }, stdio: ['ignore', 'pipe', 'pipe'] },
          );
          children.push(child);
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
        },
        async cut(which = 'all') {
          for (const link of links(which)) await inNs(ns, 'link', 'set', link, 'down');
        },
        async heal(which = 'all') {
          for (const link of links(which)) await inNs(ns, 'link', 'set', link, 'up');
        },
        async hold(pathPart, method) {
          const reply = await gateway.call({ op: 'hold', path: pathPart, ...(method ? { method } : {}) });
          const id = reply.hold as number;
          const hit = new Promise<void>((r) => hits.set(id, r));
          return {
            hit,
            release: async () => {
              const r = await gateway.call({ op: 'release', hold: id });
              return { parked: r.parked as number, dropped: r.dropped as number };
            },
          };
        },
        async slow(o) {
          await gateway.call({ op: 'slow', ...o });
        },
        async gatewayStats() {
          return (await gateway.call({ op: 'stats' })).stats as FaultProxyStats;
        },
      };
    });

    return {
      env,
      config,
      client,
      dataBucket,
      hosts,
      put: (key, body) => putObject(client.s3, dataBucket, key, body),
      async close() {
        await client.close().catch(() => undefined);
        await close();
      },
    };
  } catch (err) {
    await close();
    throw err;
  }
}
