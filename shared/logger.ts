import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON-lines logger for services; one child per service and per job. Level from LOG_LEVEL via config. */
export function createLogger(service: string, level = 'info'): Logger {
  return pino({ level, base: { service, pid: process.pid } });
}
