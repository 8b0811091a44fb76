// The first-edition HTTP calls a client needs before it opens a socket
// (PROTOCOL.md §5): GET /api/config, POST /api/register, POST /api/login; and
// the mapping of a node's http(s) base URL to its ws(s) /ws URL. Uses the
// global `fetch` (browsers, Node.js 18+) unless one is passed in.

import { RelayError } from './errors.js';

/**
 * @typedef {object} HttpOptions
 * @property {typeof fetch} [fetch] a fetch implementation (default: globalThis.fetch)
 * @property {number} [timeoutMs] per request (default 10000)
 * @property {RequestCredentials} [credentials] browsers: 'same-origin' by default, so the login cookie is kept
 */

/**
 * The WebSocket URL of a node: `http://h:p/base` -> `ws://h:p/base/ws`;
 * a ws:// or wss:// URL is returned as it is.
 * @param {string} base
 * @returns {string}
 */
export function wsUrlOf(base) {
  const u = new URL(base);
  if (u.protocol === 'ws:' || u.protocol === 'wss:') return u.toString();
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TypeError(`not an http(s) or ws(s) URL: ${base}`);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  if (!u.pathname.endsWith('/ws')) u.pathname = `${u.pathname.replace(/\/$/, '')}/ws`;
  u.search = '';
  u.hash = '';
  return u.toString();
}

/**
 * The http(s) base of a node from its http(s) or ws(s) URL (the /ws path removed).
 * @param {string} url
 * @returns {string}
 */
export function httpBaseOf(url) {
  const u = new URL(url);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  if (u.protocol === 'wss:') u.protocol = 'https:';
  u.pathname = u.pathname.replace(/\/ws$/, '/');
  u.search = '';
  u.hash = '';
  return u.toString();
}

/**
 * @param {string} base
 * @param {string} path
 * @param {RequestInit} init
 * @param {HttpOptions} [opts]
 * @returns {Promise<{status: number, body: any}>}
 */
async function call(base, path, init, opts = {}) {
  const f = opts.fetch || globalThis.fetch;
  if (typeof f !== 'function') throw new RelayError('internal', 'no fetch implementation available');
  const url = new URL(path, httpBaseOf(base).replace(/\/?$/, '/')).toString();
  const ctl = typeof AbortController === 'function' ? new AbortController() : null;
  const timer = ctl ? setTimeout(() => ctl.abort(), opts.timeoutMs || 10000) : null;
  try {
    const res = await f(url, {
      ...init,
      credentials: opts.credentials || 'same-origin',
      signal: ctl ? ctl.signal : undefined,
    });
    let body = null;
    try { body = await res.json(); } catch { /* empty or not JSON */ }
    return { status: res.status, body };
  } catch (e) {
    if (e instanceof RelayError) throw e;
    throw new RelayError(ctl && ctl.signal.aborted ? 'timeout' : 'network', String((e && /** @type {any} */ (e).message) || e));
  } finally {
    if (timer) clearTimeout(timer);
  }
}

/** @param {string} base @param {string} path @param {object} body @param {HttpOptions} [opts] */
function postJson(base, path, body, opts) {
  return call(base, path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify(body),
  }, opts);
}

/** @param {number} status @param {any} body @param {string} what */
function fail(status, body, what) {
  const code = body && typeof body.error === 'string' ? body.error : `http_${status}`;
  const message = body && typeof body.message === 'string' ? body.message : `${what} failed (HTTP ${status})`;
  return new RelayError(code, message, { status });
}

/**
 * GET /api/config: the node's public settings (auth mode, node id, limits).
 * @param {string} base
 * @param {HttpOptions} [opts]
 * @returns {Promise<Record<string, any>>}
 */
export async function getConfig(base, opts) {
  const r = await call(base, 'api/config', { method: 'GET', headers: { Accept: 'application/json' }, cache: 'no-store' }, opts);
  if (r.status !== 200 || !r.body || typeof r.body !== 'object') throw fail(r.status, r.body, 'config');
  return r.body;
}

/**
 * POST /api/register (token mode). Resolves on 201; rejects with a RelayError
 * whose `code` is the server's (`name_taken`, `invalid`, ...).
 * @param {string} base
 * @param {string} username
 * @param {string} password
 * @param {HttpOptions} [opts]
 * @returns {Promise<void>}
 */
export async function register(base, username, password, opts) {
  const r = await postJson(base, 'api/register', { username, password }, opts);
  if (r.status !== 201 && r.status !== 200) throw fail(r.status, r.body, 'register');
}

/**
 * POST /api/login (token mode). `expires_at` is normalised to Unix milliseconds.
 * Rejects with code `unauthorized` on a wrong user name or password.
 * @param {string} base
 * @param {string} username
 * @param {string} password
 * @param {HttpOptions} [opts]
 * @returns {Promise<{token: string, expires_at: number | null}>}
 */
export async function login(base, username, password, opts) {
  const r = await postJson(base, 'api/login', { username, password }, opts);
  if (r.status !== 200 || !r.body || typeof r.body.token !== 'string') {
    throw fail(r.status, r.body, 'login');
  }
  return { token: r.body.token, expires_at: expiryMs(r.body.expires_at) };
}

/**
 * An expiry as Unix milliseconds, from seconds, milliseconds or an ISO date.
 * @param {unknown} v
 * @returns {number | null}
 */
export function expiryMs(v) {
  if (v == null) return null;
  const n = typeof v === 'number' ? v : Number(v);
  if (Number.isFinite(n)) return n < 1e12 ? n * 1000 : n;
  const t = Date.parse(String(v));
  return Number.isFinite(t) ? t : null;
}

/**
 * Asks a node with a plain GET of the WebSocket URL why a handshake failed
 * (browsers hide the HTTP status of a refused upgrade). The server answers a
 * GET with the same origin / token verdicts; a 400 only says "reachable".
 * @param {string} url the ws(s) URL with its query
 * @param {HttpOptions} [opts]
 * @returns {Promise<{status: number, code: string | null, message: string | null}>}
 */
export async function diagnoseHandshake(url, opts = {}) {
  const f = opts.fetch || globalThis.fetch;
  if (typeof f !== 'function') return { status: 0, code: null, message: null };
  try {
    const u = new URL(url);
    u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
    const res = await f(u.toString(), { cache: 'no-store', credentials: opts.credentials || 'same-origin' });
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    return {
      status: res.status,
      code: body && typeof body.error === 'string' ? body.error : null,
      message: body && typeof body.message === 'string' ? body.message : null,
    };
  } catch {
    return { status: 0, code: null, message: null };
  }
}
