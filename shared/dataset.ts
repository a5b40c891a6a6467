/** The manifest: every image of a run, one per line in runs/<id>/manifest.jsonl. */
export type Split = 'train' | 'val' | 'test';
export const SPLITS: readonly Split[] = ['train', 'val', 'test'];

export interface ManifestItem {
  /** Object key in the source bucket. */
  readonly key: string;
  readonly label: string;
  readonly split: Split;
}

/**
 * One line of a shard's row metadata (runs/<id>/features/<shard>.jsonl), in manifest order.
 * `row` is the image's row in the shard's .npy; `error` is why it has none.
 */
export type ShardRow =
  | { key: string; label: string; split: Split; row: number }
  | { key: string; label: string; split: Split; error: string };

export function shardKey(runId: string, shard: number, ext: 'npy' | 'jsonl'): string {
  return `runs/${runId}/features/${String(shard).padStart(5, '0')}.${ext}`;
}
