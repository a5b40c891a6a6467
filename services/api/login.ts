/**
 * Browser sign-in for the pages people open (run reports, bull-board): a browser cannot add an
 * `Authorization` header to a link, so GET /login shows a form that takes a token and POST /login
 * keeps it in a cookie — HttpOnly (no script reads it), SameSite=Strict (no other site's page
 * sends it), Secure behind HTTPS. The same token rules apply as for the header. A request
 * authenticated by the cookie alone may change something only when the browser says it comes
 * from this origin (Sec-Fetch-Site / Origin), so no other page can make a signed-in browser
 * queue a run or empty a queue.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { authenticate, type TokenEntry } from './auth.js';

export const COOKIE = 'deepfeat_token';
const MAX_AGE_SECONDS = 12 * 3600;
const PAGE_CSP =
  "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/** The token in the request's deepfeat cookie, or undefined. */
export function cookieToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === COOKIE) {
      const v = part.slice(eq + 1).trim();
      try {
        return v === '' ? undefined : decodeURIComponent(v);
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

/**
 * Whether a request the cookie authenticated may change something: safe methods always; others
 * only from this origin, as the browser reports it (a browser always sends one of the two
 * headers with a cross-site write).
 */
export function cookieMayWrite(req: FastifyRequest): boolean {
  if (req.method === 'GET' || req.method === 'HEAD' || req.method === 'OPTIONS') return true;
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string') return site === 'same-origin';
  const origin = req.headers.origin;
  const host = req.headers.host;
  if (typeof origin !== 'string' || typeof host !== 'string') return false;
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

/**
 * Whether a browser says the request comes from another site's page (Sec-Fetch-Site, else
 * Origin). Programs (curl, SDKs) send neither and are not affected. With no token configured
 * (loopback only) this keeps other sites' pages in a local browser from using the open API.
 */
export function crossSite(req: FastifyRequest): boolean {
  const site = req.headers['sec-fetch-site'];
  if (typeof site === 'string') return site !== 'same-origin' && site !== 'none';
  const origin = req.headers.origin;
  if (typeof origin !== 'string') return false;
  try {
    return new URL(origin).host !== req.headers.host;
  } catch {
    return true;
  }
}

/** Where to go after signing in: a path on this server only (no `//host`, no scheme). */
function safeNext(next: unknown): string {
  return typeof next === 'string' && /^\/(?![/\\])[\x21-\x7e]{0,500}$/.test(next) ? next : '/reports';
}

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(next: string, message = ''): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>deepfeat: sign in</title>
<style>body{font:16px system-ui,sans-serif;max-width:28rem;margin:4rem auto}input{width:100%;padding:.4rem;margin:.4rem 0}p.e{color:#b00}</style></head>
<body><h1>deepfeat</h1>${message ? `<p class="e">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/login"><label>API token <input type="password" name="token" autocomplete="current-password" required></label>
<input type="hidden" name="next" value="${escapeHtml(next)}"><button type="submit">Sign in</button></form></body></html>`;
}

/** GET /login, POST /login, POST /logout: no token needed to reach them, only to pass them. */
export function registerLogin(app: FastifyInstance, tokens: readonly TokenEntry[]): void {
  app.register(async (scope) => {
    // The form's encoding, for these routes only.
    scope.addContentTypeParser(
      'application/x-www-form-urlencoded',
      { parseAs: 'string', bodyLimit: 2048 },
      (_req, body, done) => done(null, Object.fromEntries(new URLSearchParams(body as string))),
    );
    const html = (status: number, body: string) => ({ status, body });
    const send = (reply: import('fastify').FastifyReply, r: { status: number; body: string }) =>
      reply
        .code(r.status)
        .type('text/html; charset=utf-8')
        .header('content-security-policy', PAGE_CSP)
        .header('cache-control', 'no-store')
        .send(r.body);
    scope.get<{ Querystring: { next?: string } }>('/login', { config: { access: 'none' } }, async (req, reply) =>
      send(reply, html(200, page(safeNext(req.query.next)))),
    );
    scope.post<{ Body: { token?: string; next?: string } }>(
      '/login',
      { config: { access: 'none' } },
      async (req, reply) => {
        const next = safeNext(req.body?.next);
        if (!cookieMayWrite(req)) return send(reply, html(403, page(next, 'Sign in from this server’s own page.')));
        const token = typeof req.body?.token === 'string' ? req.body.token.trim() : '';
        if (!/^[\x21-\x7e]{1,512}$/.test(token) || !authenticate(tokens, token)) {
          return send(reply, html(401, page(next, 'That token is not valid.')));
        }
        const secure = req.protocol === 'https' || req.headers['x-forwarded-proto'] === 'https';
        reply.header(
          'set-cookie',
          `${COOKIE}=${encodeURIComponent(token)}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${MAX_AGE_SECONDS}${secure ? '; Secure' : ''}`,
        );
        return reply.code(303).header('location', next).send();
      },
    );
    scope.post('/logout', { config: { access: 'none' } }, async (_req, reply) =>
      reply
        .code(303)
        .header('set-cookie', `${COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`)
        .header('location', '/login')
        .send(),
    );
  });
}
