/**
 * Storage faults on real parts: the workers reach S3 through a fault-injecting TCP proxy
 * (test/helpers/fault-proxy.ts). Transient faults (a burst of 503 SlowDown, seconds of refused
 * connections) are retried — by the AWS SDK per request, then by BullMQ per job — and the run
 * completes with every image accounted for. A server that accepts a request and then says nothing
 * is given up on after S3_TIMEOUT and asked again. Permanent faults (no such bucket, an unknown access
 * key) fail the run at once with a message that names the fix.
 */
import test from 'ava';
import { loadDemoImages } from '../cli/demo-data.js';
import { createClient, enqueueRun, getStatus, listWorkers, waitForRun, type Client } from '../cli/client.js';
import { loadConfig } from '../shared/config.js';
import { RAW_PIXELS } from '../shared/features.js';
import { getObjectText } from '../shared/s3.js';
import { shardKey, type ShardRow } from '../shared/dataset.js';
import { deployment, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.js';
import { uniqueName } from './helpers/services.js';

const PER_CLASS = 40;
let dep: Deployment;
let proxy: FaultProxy;
let workerEnv: Record<string, string>;
let firstCat: string;
const workers: WorkerProcess[] = [];
const extraClients: Client[] = [];

test.before(async () => {
  dep = await deployment({
    DEEPFEAT_SHARD_SIZE: '8',
    DEEPFEAT_BATCH_SIZE: '4',
    DEEPFEAT_FETCH_CONCURRENCY: '2',
    DEEPFEAT_JOB_ATTEMPTS: '5',
  });
  proxy = await startFaultProxy(dep.s3.endpoint);
  // The client (uploads, status) talks to S3 directly; the workers go through the proxy.
  // S3_TIMEOUT is short so the silent-server test below waits seconds, not the default 30.
  // The cache off: these runs go over the same images, and every fault here is one that extraction
  // must meet (a cached vector would skip the very GET a test holds).
  workerEnv = { ...dep.env, S3_ENDPOINT: proxy.endpoint, S3_TIMEOUT: '2', DEEPFEAT_FEATURE_CACHE: 'off' };
  const images = await loadDemoImages({ perClass: PER_CLASS });
  firstCat = images.find((i) => i.label === 'cat')!.name;
  await Promise.all(images.map((img) => dep.put(`pets/${img.label}/${img.name}`, img.png)));
  workers.push(
    spawnWorker(workerEnv, 'planner'),
    spawnWorker(workerEnv, 'trainer'),
    spawnWorker(workerEnv, 'evaluator'),
  );
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop('SIGKILL')));
  await Promise.all(extraClients.map((c) => c.close()));
  await proxy?.close();
  await dep?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000, everyMs = 25): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = await fn();
    if (v !== undefined) return v;
    await sleep(everyMs);
  }
  throw new Error(`timed out waiting for ${what}`);
}

test.serial(
  'a burst of 503 SlowDown and seconds of refused connections during extraction: the run completes',
  async (t) => {
    t.timeout(120_000);
    const runId = await enqueueRun(dep.client, {
      source: `s3://${dep.dataBucket}/pets/`,
      name: 'faulty',
      features: RAW_PIXELS,
    });
    // Plan first (no extractor yet), so the faults below hit the extraction.
    await until('planning', async () =>
      (await getStatus(dep.client, runId)).stage === 'extracting' ? true : undefined,
    );
    const total = (await getStatus(dep.client, runId)).total;
    t.is(total, 2 * PER_CLASS);

    proxy.failNext(15, 503);
    const injectedBefore = proxy.stats.injected;
    const extractor = spawnWorker(workerEnv, 'extractor');
    workers.push(extractor);
    // Once the 503 burst has been absorbed and extraction is under way, refuse connections for 3 s.
    await until('extraction under way', async () => {
      const s = await getStatus(dep.client, runId);
      return s.done > 0 ? s : undefined;
    });
    t.is(proxy.stats.injected - injectedBefore, 15, 'every injected 503 was seen by a worker request');
    const resetBefore = proxy.stats.reset;
    const atRefuse = await getStatus(dep.client, runId);
    await proxy.refuse(3000);
    t.log(`refused for 3 s at ${atRefuse.done}/${total} images (${proxy.stats.reset - resetBefore} connections reset)`);
    t.true(atRefuse.done < total, 'the refusal started while extraction was still running');

    const s = await waitForRun(dep.client, runId);
    if (s.stage !== 'published') t.log(extractor.output());
    t.is(s.stage, 'published', s.error?.message);
    t.is(s.done, total);
    t.is(s.failed, 0);
    t.deepEqual(s.failures, []);

    // Every manifest image exactly once across the shards, each with a feature row.
    const manifest = (await getObjectText(dep.client.s3, dep.config.bucket, `runs/${runId}/manifest.jsonl`))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l).key as string);
    const rows: ShardRow[] = [];
    for (let i = 0; i < s.shards; i++) {
      const text = await getObjectText(dep.client.s3, dep.config.bucket, shardKey(runId, i, 'jsonl'));
      rows.push(
        ...text
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as ShardRow),
      );
    }
    t.deepEqual(rows.map((r) => r.key).sort(), [...manifest].sort());
    t.true(rows.every((r) => 'row' in r));
    t.is(extractor.child.exitCode, null, 'the extractor survived the faults');
  },
);

