/** The manifest: every image of a run, one per line in runs/<id>/manifest.jsonl. */
/** The splits of a dataset: train fits, val picks the L2 strength, test scores the published model. */
export const SPLITS = ['train', 'val', 'test'] as const;
export type Split = (typeof SPLITS)[number];

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
