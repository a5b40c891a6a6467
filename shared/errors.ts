/**
 * deepfeat's error hierarchy. Every error has a stable `code` (for scripts and for
 * deciding retry behaviour without parsing message text) and keeps its `cause`.
 * Messages name the object at fault and the way out.
 */
import { MAX_MESSAGE_CHARS, capText } from './text.js';

export const ERROR_CODES = [
  'CONFIG_INVALID',
  'BAD_REQUEST',
  'DATASET_INVALID',
  'NOT_FOUND',
  /** The bucket a run or the configuration names does not exist (a bad request, never retried). */
  'BUCKET_NOT_FOUND',
  /** Storage refused our credentials or the bucket policy refused access (never retried). */
  'ACCESS_DENIED',
  'STORAGE_PERMANENT',
  'STORAGE_TRANSIENT',
  'IMAGE_INVALID',
  'MODEL_INVALID',
  'INTERNAL',
] as const;
/** Longest message any deepfeat error carries (a configuration error lists several problems). */
const MAX_ERROR_CHARS = 4 * MAX_MESSAGE_CHARS;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class DeepfeatError extends Error {
  readonly code: ErrorCode;
  /** Permanent errors fail a job at once (BullMQ UnrecoverableError); others are retried. */
  readonly permanent: boolean;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; permanent?: boolean } = {}) {
    // Messages quote user data (keys, node names from a model.json, manifest lines); whatever a
    // builder forgot to cap is capped here, before the message reaches logs, Redis or a terminal.
    super(capText(message, MAX_ERROR_CHARS), options.cause === undefined ? undefined : { cause: options.cause });
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

/** Codes a StorageError may carry besides the generic permanent/transient pair. */
export type StorageErrorCode = 'BUCKET_NOT_FOUND' | 'ACCESS_DENIED' | 'STORAGE_PERMANENT' | 'STORAGE_TRANSIENT';

/**
 * Object storage failed. `permanent` distinguishes "no such bucket" from "connection refused";
 * `code` names the two permanent cases a user fixes (a missing bucket, refused access), so the
 * CLI can tell a bad request from a fault without reading the message.
 */
export class StorageError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown; permanent: boolean; code?: StorageErrorCode }) {
    super(options.code ?? (options.permanent ? 'STORAGE_PERMANENT' : 'STORAGE_TRANSIENT'), message, options);
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

/**
 * A broken invariant inside deepfeat (a bug, not the user's input): users see "internal error",
 * never "bad request". Permanent by default, since the same input fails the same way again; a
 * thread that died (crash, out of memory, timeout) is the retryable kind (`permanent: false`).
 */
export class InternalError extends DeepfeatError {
  constructor(message: string, options: { cause?: unknown; permanent?: boolean } = {}) {
    super('INTERNAL', message, options);
  }
}

/** An error as plain data, to cross a thread boundary (structured clone drops classes and fields). */
export interface WireError {
  name: string;
  message: string;
  code?: ErrorCode;
  permanent?: boolean;
  stack?: string;
  cause?: WireError;
}

/** `err` as plain data, its cause chain kept a few levels deep (for logs on the other side). */
export function toWireError(err: unknown, depth = 0): WireError {
  const e = err instanceof Error ? err : undefined;
  const wire: WireError = { name: e?.name ?? 'Error', message: errorMessage(err) };
  if (err instanceof DeepfeatError) Object.assign(wire, { code: err.code, permanent: err.permanent });
  if (e?.stack !== undefined) wire.stack = e.stack;
  if (e?.cause !== undefined && depth < 3) wire.cause = toWireError(e.cause, depth + 1);
  return wire;
}

/**
 * The error class `toWireError` started from, rebuilt on this side of the boundary, so retry
 * decisions (`permanent`), exit codes (`code`) and `instanceof` checks stay right. An error
 * without a code (a plain Error, a TypeError) comes back as a plain Error with its name.
 */
export function fromWireError(w: WireError): Error {
  const options = w.cause === undefined ? {} : { cause: fromWireError(w.cause) };
  let err: Error;
  switch (w.code) {
    case undefined:
      err = Object.assign(new Error(w.message, options), { name: w.name });
      break;
    case 'BAD_REQUEST':
      err = new BadRequestError(w.message, options);
      break;
    case 'DATASET_INVALID':
      err = new DatasetError(w.message, options);
      break;
    case 'NOT_FOUND':
      err = new NotFoundError(w.message, options);
      break;
    case 'IMAGE_INVALID':
      err = new ImageError(w.message, options);
      break;
    case 'MODEL_INVALID':
      err = new ModelError(w.message, options);
      break;
    case 'INTERNAL':
      err = new InternalError(w.message, { ...options, permanent: w.permanent });
      break;
    case 'BUCKET_NOT_FOUND':
    case 'ACCESS_DENIED':
    case 'STORAGE_PERMANENT':
    case 'STORAGE_TRANSIENT':
      err = new StorageError(w.message, {
        ...options,
        permanent: w.permanent ?? w.code !== 'STORAGE_TRANSIENT',
        code: w.code,
      });
      break;
    default:
      err = new DeepfeatError(w.code, w.message, { ...options, permanent: w.permanent });
  }
  // The stack of the thread where it was thrown says more than that of the message handler.
  if (w.stack !== undefined) err.stack = w.stack;
  return err;
}

/** Short text of any thrown value, for logs and status. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
