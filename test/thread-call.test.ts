/**
 * shared/thread-call.ts on real worker threads (test/helpers/test-thread.ts): typed calls both
 * ways, errors keep their class, code, `permanent` and cause, and every way a thread can end —
 * an uncaught exception, process.exit, out of memory, a call with no answer in time — rejects the
 * pending call with a retryable InternalError, fails later calls at once and tells onExit once.
 */
import test from 'ava';
import { BadRequestError, DeepfeatError, InternalError, StorageError } from '../shared/errors.js';
import { startThread, type ThreadClient } from '../shared/thread-call.js';
import type { TestOwnerApi, TestThreadApi } from './helpers/test-thread.js';

const MODULE = new URL('./helpers/test-thread.ts', import.meta.url);

async function start(
  extra: { data?: unknown } = {},
): Promise<{ thread: ThreadClient<TestThreadApi, TestOwnerApi>; exits: string[] }> {
  const thread = await startThread<TestThreadApi, TestOwnerApi>({
    name: 'test thread',
    module: MODULE,
    host: { answer: ({ question }) => `owner says ${question.length}` },
    ...extra,
  });
  const exits: string[] = [];
  thread.onExit((r) => exits.push(r));
  return { thread, exits };
}

/** The pending call rejects with a retryable InternalError naming the thread and the reason. */
async function assertEnded(t: import('ava').ExecutionContext, call: Promise<unknown>, reason: RegExp) {
  const err = await t.throwsAsync(call, { instanceOf: InternalError });
  t.false(err!.permanent, 'a dead thread is retried, not a failed run');
  t.regex(err!.message, /^test thread ended: /);
  t.regex(err!.message, reason);
}

test('calls answer with typed results, data reaches the thread, and the thread can call its owner', async (t) => {
  const { thread } = await start({ data: { run: 'r1' } });
  try {
    t.deepEqual(await thread.call('echo', { text: 'hi' }), { text: 'hi', data: { run: 'r1' } });
    const values = Float32Array.from([1, 2, 3]);
    const doubled = await thread.call('double', { values }, { transfer: [values.buffer] });
    t.deepEqual(Array.from(doubled), [2, 4, 6]);
    t.is(values.length, 0, 'the request buffer moved to the thread');
    t.is(await thread.call('askOwner', { question: 'why?' }), 'owner says 4');
  } finally {
    await thread.close();
  }
});

test('errors keep their class, code, permanence, cause and thread stack', async (t) => {
  const { thread, exits } = await start();
  try {
    const bad = await t.throwsAsync(thread.call('fail', { kind: 'bad-request' }), { instanceOf: BadRequestError });
    t.is(bad!.message, 'bad thing: fix it');
    t.true(bad!.permanent);
    t.is((bad!.cause as Error).message, 'the root');
    t.regex(bad!.stack ?? '', /test-thread\.ts/, 'the stack is where it was thrown, in the thread');
    const storage = await t.throwsAsync(thread.call('fail', { kind: 'storage' }), { instanceOf: StorageError });
    t.is(storage!.code, 'BUCKET_NOT_FOUND');
    t.true(storage!.permanent);
    const plain = await t.throwsAsync(thread.call('fail', { kind: 'plain' }));
    t.false(plain instanceof DeepfeatError);
    t.is(plain!.name, 'TypeError');
    // A thrown error is an answer, not a death: the thread goes on serving.
    t.deepEqual(exits, []);
    t.is((await thread.call('echo', { text: 'still here' })).text, 'still here');
  } finally {
    await thread.close();
  }
});

test('an uncaught exception in the thread rejects the pending call and is reported once', async (t) => {
  const { thread, exits } = await start();
  await assertEnded(t, thread.call('crash', undefined), /boom/);
  t.deepEqual(exits, ['boom']);
  await assertEnded(t, thread.call('echo', { text: 'later' }), /boom/);
});

test('process.exit in the thread is a death too', async (t) => {
  const { thread, exits } = await start();
  await assertEnded(t, thread.call('exit', { code: 7 }), /exit code 7/);
  t.deepEqual(exits, ['exit code 7']);
});

test('a call with no answer in time ends the thread, naming the setting to change', async (t) => {
  const { thread, exits } = await start();
  await assertEnded(
    t,
    thread.call('hang', undefined, { timeoutMs: 200, timeoutSetting: 'SOME_TIMEOUT', what: 'the endless loop' }),
    /no answer to the endless loop within 0\.2 s \(SOME_TIMEOUT\)/,
  );
  t.deepEqual(exits, ['no answer to the endless loop within 0.2 s (SOME_TIMEOUT)']);
  t.is(thread.ended, 'no answer to the endless loop within 0.2 s (SOME_TIMEOUT)');
});

test('a thread out of memory fails its call', async (t) => {
  t.timeout(60_000);
  const thread = await startThread<TestThreadApi>({
    name: 'test thread',
    module: MODULE,
    resourceLimits: { maxOldGenerationSizeMb: 32 },
  });
  await assertEnded(t, thread.call('exhaustMemory', undefined), /memory/i);
});

test('close() ends the thread without reporting a death; pending calls still reject', async (t) => {
  const { thread, exits } = await start();
  const pending = thread.call('hang', undefined);
  await thread.close();
  await assertEnded(t, pending, /closed/);
  t.deepEqual(exits, []);
});

test('a thread module that fails to load rejects startThread', async (t) => {
  const err = await t.throwsAsync(
    startThread({ name: 'test thread', module: new URL('./helpers/no-such-thread.ts', import.meta.url) }),
    { instanceOf: InternalError },
  );
  t.false(err!.permanent);
  t.regex(err!.message, /test thread ended before it was ready: .*no-such-thread/);
});
