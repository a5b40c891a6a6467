/**
 * The API's pure parts: token configuration (every problem reported, no token's text in any
 * message), constant-time lookup, bearer parsing, the loopback rule, the shared event poll, and
 * the Prometheus text merge. The server on real Redis and S3 is test/api.e2e.test.ts.
 */
import test from 'ava';
import { allows, assertBindAllowed, authenticate, bearerToken, isLoopback, loadTokens } from '../services/api/auth.js';
import { RunWatcher, sseFrame } from '../services/api/events.js';
import { toHttpError } from '../services/api/http-errors.js';
import { mergeFamilies, reasonClass } from '../services/api/metrics.js';
import { ConfigError, NotFoundError, StorageError } from '../shared/errors.js';
import type { RunStatus } from '../shared/run-state.js';

const T1 = 'aaaaaaaaaaaaaaaaaaaa-token-one';
const T2 = 'bbbbbbbbbbbbbbbbbbbb-token-two';

test('tokens: NAME:ROLE:TOKEN lists from the variable and from a file, merged', (t) => {
  const entries = loadTokens(
    { DEEPFEAT_API_TOKENS: `ci:admin:${T1}`, DEEPFEAT_API_TOKENS_FILE: '/run/secrets/tokens' },
    (path) => {
      t.is(path, '/run/secrets/tokens');
      return `# mounted secret\ngrafana:read:${T2}\n`;
    },
  );
  t.deepEqual(
    entries.map((e) => [e.name, e.role]),
    [
      ['ci', 'admin'],
      ['grafana', 'read'],
    ],
  );
  t.like(authenticate(entries, T1), { name: 'ci', role: 'admin' });
  t.like(authenticate(entries, T2), { name: 'grafana', role: 'read' });
  t.is(authenticate(entries, `${T1}x`), undefined);
  t.is(authenticate(entries, ''), undefined);
  t.deepEqual(loadTokens({}), []);
});

test('tokens: every problem at once, naming entries but never quoting a token', (t) => {
  const weak = 'short';
  const err = t.throws(
    () =>
      loadTokens(
        {
          DEEPFEAT_API_TOKENS: `ok:admin:${T1},bad name:read:${T2},x:root:${T2}x,y:read:${weak},nocolons,ok:read:${T1}`,
          DEEPFEAT_API_TOKENS_FILE: '/missing',
        },
        () => {
          throw Object.assign(new Error(`ENOENT ${T1}`), { code: 'ENOENT' });
        },
      ),
    { instanceOf: ConfigError },
  );
  const msg = err!.message;
  for (const part of [
    'entry 2',
    'ROLE must be read or admin',
    'TOKEN must be 16',
    'NAME:ROLE:TOKEN',
    'used twice',
    'same token',
    'ENOENT',
  ]) {
    t.true(msg.includes(part), part);
  }
  for (const secret of [T1, T2, weak]) t.false(msg.includes(secret), secret);
});

test('bearer header parsing, roles and the loopback rule', (t) => {
  t.is(bearerToken(`Bearer ${T1}`), T1);
  t.is(bearerToken(`bearer  ${T1} `), T1);
  t.is(bearerToken(`Basic ${T1}`), undefined);
  t.is(bearerToken(`Bearer ${T1} extra`), undefined);
  t.is(bearerToken(undefined), undefined);
  t.true(allows('read', 'read'));
  t.false(allows('read', 'admin'));
  t.true(allows('admin', 'admin'));
  for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) t.true(isLoopback(h), h);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', 'example.com', '128.0.0.1']) t.false(isLoopback(h), h);
  t.notThrows(() => assertBindAllowed('127.0.0.1', []));
  const err = t.throws(() => assertBindAllowed('0.0.0.0', []), { instanceOf: ConfigError });
  t.regex(err!.message, /DEEPFEAT_API_TOKENS/);
  t.notThrows(() => assertBindAllowed('0.0.0.0', loadTokens({ DEEPFEAT_API_TOKENS: `a:read:${T1}` })));
});

