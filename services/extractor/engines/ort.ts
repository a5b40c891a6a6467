/**
 * onnxruntime-node, loaded on first use. A module of its own so that code needing only the
 * runtime (the retrieval scanner, every worker process through the evaluator) does not import
 * onnx.ts, whose converter loads TensorFlow.js: about 40 MB of heap in each worker process that
 * every major garbage collection marks again (issue 14, bench/feed.ts).
 */
import type * as Ort from 'onnxruntime-node';

let ortModule: Promise<typeof Ort> | undefined;
/** onnxruntime-node, loaded on first use (its native library is ~20 MB; raw-pixel runs never need it). */
export function loadOrt(): Promise<typeof Ort> {
  ortModule ??= import('onnxruntime-node').then(
    (m) => ((m as unknown as { default?: typeof Ort }).default ?? m) as typeof Ort,
  );
  ortModule.catch(() => (ortModule = undefined));
  return ortModule;
}
