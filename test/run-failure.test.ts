/**
 * RunStore.fail against a real Redis: the specific cause of a failure wins over BullMQ's generic
 * "child … failed" report (INTERNAL), whichever arrives first — also when the two come from
 * different processes at the same moment (separate connections here), as the extract job and
 * its parent do.
 */
import test from 'ava';
import { Redis } from 'ioredis';
import { RunStore } from '../shared/run-state.js';
import { getRedis, uniqueName, type TestRedis } from './helpers/services.js';
import { catsRequest } from './helpers/run-request.js';

const request = catsRequest;

let redis: TestRedis;
const conns: Redis[] = [];
test.before(async () => {
  redis = await getRedis();
});
test.after.always(async () => {
  await Promise.all(conns.map((c) => c.quit()));
  await redis?.stop();
});

function stores(): [RunStore, RunStore] {
  const prefix = uniqueName('fail');
  const a = new Redis(redis.url);
  const b = new Redis(redis.url);
  conns.push(a, b);
  return [new RunStore(a, prefix), new RunStore(b, prefix)];
}

test('the specific cause wins over the generic one, in either order and when both race', async (t) => {
  const [child, parent] = stores();
  for (let i = 0; i < 30; i++) {
    const runId = `r${i}`;
    await child.create(runId, request);
    const specific = () => child.fail(runId, 'STORAGE_PERMANENT', 'extract failed: access refused');
    const generic = () => parent.fail(runId, 'INTERNAL', 'train failed: child failed');
    if (i % 3 === 0) await Promise.all([generic(), specific()]);
    else if (i % 3 === 1) await generic().then(specific);
    else await specific().then(generic);
    const s = await parent.get(runId);
    t.is(s?.stage, 'failed');
    t.deepEqual(s?.error, { code: 'STORAGE_PERMANENT', message: 'extract failed: access refused' }, `run ${i}`);
  }
});

test('the first specific cause stays; a published run is never marked failed', async (t) => {
  const [store] = stores();
  await store.create('r1', request);
  await store.fail('r1', 'BAD_REQUEST', 'first');
  await store.fail('r1', 'STORAGE_PERMANENT', 'second');
  t.deepEqual((await store.get('r1'))?.error, { code: 'BAD_REQUEST', message: 'first' });

  await store.create('r2', request);
  await store.setResult('r2', { accuracy: 1 } as never, { name: 'm', version: 'r2', uri: 's3://b/m' } as never);
  await store.fail('r2', 'INTERNAL', 'late retry');
  const s = await store.get('r2');
  t.is(s?.stage, 'published');
  t.is(s?.error, null);
});
