// Child process for cli/local-stack.ts. Plain ESM JavaScript on purpose: it is started with
// `process.execPath --openssl-legacy-provider <this file>` and so needs no TypeScript loader.
//
//   node --openssl-legacy-provider local-stack-child.mjs s3 '<json>'      run s3rver
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
  const { default: S3rver } = await import('s3rver');
  // s3rver accepts unsigned requests and does not verify SigV4 signatures, but refuses access key
  // ids it does not know (only S3RVER by default). Register the ones our clients are configured with.
  const { default: AWSAccount } = await import('s3rver/lib/models/account.js');
  for (const accessKeyId of options.accessKeyIds ?? []) {
    AWSAccount.DUMMY_ACCOUNT.createKeyPair(accessKeyId, accessKeyId);
  }
  const server = new S3rver({
    address: '127.0.0.1', // s3rver checks no signatures: never listen beyond loopback
    port: Number(options.port ?? 0),
    directory: options.dir,
    silent: true,
    configureBuckets: (options.buckets ?? []).map((name) => ({ name })),
  });
  shutdown = (code) => {
    const http = server.httpServer;
    // Keep-alive sockets from S3 clients would hold close() open; an outage test wants them cut.
    http?.closeAllConnections?.();
    const force = setTimeout(() => process.exit(code), 2000);
    force.unref();
    if (http) http.close(() => process.exit(code));
    else process.exit(code);
  };
  const address = await server.run();
  process.stdout.write(`${JSON.stringify({ event: 'listening', port: address.port })}\n`);
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
