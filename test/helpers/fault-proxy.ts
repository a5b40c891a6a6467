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
  close(): Promise<void>;
}

const S3_ERRORS: Record<number, { reason: string; code: string; message: string }> = {
  500: { reason: 'Internal Server Error', code: 'InternalError', message: 'We encountered an internal error. Please try again.' },
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

  const stats: FaultProxyStats = { forwarded: 0, injected: 0, reset: 0 };
  let failRemaining = 0;
  let failStatus = 503;
  const sockets = new Set<net.Socket>();

  const onConnection = (client: net.Socket) => {
    sockets.add(client);
    const upstream = net.connect({ host: upHost, port: upPort });
    sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
    upstream.on('data', (d) => client.write(d));

    // Request framing state for the client → upstream direction.
    let buf = Buffer.alloc(0);
    let bodyLeft = 0; // bytes of the current request body still to pass on (or to discard)
    let discarding = false; // the current request was answered by the proxy
    let passThrough = false;

    client.on('data', (chunk: Buffer) => {
      if (passThrough) {
        upstream.write(chunk);
        return;
      }
      buf = Buffer.concat([buf, chunk]);
      while (buf.length > 0) {
        if (bodyLeft > 0) {
          const n = Math.min(bodyLeft, buf.length);
          if (!discarding) upstream.write(buf.subarray(0, n));
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
          upstream.destroy();
          if (bodyLeft === 0) {
            client.end();
            return;
          }
          continue;
        }
        stats.forwarded++;
        upstream.write(head);
        if (chunked) {
          passThrough = true;
          if (buf.length > 0) upstream.write(buf);
          buf = Buffer.alloc(0);
          return;
        }
        bodyLeft = Number(length?.[1] ?? 0);
      }
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
    failNext(n, status = 503) {
      failRemaining = n;
      failStatus = status;
    },
    async close() {
      await refusing?.catch(() => undefined);
      const closed = stopListening();
      resetAll();
      await closed;
    },
  };
}
