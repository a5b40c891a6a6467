/**
 * Smoke check of `npm run bench -- --quick`: every stage runs on the real parts and reports a
 * figure. Speeds are never asserted (shared, noisy machines); only that each was measured.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';

test('bench --quick measures every stage and writes them as JSON', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'deepfeat-bench-test-'));
  try {
    const out = path.join(dir, 'results.json');
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
      (resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', 'bench/bench.ts', '--quick', '--out', out], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let so = '';
        let se = '';
        child.stdout.on('data', (d) => (so += d));
        child.stderr.on('data', (d) => (se += d));
        child.on('close', (c) => resolve({ code: c, stdout: so, stderr: se }));
      },
    );
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
