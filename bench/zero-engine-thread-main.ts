/**
 * Bench only: an engine thread (the EngineThreadApi of services/extractor/engines/thread.ts) whose
 * "backbone" returns zeros at no cost, so a feed benchmark measures everything an extractor does
 * around inference — the ceiling it can feed an accelerator at. Loaded only by
 * bench/zero-engine-extractor.ts; nothing a user sends or sets can select it.
 */
import type { EngineInfo, EngineHostApi, EngineThreadApi } from '../services/extractor/engines/thread.js';
import { serveThread, transfer } from '../shared/thread-call.js';

/**
 * The default features' shape: mobilenet_v2_mid takes 224×224 and gives 816 features, and the
 * default multi-scale features put two of those side by side (1,632 per image to write).
 */
const INFO: EngineInfo = {
  id: 'zero-engine (bench)',
  backend: 'zero (bench: no inference)',
  dim: 1632,
  preferredBatch: 8,
  input: { width: 224, height: 224 },
};

serveThread<EngineThreadApi, EngineHostApi>({
  load: () => INFO,
  embed({ pixels, count }) {
    const per = INFO.input.width * INFO.input.height * 3;
    if (pixels.length !== count * per) throw new Error(`zero engine: ${pixels.length} bytes for ${count} images`);
    const rows = new Float32Array(count * INFO.dim);
    return transfer(rows, [rows.buffer as ArrayBuffer]);
  },
  dispose: () => undefined,
});
