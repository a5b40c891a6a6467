/**
 * npx tsx bench/hostile-rss.ts [--copies N] [--in-process]: the extractor's memory while it works
 * through shards made entirely of hostile images. Not part of `npm test`; nothing is asserted, it
 * prints what it measured.
 *
 * Real parts (spawned redis-server, the embedded S3 server, planner/extractor/trainer/evaluator
 * processes started as users start them), the default backbone, default limits except
 * DEEPFEAT_IMAGE_FORMATS (SVG allowed, so its bounds are exercised) and DEEPFEAT_DECODE_TIMEOUT=5
 * (to keep the run short). The dataset is 16 demo images per class plus, sorted between them,
 * N copies of each hostile kind below, a multiple of the shard size (16): every shard between
 * the cats and the dogs holds only hostile images, decoded 8 at a time (DEEPFEAT_FETCH_CONCURRENCY).
 *
 * Measured by polling /proc every 100 ms: the extractor's VmHWM, each decoder process's VmHWM
 * (its children), and the largest sum of their resident sets seen at one time.
 *
 * --in-process decodes the same files with `decodeImage` in this process instead (8 at a time,
 * no decoder processes, the SVG that never ends left out): what the decoder processes save.
 */
import { readFile, readdir } from 'node:fs/promises';
import sharp from 'sharp';
import { enqueueRun, getStatus } from '../cli/client.js';
import { mapLimit } from '../shared/concurrency.js';
import { DEFAULT_FEATURES } from '../shared/features.js';
import { putObject } from '../shared/s3.js';
import { decodeImage } from '../services/extractor/image.js';
import { gifWithFrame, pngDeclaring, svgDoc, svgImage, svgUseBomb } from '../test/helpers/images.js';
import { startStack, startWorkers } from './stack.js';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const COPIES = Number(arg('--copies') ?? 8);
const IN_PROCESS = process.argv.includes('--in-process');
const SHARD = 16;

/** The hostile kinds, each allowed by the default pixel limit unless said otherwise. */
async function hostileKinds(): Promise<Array<{ name: string; bytes: Uint8Array; endless?: true }>> {
  const png4 = await sharp({ create: { width: 4, height: 4, channels: 3, background: '#f00' } })
    .png()
    .toBuffer();
  const big = {
    limitInputPixels: false,
    create: { width: 10000, height: 10000, channels: 3 as const, background: '#0a0' },
  };
  const png6000 = await sharp({ create: { width: 6000, height: 6000, channels: 3, background: '#00a' } })
    .png()
    .toBuffer();
  return [
    // 100 megapixels (at the limit): libjpeg holds every coefficient of a progressive file, ~380 MB.
    { name: 'progressive-100mp.jpg', bytes: await sharp(big).jpeg({ progressive: true }).toBuffer() },
    // 40 bytes whose frame grows the canvas to 9000×9000: 324 MB of canvas.
    { name: 'frame-9000.gif', bytes: gifWithFrame(16, 16, 9000, 9000) },
    // A 6000×6000 PNG in a 100×100 drawing (36 M pixels, under the limit): librsvg decodes it whole.
    { name: 'embedded-6000.svg', bytes: svgDoc(100, 100, svgImage(png6000, 'image/png', 100)) },
    // Refused from headers: a 20000×20000 PNG inside a drawing, and alone.
    {
      name: 'embedded-bomb.svg',
      bytes: svgDoc(100, 100, svgImage(pngDeclaring(png4, 20000, 20000), 'image/png', 100)),
    },
    { name: 'png-20000.png', bytes: pngDeclaring(png4, 20000, 20000) },
    // Renders for minutes: ended by DEEPFEAT_DECODE_TIMEOUT.
    { name: 'use-bomb.svg', bytes: svgUseBomb(5), endless: true },
  ];
}

async function status(pid: number): Promise<{ rss: number; hwm: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kb = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(s)?.[1] ?? 0);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