test('errors map to statuses; unknown errors say nothing of their text', (t) => {
  t.deepEqual(toHttpError(new NotFoundError('no run r1')), {
    status: 404,
    body: { code: 'NOT_FOUND', message: 'no run r1' },
  });
  t.is(toHttpError(new StorageError('down', { permanent: false })).status, 503);
  const internal = toHttpError(new Error(`secret ${T1}`));
  t.is(internal.status, 500);
  t.false(JSON.stringify(internal.body).includes(T1));
  t.is(toHttpError(Object.assign(new Error('too big'), { statusCode: 413 })).body.code, 'PAYLOAD_TOO_LARGE');
});

const status = (stage: string, done: number): RunStatus => ({ runId: 'r1', stage, done }) as unknown as RunStatus;

test('event streams of one run share one poll, and all end with the run', async (t) => {
  let reads = 0;
  const script = [status('queued', 0), status('extracting', 1), status('extracting', 5), status('failed', 5)];
  const watcher = new RunWatcher(
    async () => script[Math.min(reads++, script.length - 1)]!,
    (s) => s.stage === 'failed',
    5,
  );
  const seen = await Promise.all(
    [0, 1, 2, 3].map(
      () =>
        new Promise<string[]>((resolve) => {
          const got: string[] = [];
          watcher.subscribe('r1', {
            status: (s) => got.push(`${s.stage}:${s.done}`),
            end: ({ status: s }) => resolve([...got, `end:${s?.stage}`]),
          });
        }),
    ),
  );
  t.is(reads, 4); // one read per interval for the four streams together
  t.is(watcher.polls, 4);
  for (const s of seen) t.deepEqual(s, ['queued:0', 'extracting:1', 'extracting:5', 'end:failed']);
  t.is(watcher.streams, 0);
});

test('a stream that leaves stops its run being polled', async (t) => {
  let reads = 0;
  const watcher = new RunWatcher(
    async () => status('extracting', ++reads),
    () => false,
    5,
  );
  const stop = watcher.subscribe('r2', { status: () => undefined, end: () => undefined });
  await new Promise((r) => setTimeout(r, 40));
  stop();
  const after = reads;
  t.true(after > 0);
  await new Promise((r) => setTimeout(r, 40));
  t.is(reads, after);
  t.is(watcher.streams, 0);
});

test('an SSE frame keeps user text on its data line', (t) => {
  const frame = sseFrame('status', { reason: 'a\n\nevent: end\r\ndata: x' });
  t.is(frame.split('\n').length, 4); // event, data, blank, end
  t.true(frame.endsWith('\n\n'));
});

test('BullMQ texts merge into one family each; failure reasons fold into classes', (t) => {
  const q = (name: string, n: number) =>
    `# HELP bullmq_job_count Number\n# TYPE bullmq_job_count gauge\nbullmq_job_count{queue="${name}", state="waiting"} ${n}\n# HELP bullmq_job_completed_total T\n# TYPE bullmq_job_completed_total counter\nbullmq_job_completed_total{queue="${name}"} ${n}`;
  const merged = mergeFamilies([q('plan', 1), q('extract', 2)]);
  t.is(merged.match(/# HELP bullmq_job_count /g)?.length, 1);
  t.is(merged.match(/# TYPE bullmq_job_completed_total /g)?.length, 1);
  const lines = merged.trim().split('\n');
  t.deepEqual(lines.slice(0, 4), [
    '# HELP bullmq_job_count Number',
    '# TYPE bullmq_job_count gauge',
    'bullmq_job_count{queue="plan", state="waiting"} 1',
    'bullmq_job_count{queue="extract", state="waiting"} 2',
  ]);
  t.is(reasonClass('image too large: 20000×20000 pixels exceeds the limit'), 'image too large');
  t.is(reasonClass('decode timed out after 20 s (DEEPFEAT_DECODE_TIMEOUT)'), 'decode timed out after N s');
  t.is(reasonClass(''), 'other');
});
