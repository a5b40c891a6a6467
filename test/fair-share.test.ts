/** Fair sharing between runs: the BullMQ priority of each shard's job (services/planner/fair-share.ts). */
import test from 'ava';
import { SPAN, shardJobPriority } from '../services/planner/fair-share.js';
import { RUN_LIMITS } from '../shared/queues.js';

test('runs of equal priority are served shard by shard: shard i of every run before shard i+1 of any', (t) => {
  for (const i of [0, 1, 7, 500, 4000]) {
    t.is(shardJobPriority(5, i), shardJobPriority(undefined, i), 'absent = the default, 5');
    t.true(shardJobPriority(5, i) < shardJobPriority(5, i + 1));
  }
  // A run queued behind a 4,000-shard run: its shard 3 outranks the big run's shard 4.
  t.true(shardJobPriority(undefined, 3) < shardJobPriority(undefined, 4));
  t.is(RUN_LIMITS.priority.default, 5);
});

test('a run of higher priority goes before every shard of a lower one', (t) => {
  t.true(shardJobPriority(9, SPAN + 10) < shardJobPriority(8, 0));
  t.true(shardJobPriority(6, 100_000) < shardJobPriority(5, 0));
  t.true(shardJobPriority(0, 0) > shardJobPriority(1, SPAN - 1));
});

test("every priority is within BullMQ's range 1..2^21-1, also past the last rank and for odd inputs", (t) => {
  const all = [0, 5, 9].flatMap((p) => [0, 1, SPAN - 1, SPAN, 10 ** 9].map((i) => shardJobPriority(p, i)));
  for (const v of all) t.true(Number.isInteger(v) && v >= 1 && v <= 2 ** 21 - 1, String(v));
  t.is(shardJobPriority(9, 0), 1);
  t.is(shardJobPriority(0, 10 ** 9), 10 * SPAN);
  t.is(shardJobPriority(42, 0), shardJobPriority(9, 0), 'clamped to the limits');
  t.is(shardJobPriority(-3, -1), shardJobPriority(0, 0));
});
