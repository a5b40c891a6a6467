/**
 * The decoder process's side (started by decoder-pool.ts through decoder-entry.mjs): serves
 * `decode` calls over the IPC channel, one image at a time (its bytes come on stdin, its pixels
 * go back on fd 4), with sharp set up for that: no operation cache (nothing is decoded twice) and
 * one libvips thread (the pool's processes are the parallelism; decoder-pool.ts also gives each
 * process a libuv pool of one thread). Only the entry imports this module; importing it elsewhere
 * would serve on import.
 */
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
// Pixels go back on their own pipe (decoder-pool.ts PIXEL_FD), as raw bytes.
const pixelsOut = new Socket({ fd: 4, readable: false, writable: true });

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
      await new Promise<void>((resolve, reject) => pixelsOut.write(pixels, (err) => (err ? reject(err) : resolve())));
      return { length: pixels.byteLength, rssBytes: process.memoryUsage.rss() };
    },
  },
);
// The extractor went away (crashed, killed): nothing is left to decode for.
process.on('disconnect', () => process.exit(0));
send({ t: 'ready' });
