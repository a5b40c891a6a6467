/**
 * A worker host's way to S3 in the multi-host harness (netns.ts), run inside the worker host's
 * network namespace: the tests' fault proxy (fault-proxy.ts) on the namespace's 127.0.0.1 — the
 * workers' S3_ENDPOINT, so the S3 server's loopback Host check holds — forwarding through a relay
 * over the host's own link to the S3 host. Cutting the link cuts this path; the proxy adds holds,
 * latency and resets on it.
 *
 * Controlled by JSON lines on stdin, each answered by a line with the same `id` on stdout:
 *   {"id":1,"op":"hold","method":"GET","path":"<substring of the request path>"} → {"id":1,"hold":H}
 *     and later {"event":"hit","hold":H} when the first matching request is parked;
 *   {"id":2,"op":"release","hold":H} → {"id":2,"parked":N,"dropped":N};
 *   {"id":3,"op":"slow","latencyMs":200,"resetRate":0.05} → {"id":3};
 *   {"id":4,"op":"stats"} → {"id":4,"stats":{…}}.
 * Prints `{"event":"ready","port":P}` first; ends when stdin closes.
 *
 * Usage: ip netns exec NS node --import tsx netns-gateway.ts '{"s3Host":"10.78.1.1","s3Port":9000}'
 */
import { createInterface } from 'node:readline';
import { startFaultProxy, type RequestHold } from './fault-proxy.js';
import { startRelay } from './netns-relay.js';

const { s3Host, s3Port } = JSON.parse(process.argv[2] ?? '{}') as { s3Host: string; s3Port: number };
const relay = await startRelay({ host: '127.0.0.1', port: 0 }, { host: s3Host, port: s3Port });
const proxy = await startFaultProxy(`http://127.0.0.1:${relay.port}`);
const send = (message: object) => process.stdout.write(`${JSON.stringify(message)}\n`);
send({ event: 'ready', port: proxy.port });

const holds = new Map<number, RequestHold>();
let nextHold = 1;
interface Command {
  id: number;
  op: string;
  method?: string;
  path?: string;
  hold?: number;
  latencyMs?: number;
  resetRate?: number;
}
createInterface({ input: process.stdin }).on('line', (line) => {
  const c = JSON.parse(line) as Command;
  if (c.op === 'hold') {
    const id = nextHold++;
    const hold = proxy.holdRequests((method, path) => (!c.method || method === c.method) && path.includes(c.path!));
    holds.set(id, hold);
    void hold.hit.then(() => send({ event: 'hit', hold: id }));
    send({ id: c.id, hold: id });
  } else if (c.op === 'release') {
    const hold = holds.get(c.hold!);
    const parked = hold?.parked ?? 0;
    hold?.release();
    send({ id: c.id, parked, dropped: hold?.dropped ?? 0 });
  } else if (c.op === 'slow') {
    proxy.slow({ latencyMs: c.latencyMs, resetRate: c.resetRate });
    send({ id: c.id });
  } else if (c.op === 'stats') {
    send({ id: c.id, stats: proxy.stats });
  } else {
    send({ id: c.id, error: `unknown op ${c.op}` });
  }
});
process.stdin.on('end', () => void Promise.all([proxy.close(), relay.close()]).then(() => process.exit(0)));
process.once('SIGTERM', () => process.exit(0));
