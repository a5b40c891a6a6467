/**
 * `deepfeat serve`: the HTTP API over the same client library as the CLI (cli/client.ts), so the
 * two never disagree. `buildServer` returns the Fastify instance, not listening: `deepfeat serve`
 * listens on a host and port, tests on 127.0.0.1:0.
 *
 * Every route declares what it needs in `config.access` — `none` (health checks), `read` or
 * `admin` — and one onRequest hook checks the bearer token before any handler (or body parser)
 * runs. A route that declares nothing (bull-board's) needs admin; an unknown path needs read, so
 * without a token nothing is learnt about which paths exist.
 */
import multipart from '@fastify/multipart';
import Fastify, {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import type { Queue } from 'bullmq';
import { enqueueRun, getStatus, isTerminal, type Client, type RunOptions } from '../../cli/client.js';
import { BadRequestError, DeepfeatError, NotFoundError } from '../../shared/errors.js';
import { QUEUE_NAMES, isPredictRequest, makeQueue } from '../../shared/queues.js';
import { RUN_ID_PATTERN, type RunStatus } from '../../shared/run-state.js';
import { assertBucket } from '../../shared/s3.js';
import { quote } from '../../shared/text.js';
import { allows, authenticate, bearerToken, type Access, type TokenEntry } from './auth.js';
import { BOARD_PATH, registerBoard } from './board.js';
import { RunWatcher, progressOf, sseFrame } from './events.js';
import { ApiError, toHttpError } from './http-errors.js';
import { Metrics } from './metrics.js';
import { assertModelName, assertVersion, listModels, listVersions, openModelFile } from './models.js';
import { openApiDocument } from './openapi.js';
import { Predictor } from './predict.js';
import { cookieMayWrite, cookieToken, crossSite, registerLogin } from './login.js';
import { reserve } from './idempotency.js';
import { REPORT_CSP, renderRunListPage, renderRunReportPage } from './report.js';
import { listQuerySchema, runBodySchema } from './schemas.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** What the route needs: `none`, a `read` token or an `admin` token. */
    access?: Access;
  }
}

export interface ServerLimits {
  /** Largest JSON body, bytes. */
  bodyBytes: number;
  /** Largest uploaded image, bytes (default DEEPFEAT_MAX_IMAGE_BYTES). */
  uploadBytes: number;
  /** Most images in one predict request. */
  uploadFiles: number;
  /** Most bytes of images in one predict request (with maxPredicts, bounds the memory uploads take). */
  uploadTotalBytes: number;
  /** Time to receive a whole request (headers and body), ms; a slower client gets 408 and is closed. */
  requestTimeoutMs: number;
  /** Time to receive the headers, ms. */
  headersTimeoutMs: number;
  /** Idle time after which a socket is closed, ms (SSE streams send a comment well within it). */
  idleTimeoutMs: number;
  /** How often Node checks the two timeouts above, ms. */
  timeoutCheckMs: number;
  /** Open event streams at once, over all runs. */
  maxStreams: number;
  /** Predict requests at once; more get 503. */
  maxPredicts: number;
}

export const DEFAULT_LIMITS: Omit<ServerLimits, 'uploadBytes'> = {
  bodyBytes: 64 * 1024,
  uploadFiles: 16,
  uploadTotalBytes: 64 * 1024 * 1024,
  requestTimeoutMs: 30_000,
  headersTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  timeoutCheckMs: 1000,
  maxStreams: 1000,
  maxPredicts: 4,
};

export interface ServerOptions {
  client: Client;
  /** Bearer tokens (auth.ts loadTokens). Empty: every route is open, so listen on loopback only (assertBindAllowed). */
  tokens: readonly TokenEntry[];
  limits?: Partial<ServerLimits>;
  /** Fastify's logger option (pino); false in tests. The Authorization and Cookie headers are redacted. */
  logger?: FastifyServerOptions['logger'];
  /** How often a watched run's status is read for its event streams (shared by every stream of the run). */
  eventsIntervalMs?: number;
  /** Comment sent on an idle event stream, so proxies and the idle timeout keep it open. */
  heartbeatMs?: number;
  version?: string;
}

