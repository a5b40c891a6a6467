import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import { findFreePort, LocalStackError, startRedis, startS3Server } from '../cli/local-stack.js';
import { makeS3Client, uniqueName } from './helpers/services.js';

/** Resolves true if something accepts TCP connections on 127.0.0.1:port. */
function isListening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Resolves true if this process can bind 127.0.0.1:port (i.e. nobody holds it). */
function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

async function waitUntil(condition: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return condition();
}

function redisClient(url: string): Redis {
  return new Redis(url, { maxRetriesPerRequest: 1, lazyConnect: true });
}

async function tempDir(t: { teardown(fn: () => Promise<void>): void }, prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `${prefix}-`));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// Serial tests run before the concurrent ones, so changing PATH here affects no other test.
test.serial('startRedis names the way out when redis-server is not on PATH', async (t) => {
  const saved = process.env.PATH;
  process.env.PATH = '/nonexistent';
  try {
    const err = await t.throwsAsync(startRedis(), { instanceOf: LocalStackError });
    t.regex(
      err!.message,
      /redis-server not found on PATH: install it \(apt-get install redis-server\) or set REDIS_URL/,
    );
  } finally {
    process.env.PATH = saved;
  }
});

test('redis answers PING and SET/GET; stop frees the port', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  t.regex(redis.url, /^redis:\/\/127\.0\.0\.1:\d+$/);

  const client = redisClient(redis.url);
  await client.connect();
  t.is(await client.ping(), 'PONG');
  await client.set('greeting', 'hello');
  t.is(await client.get('greeting'), 'hello');
  t.is(await client.config('GET', 'maxmemory-policy').then((r) => (r as string[])[1]), 'noeviction');
  t.is(await client.config('GET', 'appendonly').then((r) => (r as string[])[1]), 'yes');
  client.disconnect();

  await redis.stop();
  t.false(await isListening(redis.port));
  t.true(await canBind(redis.port));
});

test('redis with appendonly keeps a key across restart() on the same port', async (t) => {
  const redis = await startRedis({ appendonly: true });
  t.teardown(() => redis.stop());
  const key = uniqueName('durable');

  const before = redisClient(redis.url);
  await before.connect();
  await before.set(key, 'survives');
  before.disconnect();

  await redis.restart();
  t.true(await isListening(redis.port));

  const after = redisClient(redis.url);
  await after.connect();
  t.is(await after.get(key), 'survives');
  after.disconnect();
});

test('redis without appendonly (and no snapshots) starts empty after restart()', async (t) => {
  const dir = await tempDir(t, 'deepfeat-redis-noaof');
  const redis = await startRedis({ appendonly: false, dir });
  t.teardown(() => redis.stop());

  const before = redisClient(redis.url);
  await before.connect();
  await before.set('volatile', '1');
  before.disconnect();

  await redis.restart();
  const after = redisClient(redis.url);
  await after.connect();
  t.is(await after.get('volatile'), null);
  after.disconnect();
});

test('s3 server: >1000 keys list with pagination, data survives stop/restart, stop frees the port', async (t) => {
  const dir = await tempDir(t, 'deepfeat-s3-test');
  const bucket = uniqueName('bucket');
  const s3 = await startS3Server({ dir, buckets: [bucket], accessKeyIds: ['minioadmin'] });
  t.teardown(() => s3.stop());
  t.regex(s3.endpoint, /^http:\/\/127\.0\.0\.1:\d+$/);
  const client = makeS3Client(s3.endpoint);
  t.teardown(() => client.destroy());

  const count = 1100;
  const keys = Array.from({ length: count }, (_, i) => `items/${String(i).padStart(5, '0')}.txt`);
  const concurrency = 32;
  for (let i = 0; i < keys.length; i += concurrency) {
    await Promise.all(
      keys
        .slice(i, i + concurrency)
        .map((Key) => client.send(new PutObjectCommand({ Bucket: bucket, Key, Body: Buffer.from(Key) }))),
    );
  }

  const listAll = async (): Promise<{ keys: string[]; pages: number }> => {
    const found: string[] = [];
    let pages = 0;
    let token: string | undefined;
    do {
      const page = await client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: 'items/', ContinuationToken: token }),
      );
      pages += 1;
      for (const item of page.Contents ?? []) found.push(item.Key!);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return { keys: found, pages };
  };

  const listed = await listAll();
  t.is(listed.pages, 2, 'default page size is 1000, so 1100 keys take two pages');
  t.deepEqual(listed.keys, keys);

  // Body is stored as sent (no aws-chunked framing inside it).
  const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: keys[1099] }));
  t.is(await got.Body!.transformToString(), keys[1099]);

  await s3.stop();
  t.false(await isListening(s3.port));
  t.true(await canBind(s3.port));
  await t.throwsAsync(client.send(new GetObjectCommand({ Bucket: bucket, Key: keys[0] })));

  await s3.restart();
  t.true(await isListening(s3.port));
  const again = await listAll();
  t.is(again.keys.length, count);
  const body = await client.send(new GetObjectCommand({ Bucket: bucket, Key: keys[0] }));
  t.is(await body.Body!.transformToString(), keys[0]);
});

