// biome-ignore-all lint/suspicious/noExplicitAny: response bodies are whatever JSON the server sent
/**
 * The HTTP API (`deepfeat serve`, services/api/server.ts) on a real socket, over a real Redis
 * and S3 server: auth (no token, wrong token, a read token on writes and on bull-board), limits
 * (oversized, malformed and mistyped bodies, a slow client), names with `..` or `/`, unknown
 * runs, the run routes, server-sent events following a run to its end, model listing and file
 * streaming, Prometheus metrics, bull-board and the OpenAPI document. No worker runs here: runs
 * are moved through their stages with the run store, as workers would (the whole pipeline behind
 * the API is test/api-pipeline.e2e.test.ts).
 */
import { request } from 'node:http';
import { connect } from 'node:net';
import type { AddressInfo } from 'node:net';
import SwaggerParser from '@apidevtools/swagger-parser';
import test from 'ava';
import type { FastifyInstance } from 'fastify';
import { createClient, getStatus } from '../cli/client.js';
import { loadConfig } from '../shared/config.js';
import { loadTokens } from '../services/api/auth.js';
import { buildServer } from '../services/api/server.js';
import { RUN_LIMITS } from '../shared/queues.js';
import { RunStore } from '../shared/run-state.js';
import { putJson, putObject } from '../shared/s3.js';
import { deployment, runCli, type Deployment } from './helpers/pipeline.js';

const ADMIN = 'admin-token-0123456789abcdef0123';
const READ = 'read-token-0123456789abcdef01234';
const VERSION = 'r20261130070000-abc123';

let dep: Deployment;
let app: FastifyInstance;
let base = '';

