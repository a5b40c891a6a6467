/**
 * The feature cache on real parts: redis-server, the S3 server, and planner, extractor, trainer
 * and evaluator processes, with real CIFAR cat and dog PNGs on the shipped backbone (raw pixels
 * where only the cache's bookkeeping is tested). Each test uses its own folder of the data
 * bucket, so its images have cache keys of their own.
 *
 * - DEEPFEAT_FEATURE_CACHE=off: no lookups, no hits, nothing written to the cache.
 * - Two runs at once over the same uncached images (two extractors, the cache writes held until
 *   both have missed): every vector of both equals the uncached run's, byte for byte, and so do
 *   the vectors a third run reads from the cache.
 * - A second run (new seed, new name) extracts nothing: every image a hit, no new segment, and
 *   shards byte-identical to the first run's; `status` shows the hits. A prediction run with a
 *   model on the same spec hits too.
 * - An object overwritten between runs (new ETag) is extracted again, and only it.
 * - A manifest source (no listing ETags; a forged etag column ignored) is looked up by HEAD.
 * - A segment deleted behind the index's back: the run completes, those images are misses.
 * - `cache stats` counts, `cache prune` removes, and the next run extracts again.
 * - A store that gives no ETag at all: images are keyed by a hash of their bytes and still hit.
 */
import http from 'node:http';
import test from 'ava';
import { enqueueRun, waitForRun } from '../cli/client.js';
import { loadDemoImages, type DemoImage } from '../cli/demo-data.js';
import { enqueuePredict } from '../cli/predict-client.js';
import { cacheStats, type SpecStats } from '../services/extractor/feature-cache/maintenance.js';
import { CACHE_OBJECT_PREFIX, cacheFolder } from '../services/extractor/feature-cache/keys.js';
import { shardKey, type ShardRow } from '../shared/dataset.js';
import { DEFAULT_FEATURES, RAW_PIXELS, type FeatureSpec } from '../shared/features.js';
import { decodeNpy } from '../shared/npy.js';
import type { RunStatus } from '../shared/run-state.js';
import { deleteObject, getObjectBytes, getObjectText, listObjects } from '../shared/s3.js';
import { startFaultProxy, type FaultProxy } from './helpers/fault-proxy.js';
import {
  deployment,
  runCli,
  spawnWorker,
  storedFinalStatus,
  type Deployment,
  type WorkerProcess,
} from './helpers/pipeline.js';

const PER_CLASS = 8;
const IMAGES = 2 * PER_CLASS;
/** Two shards per run, each two engine batches. */
const SHARD = 8;
let dep: Deployment;
let images: DemoImage[];
const workers = new Set<WorkerProcess>();
let planner: WorkerProcess;
let faults: FaultProxy;
let extractors: WorkerProcess[] = [];
/** The uncached run over base/, whose vectors the cached runs must reproduce exactly. */
let baseline: Map<string, Buffer>;

const source = (folder: string) => `s3://${dep.dataBucket}/${folder}/`;
const keysOf = (folder: string) => images.map((img) => `${folder}/${img.label}/${img.name}`);

function spawn(kind: string, env: Record<string, string> = {}): WorkerProcess {
  const w = spawnWorker({ ...dep.env, ...env }, kind);
  workers.add(w);
  return w;
}

async function stop(w: WorkerProcess): Promise<void> {
  await w.stop();
  workers.delete(w);
}

async function upload(folder: string): Promise<void> {
  await Promise.all(images.map((img) => dep.put(`${folder}/${img.label}/${img.name}`, img.png)));
}

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: String(SHARD), DEEPFEAT_BATCH_SIZE: '4' });
  faults = await startFaultProxy(dep.s3.endpoint);
  images = await loadDemoImages({ perClass: PER_CLASS });
  await Promise.all(['base', 'same', 'over', 'gone', 'prune', 'nometa'].map(upload));
  planner = spawn('planner');
  spawn('trainer');
  spawn('evaluator');
});

test.after.always(async () => {
  await Promise.all([...workers].map((w) => w.stop('SIGKILL')));
  await faults?.close();
  await dep?.close();
});

