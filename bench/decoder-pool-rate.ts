/**
 * Bench only: decode parallelism alone, for bench/feed.ts. The image files in DIR go through the
 * extractor's DecoderPool (decoder processes, as an extractor runs them) with 1 process and with
 * one per core; no S3 server, Redis or extractor main thread competes for the cores.
 *
 * It runs in a process of its own, started by feed.ts as
 * `node --import tsx bench/decoder-pool-rate.ts DIR ROUNDS [--quick]`, because the calling side
 * of the pool must be measured in a process like an extractor: in the benchmark's own process,
 * which holds every dataset and profile, the calling side took 1.0-1.3 ms of CPU per image where
 * an extractor's main thread spends 0.2-0.3 (garbage collection was 17% of that process's
 * samples, each 150 KB pixel buffer pressing a large heap), and the pool's scaling read 1.2-1.5x.
 *
 * Both pools stay up and their timed passes alternate (1, all, all, 1, …), so a change in the
 * host's load between passes touches both sides; the ratio is the median of each round's own
 * ratio. A pass decodes the images as often as it takes to last about a second with one process
 * (once with --quick). Prints one JSON line: images/s with one process and with all (medians),
 * the ratio, this process's CPU per image with each, and whether any decoder process was used
 * (small plain PNGs are decoded in the calling process).
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { DecoderPool, decodeProcesses } from '../services/extractor/decoder-pool.js';
import { mapLimit } from '../shared/concurrency.js';
import { median } from './stats.js';

export interface PoolRates {
  one: number;
  all: number;
  processes: number;
  ratio: number;
  /** CPU of the calling process per image (ms), with one decoder process and with all. */
  callerMsOne: number;
  callerMsAll: number;
  inline: boolean;
}

async function measure(bytes: readonly Uint8Array[], rounds: number, quick: boolean): Promise<PoolRates> {
  const req = { width: 224, height: 224, maxPixels: 1e8 };
  const sizes = [1, decodeProcesses({ decodeThreads: 0 })] as const;
  const pools = sizes.map((processes) => new DecoderPool({ processes, timeoutSeconds: 60, memoryLimitMiB: 1024 }));
  const pass = async (i: number, list: readonly Uint8Array[]) => {
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    // Each image's pixels are dropped as they come, as an extractor's batches drop them (kept,
    // a pass's 100 MB of pixel buffers made the collector work as in the benchmark's process).
    await mapLimit(list, 2 * sizes[i]!, async (b) => {
      await pools[i]!.decode(b, req);
    });
    const rate = (list.length * 1000) / (performance.now() - t0);
    const cpu = process.cpuUsage(cpu0);
    return { rate, callerMs: (cpu.user + cpu.system) / 1000 / list.length };
  };
  try {
    for (const [i, n] of sizes.entries()) await pass(i, bytes.slice(0, 4 * n)); // processes start
    let list = bytes;
    if (!quick) {
      const { rate } = await pass(0, bytes);
      const times = Math.max(1, Math.ceil(rate / bytes.length));
      list = Array.from({ length: times }, () => bytes).flat();
    }
    const one: Array<{ rate: number; callerMs: number }> = [];
    const all: Array<{ rate: number; callerMs: number }> = [];
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        one.push(await pass(0, list));
        all.push(await pass(1, list));
      } else {
        all.push(await pass(1, list));
        one.push(await pass(0, list));
      }
    }
    return {
      one: median(one.map((x) => x.rate)),
      all: median(all.map((x) => x.rate)),
      processes: sizes[1],
      ratio: median(all.map((a, i) => a.rate / one[i]!.rate)),
      callerMsOne: median(one.map((x) => x.callerMs)),
      callerMsAll: median(all.map((x) => x.callerMs)),
      inline: pools.every((p) => p.pids.length === 0),
    };
  } finally {
    for (const p of pools) await p.close();
  }
}

const [dir, rounds] = process.argv.slice(2);
if (!dir || !Number.isInteger(Number(rounds)) || Number(rounds) < 1) {
  process.stderr.write('usage: node --import tsx bench/decoder-pool-rate.ts DIR ROUNDS [--quick]\n');
  process.exit(2);
}
const files = (await readdir(dir).catch((err: Error) => fail(`cannot read ${dir}: ${err.message}`))).sort();
if (files.length === 0) fail(`${dir} holds no files: give a folder of images`);
const bytes = await Promise.all(files.map((f) => readFile(path.join(dir, f))));
// Every image once, first: one that cannot be decoded is named, not a stack trace mid-measurement.
const check = new DecoderPool({ processes: 1, timeoutSeconds: 60, memoryLimitMiB: 1024 });
try {
  for (const [i, b] of bytes.entries()) {
    await check.decode(b, { width: 224, height: 224, maxPixels: 1e8 }).catch((err: Error) => {
      fail(`${path.join(dir, files[i]!)}: ${err.message}; the folder must hold decodable images only`);
    });
  }
} finally {
  await check.close();
}
const rates = await measure(bytes, Number(rounds), process.argv.includes('--quick'));
process.stdout.write(`${JSON.stringify(rates)}\n`);

function fail(message: string): never {
  process.stderr.write(`decoder-pool-rate: ${message}\n`);
  process.exit(2);
}
