/**
 * `Idempotency-Key` on POST /v1/runs: a client that retries a submission (a timeout, a dropped
 * connection) with the same key gets the run it already created instead of a second one. The key
 * is remembered in Redis for a day, per token name, with a hash of the request body: the same key
 * with another body is a conflict (409), as is a retry while the first request is still queueing.
 */
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import { ApiError } from './http-errors.js';

const KEY = /^[A-Za-z0-9_.:-]{1,100}$/;
const TTL_SECONDS = 24 * 3600;

export type Reservation = { existing: string } | { commit(runId: string): Promise<void>; release(): Promise<void> };

/**
 * Reserves `key` for this request, or returns the run a previous request with the same key and
 * body created. Throws 400 for a malformed key, 409 for another body or a request in flight.
 */
export async function reserve(
  redis: Redis,
  prefix: string,
  principal: string,
  key: string,
  body: unknown,
): Promise<Reservation> {
  if (!KEY.test(key)) {
    throw new ApiError(400, 'BAD_REQUEST', 'Idempotency-Key must be 1-100 letters, digits, _ . : -');
  }
  const digest = createHash('sha256').update(JSON.stringify(body)).digest('hex');
  const name = `${prefix}:api:idempotency:${createHash('sha256').update(`${principal}\0${key}`).digest('hex')}`;
  const set = await redis.set(name, JSON.stringify({ body: digest, runId: null }), 'EX', TTL_SECONDS, 'NX');
  if (set === null) {
    const seen = JSON.parse((await redis.get(name)) ?? '{}') as { body?: string; runId?: string | null };
    if (seen.body !== digest) {
      throw new ApiError(409, 'CONFLICT', 'this Idempotency-Key was used with another request body: use a new key');
    }
    if (!seen.runId) {
      throw new ApiError(
        409,
        'CONFLICT',
        'a request with this Idempotency-Key is still being queued: retry in a moment',
      );
    }
    return { existing: seen.runId };
  }
  return {
    commit: async (runId) => {
      await redis.set(name, JSON.stringify({ body: digest, runId }), 'EX', TTL_SECONDS);
    },
    release: async () => {
      await redis.del(name);
    },
  };
}