/** Runs `source` to publication and returns its status. */
async function run(src: string, name: string, seed: number, features: FeatureSpec = DEFAULT_FEATURES) {
  const runId = await enqueueRun(dep.client, { source: src, name, seed, features });
  const s = await waitForRun(dep.client, runId);
  if (s.stage !== 'published') throw new Error(`run ${name} ${s.stage}: ${s.error?.message}`);
  return s;
}

/** Each image's feature row, as the bytes of its float32s, from the run's shards. */
async function vectors(s: RunStatus): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (let shard = 0; shard < s.shards; shard++) {
    const npy = decodeNpy(await getObjectBytes(dep.client.s3, dep.config.bucket, shardKey(s.runId, shard, 'npy')));
    const dim = npy.shape[1]!;
    for (const row of await rowsOf(s.runId, shard)) {
      if (!('row' in row)) continue;
      const v = npy.data.subarray(row.row * dim, (row.row + 1) * dim);
      out.set(row.key, Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    }
  }
  return out;
}

async function rowsOf(runId: string, shard: number): Promise<ShardRow[]> {
  const text = await getObjectText(dep.client.s3, dep.config.bucket, shardKey(runId, shard, 'jsonl'));
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as ShardRow);
}

async function cacheObjects(): Promise<string[]> {
  const keys: string[] = [];
  for await (const o of listObjects(dep.client.s3, dep.config.bucket, CACHE_OBJECT_PREFIX)) keys.push(o.key);
  return keys;
}

/** The cache's figures for the spec whose id starts with `start` (e.g. 'raw-pixels:32x32 '). */
async function specStats(start: string): Promise<SpecStats | undefined> {
  const stats = await cacheStats({ redis: dep.client.redis!, prefix: dep.config.queuePrefix });
  return stats.specs.find((s) => s.spec.startsWith(start));
}

function assertSameVectors(t: import('ava').ExecutionContext, got: Map<string, Buffer>, want: Map<string, Buffer>) {
  t.deepEqual([...got.keys()].sort(), [...want.keys()].sort());
  const differ = [...want].filter(([k, v]) => !got.get(k)?.equals(v)).map(([k]) => k);
  t.deepEqual(differ, [], 'every vector byte for byte');
}

test.serial('DEEPFEAT_FEATURE_CACHE=off: no lookups, no hits, nothing written to the cache', async (t) => {
  t.timeout(240_000);
  const off = spawn('extractor', { DEEPFEAT_FEATURE_CACHE: 'off' });
  try {
    const first = await run(source('base'), 'base-off', 1);
    const second = await run(source('base'), 'base-off-again', 2);
    for (const s of [first, second]) {
      t.is(s.cache, null);
      t.is(s.done, IMAGES);
    }
    t.deepEqual(await cacheObjects(), []);
    t.is(await specStats('mobilenet_v2_mid@'), undefined);
    baseline = await vectors(first);
    t.is(baseline.size, IMAGES);
    // Without the cache, extraction is deterministic here: the second run made the same bytes.
    assertSameVectors(t, await vectors(second), baseline);
  } finally {
    await stop(off);
  }
  // Extractors from here on reach the store through the fault proxy (it passes everything unless told).
  extractors = [0, 1].map(() => spawn('extractor', { S3_ENDPOINT: faults.endpoint }));
});

