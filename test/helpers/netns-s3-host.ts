/**
 * The S3 host of the multi-host harness (netns.ts), run inside its own network namespace:
 * the embedded S3 server (s3rver behind deepfeat's guard, cli/local-stack.ts) on the
 * namespace's 127.0.0.1, a relay from every address of the namespace (its links to the worker
 * hosts) on PORT to it, and a relay from a Unix socket (the test process's way in, which needs no
 * network) to it. Prints one JSON line `{"event":"ready"}` when all listen; ends when stdin closes.
 *
 * Usage: ip netns exec NS node --import tsx netns-s3-host.ts '{"dir":…,"port":9000,"socket":…}'
 */
import { startS3Server } from '../../cli/local-stack.js';
import { startRelay } from './netns-relay.js';

const { dir, port, socket } = JSON.parse(process.argv[2] ?? '{}') as { dir: string; port: number; socket: string };
const s3 = await startS3Server({ dir, accessKeyIds: ['minioadmin'] });
const target = { host: '127.0.0.1', port: s3.port };
const links = await startRelay({ host: '0.0.0.0', port }, target);
const local = await startRelay({ path: socket }, target);
process.stdout.write(`${JSON.stringify({ event: 'ready', port: s3.port })}\n`);

const stop = async () => {
  await Promise.all([links.close(), local.close()]);
  await s3.stop();
  process.exit(0);
};
process.stdin.on('end', () => void stop());
process.stdin.resume();
process.once('SIGTERM', () => void stop());
