// Child process for cli/local-stack.ts. Plain ESM JavaScript on purpose: it is started with
// `process.execPath --openssl-legacy-provider <this file>`, without the parent's loader flags. The
// S3 server itself is TypeScript (embedded-s3.ts), loaded through tsx's API as bin/deepfeat.mjs does.
//
//   node --openssl-legacy-provider local-stack-child.mjs s3 '<json>'      run s3rver behind its guard
//   node local-stack-child.mjs redis '<json>'                             supervise redis-server
//
// Either way the child dies with its parent: it exits when its stdin closes (the parent holds the
// other end of the pipe, so the kernel closes it however the parent ends, even on SIGKILL) or when
// it is re-parented (the parent pid it was given is no longer its parent).
// Protocol: one JSON line on stdout, `{"event":"listening","port":N}` (s3) or
// `{"event":"spawned","pid":N}` (redis); diagnostics go to stderr, which the parent keeps for its
// error messages.
import { spawn } from 'node:child_process';

const [mode, rawOptions] = process.argv.slice(2);
const options = JSON.parse(rawOptions ?? '{}');
const parentPid = Number(options.parentPid);

/** Registered shutdown step; runs once whatever triggers it (signal, stdin close, orphaning). */
let shutdown = (/** @type {number} */ code) => process.exit(code);
let shuttingDown = false;
function requestShutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  shutdown(code);
}

function watchParent() {
  process.stdin.on('end', () => requestShutdown(0));
  process.stdin.on('close', () => requestShutdown(0));
  process.stdin.on('error', () => requestShutdown(0));
  process.stdin.resume();
  const timer = setInterval(() => {
    if (Number.isFinite(parentPid) && process.ppid !== parentPid) requestShutdown(0);
  }, 500);
  timer.unref();
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
    process.on(signal, () => requestShutdown(0));
  }
}

async function runS3() {
  const { register } = await import('tsx/esm/api');
  register();
  const { startEmbeddedS3 } = await import('./embedded-s3.ts');
  // One request must never end the server. s3rver is unmaintained; an error it does not expect
  // (thrown from a stream or timer callback) is reported and the process keeps serving: the
  // request it broke ends when its socket goes idle. If the process dies anyway, the parent
  // starts it again (local-stack.ts).
  process.stderr.on('error', () => undefined); // a parent gone mid-write: never an error loop
  const report = (what) => (err) => {
    if (!process.stderr.writable) return;
    const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
    process.stderr.write(`embedded S3: ${what} (server keeps running): ${text}\n`);
  };
  process.on('uncaughtException', report('uncaught exception'));
  process.on('unhandledRejection', report('unhandled rejection'));
  const server = await startEmbeddedS3({
    dir: options.dir,
    port: Number(options.port ?? 0),
    buckets: options.buckets ?? [],
    accessKeyIds: options.accessKeyIds ?? [],
    ...(options.maxObjectBytes !== undefined ? { maxObjectBytes: Number(options.maxObjectBytes) } : {}),
  });
  shutdown = (code) => {
    const force = setTimeout(() => process.exit(code), 2000);
    force.unref();
    server.close().then(
      () => process.exit(code),
      () => process.exit(code),
    );
  };
  process.stdout.write(`${JSON.stringify({ event: 'listening', port: server.port })}\n`);
}

function runRedis() {
  const child = spawn(options.command ?? 'redis-server', options.args ?? [], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  child.on('error', (err) => {
    process.stderr.write(`cannot start ${options.command ?? 'redis-server'}: ${err.message}\n`);
    process.exit(127);
  });
  child.on('exit', (code, signal) => {
    process.exit(code ?? (signal ? 1 : 0));
  });
  shutdown = () => {
    // redis-server flushes its append-only file on SIGTERM, then exits; we exit when it does.
    child.kill('SIGTERM');
    const force = setTimeout(() => child.kill('SIGKILL'), 8000);
    force.unref();
  };
  process.stdout.write(`${JSON.stringify({ event: 'spawned', pid: child.pid })}\n`);
}

watchParent();
try {
  if (mode === 's3') await runS3();
  else if (mode === 'redis') runRedis();
  else throw new Error(`unknown mode ${JSON.stringify(mode)}: expected "s3" or "redis"`);
} catch (err) {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
}
