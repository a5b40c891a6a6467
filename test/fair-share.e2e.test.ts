/**
 * Fair sharing on real parts: a small run queued (through the CLI, `--priority 5`, the default)
 * behind a large one, both planned before the single extractor starts, finishes its extraction
 * after about as many of the large run's shards as it has itself, not after all of them as
 * first-in first-out would have it. Counted from the order in which BullMQ finished the extract
 * jobs (finishedOn), not from wall-clock durations.
 */
import test from 'ava';
import { enqueueRun, getStatus, waitForRun } from '../cli/client.js';
import { loadDemoImages } from '../cli/demo-data.js';
import { shardJobPriority } from '../services/planner/fair-share.js';
import { RAW_PIXELS } from '../shared/features.js';
import { makeQueue } from '../shared/queues.js';
import { deployment, runCli, spawnWorker, type Deployment, type WorkerProcess } from './helpers/pipeline.js';

const BIG_PER_CLASS = 150;
const SMALL_PER_CLASS = 20;
const SHARD = 10;

let dep: Deployment;
let workers: WorkerProcess[] = [];

test.before(async () => {
  dep = await deployment({ DEEPFEAT_SHARD_SIZE: String(SHARD) });
  const images = await loadDemoImages({ perClass: BIG_PER_CLASS });
  await Promise.all(images.map((img) => dep.put(`big/${img.label}/${img.name}`, img.png)));
  const small = images.filter((img) => Number(img.name.slice(4, 8)) < SMALL_PER_CLASS);
  await Promise.all(small.map((img) => dep.put(`small/${img.label}/${img.name}`, img.png)));
  // Only the planner at first: both runs' shards are queued before any extractor takes one.
  workers = [spawnWorker(dep.env, 'planner')];
});

test.after.always(async () => {
  await Promise.all(workers.map((w) => w.stop()));
  await dep?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function planned(runId: string) {
  for (;;) {
    const s = await getStatus(dep.client, runId);
    if (s.stage !== 'queued' && s.stage !== 'planning') return s;
    await sleep(100);
  }
}

test.serial('a small run queued behind a large one is not starved', async (t) => {
  t.timeout(300_000);
  const bigId = await enqueueRun(dep.client, {
    source: `s3://${dep.dataBucket}/big/`,
    name: 'big',
    features: RAW_PIXELS,
  });
  const big = await planned(bigId);
  t.is(big.stage, 'extracting', big.error?.message);
  // Queued behind it, through the CLI, at the default priority given explicitly.
  const cli = await runCli(dep.env, [
    'run',
    `s3://${dep.dataBucket}/small/`,
    '--name',
    'small',
    '--features',
    'raw-pixels',
    '--priority',
    '5',
    '--json',
  ]);
  t.is(cli.code, 0, cli.stderr);
  const smallId = (JSON.parse(cli.stdout) as { runId: string }).runId;
  t.is((await planned(smallId)).stage, 'extracting');
  // And one more small run, queued last but urgent: it goes before both.
  const urgentId = await enqueueRun(dep.client, {
    source: `s3://${dep.dataBucket}/small/`,
    name: 'urgent',
    features: RAW_PIXELS,
    priority: 9,
  });
  const urgent = await planned(urgentId);
  // One extractor, so the order in which it takes shards is the whole story.
  workers.push(...['extractor', 'trainer', 'evaluator'].map((k) => spawnWorker(dep.env, k)));
  const small = await waitForRun(dep.client, smallId, undefined, 200);
  t.is(small.stage, 'published', small.error?.message);
  t.is((small.request as { priority?: number }).priority, 5);

  const extract = makeQueue(dep.client.queues!, 'extract');
  try {
    const jobs = async (runId: string, n: number) =>
      Promise.all(Array.from({ length: n }, (_, i) => extract.getJob(`${runId}-extract-${i}`)));
    const bigJobs = await jobs(bigId, big.shards);
    const smallJobs = await jobs(smallId, small.shards);
    // Every job carries its fair-share priority.
    t.deepEqual(
      bigJobs.map((j) => j?.opts.priority),
      bigJobs.map((_, i) => shardJobPriority(undefined, i)),
    );
    t.deepEqual(
      smallJobs.map((j) => j?.opts.priority),
      smallJobs.map((_, i) => shardJobPriority(5, i)),
    );
    const smallEnd = Math.max(...smallJobs.map((j) => j!.finishedOn!));
    const bigBefore = bigJobs.filter((j) => j?.finishedOn !== undefined && j.finishedOn <= smallEnd).length;
    t.log(
      `large run ${big.shards} shards, small run ${small.shards} shards queued behind it: the small run's last shard ` +
        `finished after ${bigBefore} of the large run's (first-in first-out: after all ${big.shards})`,
    );
    const urgentJobs = await jobs(urgentId, urgent.shards);
    const urgentEnd = Math.max(...urgentJobs.map((j) => j!.finishedOn!));
    const othersFirst = Math.min(...[...bigJobs, ...smallJobs].map((j) => j?.finishedOn ?? Number.POSITIVE_INFINITY));
    t.true(urgentEnd <= othersFirst, 'the priority 9 run was extracted before any shard of the priority 5 runs');
    t.true(big.shards >= 5 * small.shards);
    // Shard by shard: the small run's shard i right after the large run's shard i.
    t.true(bigBefore <= small.shards + 1, `${bigBefore} of ${big.shards}`);
  } finally {
    await extract.close();
  }
});
