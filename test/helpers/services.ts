/**
 * Real services for tests, in order of preference:
 *   1. an existing one named by TEST_REDIS_URL / TEST_S3_ENDPOINT (CI or a developer's own);
 *   2. a container via testcontainers, only when a Docker engine answers within a second;
 *   3. a local child process (redis-server from PATH, s3rver) on a free port.
 * Each call starts its own service; the caller stops it (e.g. in `test.after.always`).
 */
import { registerCompletionHandler } from 'ava';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { startRedis, startS3Server } from '../../cli/local-stack.js';

// AVA waits for a test file's process to exit by itself once its tests are done. A socket or
// timer a library leaves behind (a client reconnecting to a service the file already stopped)
// then keeps it alive, busy, and the whole run waits forever (seen once in CI, in
// storage-faults.e2e, after every test had passed). Every file that starts real services exits
// as soon as AVA is done with it.
registerCompletionHandler(() => process.exit());

export interface TestRedis {
  url: string;
  stop(): Promise<void>;
  /** Present only where the service can be restarted on the same address (local child); down for downMs. */
  restart?: (downMs?: number) => Promise<void>;
}

export interface TestS3 {
  endpoint: string;
  stop(): Promise<void>;
  /** Present only where the service can be restarted on the same address with its data (local child). */
  restart?: () => Promise<void>;
}

export interface GetS3Options {
  /** Buckets to create before returning. */
  buckets?: string[];
}

/** MinIO's default root user; the local s3rver is told to accept this id too, so it works everywhere. */
const DEFAULT_ACCESS_KEY = 'minioadmin';
const DEFAULT_SECRET_KEY = 'minioadmin';
const DOCKER_PING_TIMEOUT_MS = 1000;

/** `${prefix}-xxxxxxxx`: per-test queue, bucket and prefix names so test files can run in parallel. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/**
 * An S3 client for a test endpoint, with the settings s3rver and MinIO need: path-style
 * addressing, and checksums only where required (otherwise s3rver stores streamed uploads with
 * their chunk framing inside).
 */
export function makeS3Client(
  endpoint: string,
  credentials: { accessKeyId: string; secretAccessKey: string } = {
    accessKeyId: process.env.TEST_S3_ACCESS_KEY_ID ?? DEFAULT_ACCESS_KEY,
    secretAccessKey: process.env.TEST_S3_SECRET_ACCESS_KEY ?? DEFAULT_SECRET_KEY,
  },
): S3Client {
  return new S3Client({
    endpoint,
    region: process.env.TEST_S3_REGION ?? 'us-east-1',
    credentials,
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

export async function getRedis(): Promise<TestRedis> {
  const fromEnv = process.env.TEST_REDIS_URL;
  if (fromEnv) {
    logVariant('redis', `TEST_REDIS_URL (${fromEnv})`);
    return { url: fromEnv, stop: async () => undefined };
  }
  if (await dockerEngineAnswers()) {
    try {
      const { GenericContainer, Wait } = await import('testcontainers');
      const container = await new GenericContainer('redis:7')
        .withCommand(['redis-server', '--appendonly', 'yes', '--maxmemory-policy', 'noeviction'])
        .withExposedPorts(6379)
        .withWaitStrategy(Wait.forLogMessage('Ready to accept connections'))
        .start();
      logVariant('redis', 'testcontainers redis:7');
      return {
        url: `redis://${container.getHost()}:${container.getMappedPort(6379)}`,
        stop: async () => {
          await container.stop();
        },
      };
    } catch (err) {
      console.error(`[test services] redis container failed (${errorText(err)}); using redis-server from PATH`);
    }
  }
  const redis = await startRedis();
  logVariant('redis', `redis-server child on ${redis.url}`);
  return { url: redis.url, stop: () => redis.stop(), restart: (downMs?: number) => redis.restart(downMs) };
}

export async function getS3(opts: GetS3Options = {}): Promise<TestS3> {
  const service = await startS3();
  if (opts.buckets?.length) {
    const client = makeS3Client(service.endpoint);
    try {
      for (const bucket of opts.buckets) await createBucketIfMissing(client, bucket);
    } finally {
      client.destroy();
    }
  }
  return service;
}

async function startS3(): Promise<TestS3> {
  const fromEnv = process.env.TEST_S3_ENDPOINT;
  if (fromEnv) {
    logVariant('s3', `TEST_S3_ENDPOINT (${fromEnv})`);
    return { endpoint: fromEnv, stop: async () => undefined };
  }
  if (await dockerEngineAnswers()) {
    try {
      const { GenericContainer, Wait } = await import('testcontainers');
      const container = await new GenericContainer('minio/minio')
        .withCommand(['server', '/data'])
        .withEnvironment({ MINIO_ROOT_USER: DEFAULT_ACCESS_KEY, MINIO_ROOT_PASSWORD: DEFAULT_SECRET_KEY })
        .withExposedPorts(9000)
        .withWaitStrategy(Wait.forHttp('/minio/health/live', 9000))
        .start();
      logVariant('s3', 'testcontainers minio/minio');
      return {
        endpoint: `http://${container.getHost()}:${container.getMappedPort(9000)}`,
        stop: async () => {
          await container.stop();
        },
      };
    } catch (err) {
      console.error(`[test services] MinIO container failed (${errorText(err)}); using s3rver`);
    }
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'deepfeat-s3-'));
  const s3 = await startS3Server({ dir, accessKeyIds: [DEFAULT_ACCESS_KEY] });
  logVariant('s3', `s3rver child on ${s3.endpoint}`);
  return {
    endpoint: s3.endpoint,
    stop: async () => {
      await s3.stop();
      await rm(dir, { recursive: true, force: true });
    },
    restart: () => s3.restart(),
  };
}

async function createBucketIfMissing(client: S3Client, bucket: string): Promise<void> {
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (err) {
    const name = (err as { name?: string }).name;
    if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw err;
  }
}

let dockerCheck: Promise<boolean> | undefined;

/**
 * True only if a Docker engine answers `GET /_ping` within a second, on DOCKER_HOST (unix:// or
 * tcp://) or /var/run/docker.sock. Checked once per process; never hangs. (testcontainers
 * itself is not asked: importing and probing it is much slower than this.)
 */
export function dockerEngineAnswers(): Promise<boolean> {
  dockerCheck ??= (async () => {
    const host = process.env.DOCKER_HOST;
    if (host?.startsWith('unix://')) return ping({ socketPath: host.slice('unix://'.length) });
    if (host?.startsWith('tcp://') || host?.startsWith('http://')) {
      const url = new URL(host.replace(/^tcp:/, 'http:'));
      return ping({ host: url.hostname, port: Number(url.port || 2375) });
    }
    if (host) return false; // ssh:// and other transports: not probed, treated as absent
    const socketPath = '/var/run/docker.sock';
    return existsSync(socketPath) ? ping({ socketPath }) : false;
  })();
  return dockerCheck;
}

function ping(target: { socketPath: string } | { host: string; port: number }): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get({ ...target, path: '/_ping', timeout: DOCKER_PING_TIMEOUT_MS }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.on('timeout', () => {
      request.destroy();
      resolve(false);
    });
    request.on('error', () => resolve(false));
  });
}

const logged = new Set<string>();
function logVariant(service: string, variant: string): void {
  if (logged.has(service)) return; // once per service kind per test process
  logged.add(service);
  console.error(`[test services] ${service}: ${variant}`);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
