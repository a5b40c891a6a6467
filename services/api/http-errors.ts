/**
 * Errors as the API answers them: JSON `{code, message}` with an HTTP status. deepfeat's own
 * errors keep their code (the same one `deepfeat` prints and a run records) and get the status
 * from one table; the API's own refusals (auth, limits, media type) are `ApiError`s.
 */
import { DeepfeatError, type ErrorCode } from '../../shared/errors.js';
import { capText, MAX_MESSAGE_CHARS } from '../../shared/text.js';

/** Codes only the API gives (beside shared/errors.ts's ERROR_CODES). */
export const API_ERROR_CODES = [
  'UNAUTHORIZED',
  'FORBIDDEN',
  'NOT_FOUND',
  'BAD_REQUEST',
  'CONFLICT',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'UNPROCESSABLE',
  'NOT_READY',
  'TIMEOUT',
  'TOO_MANY_STREAMS',
] as const;
export type ApiErrorCode = (typeof API_ERROR_CODES)[number];

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode | ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/**
 * Every deepfeat error code's status; a new code without one is a type error. A request's own
 * problems are 4xx (a body that parses but asks for something impossible is 422); storage and
 * internal faults are 5xx, 503 where trying again may help.
 */
const STATUS_OF = {
  CONFIG_INVALID: 500,
  BAD_REQUEST: 400,
  DATASET_INVALID: 422,
  NOT_FOUND: 404,
  // The bucket or access a request names (a run's source) is the request's problem.
  BUCKET_NOT_FOUND: 422,
  ACCESS_DENIED: 422,
  MODEL_INVALID: 422,
  IMAGE_INVALID: 422,
  STORAGE_PERMANENT: 502,
  STORAGE_TRANSIENT: 503,
  INTERNAL: 500,
} as const satisfies Record<ErrorCode, number>;

export interface ErrorBody {
  code: string;
  message: string;
}

/**
 * Status and body for anything a handler threw. Fastify's own errors (body too large, malformed
 * JSON, unsupported content type, timeouts) carry `statusCode`; their messages are Fastify's,
 * which never hold a header's value. Unknown errors become a generic 500: their text may hold
 * anything, so it goes to the log, not to the client.
 */
export function toHttpError(err: unknown): { status: number; body: ErrorBody } {
  if (err instanceof ApiError) return { status: err.status, body: { code: err.code, message: err.message } };
  if (err instanceof DeepfeatError) {
    return {
      status: STATUS_OF[err.code] ?? 500,
      body: { code: err.code, message: capText(err.message, MAX_MESSAGE_CHARS) },
    };
  }
  const e = err as { statusCode?: number; code?: string; message?: string; validation?: unknown };
  const status = typeof e?.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 600 ? e.statusCode : 500;
  if (status === 500) return { status, body: { code: 'INTERNAL', message: 'internal error (logged on the server)' } };
  const code: ApiErrorCode =
    status === 413
      ? 'PAYLOAD_TOO_LARGE'
      : status === 415
        ? 'UNSUPPORTED_MEDIA_TYPE'
        : status === 408
          ? 'TIMEOUT'
          : status === 404
            ? 'NOT_FOUND'
            : status === 422
              ? 'UNPROCESSABLE'
              : 'BAD_REQUEST';
  return { status, body: { code, message: capText(String(e.message ?? 'bad request'), 500) } };
}
