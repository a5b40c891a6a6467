/**
 * `deepfeat serve [--port N] [--host H]`: the HTTP API (services/api/server.ts) on a host and
 * port, until SIGTERM or SIGINT. Tokens come from DEEPFEAT_API_TOKENS / DEEPFEAT_API_TOKENS_FILE;
 * with none, only a loopback host is allowed.
 */
import type { Command } from 'commander';
import { loadConfig } from '../shared/config.js';
import { assertBindAllowed, loadTokens } from '../services/api/auth.js';
import { createClient } from './client.js';
import { localDemoEnv } from './local-stack.js';
import { parseWholeNumber } from './flags.js';

export const DEFAULT_PORT = 8080;
export const DEFAULT_HOST = '127.0.0.1';

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description(
      'the HTTP API: runs, models, predictions, events, OpenAPI, bull-board, /metrics, report pages (bearer tokens from DEEPFEAT_API_TOKENS)',
    )
    .option('--port <n>', 'port, 0 for any free one', String(DEFAULT_PORT))
    .option('--host <host>', 'address to listen on; anything but loopback needs a token configured', DEFAULT_HOST)
    .addHelpText(
      'after',
      '\nTokens (README "Service"):\n' +
        '  DEEPFEAT_API_TOKENS        NAME:ROLE:TOKEN[,...]; ROLE read (GET, predict, metrics) or admin (also POST /v1/runs, bull-board)\n' +
        '  DEEPFEAT_API_TOKENS_FILE   a file of the same entries, one per line (# comments), e.g. a mounted secret',
    )
    .action(async (o: { port: string; host: string }) => {
      const port = parseWholeNumber('--port', o.port, { min: 0, max: 65535 }, 'TCP port');
      // Every setting is checked before anything is connected to or bound.
      loadConfig();
      const tokens = loadTokens(process.env);
      assertBindAllowed(o.host, tokens);
      // From the demo's folder with S3_ENDPOINT unset, the demo's store, as every command does.
      const local = await localDemoEnv();
      const config = loadConfig(local.env);
      // Loaded here: Fastify, bull-board and prom-client cost every other command nothing.
      const { buildServer } = await import('../services/api/server.js');
      const client = createClient(config);
      const app = buildServer({
        client,
        tokens,
        logger: {
          level: config.logLevel,
          redact: ['req.headers.authorization', 'req.headers.cookie'],
        },
      });
      const url = await app.listen({ port, host: o.host });
      if (tokens.length === 0) {
        app.log.warn('no API token configured (DEEPFEAT_API_TOKENS): every route is open on this loopback address');
      }
      console.error(`deepfeat API listening on ${url} (OpenAPI: ${url}/v1/openapi.json)`);
      const stop = async () => {
        await app.close();
        await client.close();
        await local.stop();
        process.exit(0);
      };
      process.once('SIGTERM', () => void stop());
      process.once('SIGINT', () => void stop());
      await new Promise(() => undefined);
    });
}
