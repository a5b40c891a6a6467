/**
 * Smoke check of `npm run bench -- --quick`: every stage runs on the real parts and reports a
 * figure. Speeds are never asserted (shared, noisy machines); only that each was measured.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import sharp from 'sharp';
import type { PoolRates } from '../bench/decoder-pool-rate.js';

/** Runs a bench script as `node --import tsx SCRIPT ARGS…`; resolves with its exit code and output. */
function runScript(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('bench --quick measures every stage and writes them as JSON', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'deepfeat-bench-test-'));
  try {
    const out = path.join(dir, 'results.json');
    const { code, stdout, stderr } = await runScript(['bench/bench.ts', '--quick', '--out', out]);
    t.is(code, 0, stderr.slice(-2000));
    const results = JSON.parse(await readFile(out, 'utf8')) as {
      quick: boolean;
      figures: Record<string, number>;
      rows: Array<{ stage: string; figure: number }>;
    };
    t.true(results.quick);
    const expected = [
      'decode_jpeg_sequential',
      'decode_cifar_parallel',
      'engine_onnx_1',
      'engine_tfjs_wasm',
      'ratio_onnx_vs_wasm',
      's3_get_cpu_ms',
      'pipeline_1x_all',
      'pipeline_1x_all_vs_raw',
      'pipeline_1x_all_rss',
      'pipeline_1x_all_redis_usec_per_image',
      'bullmq_ms_per_job',
      'bullmq_redis_usec_per_job',
      'redis_extractors_capacity',
      'fit_one_lambda',
      'train_job',
      'train_job_rss',
      'ratio_train_vs_extract',
      // bench/feed.ts, the zero-cost engine (issue 14)
      'feed_cifar_1p',
      'feed_cifar_1p_cpu_ms',
      'feed_cifar_1p_services_ms',
    ];
    for (const key of expected) {
      const v = results.figures[key];
      t.true(typeof v === 'number' && Number.isFinite(v) && v > 0, `${key} = ${v}`);
    }
    // The printed table carries the same rows.
    for (const r of results.rows) t.true(stdout.includes(r.stage), r.stage);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the feed bench measures the decoder pool alone in a process of its own', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'deepfeat-pool-rate-test-'));
  try {
    for (let i = 0; i < 4; i++) {
      const jpeg = await sharp({
        create: { width: 320, height: 240, channels: 3, background: { r: 60 * i, g: 90, b: 30 } },
      })
        .jpeg()
        .toBuffer();
      await writeFile(path.join(dir, `${i}.jpg`), jpeg);
    }
    const { code, stdout, stderr } = await runScript(['bench/decoder-pool-rate.ts', dir, '1', '--quick']);
    t.is(code, 0, stderr.slice(-2000));
    const rates = JSON.parse(stdout) as PoolRates;
    t.false(rates.inline, 'JPEGs go to decoder processes');
    t.true(rates.processes >= 1);
    for (const key of ['one', 'all', 'ratio', 'callerMsOne', 'callerMsAll'] as const)
      t.true(Number.isFinite(rates[key]) && rates[key] > 0, `${key} = ${rates[key]}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
