import test from 'ava';
import { forEachOrdered, mapLimit } from '../shared/concurrency.js';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('mapLimit keeps order and never exceeds the limit', async (t) => {
  let running = 0;
  let peak = 0;
  const out = await mapLimit([50, 10, 30, 0, 20, 5], 3, async (ms, i) => {
    running++;
    peak = Math.max(peak, running);
    await tick(ms);
    running--;
    return i * 10;
  });
  t.deepEqual(out, [0, 10, 20, 30, 40, 50]);
  t.is(peak, 3);
});

test('forEachOrdered consumes in index order with at most `limit` results held', async (t) => {
  const delays = [40, 0, 25, 5, 0, 30, 10, 0];
  let inFlight = 0;
  let peak = 0;
  const seen: number[] = [];
  await forEachOrdered(
    delays.length,
    3,
    async (i) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await tick(delays[i]!);
      return i * i;
    },
    (r, i) => {
      inFlight--; // a result is released once consumed
      t.is(r, i * i);
      seen.push(i);
    },
  );
  t.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7]);
  t.true(peak <= 3, `peak ${peak}`);
});

test('forEachOrdered rejects with the first failure in order and stops consuming', async (t) => {
  const seen: number[] = [];
  const err = await t.throwsAsync(
    forEachOrdered(
      6,
      2,
      async (i) => {
        await tick(5);
        if (i === 3) throw new Error('shard 3 unreadable');
        return i;
      },
      (r) => seen.push(r),
    ),
  );
  t.is(err!.message, 'shard 3 unreadable');
  t.deepEqual(seen, [0, 1, 2]);
});

test('forEachOrdered with nothing to do calls nothing', async (t) => {
  let calls = 0;
  await forEachOrdered(
    0,
    4,
    async () => calls++,
    () => calls++,
  );
  t.is(calls, 0);
});
