/**
 * A plain GET of a whole object, for the extractor's one-GET-per-image loop (issue 14).
 *
 * The AWS SDK spends about 0.3–0.5 ms of CPU and allocates about 150 KB of short-lived objects
 * per GetObject (it copies its whole configuration object into new objects several times per
 * request and builds a new signer for each: bench/feed.ts, a heap sampling of the extractor).
 * At hundreds of images per second that garbage keeps V8's collector busy on several threads,
 * and it was the largest cost left around the model. Here a GET is one signed HTTP request on a
 * kept-alive socket, with one reused signer (@smithy/signature-v4, the SDK's own).
 *
 * Nothing about where or how to send is decided here: the SDK decides it, and this copies it.
 * The first GetObject of a bucket goes through the SDK; a middleware records the request it built
 * (scheme, host, port, the path before the key, the query, the signing region) and later GETs of
 * that bucket reuse it with another key, escaped as the SDK escapes keys. So endpoints, path or
 * virtual-hosted style, FIPS / dual-stack settings and credential providers are the SDK's.
 *
 * Only the plain case is handled: 200 with a body. Anything else — another status, a redirect, a
 * network error, a timeout, credentials that cannot be had — returns undefined and the caller
 * does the same GET through the SDK, whose retries and error mapping then decide (storageError).
 * So a missing key costs two requests (the second is the SDK's, for its error). Signing uses the
 * clock correction the SDK applied to the recorded request. S3_FAST_GET=false (shared/config.ts) turns all of this off.
 * A request template is only recorded when the SDK's request was signed with SigV4 for service
 * s3 and its path ends with the key escaped here; otherwise the bucket stays on the SDK.
 */
import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { S3Client } from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';

/** How the SDK addresses one bucket: everything of a GetObject request but the key. */
interface Template {
  protocol: 'http:' | 'https:';
  hostname: string;
  port: number | undefined;
  /** The path up to the key ('/bucket/' path-style, '/' virtual-hosted). */
  prefix: string;
  query: Record<string, string>;
  /** The Host header (hostname and port) and the query string, made once from the above. */
  host: string;
  search: string;
  signer: SignatureV4;
  /**
   * How far ahead of this host's clock the SDK dated the recorded request: after a server said
   * RequestTimeTooSkewed, the SDK signs with a corrected time, and so must this (0 when within a
   * minute: the request's own latency and the date's one-second steps).
   */
  clockOffsetMs: number;
}

export type FastGetResult =
  | { kind: 'ok'; bytes: Uint8Array; etag: string | undefined }
  | { kind: 'too-large'; length: number };

/** SHA-256 of the empty body: what a GET signs as its payload hash. */
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

type SourceData = string | ArrayBuffer | ArrayBufferView;
const bytesOf = (d: SourceData): string | Uint8Array =>
  typeof d === 'string'
    ? d
    : ArrayBuffer.isView(d)
      ? new Uint8Array(d.buffer, d.byteOffset, d.byteLength)
      : new Uint8Array(d);

/** The checksum the signer needs (SHA-256, or HMAC-SHA256 with a secret), from node:crypto. */
class Sha256 {
  #h: Hash | Hmac;
  readonly #secret: string | Uint8Array | undefined;
  constructor(secret?: SourceData) {
    this.#secret = secret === undefined ? undefined : bytesOf(secret);
    this.#h = this.#fresh();
  }
  #fresh(): Hash | Hmac {
    return this.#secret === undefined ? createHash('sha256') : createHmac('sha256', this.#secret);
  }
  update(data: SourceData): void {
    this.#h.update(bytesOf(data));
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.#h.digest());
  }
  reset(): void {
    this.#h = this.#fresh();
  }
}

/**
 * A key as the SDK puts it in the path: each '/'-separated segment percent-encoded, with
 * !'()* encoded too, so only A–Z a–z 0–9 - _ . ~ and '/' stay as they are (S3's canonical form).
 */
