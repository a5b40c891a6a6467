/**
 * The extractor's engine cache, with small fake engines: one load per spec, a new spec replaces
 * (and disposes) the old engine, and an engine whose thread died or failed to load is replaced
 * on the next request instead of being handed out forever.
 */
import test from 'ava';
import { createEngineCache } from '../services/extractor/engine-cache.js';
import type { FeatureSpec } from '../shared/features.js';

class FakeEngine {
  disposed = false;
  private listeners: Array<(reason: string) => void> = [];
  constructor(readonly n: number) {}
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
const tick = () => new Promise((r) => setImmediate(r));

test('one load per spec, shared by concurrent callers', async (t) => {
  let loads = 0;
  const cache = createEngineCache(async () => new FakeEngine(++loads));
  const [x, y] = await Promise.all([cache.get(a), cache.get(a)]);
  t.is(x, y);
  t.is(await cache.get(a), x);
  t.is(loads, 1);
});

test('a different spec disposes the old engine; close() disposes the current one', async (t) => {
  let loads = 0;
  const cache = createEngineCache(async () => new FakeEngine(++loads));
  const first = await cache.get(a);
  const second = await cache.get(b);
  await tick();
  t.true(first.disposed);
  t.false(second.disposed);
  cache.close();
  await tick();
  t.true(second.disposed);
  t.is((await cache.get(b)).n, 3, 'after close() the next request loads again');
});

test('a dead engine is replaced by the next request, and the death is reported', async (t) => {
  let loads = 0;
  const deaths: string[] = [];
  const cache = createEngineCache(async () => new FakeEngine(++loads), (r) => deaths.push(r));
  const first = await cache.get(a);
  await tick(); // let the cache subscribe to onExit
  first.crash('exit code 1');
  t.deepEqual(deaths, ['exit code 1']);
  const second = await cache.get(a);
  t.not(second, first);
  t.is(second.n, 2);
});

test('a failed load is not cached: the next request tries again', async (t) => {
  let loads = 0;
  const cache = createEngineCache(async () => {
    loads++;
    if (loads === 1) throw new Error('out of memory');
    return new FakeEngine(loads);
  });
  await t.throwsAsync(cache.get(a), { message: 'out of memory' });
  await tick();
  t.is((await cache.get(a)).n, 2);
});