test.serial(
  'a GET that the server accepts and never answers times out after S3_TIMEOUT, is retried, and the run completes',
  async (t) => {
    t.timeout(120_000);
    if (!workers.some((w) => w.child.exitCode === null && w.child.spawnargs.includes('extractor')))
      workers.push(spawnWorker(workerEnv, 'extractor'));
    // The proxy parks every GET of one image: connection open, no answer, until released.
    const target = `/${dep.dataBucket}/pets/cat/${firstCat}`;
    const hold = proxy.holdRequests((method, path) => method === 'GET' && path === target);
    const runId = await enqueueRun(dep.client, {
      source: `s3://${dep.dataBucket}/pets/`,
      name: 'silent',
      features: RAW_PIXELS,
    });
    await hold.hit;
    const t0 = Date.now();
    // Without a timeout the worker would wait on that socket for ever; with S3_TIMEOUT=2 it closes
    // the connection (the proxy counts the parked request as dropped) and asks again.
    await until('the worker to give up on the silent GET', async () => (hold.dropped > 0 ? true : undefined), 30_000);
    const gaveUpMs = Date.now() - t0;
    t.log(`the worker gave up on the unanswered GET after ${gaveUpMs} ms (S3_TIMEOUT=2)`);
    t.true(gaveUpMs >= 1000, `gave up after ${gaveUpMs} ms, before the timeout could have passed`);
    const before = await getStatus(dep.client, runId);
    t.not(before.stage, 'published', 'the run was waiting on the held image');
    hold.release();

    const s = await waitForRun(dep.client, runId);
    t.is(s.stage, 'published', s.error?.message);
    t.is(s.done, 2 * PER_CLASS);
    t.is(s.failed, 0);
  },
);

test.serial(
  "image keys the S3 server refuses are those images' failures with the server's reason; the run publishes",
  async (t) => {
    t.timeout(120_000);
    if (!workers.some((w) => w.child.exitCode === null && w.child.spawnargs.includes('extractor')))
      workers.push(spawnWorker(workerEnv, 'extractor'));
    // Keys S3 itself takes but the embedded server refuses (InvalidArgument, naming the way out):
    // an empty segment, a last segment longer than a file name allows, a newline.
    const refusedKeys = ['missing//double.png', `cat/${'x'.repeat(240)}.png`, 'cat/line\nbreak.png'];
    const images = await loadDemoImages({ perClass: PER_CLASS });
    const rows = [
      ...images.map((img) => ({ key: `pets/${img.label}/${img.name}`, label: img.label })),
      ...refusedKeys.map((key) => ({ key, label: 'cat' })),
    ];
    await dep.put('refused-keys.jsonl', `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
    const runId = await enqueueRun(dep.client, {
      source: `s3://${dep.dataBucket}/refused-keys.jsonl`,
      name: 'refused-keys',
      features: RAW_PIXELS,
    });
    const s = await waitForRun(dep.client, runId, undefined, 100);
    t.is(s.stage, 'published', s.error?.message);
    t.is(s.done, 2 * PER_CLASS);
    t.is(s.failed, refusedKeys.length);
    t.deepEqual(s.failures.map((f) => f.key).sort(), [...refusedKeys].sort());
    for (const f of s.failures) {
      t.notRegex(f.reason, /credentials/, f.key);
      // MinIO or AWS (TEST_S3_ENDPOINT) store such keys; the embedded server refuses them.
      if (!process.env.TEST_S3_ENDPOINT) {
        t.regex(
          f.reason,
          /^the S3 server refused this key \(InvalidArgument: the embedded S3 server cannot store key /,
        );
        t.regex(f.reason, /use MinIO or AWS S3/);
      }
    }
  },
);

