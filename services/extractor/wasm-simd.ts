/**
 * The WebAssembly SIMD modules of the decoder's own resampling (upscale-vpass.wat, downscale.wat):
 * instantiated once, on first use, with a memory that grows to the regions a call needs and is
 * reused by the next call. Null where WebAssembly SIMD is missing: callers then run their plain
 * JavaScript passes, which give the same bytes (the tests compare them).
 */

/**
 * The little of the WebAssembly API used here (the project's TypeScript libs are ES2023 and
 * Node's types without the DOM, where its declarations live).
 */
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object) => { exports: Record<string, unknown> };
}
const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;

/** Largest memory one module may keep (a 224×224 output needs well under a MiB). */
const WASM_MAX_BYTES = 64 << 20;

export interface SimdModule {
  memory: WasmMemory;
  /** The module's exported functions. */
  exports: Record<string, unknown>;
  /**
   * Offsets (16-byte aligned) of consecutive regions of the given byte sizes, the memory grown to
   * hold them; undefined past WASM_MAX_BYTES (the memory only grows: an unusually large input size,
   * a model's, runs in JavaScript rather than keep that much memory for the process's life).
   */
  reserve(sizes: readonly number[]): number[] | undefined;
}

/** 16-byte-aligned offsets of consecutive regions of the given sizes, and where the last ends. */
function layout(sizes: readonly number[]): { offsets: number[]; end: number } {
  const offsets: number[] = [];
  let end = 0;
  for (const size of sizes) {
    offsets.push(end);
    end = (end + size + 15) & ~15;
  }
  return { offsets, end };
}

/** Whether regions of these sizes fit the memory one module may keep. */
export function fitsSimdMemory(sizes: readonly number[]): boolean {
  return layout(sizes).end <= WASM_MAX_BYTES;
}

const loaded = new Map<string, SimdModule | null>();

/** The module whose bytes are `base64`, instantiated on first use; null without WebAssembly SIMD. */
export function simdModule(base64: string): SimdModule | null {
  const have = loaded.get(base64);
  if (have !== undefined) return have;
  const bytes = Buffer.from(base64, 'base64');
  let mod: SimdModule | null = null;
  if (wasm?.validate(bytes)) {
    const { exports } = new wasm.Instance(new wasm.Module(bytes));
    const memory = exports.memory as WasmMemory;
    const reserve = (sizes: readonly number[]) => {
      const { offsets, end } = layout(sizes);
      if (end > WASM_MAX_BYTES) return undefined;
      const now = memory.buffer.byteLength;
      if (end > now) memory.grow(Math.ceil((end - now) / 65536));
      return offsets;
    };
    mod = { memory, exports, reserve };
  }
  loaded.set(base64, mod);
  return mod;
}
