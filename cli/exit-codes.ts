/**
 * The CLI's exit codes, decided in one place from an error's code: the same table for an error
 * the CLI itself hits (a malformed URL, no such model) and for a run that failed in a worker
 * (`run --wait`, `status`), whose error code the worker recorded.
 *
 * 2: the user must change something — the request, the configuration, the dataset, the model or
 *    node, the bucket name, or the credentials/bucket policy (access refused is not retried by
 *    the pipeline either: running the same command again gives the same answer).
 * 1: a fault, where running the same command again may succeed (storage down, a worker crashed,
 *    a thread timed out) or a bug (INTERNAL).
 */
import { DeepfeatError, type ErrorCode } from '../shared/errors.js';
import type { RunStatus } from '../shared/run-state.js';

export const EXIT_OK = 0;
export const EXIT_FAULT = 1;
export const EXIT_BAD_INPUT = 2;

/** Every error code has its exit code; a new code without one is a type error. */
const EXIT_CODE_OF = {
  CONFIG_INVALID: EXIT_BAD_INPUT,
  BAD_REQUEST: EXIT_BAD_INPUT,
  DATASET_INVALID: EXIT_BAD_INPUT,
  NOT_FOUND: EXIT_BAD_INPUT,
  BUCKET_NOT_FOUND: EXIT_BAD_INPUT,
  ACCESS_DENIED: EXIT_BAD_INPUT,
  MODEL_INVALID: EXIT_BAD_INPUT,
  IMAGE_INVALID: EXIT_BAD_INPUT,
  STORAGE_PERMANENT: EXIT_FAULT,
  STORAGE_TRANSIENT: EXIT_FAULT,
  INTERNAL: EXIT_FAULT,
} as const satisfies Record<ErrorCode, number>;

/** Exit code for an error code as recorded in a run (a string from Redis or run.json); unknown ones are faults. */
export function exitCodeForCode(code: string | undefined): number {
  return code !== undefined && Object.hasOwn(EXIT_CODE_OF, code) ? EXIT_CODE_OF[code as ErrorCode] : EXIT_FAULT;
}

/** Exit code for an error thrown in the CLI. */
export function exitCodeForError(err: unknown): number {
  return err instanceof DeepfeatError ? exitCodeForCode(err.code) : EXIT_FAULT;
}

/** Exit code once the CLI has a run's status: 0 unless it failed. */
export function exitCodeForRun(s: Pick<RunStatus, 'stage' | 'error'>): number {
  return s.stage === 'failed' ? exitCodeForCode(s.error?.code) : EXIT_OK;
}