test.serial('a source bucket that does not exist fails the run quickly, naming the bucket and the fix', async (t) => {
  t.timeout(60_000);
  const missing = uniqueName('missing');
  const t0 = Date.now();
  const runId = await enqueueRun(dep.client, {
    source: `s3://${missing}/pets/`,
    name: 'nobucket',
    features: RAW_PIXELS,
  });
  const s = await waitForRun(dep.client, runId, undefined, 100);
  const ms = Date.now() - t0;
  t.log(`failed after ${ms} ms: ${s.error?.message}`);
  t.is(s.stage, 'failed');
  t.true(ms < 10_000, `took ${ms} ms`);
  t.is(s.error?.code, 'BUCKET_NOT_FOUND');
  t.regex(s.error?.message ?? '', new RegExp(`no such bucket for "s3://${missing}/"`));
  t.regex(s.error?.message ?? '', /create it or fix the bucket name/);
});

/** A separate deployment on the same Redis and S3 (own queue prefix) whose given workers use an unknown access key. */
async function badKeyDeployment(badKinds: readonly string[], goodKinds: readonly string[]): Promise<Client> {
  const prefix = uniqueName('badkey');
  const good = { ...workerEnv, DEEPFEAT_QUEUE_PREFIX: prefix };
  const bad = { ...good, S3_ACCESS_KEY_ID: 'nobody', S3_SECRET_ACCESS_KEY: 'nobody-secret' };
  for (const k of badKinds) workers.push(spawnWorker(bad, k));
  for (const k of goodKinds) workers.push(spawnWorker(good, k));
  const client = createClient(loadConfig({ ...dep.env, DEEPFEAT_QUEUE_PREFIX: prefix }));
  extraClients.push(client);
  // Wait until every worker is up: process start-up is not part of the failure time.
  const n = badKinds.length + goodKinds.length;
  await until('workers', async () => ((await listWorkers(client)).length >= n ? true : undefined), 60_000, 200);
  return client;
}

test.serial('an unknown access key fails the run quickly with a message to check credentials (planner)', async (t) => {
  t.timeout(60_000);
  const client = await badKeyDeployment(['planner'], []);
  const t0 = Date.now();
  const runId = await enqueueRun(client, {
    source: `s3://${dep.dataBucket}/pets/`,
    name: 'nokey',
    features: RAW_PIXELS,
  });
  const s = await waitForRun(client, runId, undefined, 100);
  const ms = Date.now() - t0;
  t.log(`failed after ${ms} ms: ${s.error?.message}`);
  t.is(s.stage, 'failed');
  t.true(ms < 10_000, `took ${ms} ms`);
  t.is(s.error?.code, 'ACCESS_DENIED');
  t.regex(s.error?.message ?? '', new RegExp(`access to "s3://${dep.dataBucket}/" refused \\(HTTP 403\\)`));
  t.regex(s.error?.message ?? '', /check S3 credentials/);
});

test.serial(
  'an unknown access key in the extractor fails the run quickly with a message to check credentials',
  async (t) => {
    t.timeout(60_000);
    const client = await badKeyDeployment(['extractor'], ['planner', 'trainer', 'evaluator']);
    const t0 = Date.now();
    const runId = await enqueueRun(client, {
      source: `s3://${dep.dataBucket}/pets/`,
      name: 'nokey-x',
      features: RAW_PIXELS,
    });
    const s = await waitForRun(client, runId, undefined, 100);
    const ms = Date.now() - t0;
    t.log(`failed after ${ms} ms: ${s.error?.message}`);
    t.is(s.stage, 'failed');
    t.true(ms < 10_000, `took ${ms} ms`);
    t.is(s.error?.code, 'ACCESS_DENIED');
    t.regex(s.error?.message ?? '', /^extract failed: /);
    t.regex(s.error?.message ?? '', /InvalidAccessKeyId/);
    t.regex(s.error?.message ?? '', /check S3 credentials/);
  },
);
