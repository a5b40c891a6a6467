/**
 * A small TCP proxy in front of the test S3 server that injects storage faults on demand.
 * Loopback only: it listens on 127.0.0.1 (port 0, i.e. a free one) and refuses any upstream
 * that is not a loopback address.
 *
 * Controls:
 * - `refuse(ms)`: for `ms` milliseconds the proxy stops listening (new connections get
 *   ECONNREFUSED) and resets every open connection (clients see ECONNRESET); afterwards it
 *   listens again on the same port.
 * - `failNext(n, status)`: the next `n` HTTP requests, counted across all connections, are
 *   answered by the proxy itself with `HTTP/1.1 <status>` and an S3 XML error body (503 →
 *   `SlowDown`), without being forwarded; the connection is then closed.
 * - `holdRequests(match)`: requests whose request line matches — `match(method, path)`, with
 *   `path` the request-target up to any `?` (path-style: `/<bucket>/<key>`, as sent) — are not
 *   forwarded but parked: nothing is answered and the connection stays open. `hit` resolves when
 *   the first one arrives. `release()` forwards the parked requests as they are and ends the hold
 *   (later matching requests pass normally); a parked request whose client connection dies
 *   before that is dropped and never reaches the server (`dropped` counts them). While a request
 *   is parked, the server closing its idle keep-alive connection does not close the client's:
 *   the request goes out on a new upstream connection when released. Injected failures
 *   (`failNext`) take precedence over holds.
 * - `slow({ latencyMs, resetRate })`: from now on every request waits `latencyMs` before it is
 *   forwarded (added latency per request), and each request, with probability `resetRate`, has its
 *   connection reset instead of being forwarded (clients see ECONNRESET; `stats.reset` counts
 *   them). `slow({})` turns both off. Holds and injected failures apply after the wait.
 * - `close()`: stops listening and drops every connection.
 *
 * How requests are seen: each client connection gets its own upstream connection, and the proxy
 * parses just enough of the client's byte stream to find request boundaries (the head up to
 * CRLFCRLF, then `Content-Length` bytes of body). HTTP clients of the AWS SDK do not pipeline, so
 * a new request head only arrives after the previous response. A request with
 * `Transfer-Encoding: chunked` switches that connection to plain pass-through (its later requests
 * are forwarded but no longer counted or failed); the SDK sends Content-Length for everything
 * deepfeat uploads, so this does not happen in the tests.
 */
import net from 'node:net';

export interface FaultProxyStats {
  /** Requests forwarded to the upstream server. */
  forwarded: number;
  /** Requests answered by the proxy with an injected error. */
  injected: number;
  /** Connections reset or refused by `refuse`. */
  reset: number;
  /** Requests parked by `holdRequests` (whether later released or dropped). */
  held: number;
}

/** A hold placed by `holdRequests`. */
export interface RequestHold {
  /** Resolves when the first matching request has arrived and been parked. */
  readonly hit: Promise<void>;
  /** Matching requests parked now: not forwarded, their client still connected. */
  readonly parked: number;
  /** Parked requests whose client connection died: they never reached the server. */
  readonly dropped: number;
  /** Forwards the parked requests and ends the hold; later matching requests are forwarded at once. */
  release(): void;
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT — use as S3_ENDPOINT. */
  readonly endpoint: string;
  readonly port: number;
  readonly stats: FaultProxyStats;
  /** Refuse and reset connections for `ms` milliseconds; resolves when the proxy listens again. */
  refuse(ms: number): Promise<void>;
  /** Answer the next `n` requests with `status` (default 503 SlowDown) instead of forwarding them. */
  failNext(n: number, status?: number): void;
  /** Park requests whose method and path (request-target without the query) match, until `release()`. */
  holdRequests(match: (method: string, path: string) => boolean): RequestHold;
  /** Added latency per request and the probability of resetting a request's connection (see the top). */
  slow(opts: { latencyMs?: number; resetRate?: number }): void;
  close(): Promise<void>;
}

const S3_ERRORS: Record<number, { reason: string; code: string; message: string }> = {
  500: {
    reason: 'Internal Server Error',
    code: 'InternalError',
    message: 'We encountered an internal error. Please try again.',
  },
  503: { reason: 'Slow Down', code: 'SlowDown', message: 'Please reduce your request rate.' },
  403: { reason: 'Forbidden', code: 'AccessDenied', message: 'Access Denied' },
};

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\./.test(host);
}

