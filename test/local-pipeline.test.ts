/**
 * cli/local-pipeline.ts's services for one command (`demo`, `--local`): what it starts and what it
 * leaves to the environment. Its workers are tested end to end in test/cli.test.ts.
 */
import test from 'ava';
import { startLocalServices } from '../cli/local-pipeline.js';
import { ConfigError } from '../shared/errors.js';

test.serial('no redis-server on PATH and no REDIS_URL: a ConfigError naming both ways out (exit 2)', async (t) => {
  const saved = process.env.PATH;
  process.env.PATH = '/nonexistent';
  const said: string[] = [];
  try {
    const err = await t.throwsAsync(
      startLocalServices({ S3_ENDPOINT: 'http://127.0.0.1:9' }, { embeddedS3: 'if-present', say: (l) => said.push(l) }),
      { instanceOf: ConfigError },
    );
    t.regex(
      err!.message,
      /redis-server not found on PATH: install it \(apt-get install redis-server\) or set REDIS_URL/,
    );
    t.deepEqual(said, []);
  } finally {
    process.env.PATH = saved;
  }
});

test('with REDIS_URL and S3_ENDPOINT set nothing is started and the environment is kept', async (t) => {
  const base = { REDIS_URL: 'redis://10.0.0.1:6379', S3_ENDPOINT: 'http://10.0.0.2:9000', OTHER: 'x' };
  const said: string[] = [];
  const services = await startLocalServices(base, {
    dataDir: '/nonexistent-deepfeat-data',
    embeddedS3: 'always',
    say: (l) => said.push(l),
  });
  t.deepEqual(services.env, base);
  t.not(services.env, base, 'a copy, not the caller’s object');
  t.deepEqual(said, []);
  await services.stop();
});

test('no REDIS_URL: a redis-server is started in a temporary folder and stopped; no store folder, no S3 server', async (t) => {
  const said: string[] = [];
  const services = await startLocalServices({}, { embeddedS3: 'if-present', say: (l) => said.push(l) });
  try {
    t.regex(services.env.REDIS_URL ?? '', /^redis:\/\/127\.0\.0\.1:\d+$/);
    t.is(services.env.S3_ENDPOINT, undefined);
    t.is(said.length, 1);
    t.regex(said[0]!, /data in a temporary folder/);
  } finally {
    await services.stop();
  }
});
