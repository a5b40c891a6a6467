/**
 * A prediction run's output, as the extractor writes it and the evaluator reads it back:
 * runs/<id>/predictions/<shard>.jsonl, one line per manifest item in manifest order —
 * `{key, label?, top: [{label, probability}, ...]}` or `{key, label?, error}` — and at the end
 * runs/<id>/predictions.csv. `label` is the item's label when the source manifest gave one.
 */
import { z } from 'zod';

export const predictionsShardKey = (runId: string, shard: number): string =>
  `runs/${runId}/predictions/${String(shard).padStart(5, '0')}.jsonl`;

export const predictionsCsvKey = (runId: string): string => `runs/${runId}/predictions.csv`;

const ranked = z.object({ label: z.string(), probability: z.number().min(0).max(1) }).strict();
export type RankedLabel = z.infer<typeof ranked>;

/** One line of a predictions/<shard>.jsonl. */
export const predictionLineSchema = z.union([
  z.object({ key: z.string(), label: z.string().optional(), top: z.array(ranked).min(1) }).strict(),
  z.object({ key: z.string(), label: z.string().optional(), error: z.string() }).strict(),
]);
export type PredictionLine = z.infer<typeof predictionLineSchema>;

/**
 * The `k` most probable classes, most probable first; equal probabilities keep the classes'
 * order (the earlier class first, as predictLabel breaks ties).
 */
export function topK(classes: readonly string[], p: ArrayLike<number>, k: number): RankedLabel[] {
  const order = Array.from({ length: classes.length }, (_, i) => i);
  order.sort((a, b) => p[b]! - p[a]! || a - b);
  return order.slice(0, k).map((i) => ({ label: classes[i]!, probability: p[i]! }));
}
