/**
 * deepfeat's error hierarchy. Every error has a stable `code` (for scripts and for
 * deciding retry behaviour without parsing message text) and keeps its `cause`.
 * Messages name the object at fault and the way out.
 */
export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'BAD_REQUEST'
  | 'DATASET_INVALID'
  | 'NOT_FOUND'
  | 'STORAGE_PERMANENT'
  | 'STORAGE_TRANSIENT'
  | 'IMAGE_INVALID'
  | 'MODEL_INVALID'
  | 'INTERNAL';

export class DeepfeatError extends Error {
  readonly code: ErrorCode;
  /** Permanent errors fail a job at once (BullMQ UnrecoverableError); others are retried. */
  readonly permanent: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; permanent?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.permanent = options.permanent ?? true;
  }
}

/** One or more configuration values are missing or invalid; lists every problem at once. */
export class ConfigError extends DeepfeatError {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super('CONFIG_INVALID', `invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.problems = problems;
  }
}

/** The request (CLI arguments, job payload) is malformed. */
export class BadRequestError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('BAD_REQUEST', message, options);
  }
}

/** The dataset cannot be trained on as it is (one class, class missing from test, bad manifest). */
export class DatasetError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('DATASET_INVALID', message, options);
  }
}

/** A run, model or object the user named does not exist. */
export class NotFoundError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('NOT_FOUND', message, options);
  }
}

/** Object storage failed. `permanent` distinguishes "no such bucket" from "connection refused". */
export class StorageError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown; permanent: boolean }) {
    super(options.permanent ? 'STORAGE_PERMANENT' : 'STORAGE_TRANSIENT', message, options);
  }
}

/** One image cannot be used; recorded per image with this reason, the run goes on. */
export class ImageError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('IMAGE_INVALID', message, options);
  }
}

/** A backbone model cannot be loaded or does not have the node asked for. */
export class ModelError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super('MODEL_INVALID', message, options);
  }
}

/** Short text of any thrown value, for logs and status. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
