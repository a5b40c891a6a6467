/**
 * `POST /v1/models/:name/predict`: uploaded images classified with a published version, exactly
 * as `deepfeat predict` classifies local files (cli/predict-local.ts): the same decoder processes
 * with the pipeline's limits, the same classifier (the version's classifier.onnx on ONNX Runtime,
 * cli/local-classifier.ts). Open classifiers are kept per version (a few, least recently used
 * first out) so a model is loaded once, not per request.
 */
import type { Client } from '../../cli/client.js';
import { fetchModel } from '../../cli/client.js';
import { openClassifier, type LocalClassifier } from '../../cli/local-classifier.js';
import { DEFAULT_TOP } from '../../cli/predict-client.js';
import { localDecoderPool } from '../../cli/predict-local.js';
import type { DecoderPool } from '../extractor/decoder-pool.js';
import { ImageError } from '../../shared/errors.js';
import type { ModelArtifact } from '../../shared/model-format.js';
import { topK, type RankedLabel } from '../../shared/predictions.js';
import { ApiError } from './http-errors.js';

export type Prediction = { file: string; top: RankedLabel[] } | { file: string; error: string };

/** Open classifiers kept; each holds an ONNX Runtime session (tens to hundreds of MiB). */
const KEPT = 2;

interface Entry {
  readonly ready: Promise<{ artifact: ModelArtifact; classifier: LocalClassifier }>;
  users: number;
  used: number;
}

export class Predictor {
  private readonly entries = new Map<string, Entry>();
  private decoders: DecoderPool | undefined;

  constructor(private readonly client: Client) {}

  /** Classifies `images` with model `ref` (NAME or NAME@VERSION); one row per image, in order. */
  async predict(
    ref: string,
    images: ReadonlyArray<{ file: string; bytes: Uint8Array }>,
    top: number | undefined,
  ): Promise<{ model: { name: string; version: string }; predictions: Prediction[] }> {
    // The version is resolved on every request (latest.json may have moved); the classifier is
    // reused when it is the same version.
    const { artifact, uri } = await fetchModel(this.client, ref);
    const k = artifact.classes.length;
    const want = top ?? Math.min(DEFAULT_TOP, k);
    if (want > k) {
      throw new ApiError(
        422,
        'UNPROCESSABLE',
        `top ${want}: model ${artifact.name} has ${k} classes; ask for 1 to ${k}`,
      );
    }
    const id = `${artifact.name}@${artifact.version}`;
    let entry = this.entries.get(id);
    if (!entry) {
      entry = {
        ready: openClassifier(this.client, artifact, uri).then((classifier) => ({ artifact, classifier })),
        users: 0,
        used: 0,
      };
      entry.ready.catch(() => this.entries.delete(id));
      this.entries.set(id, entry);
    }
    entry.users++;
    entry.used = Date.now();
    try {
      const { classifier } = await entry.ready;
      this.decoders ??= localDecoderPool(this.client.config.extractor);
      const cfg = this.client.config.extractor;
      const decoded = await Promise.all(
        images.map((img) =>
          this.decoders!.decode(img.bytes, {
            width: classifier.size,
            height: classifier.size,
            maxPixels: cfg.maxImagePixels,
            formats: cfg.imageFormats,
          }).then(
            (pixels) => ({ file: img.file, pixels }),
            (err: unknown) => {
              if (err instanceof ImageError) return { file: img.file, error: err.message };
              throw err;
            },
          ),
        ),
      );
      const ok = decoded.filter((d): d is { file: string; pixels: Uint8Array } => 'pixels' in d);
      const p = ok.length > 0 ? await classifier.classify(ok.map((d) => d.pixels)) : new Float32Array(0);
      let row = 0;
      const predictions = decoded.map((d): Prediction => {
        if ('error' in d) return { file: d.file, error: d.error };
        const r = row++;
        return { file: d.file, top: topK(artifact.classes, p.subarray(r * k, (r + 1) * k), want) };
      });
      return { model: { name: artifact.name, version: artifact.version }, predictions };
    } finally {
      entry.users--;
      await this.evict();
    }
  }

  /** Closes the least recently used idle classifiers past KEPT. */
  private async evict(): Promise<void> {
    const idle = [...this.entries].filter(([, e]) => e.users === 0).sort((a, b) => a[1].used - b[1].used);
    while (this.entries.size > KEPT && idle.length > 0) {
      const [id, e] = idle.shift()!;
      this.entries.delete(id);
      await e.ready.then((r) => r.classifier.close()).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.all(all.map((e) => e.ready.then((r) => r.classifier.close()).catch(() => undefined)));
    await this.decoders?.close();
  }
}
