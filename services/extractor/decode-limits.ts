/**
 * The reasons recorded when decoding one image goes past a bound (time, memory) or kills its
 * decoder: written in one place, because the decoder (image.ts, inside a decoder process) and the
 * pool that runs it (decoder-pool.ts, in the extractor) must say the same thing for the same event.
 */

/** Decoding took longer than DEEPFEAT_DECODE_TIMEOUT. */
export function timeoutReason(seconds: number): string {
  return `decode timed out after ${seconds} s (DEEPFEAT_DECODE_TIMEOUT)`;
}

/** Decoding ran out of memory; `limitMiB` is the decoder process's limit, when there is one. */
export function outOfMemoryReason(limitMiB: number | undefined): string {
  return limitMiB === undefined
    ? 'decoding ran out of memory'
    : `decoding needs more memory than the decoder's limit of ${limitMiB} MiB (DEEPFEAT_DECODE_MEMORY)`;
}

/**
 * The decoder process died on this image, on two fresh processes in a row. A codec that cannot
 * allocate often aborts instead of failing cleanly, so the memory limit is the likely cause.
 */
export function crashReason(format: string | undefined, how: string, limitMiB: number | undefined): string {
  const what = format ? `${format} image` : 'image';
  const hint =
    limitMiB === undefined
      ? ''
      : `: it may need more memory than the decoder's limit of ${limitMiB} MiB (DEEPFEAT_DECODE_MEMORY)`;
  return `the decoder crashed on this ${what} (${how}), twice${hint}`;
}
