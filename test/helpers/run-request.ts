import type { RunRequest } from '../../shared/queues.js';

/** A complete run request around `features`, for checks of the run request schema (shared/queues.ts). */
export const runRequestWith = (features: unknown) => ({
  source: 's3://bucket/x/',
  name: 'm',
  features,
  seed: 1,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 256,
});

/** A training run's request as the run-state tests store it (RunStore.create). */
export const catsRequest: RunRequest = {
  source: 's3://b/data/',
  name: 'cats',
  features: { kind: 'raw-pixels', size: 32 },
  seed: 42,
  split: { train: 0.7, val: 0.1, test: 0.2 },
  shardSize: 50,
};
