/**
 * A run's manifest.jsonl and its shards' byte ranges, for training and prediction runs alike:
 * shard i is lines [i × shardSize, (i+1) × shardSize), and each shard's job carries only its
 * byte range, not the keys (issue 10: Redis memory at scale).
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { DatasetError, InternalError } from '../../shared/errors.js';
import { MAX_MANIFEST_LINE_BYTES } from '../../shared/queues.js';
import { quote } from '../../shared/text.js';

/** Shard i's lines of runs/<id>/manifest.jsonl: bytes [start, end), `count` lines. */
export interface ShardRange {
  start: number;
  end: number;
  count: number;
}

/**
 * runs/<id>/manifest.jsonl's bytes, built a block of lines at a time (yielding between blocks):
 * never one string of every line plus its copy as bytes. Also each shard's byte range: shard i
 * is items [i × shardSize, (i+1) × shardSize), which are consecutive lines, since the items are
 * written in order.
 */
export async function jsonLines<T extends { readonly key: string }>(
  items: readonly T[],
  shardSize: number,
): Promise<{ bytes: Buffer; shards: ShardRange[] }> {
  const BLOCK = 10_000;
  const blocks: Buffer[] = [];
  const shards: ShardRange[] = [];
  let offset = 0;
  let shardStart = 0;
  for (let i = 0; i < items.length; i += BLOCK) {
    const lines = items.slice(i, i + BLOCK).map((it) => JSON.stringify(it));
    lines.forEach((line, j) => {
      const size = Buffer.byteLength(line, 'utf8') + 1; // + the newline
      if (size > MAX_MANIFEST_LINE_BYTES) {
        throw new DatasetError(
          `the item for key ${quote(items[i + j]!.key, 200)} is ${size} bytes as a manifest line, over the limit of ` +
            `${MAX_MANIFEST_LINE_BYTES}: shorten its key or label`,
        );
      }
      offset += size;
      const n = i + j + 1; // items written so far
      if (n % shardSize === 0 || n === items.length) {
        shards.push({ start: shardStart, end: offset, count: n - shards.length * shardSize });
        shardStart = offset;
      }
    });
    blocks.push(Buffer.from(`${lines.join('\n')}\n`, 'utf8'));
    if (i + BLOCK < items.length) await yieldToEventLoop();
  }
  const bytes = Buffer.concat(blocks);
  // The ranges were counted line by line; the bytes are what the extractors will read.
  if (bytes.length !== offset) throw new InternalError(`manifest.jsonl is ${bytes.length} bytes, its lines ${offset}`);
  return { bytes, shards };
}
