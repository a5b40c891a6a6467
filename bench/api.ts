/**
 * The API's figures (issue 15): requests/s of `GET /v1/runs/:id` with 50 concurrent clients in a
 * bounded loop on loopback, and the Redis load server-sent event streams add.
 *
 *   npx tsx --openssl-legacy-provider bench/api.ts [--requests N] [--seconds S]
 *
 * Real parts: a spawned redis-server, the embedded S3 server, and `deepfeat serve` as its own
 * process (so the load generator here does not share its event loop); the run read is a real run
 * record with a plan and 50 of 100 shards' progress, as `deepfeat status` reads mid-extraction.
 * Redis load is read from Redis itself (INFO stats total_commands_processed), so it counts every
 * command the server sends, whatever sends it.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import { Redis } from 'ioredis';
import { createClient, enqueueRun } from '../cli/client.js';
import { startRedis, startS3Server } from '../cli/local-stack.js';
import { loadConfig } from '../shared/config.js';
import { RAW_PIXELS } from '../shared/features.js';
import { RunStore } from '../shared/run-state.js';

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const TOKEN = 'bench-token-0123456789abcdef0123456789';
const CLIENTS = 50;

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const REQUESTS = flag('--requests', 20_000);
const STREAM_SECONDS = flag('--seconds', 10);

async function commandsProcessed(redis: Redis): Promise<number> {
  const info = await redis.info('stats');
  return Number(/total_commands_processed:(\d+)/.exec(info)?.[1] ?? 0);
}

const percentile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

async function main(): Promise<void> {
  const dir = await mkdtemp(path.join(tmpdir(), 'deepfeat-bench-api-'));
  const redis = await startRedis();
  const s3 = await startS3Server({ dir: path.join(dir, 's3') });
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    REDIS_URL: redis.url,
    S3_ENDPOINT: s3.endpoint,
    S3_ACCESS_KEY_ID: 'S3RVER',
    S3_SECRET_ACCESS_KEY: 'S3RVER',
    DEEPFEAT_QUEUE_PREFIX: 'benchapi',
    DEEPFEAT_API_TOKENS: `bench:admin:${TOKEN}`,
    LOG_LEVEL: 'warn',
  };
  const client = createClient(loadConfig(env));
  await client.s3.send(new CreateBucketCommand({ Bucket: client.config.bucket }));
  await client.s3.send(new CreateBucketCommand({ Bucket: 'bench-data' }));
  const store = new RunStore(client.redis!, client.config.queuePrefix);
  // Runs as `status` sees them mid-extraction: a plan and half the shards' progress.
  const runs: string[] = [];
  for (let r = 0; r < 10; r++) {
    const id = await enqueueRun(client, { source: 's3://bench-data/pets/', name: 'bench', features: RAW_PIXELS });
    await store.setPlan(id, { total: 25_600, shards: 100, classes: ['cat', 'dog'], counts: {} });
    for (let s = 0; s < 50; s++) await store.setShardProgress(id, s, { done: 250, failed: 6, complete: true }, []);
    runs.push(id);
  }
  const serve = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'cli/main.ts'), 'serve', '--port', '0'], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const base = await new Promise<string>((res, rej) => {
    const on = (d: Buffer) => {
      out += d;
      const m = /listening on (http:\/\/\S+) /.exec(out);
      if (m) res(m[1]!);
    };
    serve.stdout.on('data', on);
    serve.stderr.on('data', on);
    serve.once('exit', (code) => rej(new Error(`serve exited ${code}: ${out}`)));
  });
  const probe = new Redis(redis.url);
  const headers = { authorization: `Bearer ${TOKEN}` };
  try {
    // --- GET /v1/runs/:id, 50 clients, bounded loop ------------------------------------------
    const url = `${base}/v1/runs/${runs[0]}`;
    const load = async (total: number) => {
      const latencies: number[] = [];
      let next = 0;
      let failed = 0;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: CLIENTS }, async () => {
          while (next < total) {
            next++;
            const t0 = performance.now();
            const res = await fetch(url, { headers });
            await res.arrayBuffer();
            if (res.status !== 200) failed++;
            latencies.push(performance.now() - t0);
          }
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      latencies.sort((a, b) => a - b);
      return { rps: total / seconds, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99), failed };
    };
    await load(2000); // warm-up: JIT, connection pool
    const rounds = [];
    for (let i = 0; i < 3; i++) {
      const before = await commandsProcessed(probe);
      const r = await load(REQUESTS);
      const commands = (await commandsProcessed(probe)) - before - 2; // minus the two INFO calls
      rounds.push({ ...r, redisPerRequest: commands / REQUESTS });
    }
    const bytes = (await (await fetch(url, { headers })).arrayBuffer()).byteLength;
    console.log(
      `GET /v1/runs/:id, ${CLIENTS} concurrent clients, ${REQUESTS} requests per round, ${bytes} B per answer`,
    );
    for (const r of rounds) {
      console.log(
        `  ${r.rps.toFixed(0)} requests/s, latency p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms, ` +
          `${r.redisPerRequest.toFixed(2)} Redis commands per request, ${r.failed} failed`,
      );
    }
    const median = [...rounds].sort((a, b) => a.rps - b.rps)[1]!;
    console.log(`  median ${median.rps.toFixed(0)} requests/s`);

    // --- SSE: Redis commands/s added by open streams ---------------------------------------
    const window = async (streams: number, distinctRuns: number) => {
      const controllers = Array.from({ length: streams }, () => new AbortController());
      await Promise.all(
        controllers.map(async (c, i) => {
          const res = await fetch(`${base}/v1/runs/${runs[i % distinctRuns]}/events`, { headers, signal: c.signal });
          // Read and drop: the stream stays open until aborted.
          void res.body?.pipeTo(new WritableStream()).catch(() => undefined);
        }),
      );
      await new Promise((r) => setTimeout(r, 1500)); // past the first poll
      const before = await commandsProcessed(probe);
      await new Promise((r) => setTimeout(r, STREAM_SECONDS * 1000));
      const commands = (await commandsProcessed(probe)) - before - 1;
      for (const c of controllers) c.abort();
      await new Promise((r) => setTimeout(r, 300));
      return commands / STREAM_SECONDS;
    };
    const idle = await window(0, 1);
    console.log(
      `\nSSE (poll every 1 s, shared per run), over ${STREAM_SECONDS} s; idle server: ${idle.toFixed(2)} commands/s`,
    );
    for (const [streams, distinct] of [
      [1, 1],
      [10, 1],
      [100, 1],
      [10, 10],
    ] as const) {
      const perSecond = (await window(streams, distinct)) - idle;
      console.log(
        `  ${String(streams).padStart(3)} streams on ${String(distinct).padStart(2)} run(s): +${perSecond.toFixed(2)} Redis commands/s ` +
          `(${(perSecond / streams).toFixed(3)} per stream, ${(perSecond / distinct).toFixed(2)} per watched run)`,
      );
    }
  } finally {
    serve.kill('SIGTERM');
    probe.disconnect();
    await client.close();
    await s3.stop();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