test.before(async () => {
  dep = await deployment();
  app = buildServer({
    client: dep.client,
    tokens: loadTokens({ DEEPFEAT_API_TOKENS: `ops:admin:${ADMIN},grafana:read:${READ}` }),
    limits: {
      bodyBytes: 4096,
      uploadBytes: 1024,
      uploadTotalBytes: 2048,
      uploadFiles: 3,
    },
    eventsIntervalMs: 100,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  // A published version as the evaluator leaves it: its folder, and latest.json pointing at it.
  const bucket = dep.config.bucket;
  await putObject(dep.client.s3, bucket, `models/pets/${VERSION}/model.json`, '{"format":"deepfeat.model/v1"}');
  await putObject(dep.client.s3, bucket, `models/pets/${VERSION}/classifier.onnx`, new Uint8Array([1, 2, 3, 4]));
  await putJson(dep.client.s3, bucket, 'models/pets/latest.json', {
    name: 'pets',
    version: VERSION,
    key: `models/pets/${VERSION}/model.json`,
  });
});

test.after.always(async () => {
  await app?.close();
  await dep?.close();
});

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

async function call(
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; body: any; text: string; headers: Headers }> {
  const res = await fetch(`${base}${path}`, init);
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: res.status, body, text, headers: res.headers };
}

const postRun = (body: unknown, token = ADMIN, contentType = 'application/json') =>
  call('/v1/runs', {
    method: 'POST',
    headers: { ...bearer(token), 'content-type': contentType },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

test('health checks need no token; readiness reports Redis and the bucket', async (t) => {
  const h = await call('/healthz');
  t.is(h.status, 200);
  t.deepEqual(h.body, { status: 'ok' });
  const r = await call('/readyz');
  t.is(r.status, 200);
  t.deepEqual(r.body.checks, { redis: 'ok', bucket: 'ok' });
  // A bucket that is not there: not ready, and saying which check failed.
  const client = createClient(loadConfig({ ...dep.env, DEEPFEAT_BUCKET: 'no-such-bucket-here' }));
  const other = buildServer({ client, tokens: [] });
  try {
    const res = await other.inject({ method: 'GET', url: '/readyz' });
    t.is(res.statusCode, 503);
    t.like(res.json(), { code: 'NOT_READY', checks: { redis: 'ok', bucket: 'BUCKET_NOT_FOUND' } });
  } finally {
    await other.close();
    await client.close();
  }
});

test('tokens never reach the log, valid or not', async (t) => {
  let log = '';
  const logged = buildServer({
    client: dep.client,
    tokens: loadTokens({ DEEPFEAT_API_TOKENS: `ops:admin:${ADMIN}` }),
    logger: {
      level: 'trace',
      stream: {
        write: (line: string) => {
          log += line;
        },
      },
    },
  });
  try {
    for (const token of [ADMIN, `${ADMIN}-wrong`]) {
      await logged.inject({ method: 'GET', url: '/v1/runs/r20200101000000-000000', headers: bearer(token) });
      await logged.inject({
        method: 'POST',
        url: '/v1/runs',
        headers: { ...bearer(token), 'content-type': 'application/json' },
        payload: '{',
      });
    }
  } finally {
    await logged.close();
  }
  t.regex(log, /r20200101000000-000000/); // the requests were logged
  t.false(log.includes(ADMIN));
});

test('no token, a wrong token and a read token on a write are refused, and no token is echoed', async (t) => {
  const none = await call('/v1/runs');
  t.is(none.status, 401);
  t.is(none.body.code, 'UNAUTHORIZED');
  t.regex(none.headers.get('www-authenticate') ?? '', /^Bearer/);
  const wrong = await call('/v1/runs', { headers: bearer(`${ADMIN}x`) });
  t.is(wrong.status, 401);
  t.false(wrong.text.includes(ADMIN));
  const basic = await call('/v1/runs', {
    headers: { authorization: `Basic ${Buffer.from(`a:${ADMIN}`).toString('base64')}` },
  });
  t.is(basic.status, 401);
  const readWrite = await postRun({ source: `s3://${dep.dataBucket}/pets/` }, READ);
  t.is(readWrite.status, 403);
  t.is(readWrite.body.code, 'FORBIDDEN');
  t.false(readWrite.text.includes(READ));
  // Unknown paths need a token too: nothing is learnt about which routes exist.
  t.is((await call('/v1/nothing-here')).status, 401);
  t.is((await call('/v1/nothing-here', { headers: bearer(READ) })).status, 404);
  // Every authenticated route refuses without a token.
  for (const path of [
    '/v1/runs/r20261130070000-abc123',
    '/v1/models',
    '/v1/openapi.json',
    '/metrics',
    '/admin/queues',
    '/reports',
  ]) {
    t.is((await call(path)).status, 401, path);
  }
});

test('POST /v1/runs queues a run that GET /v1/runs/:id and GET /v1/runs then show', async (t) => {
  const res = await postRun({ source: `s3://${dep.dataBucket}/pets/`, name: 'pets-api', seed: 7 });
  t.is(res.status, 202, res.text);
  const { runId } = res.body;
  t.regex(runId, /^r\d{14}-[0-9a-f]{6}$/);
  t.is(res.headers.get('location'), `/v1/runs/${runId}`);
  const status = await call(`/v1/runs/${runId}`, { headers: bearer(READ) });
  t.is(status.status, 200);
  t.is(status.body.stage, 'queued');
  t.is(status.body.request.seed, 7);
  // The CLI's client reads the same run the same way.
  t.deepEqual(status.body, JSON.parse(JSON.stringify(await getStatus(dep.client, runId))));
  const list = await call('/v1/runs?limit=100', { headers: bearer(READ) });
  t.is(list.status, 200);
  const mine = list.body.runs.find((r: { runId: string }) => r.runId === runId);
  t.like(mine, { kind: 'train', name: 'pets-api', stage: 'queued', source: `s3://${dep.dataBucket}/pets/` });
  t.is((await call('/v1/runs?limit=1000', { headers: bearer(READ) })).status, 400);
});

test('a retried POST with the same Idempotency-Key gets the same run; another body is 409', async (t) => {
  const body = { source: `s3://${dep.dataBucket}/pets/`, name: 'idem' };
  const post = (b: unknown, key: string, token = ADMIN) =>
    call('/v1/runs', {
      method: 'POST',
      headers: { ...bearer(token), 'content-type': 'application/json', 'idempotency-key': key },
      body: JSON.stringify(b),
    });
  const first = await post(body, 'submit-1');
  t.is(first.status, 202);
  const again = await post(body, 'submit-1');
  t.is(again.status, 200);
  t.is(again.body.runId, first.body.runId);
  const other = await post({ ...body, seed: 3 }, 'submit-1');
  t.is(other.status, 409);
  t.is(other.body.code, 'CONFLICT');
  const fresh = await post(body, 'submit-2');
  t.is(fresh.status, 202);
  t.not(fresh.body.runId, first.body.runId);
  t.is((await post(body, 'bad key!')).status, 400);
});

test('a browser signs in at /login: an HttpOnly SameSite cookie, which may write only from this origin', async (t) => {
  const form = await app.inject({ method: 'GET', url: '/login?next=/reports' });
  t.is(form.statusCode, 200);
  t.regex(form.headers['content-security-policy'] as string, /form-action 'self'/);
  const login = (token: string, site = 'same-origin', next = '/reports') =>
    app.inject({
      method: 'POST',
      url: '/login',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'sec-fetch-site': site },
      payload: new URLSearchParams({ token, next }).toString(),
    });
  t.is((await login('wrong-token-0123456789')).statusCode, 401);
  t.is((await login(ADMIN, 'cross-site')).statusCode, 403);
  const ok = await login(ADMIN, 'same-origin', '//evil.example/');
  t.is(ok.statusCode, 303);
  t.is(ok.headers.location, '/reports'); // never a redirect off this server
  const cookie = String(ok.headers['set-cookie']);
  t.regex(cookie, /HttpOnly/);
  t.regex(cookie, /SameSite=Strict/);
  const jar = cookie.split(';')[0]!;
  t.is((await app.inject({ method: 'GET', url: '/v1/models', headers: { cookie: jar } })).statusCode, 200);
  const post = (site: string) =>
    app.inject({
      method: 'POST',
      url: '/v1/runs',
      headers: { cookie: jar, 'content-type': 'application/json', 'sec-fetch-site': site },
      payload: { source: `s3://${dep.dataBucket}/pets/` },
    });
  t.is((await post('cross-site')).statusCode, 403);
  t.is((await post('same-origin')).statusCode, 202);
  // A forged cookie is no better than a forged header.
  const forged = await app.inject({
    method: 'GET',
    url: '/v1/models',
    headers: { cookie: 'deepfeat_token=guess-0123456789abcdef' },
  });
  t.is(forged.statusCode, 401);
});

test("with no token configured (loopback only), other sites' pages still cannot write", async (t) => {
  const open = buildServer({ client: dep.client, tokens: [] });
  try {
    const post = (headers: Record<string, string>) =>
      open.inject({
        method: 'POST',
        url: '/v1/runs',
        headers: { 'content-type': 'application/json', ...headers },
        payload: { source: `s3://${dep.dataBucket}/pets/` },
      });
    t.is((await post({ origin: 'http://evil.example' })).statusCode, 403);
    t.is((await post({ 'sec-fetch-site': 'cross-site' })).statusCode, 403);
    t.is((await post({})).statusCode, 202); // curl, a script
    // DNS rebinding: another site's name resolved to 127.0.0.1 arrives with its own Host, and its
    // page's Origin then equals that Host; only loopback names are served without a token.
    const rebound = { host: 'evil.example:8080', origin: 'http://evil.example:8080', 'sec-fetch-site': 'same-origin' };
    t.is((await post(rebound)).statusCode, 403);
    const read = await open.inject({ method: 'GET', url: '/v1/runs', headers: { host: 'evil.example:8080' } });
    t.is(read.statusCode, 403);
    t.regex(read.json().message, /only requests addressed to a loopback name/);
    for (const host of ['localhost:8080', '127.0.0.1:8080', '[::1]:8080', '127.0.0.1']) {
      const ok = await open.inject({ method: 'GET', url: '/v1/runs', headers: { host } });
      t.is(ok.statusCode, 200, host);
    }
  } finally {
    await open.close();
  }
});

test('malformed, oversized, mistyped and invalid run requests get 400, 413, 415 and 422', async (t) => {
  const malformed = await postRun('{"source": ');
  t.is(malformed.status, 400);
  t.is(malformed.body.code, 'BAD_REQUEST');
  const big = await postRun({ source: `s3://${dep.dataBucket}/pets/`, name: 'x'.repeat(5000) });
  t.is(big.status, 413);
  t.is(big.body.code, 'PAYLOAD_TOO_LARGE');
  const text = await postRun('source=s3://b/p/', ADMIN, 'text/plain');
  t.is(text.status, 415);
  const form = await postRun('source=s3://b/p/', ADMIN, 'application/x-www-form-urlencoded');
  t.is(form.status, 415);
  // Bodies that parse but break `deepfeat run`'s own schema, each named.
  const seed = await postRun({ source: `s3://${dep.dataBucket}/pets/`, seed: RUN_LIMITS.seed.max + 1 });
  t.is(seed.status, 422);
  t.regex(seed.body.message, /seed/);
  const extra = await postRun({ source: `s3://${dep.dataBucket}/pets/`, sauce: 1 });
  t.is(extra.status, 422);
  t.regex(extra.body.message, /sauce/);
  const name = await postRun({ source: `s3://${dep.dataBucket}/pets/`, name: '../../etc' });
  t.is(name.status, 422);
  // A model reference the CLI would refuse is refused here too, before anything is queued.
  for (const [model, why] of [
    ['file:///etc/passwd', /other URL schemes are not read/],
    [`s3://${dep.dataBucket}/../x/model.json`, /without empty, "\." or "\.\." key segments/],
    ['../../../../etc/passwd', /give an absolute path/],
  ] as const) {
    const r = await postRun({ source: `s3://${dep.dataBucket}/pets/`, features: { kind: 'tfjs', model, node: 'n' } });
    t.is(r.status, 422, model);
    t.regex(r.body.message, why, model);
  }
  t.regex(name.body.message, /name/);
  const source = await postRun({ source: 's3://Not_A_Bucket/pets/' });
  t.is(source.status, 422);
  const array = await postRun([1, 2]);
  t.is(array.status, 422);
  const proto = await postRun('{"source": "s3://b/p/", "__proto__": {"admin": true}}');
  t.is(proto.status, 400);
});

/** GET of `path` exactly as written (fetch would resolve `..` segments before sending). */
function rawGet(path: string, headers: Record<string, string>): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const { port } = app.server.address() as AddressInfo;
    const req = request({ host: '127.0.0.1', port, path, headers }, (res) => {
      let text = '';
      res.on('data', (d) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('names, versions and files with .. or / are refused with 400; an unknown run is 404', async (t) => {
  const h = bearer(READ);
  for (const path of [
    '/v1/runs/..%2F..%2Fetc%2Fpasswd',
    '/v1/runs/r20261130070000-abc123%2F..',
    '/v1/runs/..',
    '/v1/runs/..%2F..%2Fetc/events',
    '/v1/models/..',
    '/v1/models/..%2Fruns',
    '/v1/models/pets/..%2F..%2Fruns/files/model.json',
    '/v1/models/pets/../files/model.json',
    `/v1/models/pets/${VERSION}/files/..%2F..%2Flatest.json`,
    `/v1/models/pets/${VERSION}/files/..`,
    `/v1/models/pets/${VERSION}/files/a%2Fb.json`,
    `/v1/models/..%2F..%2F/${VERSION}/files/model.json`,
    `/v1/models/../${VERSION}/files/model.json`,
  ]) {
    const res = await rawGet(path, h);
    t.is(res.status, 400, path);
    t.is(res.body.code, 'BAD_REQUEST', path);
  }
  const unknown = await call('/v1/runs/r20200101000000-000000', { headers: h });
  t.is(unknown.status, 404);
  t.is(unknown.body.code, 'NOT_FOUND');
  t.regex(unknown.body.message, /r20200101000000-000000/);
  t.is((await call('/v1/runs/r20200101000000-000000/events', { headers: h })).status, 404);
  // A name far past any limit: our 400 with a token, 401 without (never the router's 414, which
  // would answer before auth and tell which routes exist).
  const long = `/v1/models/${'a'.repeat(300)}`;
  const withToken = await rawGet(long, h);
  t.is(withToken.status, 400);
  t.is(withToken.body.code, 'BAD_REQUEST');
  t.is((await rawGet(long, {})).status, 401);
});

test('models are listed and a version file is streamed from the bucket, by version or latest', async (t) => {
  const h = bearer(READ);
  const models = await call('/v1/models', { headers: h });
  t.deepEqual(models.body, { models: ['pets'], truncated: false });
  const versions = await call('/v1/models/pets', { headers: h });
  t.deepEqual(versions.body, { name: 'pets', latest: VERSION, versions: [VERSION], truncated: false });
  t.is((await call('/v1/models/cats', { headers: h })).status, 404);
  const file = await fetch(`${base}/v1/models/pets/latest/files/model.json`, { headers: h });
  t.is(file.status, 200);
  t.is(await file.text(), '{"format":"deepfeat.model/v1"}');
  const onnx = await fetch(`${base}/v1/models/pets/${VERSION}/files/classifier.onnx`, { headers: h });
  t.is(onnx.headers.get('content-type'), 'application/octet-stream');
  t.deepEqual([...new Uint8Array(await onnx.arrayBuffer())], [1, 2, 3, 4]);
  // latest.json is the model's, not a file of a version.
  t.is((await call(`/v1/models/pets/${VERSION}/files/latest.json`, { headers: h })).status, 404);
  t.is((await call('/v1/models/pets/r20200101000000-000000/files/model.json', { headers: h })).status, 404);
});

test('events follow a run through its stages until it ends, on every open stream', async (t) => {
  const created = await postRun({ source: `s3://${dep.dataBucket}/pets/`, name: 'events' });
  const runId = created.body.runId as string;
  const store = new RunStore(dep.client.redis!, dep.config.queuePrefix);
  const responses = await Promise.all(
    [0, 1, 2].map(() => fetch(`${base}/v1/runs/${runId}/events`, { headers: bearer(READ) })),
  );
  for (const res of responses) t.is(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
  const streams = responses.map(readEvents);
  await store.setPlan(runId, { total: 10, shards: 1, classes: ['cat', 'dog'], counts: {} });
  await new Promise((r) => setTimeout(r, 400));
  await store.setShardProgress(runId, 0, { done: 4, failed: 1, complete: false });
  await new Promise((r) => setTimeout(r, 400));
  await store.fail(runId, 'DATASET_INVALID', 'only one class');
  for (const events of await Promise.all(streams)) {
    const stages = events.filter((e) => e.event === 'status').map((e) => e.data.stage);
    t.is(stages[0], 'queued');
    t.true(stages.includes('extracting'), JSON.stringify(stages));
    t.true(events.some((e) => e.event === 'status' && e.data.done === 4 && e.data.failed === 1));
    const last = events.at(-1)!;
    t.is(last.event, 'end');
    t.is(last.data.stage, 'failed');
    t.deepEqual(last.data.error, { code: 'DATASET_INVALID', message: 'only one class' });
  }
  // A run that has already ended gets its end at once.
  const again = await readEvents(await fetch(`${base}/v1/runs/${runId}/events`, { headers: bearer(READ) }));
  t.deepEqual(
    again.map((e) => e.event),
    ['end'],
  );
});

type Event = { event: string; data: any };
/** The stream's events until the server ends it. */
async function readEvents(res: Response): Promise<Event[]> {
  const text = await res.text();
  return text
    .split('\n\n')
    .map((frame) => {
      const event = /^event: (.*)$/m.exec(frame)?.[1];
      const data = /^data: (.*)$/m.exec(frame)?.[1];
      return event && data ? { event, data: JSON.parse(data) } : undefined;
    })
    .filter((e): e is Event => e !== undefined);
}

test('a client that sends its request too slowly is cut off', async (t) => {
  // Tight limits on a server of its own: the shared one keeps the defaults, so a busy machine
  // cannot make an ordinary request of another test look slow.
  const slow = buildServer({
    client: dep.client,
    tokens: [],
    limits: { requestTimeoutMs: 1500, headersTimeoutMs: 1000, timeoutCheckMs: 200 },
  });
  await slow.listen({ host: '127.0.0.1', port: 0 });
  try {
    const { port } = slow.server.address() as AddressInfo;
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    let received = '';
    socket.on('data', (d) => (received += d));
    // Headers started and never finished: a line a while, as a slowloris client does.
    socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
    const drip = setInterval(() => socket.write('X-a: b\r\n'), 300);
    const closed = await new Promise<boolean>((r) => {
      socket.once('close', () => r(true));
      socket.once('error', () => r(true));
    });
    clearInterval(drip);
    t.true(closed);
    t.regex(received, /^HTTP\/1\.1 408/);
  } finally {
    await slow.close();
  }
});

test('metrics: queue counts from BullMQ, runs by stage, behind a token', async (t) => {
  await postRun({ source: `s3://${dep.dataBucket}/pets/`, name: 'metrics' });
  const res = await call('/metrics', { headers: bearer(READ) });
  t.is(res.status, 200);
  t.regex(res.headers.get('content-type') ?? '', /^text\/plain/);
  t.regex(res.text, /^bullmq_job_count\{queue="plan", state="waiting"\} [1-9]/m);
  t.regex(res.text, /^bullmq_job_count\{queue="extract", state="waiting"\} 0$/m);
  // Each family once, whatever the number of queues.
  t.is(res.text.match(/^# HELP bullmq_job_count /gm)?.length, 1);
  t.regex(res.text, /^deepfeat_runs\{stage="queued"\} [1-9]/m);
  t.regex(res.text, /^deepfeat_workers\{kind="extractor"\} 0$/m);
  t.is((await call('/metrics')).status, 401);
  const queues = await call('/v1/queues', { headers: bearer(READ) });
  t.is(queues.status, 200);
  t.deepEqual(Object.keys(queues.body.queues).sort(), ['collect', 'evaluate', 'extract', 'plan', 'predict', 'train']);
  t.true(queues.body.queues.plan.backlog >= 1);
  t.is(queues.body.queues.extract.backlog, 0);
});

test('bull-board needs an admin token and shows every queue of the pipeline', async (t) => {
  t.is((await call('/admin/queues', { headers: bearer(READ) })).status, 403);
  const page = await call('/admin/queues', { headers: bearer(ADMIN) });
  t.is(page.status, 200);
  t.regex(page.text, /<html/i);
  const api = await call('/admin/queues/api/queues', { headers: bearer(ADMIN) });
  t.is(api.status, 200);
  const names = (api.body.queues as Array<{ name: string }>).map((q) => q.name).sort();
  t.deepEqual(names, ['collect', 'evaluate', 'extract', 'plan', 'predict', 'train']);
  // Its actions are writes of another kind: a read token cannot reach them either.
  t.is(
    (await call('/admin/queues/api/queues/plan/clean/failed', { method: 'PUT', headers: bearer(READ) })).status,
    403,
  );
});

test('the OpenAPI document is generated from the run schema the CLI uses', async (t) => {
  const res = await call('/v1/openapi.json', { headers: bearer(READ) });
  t.is(res.status, 200);
  t.is(res.body.openapi, '3.0.3');
  const body = res.body.paths['/v1/runs'].post.requestBody.content['application/json'].schema;
  t.deepEqual(body.required, ['source']);
  t.is(body.properties.seed.maximum, RUN_LIMITS.seed.max);
  t.is(body.properties.shardSize.maximum, RUN_LIMITS.shardSize.max);
  t.false(body.additionalProperties);
  for (const p of ['/v1/runs/{id}', '/v1/runs/{id}/events', '/v1/models', '/v1/models/{name}/predict', '/metrics']) {
    t.truthy(res.body.paths[p], p);
  }
  // Valid OpenAPI 3.0 by the specification's own JSON schema.
  await t.notThrowsAsync(SwaggerParser.validate(structuredClone(res.body)));
  t.truthy(body.properties.priority, 'fields added to the run schema appear without touching the API');
});

test('predict refuses what is not a multipart upload of images within the limits', async (t) => {
  const h = bearer(READ);
  const json = await call('/v1/models/pets/predict', {
    method: 'POST',
    headers: { ...h, 'content-type': 'application/json' },
    body: '{}',
  });
  t.is(json.status, 415);
  const empty = new FormData();
  empty.set('top', '2');
  const none = await call('/v1/models/pets/predict', { method: 'POST', headers: h, body: empty });
  t.is(none.status, 422);
  const big = new FormData();
  big.set('image', new Blob([new Uint8Array(2048)]), 'big.png');
  const tooBig = await call('/v1/models/pets/predict', { method: 'POST', headers: h, body: big });
  t.is(tooBig.status, 413);
  const bad = await call('/v1/models/..%2Fx/predict', { method: 'POST', headers: h, body: big });
  t.is(bad.status, 400);
  // Three files each within the limit, together over it; four files, over the count.
  const many = (n: number) => {
    const f = new FormData();
    for (let i = 0; i < n; i++) f.append('image', new Blob([new Uint8Array(1000)]), `${i}.png`);
    return f;
  };
  const total = await call('/v1/models/pets/predict', { method: 'POST', headers: h, body: many(3) });
  t.is(total.status, 413);
  t.regex(total.body.message, /add up/);
  const count = await call('/v1/models/pets/predict', { method: 'POST', headers: h, body: many(4) });
  t.is(count.status, 413);
});

test('deepfeat serve refuses a non-loopback address with no token configured, and a bad token list', async (t) => {
  const env = { ...dep.env, DEEPFEAT_API_TOKENS: '', DEEPFEAT_API_TOKENS_FILE: '' };
  const open = await runCli(env, ['serve', '--host', '0.0.0.0', '--port', '0']);
  t.is(open.code, 2);
  t.regex(open.stderr, /refusing to listen on "0\.0\.0\.0" with no API token configured/);
  const bad = await runCli({ ...env, DEEPFEAT_API_TOKENS: `ops:root:${ADMIN}` }, ['serve', '--port', '0']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /entry 1 \(ops\): ROLE must be read or admin/);
  t.false(bad.stderr.includes(ADMIN));
});
