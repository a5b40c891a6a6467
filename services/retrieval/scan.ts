/**
 * The exact top-k scan on ONNX Runtime: scores = database · queriesᵀ (MatMul), then TopK down the
 * rows. A scalar JavaScript loop over 100,000 × 816 floats takes about 135 ms here; MLAS's
 * SIMD kernels on one intra-op thread take about 28-30 ms (11 GB/s), near the memory-bandwidth
 * limit of reading the 326 MB matrix (bench/bench.ts, "retrieval"). The database is the caller's
 * Float32Array (a plain ArrayBuffer), wrapped as a tensor without a copy on every call; a
 * contiguous row range (one split) is a subarray, so no split needs a matrix of its own.
 *
 * The graph is generic (symbolic sizes), written once per process with deepfeat's ONNX writer.
 * TopK orders equal scores by lower row (ONNX TopK-11's rule), the order exactTopK uses.
 */
import type * as Ort from 'onnxruntime-node';
import { loadOrt } from '../extractor/engines/onnx.js';
import { DataType, encodeModel } from '../extractor/engines/onnx/proto.js';
import { InternalError, errorMessage } from '../../shared/errors.js';
import type { Hit } from './top-k.js';

/** Queries scored together: a [rows, 64] score matrix is 25 MB at 100,000 rows; larger batches gain little. */
export const QUERY_BATCH = 64;
const OPSET = 13;

export interface Scanner {
  /**
   * For each of the q queries (q × d, row-major, unit length), the min(k, n) rows of `db`
   * (n × d) with the highest dot product, in neighbour order.
   */
  topK(db: Float32Array, n: number, d: number, queries: Float32Array, q: number, k: number): Promise<Hit[][]>;
  close(): Promise<void>;
}

function scanGraph(): Uint8Array {
  return encodeModel({
    producerName: 'deepfeat',
    producerVersion: 'retrieval-scan/1',
    opsetVersion: OPSET,
    docString: 'exact cosine top-k: TopK(db · queriesT, k, axis 0)',
    graph: {
      name: 'deepfeat_topk',
      nodes: [
        { opType: 'MatMul', name: 'scores', inputs: ['db', 'queries_t'], outputs: ['scores'] },
        {
          opType: 'TopK',
          name: 'topk',
          inputs: ['scores', 'k'],
          outputs: ['values', 'indices'],
          attributes: { axis: { kind: 'int', value: 0 } },
        },
      ],
      initializers: [],
      inputs: [
        { name: 'db', elemType: DataType.FLOAT, shape: ['N', 'D'] },
        { name: 'queries_t', elemType: DataType.FLOAT, shape: ['D', 'Q'] },
        { name: 'k', elemType: DataType.INT64, shape: [1] },
      ],
      outputs: [
        { name: 'values', elemType: DataType.FLOAT, shape: ['K', 'Q'] },
        { name: 'indices', elemType: DataType.INT64, shape: ['K', 'Q'] },
      ],
    },
  });
}

/** A scanner on `threads` intra-op threads (1: the search leaves the other cores to other requests). */
export async function openScanner(threads = 1): Promise<Scanner> {
  const ort: typeof Ort = await loadOrt();
  let session: Ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(scanGraph(), {
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
    });
  } catch (err) {
    throw new InternalError(`ONNX Runtime cannot load the top-k scan: ${errorMessage(err).split('\n')[0]}`, {
      cause: err,
    });
  }
  return {
    async topK(db, n, d, queries, q, k) {
      const kk = Math.min(k, n);
      const out: Hit[][] = [];
      if (kk <= 0 || q === 0) return Array.from({ length: q }, () => []);
      const dbTensor = new ort.Tensor('float32', db.subarray(0, n * d), [n, d]);
      const kTensor = new ort.Tensor('int64', BigInt64Array.from([BigInt(kk)]), [1]);
      for (let first = 0; first < q; first += QUERY_BATCH) {
        const b = Math.min(QUERY_BATCH, q - first);
        const t = new Float32Array(d * b); // this batch's queries, transposed: d × b
        for (let i = 0; i < b; i++) for (let j = 0; j < d; j++) t[j * b + i] = queries[(first + i) * d + j]!;
        const res = await session.run({ db: dbTensor, queries_t: new ort.Tensor('float32', t, [d, b]), k: kTensor });
        const values = res.values!.data as Float32Array;
        const indices = res.indices!.data as BigInt64Array;
        for (let i = 0; i < b; i++) {
          const hits: Hit[] = [];
          for (let r = 0; r < kk; r++) hits.push({ index: Number(indices[r * b + i]!), score: values[r * b + i]! });
          out.push(hits);
        }
      }
      return out;
    },
    close: () => session.release(),
  };
}

let shared: Promise<Scanner> | undefined;
/** One single-threaded scanner per process, opened on first use (ONNX Runtime's Run is safe to call concurrently). */
export function sharedScanner(): Promise<Scanner> {
  shared ??= openScanner(1);
  shared.catch(() => (shared = undefined));
  return shared;
}