test.serial('two runs at once over the same images: every vector of both equals the uncached run’s', async (t) => {
  t.timeout(240_000);
  // The cache's writes wait at the proxy until both runs have looked their first shard up and
  // extracted it: A's one 16-image shard on one extractor, B's first 8-image shard on the other.
  // Both miss the same 8 images and both store them (the last index write wins).
  const segmentPuts = faults.holdRequests(
    (method, path) => method === 'PUT' && path.startsWith(`/${dep.config.bucket}/${CACHE_OBJECT_PREFIX}`),
  );
  const a = await enqueueRun(dep.client, { source: source('base'), name: 'race-a', seed: 3, shardSize: 2 * SHARD });
  await segmentPuts.hit;
  const b = await enqueueRun(dep.client, { source: source('base'), name: 'race-b', seed: 4, shardSize: SHARD });
  while (segmentPuts.parked < 2) await new Promise((r) => setTimeout(r, 50));
  segmentPuts.release();
  const runs = await Promise.all([a, b].map((id) => waitForRun(dep.client, id)));
  for (const s of runs) {
    t.is(s.stage, 'published', s.error?.message);
    assertSameVectors(t, await vectors(s), baseline);
  }
  t.deepEqual(runs[0]!.cache, { hits: 0, misses: IMAGES });
  // B's second shard hits when it is looked up after A stored its vectors; on a loaded host it may
  // be looked up first and miss. Either way every image is counted once and every vector is right.
  t.is(runs[1]!.cache!.hits + runs[1]!.cache!.misses, IMAGES);
  t.true([0, SHARD].includes(runs[1]!.cache!.hits), JSON.stringify(runs[1]!.cache));
  // What they stored (both may have written a segment for a shard; the last entry wins) reads back exactly.
  const third = await run(source('base'), 'race-c', 5);
  t.deepEqual(third.cache, { hits: IMAGES, misses: 0 });
  assertSameVectors(t, await vectors(third), baseline);
});

test.serial(
  'a second run (new seed and name) extracts nothing: all hits, same shard bytes, status shows it',
  async (t) => {
    t.timeout(240_000);
    const first = await run(source('same'), 'same-1', 11);
    t.deepEqual(first.cache, { hits: 0, misses: IMAGES });
    const before = await specStats('mobilenet_v2_mid@');
    const second = await run(source('same'), 'same-2', 12);
    t.deepEqual(second.cache, { hits: IMAGES, misses: 0 });
    // Nothing was extracted: no new segment was written.
    const after = await specStats('mobilenet_v2_mid@');
    t.is(after?.segments, before?.segments);
    t.is(after?.entries, before?.entries);
    // The shards are the run's own, byte-identical to the first run's (same images, same order).
    t.is(second.shards, first.shards);
    for (let shard = 0; shard < first.shards; shard++) {
      const [a, b] = await Promise.all(
        [first, second].map((s) => getObjectBytes(dep.client.s3, dep.config.bucket, shardKey(s.runId, shard, 'npy'))),
      );
      t.true(Buffer.from(a!).equals(Buffer.from(b!)), `shard ${shard} .npy`);
      const strip = (rows: ShardRow[]) => rows.map(({ split: _, ...r }) => r);
      t.deepEqual(strip(await rowsOf(second.runId, shard)), strip(await rowsOf(first.runId, shard)));
    }
    const shown = await runCli(dep.env, ['status', second.runId]);
    t.is(shown.code, 0, shown.stderr);
    t.regex(shown.stdout, new RegExp(`\\ncache {5}${IMAGES}/${IMAGES} hits\\n`));
    // The final status the evaluator stores keeps the counts, for `status` once Redis has forgotten the run.
    const stored = await storedFinalStatus(dep, second.runId);
    t.deepEqual(stored.cache, { hits: IMAGES, misses: 0 });
  },
);

test.serial('a prediction run with a model on the same spec reads the cached vectors too', async (t) => {
  t.timeout(240_000);
  const runId = await enqueuePredict(dep.client, { model: 'same-1', source: source('same') });
  const s = await waitForRun(dep.client, runId);
  t.is(s.stage, 'done', s.error?.message);
  t.deepEqual(s.cache, { hits: IMAGES, misses: 0 });
  t.like(s.predictions, { images: IMAGES, predicted: IMAGES, failed: 0 });
});