test('s3 server process is started again on the same port and folder if it dies; stop() is not a death', async (t) => {
  const dir = await tempDir(t, 'deepfeat-s3-revive');
  const bucket = uniqueName('bucket');
  const reports: string[] = [];
  const s3 = await startS3Server({
    dir,
    buckets: [bucket],
    accessKeyIds: ['minioadmin'],
    onUnexpectedExit: (m) => reports.push(m),
  });
  t.teardown(() => s3.stop());
  const client = makeS3Client(s3.endpoint);
  t.teardown(() => client.destroy());
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: 'kept', Body: 'before the crash' }));

  const first = s3.pid!;
  process.kill(first, 'SIGKILL');
  t.true(await waitUntil(async () => s3.pid !== undefined && s3.pid !== first && (await isListening(s3.port)), 10_000));
  t.is(reports.length, 1);
  t.regex(
    reports[0]!,
    /s3rver \(data in .*\) died unexpectedly \(signal SIGKILL\); starting it again on 127\.0\.0\.1:\d+/,
  );
  const got = await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'kept' }));
  t.is(await got.Body!.transformToString(), 'before the crash');

  await s3.restart();
  await s3.stop();
  t.is(reports.length, 1, 'restart() and stop() are not reported as deaths');
  t.false(await isListening(s3.port));
});

test('s3 server start failure reports the child output (port in use)', async (t) => {
  const dir = await tempDir(t, 'deepfeat-s3-busy');
  const port = await findFreePort();
  const blocker = net.createServer((socket) => socket.destroy()); // unread sockets would stall close()
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));

  const err = await t.throwsAsync(startS3Server({ dir, port }), { instanceOf: LocalStackError });
  t.regex(err!.message, /s3rver .* failed to start/);
  t.regex(err!.message, /EADDRINUSE/);
});

test('redis start failure reports the server log (port in use)', async (t) => {
  const port = await findFreePort();
  const blocker = net.createServer((socket) => socket.destroy()); // unread sockets would stall close()
  await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));

  const err = await t.throwsAsync(startRedis({ port }), { instanceOf: LocalStackError });
  t.regex(err!.message, new RegExp(`redis-server on 127\\.0\\.0\\.1:${port} failed to start`));
  t.regex(err!.message, /Address already in use/);
});

test('children die when their parent process is killed (no orphan servers)', async (t) => {
  const dir = await tempDir(t, 'deepfeat-orphan');
  const moduleUrl = new URL('../cli/local-stack.ts', import.meta.url).href;
  const script = `
    const { startRedis, startS3Server } = await import(${JSON.stringify(moduleUrl)});
    const redis = await startRedis({ dir: ${JSON.stringify(path.join(dir, 'redis'))} });
    const s3 = await startS3Server({ dir: ${JSON.stringify(path.join(dir, 's3'))} });
    console.log(JSON.stringify({ redis: redis.port, s3: s3.port }));
    setInterval(() => {}, 1000);
  `;
  const parent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: path.dirname(fileURLToPath(new URL('../package.json', import.meta.url))),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  parent.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const ports = await new Promise<{ redis: number; s3: number }>((resolve, reject) => {
    let out = '';
    parent.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line && out.includes('\n')) resolve(JSON.parse(line) as { redis: number; s3: number });
    });
    parent.on('exit', (code) => reject(new Error(`parent exited (${code}) before starting services: ${stderr}`)));
  });
  t.true(await isListening(ports.redis));
  t.true(await isListening(ports.s3));

  parent.kill('SIGKILL');
  t.true(await waitUntil(async () => !(await isListening(ports.redis)), 5000), 'redis-server still running');
  t.true(await waitUntil(async () => !(await isListening(ports.s3)), 5000), 's3rver still running');
});
