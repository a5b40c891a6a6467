/**
 * The decoder process's side (started by decoder-pool.ts through decoder-entry.mjs): serves
 * `decode` calls over the IPC channel, one image at a time (its bytes come on stdin, its pixels
 * go back on fd 4), with sharp set up for that: no operation cache (nothing is decoded twice) and
 * one libvips thread (the pool's processes are the parallelism; decoder-pool.ts also gives each
 * process a libuv pool of one thread). Only the entry imports this module; importing it elsewhere
 * would serve on import.
 */
import { writeSync } from 'node:fs';
import { Socket } from 'node:net';
import sharp from 'sharp';
import { Channel } from '../../shared/thread-call.js';
import type { DecoderApi } from './decoder-pool.js';
import { decodeImage } from './image.js';

sharp.cache(false);
sharp.concurrency(1);

if (!process.send) throw new Error('decoder-process.ts runs only as a child process with an IPC channel');
const send = process.send.bind(process);

// Image bytes arrive on stdin, and the call that says how many on the channel: either may come
// first. The pool sends one image at a time, so what arrives belongs to the call under way.
const chunks: Buffer[] = [];
let queued = 0;
let waiting: { length: number; resolve: (bytes: Buffer) => void } | undefined;
const deliver = () => {
  if (!waiting || queued < waiting.length) return;
  const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, queued);
  const { length, resolve } = waiting;
  waiting = undefined;
  chunks.length = 0;
  queued = all.length - length;
  if (queued > 0) chunks.push(all.subarray(length));
  resolve(all.subarray(0, length));
};
process.stdin.on('data', (chunk: Buffer) => {
  chunks.push(chunk);
  queued += chunk.length;
  deliver();
});
const imageBytes = (length: number) =>
  new Promise<Buffer>((resolve) => {
    waiting = { length, resolve };
    deliver();
  });
// Pixels go back on their own pipe (decoder-pool.ts PIXEL_FD), as raw bytes, written straight to
// the descriptor: it is blocking on this side (the pool reads its end as they come), and one system
// call costs less than a stream write with its request object and callback (issue 14). Should it be
// non-blocking after all (EAGAIN), the rest goes through a stream, as every write after it.
const PIXEL_FD = 4; // decoder-pool.ts PIXEL_FD (a type-only import keeps the pool's module out of here)
let pixelStream: Socket | undefined;
async function writePixels(pixels: Uint8Array): Promise<void> {
  let done = 0;
  if (!pixelStream) {
    try {
      while (done < pixels.byteLength) done += writeSync(PIXEL_FD, pixels, done);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      pixelStream = new Socket({ fd: PIXEL_FD, readable: false, writable: true });
    }
  }
  const rest = pixels.subarray(done);
  const stream = pixelStream;
  await new Promise<void>((resolve, reject) => stream.write(rest, (err) => (err ? reject(err) : resolve())));
}

/**
 * Resident memory for the pool's "past half the limit, start afresh" rule (decoder-pool.ts). The
 * peak (getrusage) is an upper bound and costs a system call; the current figure reads /proc (about
 * 10 µs). While the peak is within half the limit, it decides the same, so it is what we report.
 */
function residentBytes(memoryLimitMiB: number | undefined): number {
  const peak = process.resourceUsage().maxRSS * 1024;
  return memoryLimitMiB && peak > (memoryLimitMiB * 2 ** 20) / 2 ? process.memoryUsage.rss() : peak;
}

new Channel<object, DecoderApi>(
  {
    postMessage: (m: unknown) => send(m as object),
    on: (event: 'message', listener: (m: unknown) => void) => process.on(event, listener),
  },
  {
    async decode({ length, opts }) {
      const bytes = await imageBytes(length);
      const pixels = await decodeImage(bytes, opts);
      // Handed to the kernel before the answer, so the pool has them (or they are on their way).
      await writePixels(pixels);
      return { length: pixels.byteLength, rssBytes: residentBytes(opts.memoryLimitMiB) };
    },
  },
);
// The extractor went away (crashed, killed): nothing is left to decode for.
process.on('disconnect', () => process.exit(0));
send({ t: 'ready' });
