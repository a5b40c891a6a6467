/**
 * TensorFlow.js's console banner ("Hi, looks like you are running TensorFlow.js in Node.js …") is
 * not printed by deepfeat's processes: they import it through services/extractor/engines/tf.ts.
 */
import { spawnSync } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const BANNER = /looks like you are running TensorFlow\.js in Node\.js/;

/** stderr of a fresh Node process that runs one op on TF.js's CPU backend, loaded as `from` says. */
function stderrOfOneOp(from: 'deepfeat' | 'package'): string {
  const load =
    from === 'deepfeat'
      ? "const { tf } = await import('./services/extractor/engines/tf.ts');"
      : "const tf = await import('@tensorflow/tfjs');";
  const script = `${load} await tf.setBackend('cpu'); console.log(tf.tensor([1, 2]).square().dataSync().join(','));`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.status !== 0 || r.stdout.trim() !== '1,4') throw new Error(`the op did not run: ${r.status} ${r.stderr}`);
  return r.stderr;
}

test('TF.js through engines/tf.ts prints no banner; the package alone does (the check can fail)', (t) => {
  t.notRegex(stderrOfOneOp('deepfeat'), BANNER);
  t.regex(stderrOfOneOp('package'), BANNER);
});

test("no deepfeat module imports TF.js's value except engines/tf.ts", async (t) => {
  const offenders: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) await walk(rel);
      else if (rel.endsWith('.ts') && rel !== path.join('services', 'extractor', 'engines', 'tf.ts')) {
        const text = await readFile(path.join(ROOT, rel), 'utf8');
        if (/^import (?!type )[^;]*from '@tensorflow\/tfjs';/m.test(text)) offenders.push(rel);
      }
    }
  };
  for (const dir of ['services', 'shared', 'cli']) await walk(dir);
  t.deepEqual(offenders, []);
});
