/**
 * The extractor's engine cache, with small fake engines: one load per spec, engines held by a
 * running job are never disposed (two concurrent jobs on different backbones keep their own),
 * idle engines of other specs go before a new one loads, and an engine whose thread died or
 * failed to load is replaced on the next request instead of being handed out forever. The last
 * test runs the same case on real engine threads.
 */
import test from 'ava';
import { createEngineCache } from '../services/extractor/engine-cache.js';
import { loadEngineInThread } from '../services/extractor/engines/thread.js';
import type { FeatureSpec } from '../shared/features.js';

class FakeEngine {
  disposed = false;
  private listeners: Array<(reason: string) => void> = [];
  constructor(
    readonly n: number,
    readonly spec: FeatureSpec,
  ) {}
  /** Like the real engine: a disposed engine fails every batch. */
  async embed(): Promise<string> {
    if (this.disposed) throw new Error(`engine ${this.n} used after dispose()`);
    return `rows from engine ${this.n}`;
  }
  dispose() {
    this.disposed = true;
  }
  onExit(l: (reason: string) => void) {
    this.listeners.push(l);
  }
  crash(reason: string) {
    for (const l of this.listeners) l(reason);
  }
}

const a: FeatureSpec = { kind: 'builtin', id: 'mobilenet_v2_mid' };
const b: FeatureSpec = { kind: 'raw-pixels', size: 32 };
const c: FeatureSpec = { kind: 'raw-pixels', size: 16 };
const tick = () => new Promise((r) => setImmediate(r));

function fakeCache(onDeath?: (reason: string) => void) {
  const loaded: FakeEngine[] = [];
  const cache = createEngineCache(async (spec) => {
    const e = new FakeEngine(loaded.length + 1, spec);
    loaded.push(e);
    return e;
  }, onDeath);
  return { cache, loaded };
}

test('one load per spec, shared by concurrent callers', async (t) => {
  const { cache, loaded } = fakeCache();
  const [x, y] = await Promise.all([cache.acquire(a), cache.acquire(a)]);
  t.is(x.engine, y.engine);
  x.release();
  y.release();
  const z = await cache.acquire(a);
  t.is(z.engine, x.engine, 'an idle engine is kept for the next job with the same spec');
  t.is(loaded.length, 1);
});

test('two concurrent jobs on different specs keep their own engines until they end', async (t) => {
  const { cache, loaded } = fakeCache();
  // Job 1 (spec a) is mid-shard when job 2 (spec b) starts: before the fix, job 2's request
  // disposed job 1's engine and job 1's next batch failed.
  const job1 = await cache.acquire(a);
  const job2 = await cache.acquire(b);
  await tick();
  t.false(job1.engine.disposed);
  t.is(await job1.engine.embed(), 'rows from engine 1');
  t.is(await job2.engine.embed(), 'rows from engine 2');
  t.is(cache.size, 2);
  job1.release();
  job1.release(); // idempotent: a second release must not free someone else's hold
  await tick();
  t.false(job1.engine.disposed, 'idle, kept until a new engine needs the room');
  // A third spec: the idle engine (a) goes before it loads; the held one (b) stays.
  const job3 = await cache.acquire(c);
  await tick();
  t.true(loaded[0]!.disposed);
  t.false(job2.engine.disposed);
  t.is(cache.size, 2, 'never more engines than jobs running at once');
  job2.release();
  job3.release();
});

test('leases end with `using`, even when the job throws', async (t) => {
  const { cache, loaded } = fakeCache();
  const job = async (spec: FeatureSpec, fail: boolean) => {
    using lease = await cache.acquire(spec);
    await lease.engine.embed();
    if (fail) throw new Error('shard failed');
  };
  await t.throwsAsync(job(a, true), { message: 'shard failed' });
  await job(b, false); // a is idle after the failed job, so it is disposed for b
  await tick();
  t.true(loaded[0]!.disposed);
  t.false(loaded[1]!.disposed);
});

test('close() disposes every engine; the next request loads again', async (t) => {
  const { cache, loaded } = fakeCache();
  (await cache.acquire(a)).release();
  (await cache.acquire(a)).release();
  cache.close();
  await tick();
  t.true(loaded[0]!.disposed);
  t.is(cache.size, 0);
  t.is((await cache.acquire(a)).engine.n, 2);
});

