/**
 * `deepfeat cache stats|prune`: what the feature cache holds, per feature spec, and trimming it
 * (services/extractor/feature-cache/maintenance.ts does the work). Both need Redis, where the
 * cache's index is, and the artifacts bucket, where its segments are.
 */
import type { Command } from 'commander';
import { requireRedisUrl } from '../shared/config.js';
import { BadRequestError } from '../shared/errors.js';
import { quote, terminalSafeJson } from '../shared/text.js';
import {
  cacheStats,
  checkPruneOptions,
  pruneCache,
  type CacheStats,
  type PruneResult,
} from '../services/extractor/feature-cache/maintenance.js';
import type { Client } from './client.js';
import { field, table } from './format.js';

/** Units of --older-than, in milliseconds. */
const DURATION_UNITS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** `30d`, `12h`, `90m`, `45s`, `2w` → milliseconds; anything else is refused naming the flag and the form. */
export function parseDuration(flag: string, value: string): number {
  const m = /^(\d{1,9})([smhdw])$/.exec(value.trim());
  if (!m) {
    throw new BadRequestError(
      `${flag} ${quote(value, 50)}: expected a whole number and a unit, e.g. 30d, 12h, 90m, 45s or 2w`,
    );
  }
  return Number(m[1]) * DURATION_UNITS[m[2] as keyof typeof DURATION_UNITS];
}

/** Bytes for people: B, KiB, MiB, GiB. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v >= 100 ? 0 : 1)} ${units[u]}`;
}

/** The stats as a table: one row per feature spec, and a total when there are several. */
export function formatCacheStats(s: CacheStats): string {
  if (s.specs.length === 0) return 'the feature cache is empty';
  const day = (iso: string | null) => (iso === null ? '-' : iso.slice(0, 19).replace('T', ' '));
  const rows = s.specs.map((x) => [
    x.spec,
    x.hash,
    String(x.entries),
    String(x.segments),
    String(x.rows),
    formatBytes(x.bytes),
    day(x.oldest),
    day(x.newest),
  ]);
  if (s.specs.length > 1) {
    const t = s.total;
    rows.push(['total', '', String(t.entries), String(t.segments), String(t.rows), formatBytes(t.bytes), '', '']);
  }
  return table([['spec', 'hash', 'entries', 'segments', 'rows', 'size', 'oldest', 'newest'], ...rows]);
}

export function formatPruneResult(r: PruneResult): string {
  if (r.segments === 0 && r.objects === 0) return 'nothing to prune';
  const specs = r.specs.map((s) => field(s)).join(', ');
  return `pruned ${r.segments} segments, ${r.entries} index entries and ${r.objects} objects (${specs})`;
}

/**
 * Adds `cache stats` and `cache prune` to the program. `withClient` is the CLI's own (main.ts):
 * it serves the local .deepfeat/s3 folder when no S3_ENDPOINT is set, as for every reader.
 */
export function registerCacheCommand(
  program: Command,
  withClient: <T>(fn: (client: Client) => Promise<T>) => Promise<T>,
): void {
  const cache = program
    .command('cache')
    .description('the feature cache: vectors already extracted, reused by later runs (DEEPFEAT_FEATURE_CACHE)');
  const deps = (client: Client) => {
    requireRedisUrl(client.config);
    return { redis: client.redis!, prefix: client.config.queuePrefix, s3: client.s3, bucket: client.config.bucket };
  };
  cache
    .command('stats')
    .description('entries, segments and bytes of the cache, per feature spec')
    .option('--json', 'print JSON')
    .action(async (o) => {
      await withClient(async (client) => {
        const s = await cacheStats(deps(client));
        console.log(o.json ? terminalSafeJson(s, 2) : formatCacheStats(s));
      });
    });
  cache
    .command('prune')
    .description('delete cached vectors (segments and their index entries); runs extracting meanwhile just miss')
    .option('--older-than <duration>', 'only segments written longer ago than this, e.g. 30d, 12h, 90m')
    .option('--spec <id>', 'only this feature spec (its id or hash, as `deepfeat cache stats` shows)')
    .option('--all', 'everything the cache holds')
    .option('--json', 'print JSON')
    .action(async (o) => {
      // Flags are checked before anything is connected to.
      const olderThanMs = o.olderThan === undefined ? undefined : parseDuration('--older-than', o.olderThan);
      const options = {
        ...(olderThanMs !== undefined ? { olderThanMs } : {}),
        ...(o.spec !== undefined ? { spec: String(o.spec) } : {}),
        ...(o.all ? { all: true } : {}),
      };
      checkPruneOptions(options);
      await withClient(async (client) => {
        const r = await pruneCache(deps(client), options);
        console.log(o.json ? terminalSafeJson(r, 2) : formatPruneResult(r));
      });
    });
}