test.serial('an object overwritten between runs (new ETag) is extracted again, and only it', async (t) => {
  t.timeout(240_000);
  const first = await run(source('over'), 'over-1', 21);
  const before = await vectors(first);
  // over/<cat>/<a> now holds the bytes of another image of the folder.
  const [target, donor] = [images[0]!, images[PER_CLASS]!];
  const targetKey = `over/${target.label}/${target.name}`;
  await dep.put(targetKey, donor.png);
  const second = await run(source('over'), 'over-2', 22);
  t.deepEqual(second.cache, { hits: IMAGES - 1, misses: 1 });
  const after = await vectors(second);
  t.false(after.get(targetKey)!.equals(before.get(targetKey)!), 'the new image has a new vector');
  // ...which is the vector its bytes had under their own key in the first run.
  t.true(after.get(targetKey)!.equals(before.get(`over/${donor.label}/${donor.name}`)!));
  for (const key of keysOf('over').filter((k) => k !== targetKey))
    t.true(after.get(key)!.equals(before.get(key)!), key);
});

test.serial('a manifest source has no listing ETags: HEAD finds each version, every image hits', async (t) => {
  t.timeout(240_000);
  // The `same/` images are cached (test above). An etag column is the user's text: never read.
  const rows = keysOf('same').map((k) => `${k},${k.split('/')[1]},"""forged-${k.length}"""`);
  await dep.put('lists/same.csv', `key,label,etag\n${rows.join('\n')}\n`);
  const s = await run(`s3://${dep.dataBucket}/lists/same.csv`, 'same-manifest', 13);
  t.deepEqual(s.cache, { hits: IMAGES, misses: 0 });
  const manifest = await getObjectText(dep.client.s3, dep.config.bucket, `runs/${s.runId}/manifest.jsonl`);
  t.notRegex(manifest, /forged|etag/);
  const listed = await run(source('same'), 'same-3', 14);
  assertSameVectors(t, await vectors(s), await vectors(listed));
});

test.serial('a segment deleted behind the index’s back: the run completes, its images are misses', async (t) => {
  t.timeout(240_000);
  const earlier = new Set(await cacheObjects());
  const first = await run(source('gone'), 'gone-1', 31);
  const written = (await cacheObjects()).filter((k) => !earlier.has(k));
  const npys = written.filter((k) => k.endsWith('.npy'));
  t.true(npys.length >= 1 && npys.length <= first.shards, written.join(', '));
  // The vectors go; their .keys, records and index entries stay, still naming them.
  for (const key of npys) await deleteObject(dep.client.s3, dep.config.bucket, key);
  const second = await run(source('gone'), 'gone-2', 32);
  t.is(second.stage, 'published');
  t.deepEqual(second.cache, { hits: 0, misses: IMAGES });
  assertSameVectors(t, await vectors(second), await vectors(first));
  // The misses were stored again: a third run hits.
  t.deepEqual((await run(source('gone'), 'gone-3', 33)).cache, { hits: IMAGES, misses: 0 });
});

test.serial('cache stats counts, cache prune removes, and the next run extracts again', async (t) => {
  t.timeout(240_000);
  const first = await run(source('prune'), 'prune-1', 41, RAW_PIXELS);
  t.deepEqual(first.cache, { hits: 0, misses: IMAGES });
  const stats = await runCli(dep.env, ['cache', 'stats', '--json']);
  t.is(stats.code, 0, stats.stderr);
  const raw = (JSON.parse(stats.stdout).specs as SpecStats[]).find((s) => s.spec.startsWith('raw-pixels:32x32 '))!;
  t.like(raw, { entries: IMAGES, segments: first.shards, rows: IMAGES, dim: 3072 });
  t.true(raw.bytes > IMAGES * 3072 * 4);
  const table = await runCli(dep.env, ['cache', 'stats']);
  t.regex(table.stdout, new RegExp(`raw-pixels:32x32 input=32x32 range=0,1 preprocessing=1 +${raw.hash} +${IMAGES} +`));
  t.regex(table.stdout, /mobilenet_v2_mid@expanded_conv_13\/expand\/Relu6\+half\+flip input=224x224/);

  // Nothing is that old; a spec nobody cached is refused with the fix.
  const young = await runCli(dep.env, ['cache', 'prune', '--older-than', '1h']);
  t.is(young.code, 0, young.stderr);
  t.is(young.stdout.trim(), 'nothing to prune');
  const unknown = await runCli(dep.env, ['cache', 'prune', '--spec', 'resnet@x']);
  t.is(unknown.code, 2);
  t.regex(
    unknown.stderr,
    /no feature spec "resnet@x" in the cache: give an id or hash that `deepfeat cache stats` lists/,
  );

  const pruned = await runCli(dep.env, ['cache', 'prune', '--spec', raw.hash, '--json']);
  t.is(pruned.code, 0, pruned.stderr);
  t.like(JSON.parse(pruned.stdout), { segments: first.shards, entries: IMAGES, objects: 2 * first.shards });
  t.is(await specStats('raw-pixels:32x32 '), undefined);
  t.deepEqual(
    (await cacheObjects()).filter((k) => k.startsWith(cacheFolder(dep.config.queuePrefix, raw.hash))),
    [],
  );
  // The backbone's entries are untouched.
  t.true(((await specStats('mobilenet_v2_mid@'))?.entries ?? 0) > 0);

  const again = await run(source('prune'), 'prune-2', 42, RAW_PIXELS);
  t.deepEqual(again.cache, { hits: 0, misses: IMAGES });
  assertSameVectors(t, await vectors(again), await vectors(first));

  // Segments older than a second go once they are; then the spec is empty and no longer listed.
  await new Promise((r) => setTimeout(r, 1100));
  const old = await runCli(dep.env, ['cache', 'prune', '--older-than', '1s', '--spec', raw.hash]);
  t.is(old.code, 0, old.stderr);
  t.regex(
    old.stdout,
    new RegExp(`^pruned ${again.shards} segments, ${IMAGES} index entries and ${2 * again.shards} objects`),
  );
  t.is(await specStats('raw-pixels:32x32 '), undefined);
});