test('close() resolves only once every engine is gone, one still loading included', async (t) => {
  let finishLoad!: () => void;
  let finishDispose!: () => void;
  const events: string[] = [];
  const cache = createEngineCache(async (spec) => {
    await new Promise<void>((r) => {
      finishLoad = r;
    });
    events.push('loaded');
    const e = new FakeEngine(1, spec);
    // As a threaded engine's: a second dispose() is the first one's promise.
    let gone: Promise<void> | undefined;
    return Object.assign(e, {
      dispose: () =>
        (gone ??= new Promise<void>((r) => {
          events.push('dispose started');
          finishDispose = () => {
            events.push('disposed');
            r();
          };
        })),
    });
  });
  const pending = cache.acquire(a); // the load is under way
  let closed = false;
  const closing = cache.close().then(() => {
    closed = true;
  });
  await tick();
  t.false(closed, 'not while the engine loads');
  finishLoad();
  (await pending).release();
  await tick();
  t.deepEqual(events, ['loaded', 'dispose started']);
  t.false(closed, 'not while it is being disposed');
  finishDispose();
  await closing;
  t.deepEqual(events, ['loaded', 'dispose started', 'disposed']);
});

test('a dead engine is replaced by the next request, and the death is reported', async (t) => {
  const deaths: string[] = [];
  const { cache } = fakeCache((r) => deaths.push(r));
  const first = await cache.acquire(a);
  await tick(); // let the cache subscribe to onExit
  first.engine.crash('exit code 1');
  t.deepEqual(deaths, ['exit code 1']);
  const second = await cache.acquire(a);
  t.not(second.engine, first.engine);
  t.is(second.engine.n, 2);
  first.release();
  await tick();
  t.true(first.engine.disposed, 'the dead engine is let go once its last job ends');
  t.false(second.engine.disposed);
});

test('a failed load is not cached: the next request tries again', async (t) => {
  let loads = 0;
  const cache = createEngineCache(async (spec) => {
    loads++;
    if (loads === 1) throw new Error('out of memory');
    return new FakeEngine(loads, spec);
  });
  await t.throwsAsync(cache.acquire(a), { message: 'out of memory' });
  await tick();
  t.is((await cache.acquire(a)).engine.n, 2);
});

test.serial('real engine threads: a job for another spec does not break a running job', async (t) => {
  const cache = createEngineCache((spec) =>
    loadEngineInThread(spec, { readObject: () => Promise.reject(new Error('no reads')) }),
  );
  const image = (size: number) => new Uint8Array(size * size * 3).fill(128);
  const small: FeatureSpec = { kind: 'raw-pixels', size: 8 };
  const large: FeatureSpec = { kind: 'raw-pixels', size: 12 };
  try {
    const job1 = await cache.acquire(small);
    t.is((await job1.engine.embed([image(8)])).length, 8 * 8 * 3);
    const job2 = await cache.acquire(large);
    t.is((await job2.engine.embed([image(12)])).length, 12 * 12 * 3);
    // Job 1's next batch, after job 2 loaded its engine.
    t.is((await job1.engine.embed([image(8), image(8)])).length, 2 * 8 * 8 * 3);
    job1.release();
    job2.release();
  } finally {
    await cache.close();
  }
});

test.serial(
  'real engine thread: dispose() resolves after the batch in flight, once the thread has ended',
  async (t) => {
    const engine = await loadEngineInThread(
      { kind: 'raw-pixels', size: 64 },
      { readObject: () => Promise.reject(new Error('no reads')) },
    );
    const batch = engine.embed(Array.from({ length: 64 }, () => new Uint8Array(64 * 64 * 3).fill(7)));
    const gone = engine.dispose();
    t.is(engine.dispose(), gone, 'a second dispose() is the same');
    const order: string[] = [];
    const rows = await Promise.all([
      batch.then((r) => {
        order.push('batch answered');
        return r;
      }),
      Promise.resolve(gone).then(() => order.push('thread ended')),
    ]);
    t.is(rows[0].length, 64 * 64 * 64 * 3, 'the batch queued before dispose() still answers');
    t.deepEqual(order, ['batch answered', 'thread ended']);
    await t.throwsAsync(engine.embed([new Uint8Array(64 * 64 * 3)]), { message: /after dispose/ });
  },
);