export function escapeKey(key: string): string {
  return key
    .split('/')
    .map((s) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`))
    .join('/');
}

interface Recorder {
  templates: Map<string, Template>;
  agents: { http: http.Agent; https: https.Agent };
  timeoutMs: number;
  /** GETs served here, and GETs of recorded buckets that fell back to the SDK (tests, bench). */
  stats: { fast: number; fallback: number };
}

const recorders = new WeakMap<S3Client, Recorder>();

/** What the SDK's built request looks like, as far as this module reads it. */
interface SdkRequest {
  protocol?: string;
  hostname?: string;
  port?: number;
  path?: string;
  query?: Record<string, string | string[] | null>;
  headers?: Record<string, string>;
}

/**
 * Lets later GETs of a bucket skip the SDK (see the file comment). Called once, by
 * createS3Client, before the client sends anything. `timeoutMs`: silence allowed on a socket.
 */
export function enableFastGet(client: S3Client, timeoutMs: number): void {
  if (recorders.has(client)) return;
  const rec: Recorder = {
    templates: new Map(),
    agents: {
      http: new http.Agent({ keepAlive: true, maxSockets: 64 }),
      https: new https.Agent({ keepAlive: true, maxSockets: 64 }),
    },
    timeoutMs,
    stats: { fast: 0, fallback: 0 },
  };
  recorders.set(client, rec);
  // The kept-alive sockets are this module's: closed with the client.
  const destroy = client.destroy.bind(client);
  client.destroy = () => {
    rec.agents.http.destroy();
    rec.agents.https.destroy();
    destroy();
  };
  const credentials = (client.config as { credentials?: unknown }).credentials;
  if (typeof credentials !== 'function') return; // no provider to sign with: the SDK does every GET
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const out = await next(args);
      try {
        // Inside the deserializer an error answer does not throw: only a 200 shows how to GET.
        const status = (out as { response?: { statusCode?: number } }).response?.statusCode;
        if (status === 200)
          record(rec, client, context, args as { input?: { Bucket?: string; Key?: string }; request?: SdkRequest });
      } catch {
        // Anything unexpected in the SDK's request: this bucket stays on the SDK.
      }
      return out;
    },
    // The deserialize step runs inside signing: the request seen here is the one sent, and it is
    // recorded only once its answer was a 200.
    { step: 'deserialize', name: 'deepfeatFastGetRecorder', override: true },
  );
}

function record(
  rec: Recorder,
  client: S3Client,
  context: Record<string, unknown>,
  args: { input?: { Bucket?: string; Key?: string }; request?: SdkRequest },
): void {
  if (context.commandName !== 'GetObjectCommand') return;
  const { Bucket: bucket, Key: key } = args.input ?? {};
  const req = args.request;
  if (!bucket || !key || !req || rec.templates.has(bucket)) return;
  // A plain GET of the whole object: no Range, version, SSE-C or request-payer headers.
  const input = args.input as Record<string, unknown>;
  if (Object.keys(input).some((k) => k !== 'Bucket' && k !== 'Key' && input[k] !== undefined)) return;
  const auth = req.headers?.authorization ?? req.headers?.Authorization ?? '';
  const m = /^AWS4-HMAC-SHA256 Credential=[^/]+\/\d{8}\/([^/]+)\/s3\/aws4_request,/.exec(auth);
  if (!m) return; // not SigV4 for s3 (SigV4a, S3 Express, anonymous): leave it to the SDK
  const path = req.path ?? '';
  const escaped = escapeKey(key);
  if (!path.endsWith(escaped) || (req.protocol !== 'http:' && req.protocol !== 'https:') || !req.hostname) return;
  const query: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.query ?? {})) {
    if (typeof v !== 'string') return;
    query[k] = v;
  }
  const date = /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/.exec(req.headers?.['x-amz-date'] ?? '');
  if (!date) return;
  const [, y, mo, d, h, mi, se] = date.map(Number) as number[];
  const offset = Date.UTC(y!, mo! - 1, d!, h!, mi!, se!) - Date.now();
  const config = client.config as unknown as { credentials: () => Promise<never> };
  rec.templates.set(bucket, {
    protocol: req.protocol,
    hostname: req.hostname,
    port: req.port,
    prefix: path.slice(0, path.length - escaped.length),
    query,
    host: req.port === undefined ? req.hostname : `${req.hostname}:${req.port}`,
    search: new URLSearchParams(query).toString(),
    signer: new SignatureV4({
      credentials: config.credentials,
      region: m[1]!,
      service: 's3',
      sha256: Sha256,
      uriEscapePath: false, // S3: the path is signed as sent
    }),
    clockOffsetMs: Math.abs(offset) < 60_000 ? 0 : offset,
  });
}

/** GETs served by the fast path and GETs that fell back to the SDK, for this client. */
export function fastGetStats(client: S3Client): { fast: number; fallback: number } {
  return { ...(recorders.get(client)?.stats ?? { fast: 0, fallback: 0 }) };
}

/**
 * The whole object, or undefined when the caller must use the SDK (no template for the bucket
 * yet, or anything but a plain 200). With `maxBytes`, a larger declared length is reported
 * without reading the body, and a body growing past it is not read further.
 */
export async function fastGetObject(
  client: S3Client,
  bucket: string,
  key: string,
  maxBytes?: number,
): Promise<FastGetResult | undefined> {
  const rec = recorders.get(client);
  const t = rec?.templates.get(bucket);
  if (!rec || !t) return undefined;
  let signed: { headers: Record<string, string> };
  let path: string;
  try {
    path = t.prefix + escapeKey(key); // throws for a key that is not valid Unicode: the SDK says why
    signed = (await t.signer.sign(
      {
        method: 'GET',
        protocol: t.protocol,
        hostname: t.hostname,
        port: t.port,
        path,
        query: t.query,
        headers: { host: t.host, 'x-amz-content-sha256': EMPTY_SHA256 },
      } as never,
      { signingDate: new Date(Date.now() + t.clockOffsetMs) } as never,
    )) as unknown as {
      headers: Record<string, string>;
    };
  } catch {
    rec.stats.fallback++;
    return undefined; // e.g. credentials that cannot be had: the SDK says so in its words
  }
  // A network failure, a timeout or an answer about the bucket or the request rather than this key
  // (403, a redirect, 5xx): the SDK repeats the GET with its retries, and until an SDK GET of this
  // bucket succeeds again (which records it anew) its GETs go to the SDK only, so a server that
  // stopped answering, or credentials that stopped working, cost one extra request, not one per
  // image. A missing (404) or refused (400) key is that key's: the bucket stays on the fast path.
  const drop = () => {
    if (rec.templates.get(bucket) === t) rec.templates.delete(bucket);
  };
  const answer = await send(rec, t, path, signed.headers, maxBytes).catch(() => {
    drop();
    return undefined;
  });
  if (answer?.kind === 'status') {
    if (answer.status !== 404 && answer.status !== 400) drop();
    rec.stats.fallback++;
    return undefined;
  }
  if (answer) rec.stats.fast++;
  else rec.stats.fallback++;
  return answer;
}

function send(
  rec: Recorder,
  t: Template,
  path: string,
  headers: Record<string, string>,
  maxBytes: number | undefined,
): Promise<FastGetResult | { kind: 'status'; status: number } | undefined> {
  return new Promise((resolve, reject) => {
    const req = (t.protocol === 'https:' ? https : http).request(
      {
        method: 'GET',
        hostname: t.hostname.replace(/^\[(.*)\]$/, '$1'), // an IPv6 literal, without its brackets
        port: t.port,
        path: t.search ? `${path}?${t.search}` : path,
        headers,
        agent: t.protocol === 'https:' ? rec.agents.https : rec.agents.http,
        timeout: rec.timeoutMs,
      },
      (res) => {
        const done = (r: FastGetResult | { kind: 'status'; status: number } | undefined) => {
          resolve(r);
          if (!res.complete) res.destroy();
        };
        try {
          onResponse(res, done, resolve, reject);
        } catch (err) {
          // e.g. a declared length no buffer can hold (an object of 4 GiB or more and no maxBytes):
          // the SDK path then fails as it always did, as a StorageError.
          res.destroy();
          reject(err);
        }
      },
    );
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });

  function onResponse(
    res: http.IncomingMessage,
    done: (r: FastGetResult | { kind: 'status'; status: number } | undefined) => void,
    resolve: (r: FastGetResult | undefined) => void,
    reject: (err: unknown) => void,
  ): void {
    if (res.statusCode !== 200) {
      res.resume(); // drain, so the socket can be reused; the SDK repeats the request
      done({ kind: 'status', status: res.statusCode ?? 0 });
      return;
    }
    const declared = res.headers['content-length'];
    const length = declared !== undefined && /^\d+$/.test(declared) ? Number(declared) : undefined;
    // A Content-Encoding is the object's stored metadata: S3 sends the bytes as stored and the SDK
    // does not decode them, and neither does node:http; so the bytes are the same either way.
    if (length === undefined) {
      done(undefined);
      return;
    }
    if (maxBytes !== undefined && length > maxBytes) {
      done({ kind: 'too-large', length });
      return;
    }
    res.on('error', reject); // before the reader's own listener: a socket error fails the request
    const tag = res.headers.etag;
    readExactly(res, length).then(
      (bytes) => resolve({ kind: 'ok', bytes, etag: typeof tag === 'string' ? tag : undefined }),
      () => done(undefined), // cut short, or longer than declared: the SDK repeats the GET
    );
  }
}

/**
 * A body in one buffer of its declared length, filled as it streams in (no chunk list to join and
 * copy again); rejects when the body is longer or shorter than that length, or breaks off.
 */
export async function readExactly(body: AsyncIterable<Uint8Array>, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let at = 0;
  for await (const chunk of body) {
    if (at + chunk.length > length) throw new Error(`the body is longer than its Content-Length (${length})`);
    out.set(chunk, at);
    at += chunk.length;
  }
  if (at !== length) throw new Error(`the body ended after ${at} of its ${length} bytes (Content-Length)`);
  return out;
}
