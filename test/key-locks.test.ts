import test from 'ava';
import { KeyLocks } from '../cli/key-locks.js';

const tick = () => new Promise((resolve) => setImmediate(resolve));

test('readers share a name; a writer waits for them and holds it alone; other names are independent', async (t) => {
  const locks = new KeyLocks();
  const events: string[] = [];
  const r1 = await locks.acquire('a', 'shared');
  const r2 = await locks.acquire('a', 'shared');
  const w = locks.acquire('a', 'exclusive').then((release) => {
    events.push('writer');
    return release;
  });
  const other = await locks.acquire('b', 'exclusive'); // not blocked by 'a'
  await tick();
  t.deepEqual(events, [], 'the writer waits while readers hold the name');
  r1();
  await tick();
  t.deepEqual(events, []);
  r2();
  const releaseWriter = await w;
  t.deepEqual(events, ['writer']);
  releaseWriter();
  other();
  t.is(locks.size, 0, 'nothing is kept for idle names');
});

test('arrival order: a reader that comes after a waiting writer waits too (no writer starvation)', async (t) => {
  const locks = new KeyLocks();
  const order: string[] = [];
  const first = await locks.acquire('k', 'shared');
  const writer = locks.acquire('k', 'exclusive').then((release) => {
    order.push('writer');
    return release;
  });
  const lateReader = locks.acquire('k', 'shared').then((release) => {
    order.push('late reader');
    return release;
  });
  await tick();
  t.deepEqual(order, []);
  first();
  (await writer)();
  (await lateReader)();
  t.deepEqual(order, ['writer', 'late reader']);
  t.is(locks.size, 0);
});

test('an aborted wait holds nothing and lets the waiters behind it in', async (t) => {
  const locks = new KeyLocks();
  const reader = await locks.acquire('k', 'shared');
  const gone = new AbortController();
  const writer = locks.acquire('k', 'exclusive', gone.signal);
  let secondReader = false;
  const second = locks.acquire('k', 'shared').then((release) => {
    secondReader = true;
    return release;
  });
  await tick();
  t.false(secondReader, 'queued behind the writer');
  gone.abort(new Error('client went away'));
  await t.throwsAsync(writer, { message: 'client went away' });
  (await second)();
  t.true(secondReader);
  reader();
  reader(); // a second release counts for nothing
  t.is(locks.size, 0);
  const again = await locks.acquire('k', 'exclusive');
  again();
});

test('run holds the name only while its work runs, and releases it when the work throws', async (t) => {
  const locks = new KeyLocks();
  const inside = await locks.run('k', 'exclusive', async () => locks.size);
  t.is(inside, 1, 'held while the work runs');
  t.is(locks.size, 0, 'released after');
  await t.throwsAsync(
    locks.run('k', 'exclusive', async () => {
      throw new Error('disk full');
    }),
    { message: 'disk full' },
  );
  t.is(locks.size, 0, 'released after a failure too');
  const again = await locks.acquire('k', 'exclusive');
  again();
});