/** The API's Fastify instance, not listening. Closing it ends event streams and closes what it opened (not the client). */
export function buildServer(options: ServerOptions): FastifyInstance {
  const { client, tokens } = options;
  const limits: ServerLimits = {
    ...DEFAULT_LIMITS,
    uploadBytes: client.config.extractor.maxImageBytes,
    ...options.limits,
  };
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: limits.bodyBytes,
    requestTimeout: limits.requestTimeoutMs,
    connectionTimeout: limits.idleTimeoutMs,
    keepAliveTimeout: 5000,
    http: { headersTimeout: limits.headersTimeoutMs, connectionsCheckingInterval: limits.timeoutCheckMs },
    // Ids are generated, never taken from a header a client sent.
    genReqId: (() => {
      let n = 0;
      return () => `req-${(++n).toString(36)}`;
    })(),
    // Long enough that a too-long name reaches the auth hook and then our own 400 (Fastify's 414
    // would answer before auth and tell an unauthenticated client which routes exist).
    routerOptions: { maxParamLength: 8192 },
  });
  const watcher = new RunWatcher((id) => getStatus(client, id), isTerminal, options.eventsIntervalMs ?? 1000);
  const metrics = new Metrics(client);
  const predictor = new Predictor(client);
  let predicting = 0;
  let boardQueues: Queue[] = [];
  /** The token name of each authenticated request (idempotency keys are kept per token). */
  const principals = new WeakMap<FastifyRequest, string>();

  // Only JSON and multipart bodies: anything else is 415 before a handler runs.
  app.removeContentTypeParser('text/plain');
  app.register(multipart, {
    limits: {
      fileSize: limits.uploadBytes,
      files: limits.uploadFiles,
      fields: 4,
      fieldSize: 1024,
      parts: limits.uploadFiles + 4,
      headerPairs: 100,
    },
  });

  // Refusals are sent from the hook itself, not thrown: a plugin's own error handler (bull-board
  // has one) would otherwise answer them.
  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-content-type-options', 'nosniff');
    if (tokens.length === 0 && !loopbackHost(req.headers.host)) {
      // Open on loopback only: a page on another site that rebinds its own name to 127.0.0.1
      // (DNS rebinding) sends its own Host, so only loopback names are served without a token.
      return reply.code(403).send({
        code: 'FORBIDDEN',
        message:
          'with no API token configured, only requests addressed to a loopback name (localhost, 127.0.0.1, [::1]) are served',
      });
    }
    const access: Access = req.routeOptions.config?.access ?? (req.is404 ? 'read' : 'admin');
    if (access === 'none') return;
    if (tokens.length === 0) {
      // Open on loopback: still not for other sites' pages in a local browser.
      if (crossSite(req) && req.method !== 'GET' && req.method !== 'HEAD') {
        return reply
          .code(403)
          .send({ code: 'FORBIDDEN', message: 'a request from another site’s page is refused (no token configured)' });
      }
      return;
    }
    const refuse = (status: number, code: 'UNAUTHORIZED' | 'FORBIDDEN', message: string) =>
      reply.code(status).type('application/json; charset=utf-8').send({ code, message });
    const header = bearerToken(req.headers.authorization);
    const token = header ?? cookieToken(req.headers.cookie);
    if (token === undefined) {
      reply.header('www-authenticate', 'Bearer realm="deepfeat"');
      return refuse(
        401,
        'UNAUTHORIZED',
        'a token is required: send the header Authorization: Bearer TOKEN (in a browser, sign in at /login)',
      );
    }
    const who = authenticate(tokens, token);
    if (!who) {
      reply.header('www-authenticate', 'Bearer realm="deepfeat", error="invalid_token"');
      return refuse(401, 'UNAUTHORIZED', 'the bearer token is not valid');
    }
    if (!allows(who.role, access)) {
      return refuse(403, 'FORBIDDEN', `this needs an ${access} token; token ${who.name} has the role ${who.role}`);
    }
    if (header === undefined && !cookieMayWrite(req)) {
      return refuse(403, 'FORBIDDEN', 'a signed-in browser may change something only from this server’s own pages');
    }
    principals.set(req, who.name);
  });

  app.setErrorHandler((err, req, reply) => {
    const { status, body } = toHttpError(err);
    if (status >= 500) req.log.error({ err }, 'request failed');
    // A client that sent too much, or too slowly, is not read further.
    if (status === 413 || status === 408) reply.header('connection', 'close');
    return reply.code(status).type('application/json; charset=utf-8').send(body);
  });
  app.setNotFoundHandler((req, reply) =>
    reply
      .code(404)
      .send({ code: 'NOT_FOUND', message: `no route ${req.method} ${quote(req.url.split('?')[0]!, 200)}` }),
  );

  app.addHook('onClose', async () => {
    watcher.close();
    await predictor.close();
    // A queue closed while it is still connecting rejects inside BullMQ: let it connect first.
    await Promise.all(
      boardQueues.map((q) =>
        q.waitUntilReady().then(
          () => q.close(),
          () => q.close(),
        ),
      ),
    );
  });

  const needRedis = () => {
    if (!client.runs || !client.redis) {
      throw new ApiError(503, 'NOT_READY', 'REDIS_URL is not set: this server reads finished runs and models only');
    }
    return client.runs;
  };
  const runId = (req: FastifyRequest<{ Params: { id: string } }>) => {
    const id = req.params.id;
    if (!RUN_ID_PATTERN.test(id)) {
      throw new ApiError(
        400,
        'BAD_REQUEST',
        `not a run id: ${quote(id, 100)}; run ids look like r20261128093000-1a2b3c`,
      );
    }
    return id;
  };

  registerLogin(app, tokens);

  // --- health -------------------------------------------------------------------------------
  app.get('/healthz', { config: { access: 'none' } }, async () => ({ status: 'ok' }));
  app.get('/readyz', { config: { access: 'none' } }, async (_req, reply) => {
    const timeout = <T>(p: Promise<T>) =>
      Promise.race([
        p,
        new Promise<never>((_, rej) => setTimeout(() => rej(new Error('timed out after 2 s')), 2000).unref()),
      ]);
    const check = (p: Promise<unknown>) =>
      timeout(p).then(
        () => 'ok',
        (e: unknown) => failure(e),
      );
    const [redis, bucket] = await Promise.all([
      client.redis ? check(client.redis.ping()) : Promise.resolve('REDIS_URL not set'),
      check(assertBucket(client.s3, client.config.bucket)),
    ]);
    const checks = { redis, bucket };
    const ok = checks.redis === 'ok' && checks.bucket === 'ok';
    const failed = Object.entries(checks).filter(([, v]) => v !== 'ok');
    return reply
      .code(ok ? 200 : 503)
      .send(
        ok
          ? { status: 'ready', checks }
          : { code: 'NOT_READY', message: failed.map(([k, v]) => `${k}: ${v}`).join('; '), checks },
      );
  });

  // --- runs ---------------------------------------------------------------------------------
  app.post('/v1/runs', { config: { access: 'admin' } }, async (req, reply) => {
    if (req.isMultipart())
      throw new ApiError(415, 'UNSUPPORTED_MEDIA_TYPE', 'send the run request as application/json');
    needRedis();
    const parsed = runBodySchema.safeParse(req.body);
    if (!parsed.success) {
      const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`);
      throw new ApiError(422, 'UNPROCESSABLE', `invalid run request: ${issues.join('; ')}`);
    }
    // A retried submission with the same Idempotency-Key gets the run the first one created.
    const idemKey = req.headers['idempotency-key'];
    const reservation =
      typeof idemKey === 'string' && client.redis
        ? await reserve(client.redis, client.config.queuePrefix, principals.get(req) ?? 'local', idemKey, parsed.data)
        : undefined;
    if (reservation && 'existing' in reservation) {
      const status = `/v1/runs/${reservation.existing}`;
      return reply
        .code(200)
        .header('location', status)
        .send({ runId: reservation.existing, status, events: `${status}/events` });
    }
    let id: string;
    try {
      id = await enqueueRun(client, parsed.data as RunOptions);
    } catch (err) {
      await reservation?.release();
      // enqueueRun checks the request once more (the whole schema, the source URL): a refusal is the body's problem.
      if (err instanceof BadRequestError) throw new ApiError(422, 'UNPROCESSABLE', err.message);
      throw err;
    }
    await reservation?.commit(id);
    const status = `/v1/runs/${id}`;
    return reply
      .code(202)
      .header('location', status)
      .send({ runId: id, status, events: `${status}/events` });
  });

  app.get('/v1/runs', { config: { access: 'read' } }, async (req) => {
    const q = listQuerySchema.safeParse(req.query);
    if (!q.success) throw new ApiError(400, 'BAD_REQUEST', `invalid query: limit must be 1 to 100`);
    const runs = needRedis();
    const ids = await runs.list(q.data.limit);
    const out = [];
    for (const id of ids) {
      const s = await runs.get(id);
      if (s) out.push(summary(s));
    }
    return { runs: out };
  });

  app.get<{ Params: { id: string } }>('/v1/runs/:id', { config: { access: 'read' } }, async (req) =>
    getStatus(client, runId(req)),
  );

  app.get<{ Params: { id: string } }>('/v1/runs/:id/events', { config: { access: 'read' } }, async (req, reply) => {
    const id = runId(req);
    if (watcher.streams >= limits.maxStreams) {
      throw new ApiError(503, 'TOO_MANY_STREAMS', `${limits.maxStreams} event streams are open; retry later`);
    }
    const first = await getStatus(client, id); // 404 before the stream starts
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
      'x-content-type-options': 'nosniff',
      connection: 'keep-alive',
    });
    let last = '';
    const send = (s: RunStatus) => {
      const data = JSON.stringify(progressOf(s));
      if (data === last) return;
      last = data;
      res.write(`event: status\ndata: ${data}\n\n`);
    };
    const finish = (event: string, data: unknown) => {
      if (res.writableEnded) return;
      res.end(sseFrame(event, data));
    };
    // Tells EventSource to wait 3 s before reconnecting after a dropped connection.
    res.write('retry: 3000\n\n');
    if (isTerminal(first)) return finish('end', first);
    send(first);
    const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), options.heartbeatMs ?? 15_000);
    const stop = watcher.subscribe(id, {
      status: send,
      end: ({ status, error }) => {
        clearInterval(heartbeat);
        if (status) finish('end', status);
        else if (error !== undefined) finish('error', toHttpError(error).body);
        else finish('end', null);
      },
    });
    res.on('close', () => {
      clearInterval(heartbeat);
      stop();
    });
  });

  // --- queues -------------------------------------------------------------------------------
  // Job counts per queue. `backlog` = jobs ready to run and not started (waiting, prioritized —
  // extract and predict jobs carry a priority for fair sharing, so they wait in BullMQ's
  // prioritized set, not its wait list — and paused): what KEDA scales extractors on
  // (deploy/k8s/extractor-scaledobject.yaml).
  app.get('/v1/queues', { config: { access: 'read' } }, async () => {
    if (!client.queues) throw new ApiError(503, 'NOT_READY', 'REDIS_URL is not set: no queues');
    const queues: Record<string, Record<string, number>> = {};
    for (const q of QUEUE_NAMES) {
      const queue = makeQueue(client.queues, q);
      try {
        const c = await queue.getJobCounts();
        queues[q] = { ...c, backlog: (c.waiting ?? 0) + (c.prioritized ?? 0) + (c.paused ?? 0) };
      } finally {
        await queue.close();
      }
    }
    return { queues };
  });

  // --- models -------------------------------------------------------------------------------
  app.get('/v1/models', { config: { access: 'read' } }, async () => listModels(client));
  app.get<{ Params: { name: string } }>('/v1/models/:name', { config: { access: 'read' } }, async (req) =>
    listVersions(client, req.params.name),
  );
  app.get<{ Params: { name: string; version: string; file: string } }>(
    '/v1/models/:name/:version/files/:file',
    { config: { access: 'read' } },
    async (req, reply) => {
      const { name, version, file } = req.params;
      const f = await openModelFile(client, name, version, file);
      reply.type(f.contentType);
      if (f.bytes !== undefined) reply.header('content-length', f.bytes);
      if (f.etag) reply.header('etag', f.etag);
      if (f.contentType === 'application/octet-stream') {
        reply.header('content-disposition', `attachment; filename="${file}"`);
      }
      return reply.send(f.body);
    },
  );

  app.post<{ Params: { name: string } }>(
    '/v1/models/:name/predict',
    { config: { access: 'read' } },
    async (req, reply) => {
      const name = req.params.name;
      assertModelName(name);
      if (!req.isMultipart()) {
        throw new ApiError(
          415,
          'UNSUPPORTED_MEDIA_TYPE',
          'send images as multipart/form-data (curl -F image=@photo.jpg)',
        );
      }
      if (predicting >= limits.maxPredicts) {
        reply.header('retry-after', '1');
        throw new ApiError(503, 'NOT_READY', `${limits.maxPredicts} predictions are running; retry in a moment`);
      }
      predicting++;
      try {
        const images: Array<{ file: string; bytes: Uint8Array }> = [];
        let top: number | undefined;
        let version: string | undefined;
        let received = 0;
        for await (const part of req.parts()) {
          if (part.type === 'file') {
            const bytes = await part.toBuffer(); // refused past the upload limit (413)
            received += bytes.byteLength;
            if (received > limits.uploadTotalBytes) {
              throw new ApiError(
                413,
                'PAYLOAD_TOO_LARGE',
                `the images add up to more than ${limits.uploadTotalBytes} bytes: send fewer at a time`,
              );
            }
            images.push({ file: part.filename || `image-${images.length + 1}`, bytes: new Uint8Array(bytes) });
          } else if (part.fieldname === 'top') {
            const n = Number(part.value);
            if (!Number.isInteger(n) || n < 1 || n > 1000) {
              throw new ApiError(
                422,
                'UNPROCESSABLE',
                `top ${quote(String(part.value), 20)}: give 1 to the model's class count`,
              );
            }
            top = n;
          } else if (part.fieldname === 'version') {
            version = String(part.value);
            assertVersion(version);
          } else {
            throw new ApiError(
              422,
              'UNPROCESSABLE',
              `unknown field ${quote(part.fieldname, 40)}: send image, top, version`,
            );
          }
        }
        if (images.length === 0) {
          throw new ApiError(
            422,
            'UNPROCESSABLE',
            'no image: send one or more files as the field image (-F image=@photo.jpg)',
          );
        }
        const ref = version === undefined || version === 'latest' ? name : `${name}@${version}`;
        return await predictor.predict(ref, images, top);
      } finally {
        predicting--;
      }
    },
  );

  // --- the rest: OpenAPI, metrics, bull-board, report pages -----------------------------------
  app.get('/v1/openapi.json', { config: { access: 'read' } }, async () => openApiDocument(options.version ?? '0.1.0'));

  app.get('/metrics', { config: { access: 'read' } }, async (_req, reply) => {
    if (!client.queues) throw new ApiError(503, 'NOT_READY', 'REDIS_URL is not set: no queue metrics');
    const text = await metrics.render();
    return reply.type(metrics.contentType).send(text);
  });

  if (client.queues) boardQueues = registerBoard(app, client.queues);

  const html = (reply: FastifyReply, page: string) =>
    reply
      .type('text/html; charset=utf-8')
      .header('content-security-policy', REPORT_CSP)
      .header('cache-control', 'no-store')
      .send(page);
  app.get('/reports', { config: { access: 'read' } }, async (_req, reply) =>
    html(reply, await renderRunListPage({ client })),
  );
  app.get<{ Params: { id: string } }>('/reports/:id', { config: { access: 'read' } }, async (req, reply) => {
    const page = await renderRunReportPage(runId(req), { client });
    if (page === null) throw new NotFoundError(`unknown run id ${req.params.id}`);
    return html(reply, page);
  });

  return app;
}

/** A failed readiness check in words, without anything a client should not see (it is unauthenticated). */
function failure(e: unknown): string {
  if (e instanceof DeepfeatError) return e.code;
  return e instanceof Error && e.message.startsWith('timed out') ? e.message : 'unreachable';
}

function summary(s: RunStatus) {
  const predict = isPredictRequest(s.request);
  return {
    runId: s.runId,
    kind: predict ? 'predict' : 'train',
    name: predict ? `${s.request.model.name}@${s.request.model.version}` : (s.request.name ?? null),
    source: s.request.source,
    stage: s.stage,
    total: s.total,
    done: s.done,
    failed: s.failed,
    createdAt: s.createdAt,
    updatedAt: s.updatedAt,
  };
}

export { BOARD_PATH };

/** Whether a Host header names this machine's loopback: localhost, 127.x.y.z or [::1], any port. */
export function loopbackHost(host: string | undefined): boolean {
  if (host === undefined) return false;
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.replace(/:\d+$/, '');
  return /^(localhost|127(\.\d{1,3}){3}|\[::1\])$/i.test(name);
}
