/**
 * Bearer tokens of `deepfeat serve`: read from configuration, each with a name and a role, and
 * checked in constant time. A token's text never appears in a message, a log line or an error:
 * entries are named by their name and position only.
 *
 * Format (DEEPFEAT_API_TOKENS, and DEEPFEAT_API_TOKENS_FILE with one entry per line or the same
 * comma-separated list; `#` starts a comment line in the file):
 *
 *   NAME:ROLE:TOKEN[,NAME:ROLE:TOKEN...]     e.g. ci:admin:6f1c…,grafana:read:91ab…
 *
 * NAME is 1-64 letters, digits, `.` `_` `-`; ROLE is `read` or `admin`; TOKEN is 16-512 visible
 * ASCII characters without `,` and whitespace (e.g. `openssl rand -hex 32`).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { ConfigError } from '../../shared/errors.js';
import { quote } from '../../shared/text.js';

/** `read`: every GET (runs, models, files, events, metrics, reports) and predict; `admin`: also writes and bull-board. */
export const ROLES = ['read', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** What a route needs: nothing (health checks), a read token, or an admin token. */
export type Access = 'none' | Role;

export interface TokenEntry {
  readonly name: string;
  readonly role: Role;
  /** sha256 of the token: the token itself is not kept. */
  readonly hash: Buffer;
}

export interface Principal {
  readonly name: string;
  readonly role: Role;
}

const NAME = /^[A-Za-z0-9._-]{1,64}$/;
const TOKEN = /^[\x21-\x2b\x2d-\x7e]{16,512}$/;

const sha256 = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * Token entries from the two configuration forms, every problem reported at once (without the
 * tokens' text). `readFile` is injectable for tests.
 */
export function loadTokens(
  env: Readonly<Record<string, string | undefined>>,
  readFile: (path: string) => string = (p) => readFileSync(p, 'utf8'),
): TokenEntry[] {
  const problems: string[] = [];
  const sources: Array<{ where: string; text: string }> = [];
  if (env.DEEPFEAT_API_TOKENS?.trim()) sources.push({ where: 'DEEPFEAT_API_TOKENS', text: env.DEEPFEAT_API_TOKENS });
  const file = env.DEEPFEAT_API_TOKENS_FILE?.trim();
  if (file) {
    try {
      sources.push({ where: `DEEPFEAT_API_TOKENS_FILE ${quote(file)}`, text: readFile(file) });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'unreadable';
      problems.push(`DEEPFEAT_API_TOKENS_FILE ${quote(file)} cannot be read (${code})`);
    }
  }
  const entries: TokenEntry[] = [];
  const names = new Set<string>();
  const hashes = new Set<string>();
  for (const { where, text } of sources) {
    const items = text
      .split(/\r?\n/)
      .filter((l) => !l.trimStart().startsWith('#'))
      .flatMap((l) => l.split(','))
      .map((s) => s.trim())
      .filter((s) => s !== '');
    items.forEach((item, i) => {
      const at = `${where} entry ${i + 1}`;
      const first = item.indexOf(':');
      const second = first < 0 ? -1 : item.indexOf(':', first + 1);
      if (second < 0) {
        problems.push(`${at}: expected NAME:ROLE:TOKEN`);
        return;
      }
      const name = item.slice(0, first);
      const role = item.slice(first + 1, second);
      const token = item.slice(second + 1);
      const named = NAME.test(name) ? `${at} (${name})` : at;
      if (!NAME.test(name)) problems.push(`${at}: NAME must be 1-64 letters, digits, . _ -`);
      if (!(ROLES as readonly string[]).includes(role)) problems.push(`${named}: ROLE must be read or admin`);
      // The token's text is never quoted, only what is wrong with it.
      if (!TOKEN.test(token)) {
        problems.push(
          `${named}: TOKEN must be 16 to 512 visible ASCII characters without commas (e.g. openssl rand -hex 32)`,
        );
      }
      if (NAME.test(name) && names.has(name)) problems.push(`${named}: the name is used twice`);
      const hash = sha256(token);
      if (hashes.has(hash.toString('hex'))) problems.push(`${named}: the same token is given twice`);
      names.add(name);
      hashes.add(hash.toString('hex'));
      entries.push({ name, role: role as Role, hash });
    });
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return entries;
}

/**
 * The entry a presented token belongs to, or undefined. Every entry is compared, each with
 * timingSafeEqual on sha256 digests (equal lengths whatever was sent), so neither the time taken
 * nor an early exit tells how much of a token was right or which entry matched.
 */
export function authenticate(entries: readonly TokenEntry[], presented: string): Principal | undefined {
  const hash = sha256(presented);
  let found: TokenEntry | undefined;
  for (const e of entries) {
    if (timingSafeEqual(e.hash, hash) && found === undefined) found = e;
  }
  return found && { name: found.name, role: found.role };
}

/** The token in an `Authorization: Bearer …` header, or undefined (absent or another scheme). */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const m = /^Bearer[ ]+(\S+)[ ]*$/i.exec(header);
  return m?.[1];
}

/** Whether `role` may use a route that needs `access`. */
export function allows(role: Role, access: Access): boolean {
  return access === 'none' || access === 'read' || role === 'admin';
}

/** A loopback address or name: 127.0.0.0/8, ::1, ::ffff:127.x, localhost. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (h === '::1') return true;
  return h.startsWith('::ffff:127.');
}

/**
 * With no token configured every route is open, so the server may listen only on loopback;
 * anything else is refused before it binds, with the way out.
 */
export function assertBindAllowed(host: string, entries: readonly TokenEntry[]): void {
  if (entries.length > 0 || isLoopback(host)) return;
  throw new ConfigError([
    `refusing to listen on ${quote(host, 100)} with no API token configured (every route would be open): ` +
      'set DEEPFEAT_API_TOKENS or DEEPFEAT_API_TOKENS_FILE (NAME:ROLE:TOKEN, e.g. ops:admin:$(openssl rand -hex 32)), ' +
      'or listen on 127.0.0.1',
  ]);
}