function errorResponse(status: number, method: string): Buffer {
  const e = S3_ERRORS[status] ?? { reason: 'Error', code: 'InternalError', message: `injected ${status}` };
  const body =
    `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${e.code}</Code><Message>${e.message}</Message>` +
    `<RequestId>fault-proxy</RequestId></Error>`;
  const head =
    `HTTP/1.1 ${status} ${e.reason}\r\nContent-Type: application/xml\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `x-amz-request-id: fault-proxy\r\nConnection: close\r\n\r\n`;
  return Buffer.from(method === 'HEAD' ? head : head + body);
}

export async function startFaultProxy(upstreamEndpoint: string): Promise<FaultProxy> {
  const up = new URL(upstreamEndpoint);
  if (!isLoopback(up.hostname)) throw new Error(`fault proxy: upstream ${upstreamEndpoint} is not a loopback address`);
  const upHost = up.hostname.replace(/^\[|\]$/g, '');
  const upPort = Number(up.port || (up.protocol === 'https:' ? 443 : 80));

  const stats: FaultProxyStats = { forwarded: 0, injected: 0, reset: 0, held: 0 };
  let failRemaining = 0;
  let failStatus = 503;
  let latencyMs = 0;
  let resetRate = 0;
  const sockets = new Set<net.Socket>();

  interface HoldState {
    readonly match: (method: string, path: string) => boolean;
    /** Resume functions of the requests parked now. */
    readonly parked: Set<() => void>;
    dropped: number;
    onHit(): void;
  }
  const holds: HoldState[] = [];

  const onConnection = (client: net.Socket) => {
    sockets.add(client);
    let upstream: net.Socket | undefined;
    /** The request this connection has parked, if any: its hold and how to forward it. */
    let parked: { hold: HoldState; resume: () => void } | undefined;
    let dropped = false;
    /** A request head is waiting out the added latency (slow()). */
    let delaying = false;
    const drop = () => {
      if (dropped) return;
      dropped = true;
      client.destroy();
      upstream?.destroy();
      sockets.delete(client);
      if (upstream) sockets.delete(upstream);
      if (parked) {
        parked.hold.parked.delete(parked.resume);
        parked.hold.dropped++;
        parked = undefined;
      }
    };
    const connectUpstream = () => {
      const u = net.connect({ host: upHost, port: upPort });
      sockets.add(u);
      // While a request is parked the server may close its idle keep-alive connection; that
      // must not end the client's, which is waiting for an answer. Release opens a new one.
      const gone = () => {
        sockets.delete(u);
        if (u !== upstream) return;
        if (parked || delaying) upstream = undefined;
        else drop();
      };
      u.on('error', gone);
      u.on('close', gone);
      u.on('data', (d) => client.write(d));
      upstream = u;
    };
    const send = (b: Buffer) => upstream?.write(b);
    connectUpstream();
    client.on('error', drop);
    client.on('close', drop);

    // Request framing state for the client → upstream direction.
    let buf = Buffer.alloc(0);
    let bodyLeft = 0; // bytes of the current request body still to pass on (or to discard)
    let discarding = false; // the current request was answered by the proxy
    let passThrough = false;
    /** The head that has already waited out the added latency (forwarded on the next pass). */
    let delayedHead: Buffer | undefined;

    /** Forwards a request head; returns false if the connection switched to pass-through. */
    const forward = (head: Buffer, chunked: boolean, length: number): boolean => {
      stats.forwarded++;
      send(head);
      if (chunked) {
        passThrough = true;
        if (buf.length > 0) send(buf);
        buf = Buffer.alloc(0);
        return false;
      }
      bodyLeft = length;
      return true;
    };

    const pump = () => {
      while (buf.length > 0 && !parked && !delaying) {
        if (bodyLeft > 0) {
          const n = Math.min(bodyLeft, buf.length);
          if (!discarding) send(buf.subarray(0, n));
          buf = buf.subarray(n);
          bodyLeft -= n;
          if (bodyLeft === 0 && discarding) {
            client.end();
            return;
          }
          continue;
        }
        if (discarding) return; // after an injected answer the connection is done
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return; // wait for the whole head
        const head = buf.subarray(0, end + 4);
        // A head that has waited out the added latency comes through here a second time.
        const waited = delayedHead !== undefined && head.equals(delayedHead);
        delayedHead = undefined;
        if (!waited && resetRate > 0 && Math.random() < resetRate) {
          stats.reset++;
          try {
            client.resetAndDestroy();
          } catch {
            client.destroy();
          }
          drop();
          return;
        }
        if (!waited && latencyMs > 0) {
          delaying = true;
          setTimeout(() => {
            delaying = false;
            delayedHead = head;
            if (dropped) return;
            if (!upstream || upstream.destroyed) connectUpstream();
            pump();
          }, latencyMs);
          return;
        }
        const text = head.toString('latin1');
        const method = text.slice(0, text.indexOf(' '));
        const length = /\r\ncontent-length:\s*(\d+)/i.exec(text);
        const chunked = /\r\ntransfer-encoding:\s*chunked/i.test(text);
        buf = buf.subarray(end + 4);
        if (failRemaining > 0) {
          failRemaining--;
          stats.injected++;
          discarding = true;
          bodyLeft = chunked ? 0 : Number(length?.[1] ?? 0);
          client.write(errorResponse(failStatus, method));
          upstream?.destroy();
          if (bodyLeft === 0) {
            client.end();
            return;
          }
          continue;
        }
        const target = text.slice(method.length + 1, text.indexOf(' ', method.length + 1));
        const path = target.split('?', 1)[0]!;
        const hold = holds.find((h) => h.match(method, path));
        if (hold) {
          // Park: keep the head (and any body bytes that follow, in `buf`) until release.
          stats.held++;
          const resume = () => {
            parked = undefined;
            if (!upstream || upstream.destroyed) connectUpstream();
            if (forward(head, chunked, Number(length?.[1] ?? 0))) pump();
          };
          parked = { hold, resume };
          hold.parked.add(resume);
          hold.onHit();
          return;
        }
        if (!forward(head, chunked, Number(length?.[1] ?? 0))) return;
      }
    };

    client.on('data', (chunk: Buffer) => {
      if (passThrough) {
        send(chunk);
        return;
      }
      buf = Buffer.concat([buf, chunk]);
      pump();
    });
  };

  let server: net.Server;
  const listen = (port: number) =>
    new Promise<number>((resolve, reject) => {
      server = net.createServer(onConnection);
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  const stopListening = () => new Promise<void>((resolve) => server.close(() => resolve()));
  const resetAll = () => {
    for (const s of sockets) {
      stats.reset++;
      try {
        s.resetAndDestroy();
      } catch {
        s.destroy();
      }
    }
    sockets.clear();
  };

  const port = await listen(0);
  let refusing: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    port,
    stats,
    refuse(ms) {
      refusing ??= (async () => {
        const closed = stopListening();
        resetAll();
        await closed;
        await new Promise((r) => setTimeout(r, ms));
        // Another process could take the port meanwhile; retry briefly rather than fail the test.
        for (let i = 0; ; i++) {
          try {
            await listen(port);
            break;
          } catch (err) {
            if (i >= 50) throw err;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      })().finally(() => {
        refusing = undefined;
      });
      return refusing;
    },
    slow(opts) {
      latencyMs = Math.max(0, opts.latencyMs ?? 0);
      resetRate = Math.min(1, Math.max(0, opts.resetRate ?? 0));
    },
    failNext(n, status = 503) {
      failRemaining = n;
      failStatus = status;
    },
    holdRequests(match) {
      let onHit!: () => void;
      const hit = new Promise<void>((r) => (onHit = r));
      const h: HoldState = { match, parked: new Set(), dropped: 0, onHit };
      holds.push(h);
      return {
        hit,
        get parked() {
          return h.parked.size;
        },
        get dropped() {
          return h.dropped;
        },
        release() {
          const i = holds.indexOf(h);
          if (i >= 0) holds.splice(i, 1);
          const waiting = [...h.parked];
          h.parked.clear();
          for (const resume of waiting) resume();
        },
      };
    },
    async close() {
      await refusing?.catch(() => undefined);
      const closed = stopListening();
      resetAll();
      await closed;
    },
  };
}
