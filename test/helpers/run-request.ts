/** A complete run request around `features`, for checks of the run request schema (shared/queues.ts). */
export const runRequestWith = (features: unknown) => ({
  source: 's3://bucket/x/',
  name: 'm',
  features,
  seed: 1,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 256,
});