async function childrenOf(pid: number): Promise<number[]> {
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => []);
  const out: number[] = [];
  for (const t of tasks) {
    const list = await readFile(`/proc/${pid}/task/${t}/children`, 'utf8').catch(() => '');
    out.push(...list.split(' ').filter(Boolean).map(Number));
  }
  return out;
}

const kinds = await hostileKinds();
const mib = (n: number) => `${n.toFixed(0)} MiB`;

if (IN_PROCESS) {
  const files = kinds.filter((k) => !k.endless).flatMap((k) => Array.from({ length: COPIES }, () => k));
  const before = (await status(process.pid)).hwm;
  const reasons = await mapLimit(files, 8, (k) =>
    decodeImage(k.bytes, {
      width: 224,
      height: 224,
      maxPixels: 100_000_000,
      formats: ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif', 'svg'],
    }).then(
      () => `${k.name}: decoded`,
      (err: Error) => `${k.name}: ${err.message}`,
    ),
  );
  console.log([...new Set(reasons)].join('\n'));
  console.log(
    `in-process decode of ${files.length} hostile files, 8 at a time: peak RSS ${mib((await status(process.pid)).hwm)} (before: ${mib(before)})`,
  );
  process.exit(0);
}

const stack = await startStack(2 * SHARD);
const bucket = new URL(stack.source).hostname;
const prefix = new URL(stack.source).pathname.slice(1);
let n = 0;
for (const k of kinds) {
  for (let c = 0; c < COPIES; c++)
    await putObject(
      stack.client.s3,
      bucket,
      `${prefix}cat/zz-hostile-${String(n++).padStart(3, '0')}-${k.name}`,
      k.bytes,
    );
}
const env = {
  DEEPFEAT_IMAGE_FORMATS: 'jpeg,png,webp,gif,tiff,avif,svg',
  DEEPFEAT_DECODE_TIMEOUT: '5',
  DEEPFEAT_SHARD_SIZE: String(SHARD),
};
const groups = await Promise.all(
  ['planner', 'extractor', 'trainer', 'evaluator'].map((kind) => startWorkers(stack, kind, 1, env)),
);
const extractorPid = groups[1]!.procs[0]!.pid!;

const peaks = new Map<number, number>();
let maxTotal = 0;
let polling = true;
const poller = (async () => {
  while (polling) {
    const pids = [extractorPid, ...(await childrenOf(extractorPid))];
    let total = 0;
    for (const pid of pids) {
      const s = await status(pid);
      total += s.rss;
      peaks.set(pid, Math.max(peaks.get(pid) ?? 0, s.hwm));
    }
    maxTotal = Math.max(maxTotal, total);
    await new Promise((r) => setTimeout(r, 100));
  }
})();

const started = Date.now();
const runId = await enqueueRun(stack.client, {
  source: stack.source,
  features: DEFAULT_FEATURES,
  shardSize: SHARD,
  name: 'hostile',
});
let s = await getStatus(stack.client, runId);
while (!['published', 'failed'].includes(s.stage)) {
  await new Promise((r) => setTimeout(r, 500));
  s = await getStatus(stack.client, runId);
}
polling = false;
await poller;

const reasons = new Map<string, string>();
for (const f of s.failures) reasons.set(f.key.replace(/.*zz-hostile-\d+-/, ''), f.reason);
console.log(
  `run ${runId}: ${s.stage} in ${((Date.now() - started) / 1000).toFixed(0)} s; ${s.done} rows, ${s.failed} failed, ${s.shards} shards`,
);
if (COPIES > 0) for (const k of kinds) console.log(`  ${k.name}: ${reasons.get(k.name) ?? 'decoded'}`);
const decoders = [...peaks].filter(([pid]) => pid !== extractorPid);
console.log(`extractor peak RSS (VmHWM): ${mib(peaks.get(extractorPid) ?? 0)}`);
console.log(
  `decoder processes seen: ${decoders.length}; largest VmHWM ${mib(Math.max(0, ...decoders.map(([, v]) => v)))}`,
);
console.log(`largest extractor + decoders RSS at one time: ${mib(maxTotal)}`);
for (const g of groups) await g.stop();
await stack.close();
