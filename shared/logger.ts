import { pino, stdSerializers, type Logger } from 'pino';

export type { Logger };

/**
 * JSON-lines logger for services; one child per service and per job. Level from LOG_LEVEL via
 * config. Log errors as `log.error({ err }, 'what failed')`, never as a string: pino's error
 * serializer (named here so it does not depend on a default) keeps the type, the stack, the
 * cause chain and fields such as `code` and `permanent`.
 */
export function createLogger(service: string, level = 'info'): Logger {
  return pino({ level, base: { service, pid: process.pid }, serializers: { err: stdSerializers.err } });
}