/**
 * An HTTP proxy in front of the S3 server that removes every ETag: from response headers (GET,
 * HEAD) and from listings' XML, as a store without ETags would answer.
 */
async function etaglessProxy(upstream: string): Promise<{ endpoint: string; close(): Promise<void> }> {
  const up = new URL(upstream);
  const server = http.createServer((req, res) => {
    const forward = http.request(
      { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        const headers = { ...answer.headers };
        delete headers.etag;
        const isList = req.method === 'GET' && /[?&]list-type=2/.test(req.url ?? '');
        if (!isList) {
          res.writeHead(answer.statusCode ?? 502, headers);
          answer.pipe(res);
          return;
        }
        const chunks: Buffer[] = [];
        answer.on('data', (c: Buffer) => chunks.push(c));
        answer.on('end', () => {
          const body = Buffer.from(
            Buffer.concat(chunks)
              .toString('utf8')
              .replace(/<ETag>[^<]*<\/ETag>/g, ''),
            'utf8',
          );
          headers['content-length'] = String(body.length);
          res.writeHead(answer.statusCode ?? 502, headers);
          res.end(body);
        });
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    endpoint: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

test.serial('a store that gives no ETag: images are keyed by a hash of their bytes and still hit', async (t) => {
  t.timeout(240_000);
  const proxy = await etaglessProxy(dep.s3.endpoint);
  // The planner and extractors see the store through the proxy only.
  await Promise.all([stop(planner), ...extractors.map(stop)]);
  const env = { S3_ENDPOINT: proxy.endpoint };
  const through = [spawn('planner', env), spawn('extractor', env)];
  try {
    const first = await run(source('nometa'), 'nometa-1', 51);
    const manifest = await getObjectText(dep.client.s3, dep.config.bucket, `runs/${first.runId}/manifest.jsonl`);
    t.notRegex(manifest, /etag/, 'the listing gave no ETag');
    t.deepEqual(first.cache, { hits: 0, misses: IMAGES });
    const second = await run(source('nometa'), 'nometa-2', 52);
    t.deepEqual(second.cache, { hits: IMAGES, misses: 0 });
    assertSameVectors(t, await vectors(second), await vectors(first));
    // And they are the right vectors: base/ holds the same images, extracted without the cache.
    const renamed = new Map([...baseline].map(([k, v]) => [k.replace(/^base\//, 'nometa/'), v]));
    assertSameVectors(t, await vectors(first), renamed);
  } finally {
    await Promise.all(through.map(stop));
    await proxy.close();
  }
});
