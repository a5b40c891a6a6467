/**
 * The decoder process's side (started by decoder-pool.ts through decoder-entry.mjs): serves
 * `decode` calls over the IPC channel, one image at a time, with sharp set up for that: no
 * operation cache (nothing is decoded twice) and one libvips thread (the pool's processes are the
 * parallelism). Only the entry imports this module; importing it elsewhere would serve on import.
 */
import sharp from 'sharp';
import { Channel } from '../../shared/thread-call.js';
import type { DecoderApi } from './decoder-pool.js';
import { decodeImage } from './image.js';

sharp.cache(false);
sharp.concurrency(1);

if (!process.send) throw new Error('decoder-process.ts runs only as a child process with an IPC channel');
const send = process.send.bind(process);
new Channel<object, DecoderApi>(
  {
    postMessage: (m: unknown) => send(m as object),
    on: (event: 'message', listener: (m: unknown) => void) => process.on(event, listener),
  },
  {
    async decode({ bytes, opts }) {
      const pixels = await decodeImage(bytes, opts);
      return { pixels, rssBytes: process.memoryUsage.rss() };
    },
  },
);
// The extractor went away (crashed, killed): nothing is left to decode for.
process.on('disconnect', () => process.exit(0));
send({ t: 'ready' });
