/**
 * A plain TCP relay (bytes both ways, nothing parsed), used by the multi-host harness to join a
 * listening address to a target that may be a TCP address or a Unix socket. Closing one side
 * closes the other; an error on either destroys both.
 */
import net from 'node:net';

export type RelayTarget = { host: string; port: number } | { path: string };
export type RelayListen = { host: string; port: number } | { path: string };

export interface Relay {
  /** The TCP port listened on (0 for a Unix socket). */
  readonly port: number;
  close(): Promise<void>;
}

export async function startRelay(listen: RelayListen, target: RelayTarget): Promise<Relay> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target);
    sockets.add(client);
    sockets.add(upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        sockets.clear();
        server.close(() => resolve());
      }),
  };
}
