/**
 * A thread module for test/thread-call.test.ts: each call does one thing a real thread can do —
 * answer, throw a deepfeat error, call back to its owner, crash, exit, hang, run out of memory.
 */
import { BadRequestError, StorageError } from '../../shared/errors.js';
import { serveThread, threadData, transfer, type Channel } from '../../shared/thread-call.js';

export interface TestThreadApi {
  echo(req: { text: string }): { text: string; data: unknown };
  double(req: { values: Float32Array }): Float32Array;
  fail(req: { kind: 'bad-request' | 'storage' | 'plain' }): never;
  askOwner(req: { question: string }): string;
  crash(): void;
  exit(req: { code: number }): void;
  hang(): void;
  exhaustMemory(): void;
}

export interface TestOwnerApi {
  answer(req: { question: string }): string;
}

const owner: Channel<TestOwnerApi, TestThreadApi> = serveThread<TestThreadApi, TestOwnerApi>({
  echo: ({ text }) => ({ text, data: threadData() }),
  double: ({ values }) => {
    const out = values.map((v) => 2 * v);
    return transfer(out, [out.buffer]);
  },
  fail({ kind }) {
    if (kind === 'bad-request') throw new BadRequestError('bad thing: fix it', { cause: new Error('the root') });
    if (kind === 'storage') throw new StorageError('no such bucket', { permanent: true, code: 'BUCKET_NOT_FOUND' });
    throw new TypeError('plain bug');
  },
  askOwner: ({ question }): Promise<string> => owner.call('answer', { question }),
  crash() {
    // An exception nobody catches, outside the call, which never answers: the thread dies.
    setImmediate(() => {
      throw new Error('boom');
    });
    return new Promise<void>(() => undefined);
  },
  exit: ({ code }) => process.exit(code),
  hang() {
    for (;;);
  },
  exhaustMemory() {
    const hoard: unknown[] = [];
    for (;;) hoard.push(new Array(100_000).fill({ x: hoard.length }));
  },
});
