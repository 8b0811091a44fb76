// RelayClient: one logical connection to a relay cluster (PROTOCOL.md), kept
// alive across reconnects. It owns the WebSocket, the reconnect loop
// (exponential backoff with full jitter, close-code policy), request/reply
// correlation by `ref`, per-room recovery (`since`/`epoch`, exactly-once
// in-order delivery, gap signals), and the outbox of sends that survive a
// reconnect (same `client_id`). No DOM: it runs in browsers and in Node.js
// (with the `ws` package, injected or imported on demand).

import { Emitter } from './emitter.js';
import { RelayError } from './errors.js';
import { backoffDelay, closePolicy } from './backoff.js';
import { loadCodec } from './codec.js';
import { wsUrlOf, diagnoseHandshake } from './http.js';
import { Typist } from './typing.js';

const OPEN = 1;

const DEFAULTS = {
  format: /** @type {'json' | 'msgpack'} */ ('json'),
  tokenIn: /** @type {'query' | 'header'} */ ('query'),
  backoffBaseMs: 500,
  backoffMaxMs: 15000,
  reconnectJitterMs: 500,
  stableMs: 5000,
  connectTimeoutMs: 10000,
  requestTimeoutMs: 10000,
  ackTimeoutMs: 8000,
  sendTimeoutMs: 0,
  maxSendRetries: 5,
  reorderMs: 500,
  diagnose: true,
  autoConnect: false,
};

let cidSeq = 0;
/** A random idempotency key (UUID when the platform has one). */
export function newClientId() {
  const c = /** @type {any} */ (globalThis).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  cidSeq += 1;
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${cidSeq}`;
}

/**
 * Per-room recovery state.
 * @typedef {object} RoomState
 * @property {string} name
 * @property {string | null} epoch epoch last seen (null: never joined)
 * @property {number | null} lastId highest id delivered in order (null: unknown yet)
 * @property {boolean} joined joined on the current connection
 * @property {boolean} everJoined
 * @property {Set<string>} presence
 * @property {Map<number, any>} buffer messages waiting for a hole to fill
 * @property {Set<number>} own ids acked to this client above lastId
 * @property {number} hold outbox resends whose ack must come before history is released
 * @property {ReturnType<typeof setTimeout> | null} holdTimer
 * @property {ReturnType<typeof setTimeout> | null} gapTimer
 * @property {Array<{resolve: Function, reject: Function}>} waiters
 * @property {boolean} plainRetry the server refused since/epoch: join without them once
 */

/** @param {string} name @param {{since?: number, epoch?: string}} [from] @returns {RoomState} */
function newRoom(name, from = {}) {
  return {
    name,
    epoch: from.epoch != null ? String(from.epoch) : null,
    lastId: from.since != null ? Number(from.since) : null,
    joined: false,
    everJoined: false,
    presence: new Set(),
    buffer: new Map(),
    own: new Set(),
    hold: 0,
    holdTimer: null,
    gapTimer: null,
    waiters: [],
    plainRetry: false,
  };
}

export class RelayClient extends Emitter {
  /**
   * @param {import('../index').RelayClientOptions} options
   */
  constructor(options) {
    super();
    if (!options || !options.url) throw new TypeError('RelayClient: options.url is required');
    this.options = { ...DEFAULTS, ...options };
    /** The ws(s) URL of /ws. */
    this.url = wsUrlOf(options.url);
    /** @type {import('../index').ConnectionState} */
    this.state = 'idle';
    /** Guest name, or the user the server named in `welcome`. */
    this.user = options.user || null;
    /** @type {string | null} */
    this.token = typeof options.token === 'string' ? options.token : null;
    /** @type {string | null} guest resume token (welcome.resume) */
    this.resume = options.resume || null;
    /** @type {string | null} */ this.node = null;
    /** @type {string | null} */ this.session = null;
    /** @type {any} the last welcome frame */ this.welcome = null;
    this.heartbeatMs = 25000;
    /** Reconnects since the first welcome. */
    this.reconnects = 0;
    /** When the next connection attempt starts (ms since epoch), while reconnecting. */
    this.retryAt = 0;
    /** @type {Map<string, RoomState>} */
    this.rooms = new Map();

    this._ws = /** @type {any} */ (null);
    this._gen = 0;
    this._stopped = true;
    this._welcomed = false;
    this._welcomedAt = 0;
    this._everConnected = false;
    this._attempt = 0;
    this._refSeq = 0;
    /** @type {Map<number, {type: string, resolve: Function, reject: Function, timer: any, room?: string, item?: any, keep?: boolean}>} */
    this._pending = new Map();
    /** @type {any[]} */
    this._outbox = [];
    this._outboxPausedUntil = 0;
    this._pauseTimer = /** @type {any} */ (null);
    this._retryTimer = /** @type {any} */ (null);
    this._connectTimer = /** @type {any} */ (null);
    this._hbTimer = /** @type {any} */ (null);
    this._lastRx = 0;
    this._pingSentAt = 0;
    /** @type {Set<Typist>} */
    this._typists = new Set();
    /** @type {Map<number, {command: string, room?: string, at: number}>} refs of commands without a reply */
    this._quiet = new Map();
    /** @type {Promise<import('./codec.js').Codec> | null} */
    this._codec = null;
    /** @type {Array<{resolve: Function, reject: Function}>} */
    this._openWaiters = [];
    if (this.options.autoConnect) this.connect().catch(() => {});
  }

  // ------------------------------------------------------------ lifecycle

  /**
   * Starts connecting (and keeps reconnecting until `close()`). Resolves with
   * the first `welcome`; rejects when the client stops before one (refused
   * handshake, 1008, 4001 without a token callback, `close()`).
   * @returns {Promise<any>}
   */
  connect() {
    if (this.state === 'open' && this.welcome) return Promise.resolve(this.welcome);
    const p = new Promise((resolve, reject) => this._openWaiters.push({ resolve, reject }));
    if (this._stopped) {
      this._stopped = false;
      this._attempt = 0;
      this._open();
    }
    return p;
  }

  /**
   * Connects again at once: after a stop (1008, refused), or to cut a
   * reconnect wait short (the network came back).
   */
  reconnect() {
    if (this.state === 'closed' && this._stopped && this._closedByUser) this._closedByUser = false;
    if (this._stopped) {
      this._stopped = false;
      this._attempt = 0;
      this._open();
      return;
    }
    if (this._retryTimer) this._open();
  }

  /**
   * Closes the connection for good: no reconnect; pending requests and
   * unsent messages are rejected with code `closed`.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = 1000, reason = 'bye') {
    this._stopped = true;
    this._closedByUser = true;
    clearTimeout(this._retryTimer); this._retryTimer = null;
    clearTimeout(this._pauseTimer); this._pauseTimer = null;
    for (const t of this._typists) t.reset();
    this._dropSocket(code, reason);
    this._failRequests('closed', 'the client was closed');
    for (const item of this._outbox.splice(0)) this._settle(item, new RelayError('closed', 'the client was closed'));
    for (const r of this.rooms.values()) this._clearRoomTimers(r);
    this._rejectOpenWaiters(new RelayError('closed', 'the client was closed'));
    this._setState('closed');
  }

  // ------------------------------------------------------------ rooms

  /**
   * Joins a room and keeps it joined across reconnects. `since`/`epoch`
   * resume from a position the application kept (e.g. across a page load).
   * Resolves with the `joined` event (see 'joined').
   * @param {string} room
   * @param {{since?: number, epoch?: string}} [from]
   * @returns {Promise<any>}
   */
  join(room, from) {
    let r = this.rooms.get(room);
    if (!r) { r = newRoom(room, from); this.rooms.set(room, r); }
    const p = new Promise((resolve, reject) => /** @type {RoomState} */ (r).waiters.push({ resolve, reject }));
    if (this._isOpen() && !this._joinInFlight(room)) this._sendJoin(r);
    return p;
  }

  /**
   * Leaves a room (and stops re-joining it). Its unsent messages are rejected
   * with code `left`.
   * @param {string} room
   * @returns {Promise<void>}
   */
  async leave(room) {
    const r = this.rooms.get(room);
    if (!r) return;
    this.rooms.delete(room);
    this._clearRoomTimers(r);
    for (const w of r.waiters.splice(0)) w.reject(new RelayError('left', `left ${room}`));
    for (const item of this._outbox.filter((i) => i.room === room)) this._settle(item, new RelayError('left', `left ${room}`));
    if (this._isOpen()) {
      try { await this._request({ type: 'leave', room }); } catch (e) {
        if (!(e instanceof RelayError) || (e.code !== 'disconnected' && e.code !== 'not_member')) throw e;
      }
    }
  }

  /**
   * The users present in a joined room, as last told by the server.
   * @param {string} room
   * @returns {string[]}
   */
  presence(room) {
    const r = this.rooms.get(room);
    return r ? [...r.presence] : [];
  }

  /**
   * Where a room's recovery stands: the position to give `join(room, from)`
   * after a restart.
   * @param {string} room
   * @returns {{since: number, epoch: string} | null}
   */
  position(room) {
    const r = this.rooms.get(room);
    if (!r || r.epoch == null) return null;
    return { since: r.lastId ?? 0, epoch: r.epoch };
  }

  // ------------------------------------------------------------ sending

  /**
   * Sends a message to a joined room. Resolves with the `ack` (`{id, ts,
   * room}`); a send interrupted by a reconnect is sent again with the same
   * `client_id`, so it is stored and delivered once.
   * @param {string} room
   * @param {string} text
   * @param {{clientId?: string, timeoutMs?: number}} [opts]
   * @returns {Promise<any>}
   */
  send(room, text, opts = {}) {
    if (!this.rooms.has(room)) return Promise.reject(new RelayError('not_member', `join ${room} before sending to it`));
    return this._enqueue({ kind: 'send', room, text, clientId: opts.clientId || newClientId() }, opts.timeoutMs);
  }

  /**
   * Sends a direct message. Resolves with the `ack`. A DM has no idempotency
   * key in the protocol, so one written to a socket that then dropped is
   * rejected with code `disconnected` (it may or may not have arrived)
   * instead of being sent twice; one not yet written waits for the next
   * connection.
   * @param {string} to
   * @param {string} text
   * @param {{timeoutMs?: number}} [opts]
   * @returns {Promise<any>}
   */
  dm(to, text, opts = {}) {
    return this._enqueue({ kind: 'dm', to, text, clientId: newClientId() }, opts.timeoutMs);
  }

  /** Messages accepted by `send`/`dm` and not acked yet, oldest first. */
  get outbox() {
    return this._outbox.map((i) => ({ kind: i.kind, room: i.room, to: i.to, text: i.text, clientId: i.clientId }));
  }

  /**
   * Sends one typing command (no reply). Returns false when not connected.
   * @param {string} room
   * @param {boolean} active
   */
  typing(room, active) {
    const r = this.rooms.get(room);
    if (!this._isOpen() || !r || !r.joined) return false;
    return this._writeQuiet({ type: 'typing', room, active: !!active });
  }

  /**
   * A throttled typing helper for one room's composer: call `input()` on
   * each keystroke and `stop()` on send or blur.
   * @param {string} room
   * @param {import('./typing.js').TypistOptions} [opts]
   * @returns {Typist}
   */
  typist(room, opts) {
    const t = new Typist((active) => this.typing(room, active), opts);
    this._typists.add(t);
    return t;
  }

  // ------------------------------------------------------------ requests

  /**
   * Asks who is in a room (`who`); resolves with the `presence` reply.
   * @param {string} room
   */
  who(room) { return this._request({ type: 'who', room }); }

  /**
   * A page of a room's history: the newest `limit` messages with id <
   * `before` (or the newest), oldest first. Resolves with `{room, messages,
   * has_more?}` (`has_more` when the server has a durable store).
   * @param {string} room
   * @param {{before?: number, limit?: number}} [opts]
   */
  history(room, opts = {}) {
    /** @type {any} */ const f = { type: 'history', room };
    if (opts.before != null) f.before = opts.before;
    if (opts.limit != null) f.limit = opts.limit;
    return this._request(f);
  }

  /**
   * A page of the direct conversation with `peer` (servers with a durable
   * store, PROTOCOL.md §7): `{with, messages, has_more}`.
   * @param {string} peer
   * @param {{before?: number, limit?: number}} [opts]
   */
  dmHistory(peer, opts = {}) {
    /** @type {any} */ const f = { type: 'dm_history', with: peer };
    if (opts.before != null) f.before = opts.before;
    if (opts.limit != null) f.limit = opts.limit;
    return this._request(f);
  }

  /**
   * Pages back through a room's history from `before` (exclusive) until
   * `pages` pages were read or nothing older is left; yields each page's
   * messages, newest page first (each page oldest first).
   * @param {string} room
   * @param {{before?: number, limit?: number, pages?: number}} [opts]
   * @returns {AsyncGenerator<any[]>}
   */
  async *historyPages(room, opts = {}) {
    let before = opts.before;
    const limit = opts.limit ?? 50;
    for (let i = 0; i < (opts.pages ?? Infinity); i++) {
      const page = await this.history(room, { before, limit });
      const msgs = Array.isArray(page.messages) ? page.messages : [];
      if (msgs.length === 0) return;
      yield msgs;
      const oldest = Number(msgs[0].id);
      if (page.has_more === false || !(oldest > 1) || (page.has_more == null && msgs.length < limit)) return;
      before = oldest;
    }
  }

  /** Round trip to the server (`ping` → `pong`). */
  ping() { return this._request({ type: 'ping' }); }

  /**
   * Sends any command and resolves with the reply that carries its `ref`
   * (rejects with a RelayError on an `error` reply, a timeout, or a
   * disconnect). For the second-edition commands (create, invite, kick, ban,
   * mute, promote, delete, edit, members, ...).
   * @param {string} type
   * @param {Record<string, any>} [fields]
   * @param {{timeoutMs?: number}} [opts]
   */
  request(type, fields = {}, opts = {}) { return this._request({ ...fields, type }, opts.timeoutMs); }

  /**
   * Sends a command that has no reply (e.g. `read`). False when not connected.
   * @param {string} type
   * @param {Record<string, any>} [fields]
   */
  notify(type, fields = {}) { return this._isOpen() && this._writeQuiet({ ...fields, type }); }

  /** @param {string} room @param {{private?: boolean}} [o] */
  create(room, o = {}) { return this.request('create', { room, private: !!o.private }); }
  /** @param {string} room @param {string} user */
  invite(room, user) { return this.request('invite', { room, user }); }
  /** @param {string} room @param {string} user */
  kick(room, user) { return this.request('kick', { room, user }); }
  /** @param {string} room @param {string} user @param {{secs?: number}} [o] */
  ban(room, user, o = {}) { return this.request('ban', o.secs != null ? { room, user, secs: o.secs } : { room, user }); }
  /** @param {string} room @param {string} user */
  unban(room, user) { return this.request('unban', { room, user }); }
  /** @param {string} room @param {string} user @param {{secs?: number}} [o] */
  mute(room, user, o = {}) { return this.request('mute', o.secs != null ? { room, user, secs: o.secs } : { room, user }); }
  /** @param {string} room @param {string} user */
  unmute(room, user) { return this.request('unmute', { room, user }); }
  /** @param {string} room @param {string} user */
  promote(room, user) { return this.request('promote', { room, user }); }
  /** @param {string} room @param {string} user */
  demote(room, user) { return this.request('demote', { room, user }); }
  /** @param {string} room @param {number} id */
  deleteMessage(room, id) { return this.request('delete', { room, id }); }
  /** @param {string} room @param {number} id @param {string} text */
  edit(room, id, text) { return this.request('edit', { room, id, text }); }
  /** @param {string} room */
  members(room) { return this.request('members', { room }); }
  /** @param {string} room @param {number} id */
  markRead(room, id) { return this.notify('read', { room, id }); }

  // ------------------------------------------------------------ internals: socket

  _isOpen() { return !!this._ws && this._welcomed && this._ws.readyState === OPEN; }

  /** @param {import('../index').ConnectionState} s */
  _setState(s) {
    if (this.state === s) return;
    const prev = this.state;
    this.state = s;
    this.emit('state', { state: s, prev });
  }

  async _connectUrl() {
    const u = new URL(this.url);
    const o = this.options;
    if (this.token == null && typeof o.token === 'function') {
      this.token = (await o.token()) || null;
    }
    if (this.token != null) {
      if (o.tokenIn !== 'header') u.searchParams.set('token', this.token);
    } else if (this.user) {
      u.searchParams.set('user', this.user);
      if (this.resume) u.searchParams.set('resume', this.resume);
    }
    return u.toString();
  }

  async _open() {
    clearTimeout(this._retryTimer); this._retryTimer = null;
    this._dropSocket();
    const gen = ++this._gen;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    let url;
    let WS;
    let codec;
    try {
      if (!this._codec) this._codec = loadCodec(this.options.format, this.options.msgpack);
      codec = await this._codec;
      WS = this.options.WebSocket || /** @type {any} */ (globalThis).WebSocket;
      if (!WS) WS = (await import('ws')).WebSocket;
      url = await this._connectUrl();
    } catch (e) {
      if (gen !== this._gen) return;
      this._codec = null;
      this._onClosed(gen, 1006, String((e && /** @type {any} */ (e).message) || e), { fatal: true });
      return;
    }
    if (gen !== this._gen || this._stopped) return;
    /** @type {any} */ const wsOpts = { ...(this.options.wsOptions || {}) };
    if (this.token != null && this.options.tokenIn === 'header') {
      wsOpts.headers = { ...(wsOpts.headers || {}), Authorization: `Bearer ${this.token}` };
    }
    let ws;
    try {
      ws = Object.keys(wsOpts).length ? new WS(url, codec.protocol, wsOpts) : new WS(url, codec.protocol);
    } catch (e) {
      this._onClosed(gen, 1006, String((e && /** @type {any} */ (e).message) || e), {});
      return;
    }
    this._ws = ws;
    this._opened = false;
    this._welcomed = false;
    try { ws.binaryType = 'arraybuffer'; } catch { /* not supported */ }
    /** @type {{status?: number, code?: string | null, message?: string | null}} */
    const refused = {};
    if (typeof ws.on === 'function' && typeof ws.once === 'function') {
      // Node `ws`: the HTTP status and body of a refused handshake are readable.
      ws.on('unexpected-response', (/** @type {any} */ req, /** @type {any} */ res) => {
        refused.status = res.statusCode;
        let body = '';
        res.on('data', (/** @type {any} */ c) => { if (body.length < 4096) body += c; });
        res.on('end', () => {
          try { const j = JSON.parse(body); refused.code = j.error ?? null; refused.message = j.message ?? null; } catch { /* not JSON */ }
          if (gen === this._gen) this._onClosed(gen, 1006, `HTTP ${res.statusCode}`, { refused });
          try { req.destroy(); } catch { /* gone */ }
        });
        res.on('error', () => {});
      });
      ws.on('error', () => { /* the close event follows */ });
    }
    ws.onopen = () => { if (gen === this._gen) { this._opened = true; this._lastRx = Date.now(); } };
    ws.onmessage = (/** @type {any} */ ev) => {
      if (gen !== this._gen) return;
      this._lastRx = Date.now();
      const f = codec.decode(ev.data);
      if (f && typeof f === 'object' && typeof f.type === 'string') this._onFrame(f);
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (/** @type {any} */ ev) => {
      if (gen !== this._gen) return;
      if (refused.status != null && refused.code === undefined) return; // body still being read
      this._onClosed(gen, ev.code, ev.reason || '', { refused: refused.status != null ? refused : undefined });
    };
    this._codecNow = codec;
    this._connectTimer = setTimeout(() => {
      if (gen === this._gen && !this._welcomed) this._onClosed(gen, 1006, 'connect timeout', {});
    }, this.options.connectTimeoutMs);
  }

  /** Detaches and closes the current socket without running our close handling. */
  _dropSocket(code = 1000, reason = '') {
    const ws = this._ws;
    this._ws = null;
    this._gen++;
    this._welcomed = false;
    clearTimeout(this._connectTimer); this._connectTimer = null;
    clearInterval(this._hbTimer); this._hbTimer = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => {};
    try {
      if (ws.readyState === OPEN) ws.close(code, reason);
      else if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close();
    } catch { /* already closing */ }
  }

  /**
   * @param {number} gen
   * @param {number} code
   * @param {string} reason
   * @param {{refused?: any, fatal?: boolean}} info
   */
  async _onClosed(gen, code, reason, info) {
    if (gen !== this._gen) return;
    const opened = !!this._opened;
    const welcomed = this._welcomed;
    const lived = welcomed ? Date.now() - this._welcomedAt : 0;
    this._dropSocket();
    const myGen = this._gen;
    this._failRequests('disconnected', 'the connection was lost');
    for (const r of this.rooms.values()) { r.joined = false; }
    for (const t of this._typists) t.reset();
    this._outboxOnDisconnect(code);
    if (this._stopped) return;
    if (lived >= this.options.stableMs) this._attempt = 0;

    /** @type {{status: number, code: string | null, message: string | null} | null} */
    let diag = info.refused ? { status: info.refused.status, code: info.refused.code ?? null, message: info.refused.message ?? null } : null;
    if (!opened && !diag && !info.fatal && this.options.diagnose && typeof globalThis.fetch === 'function' && !this.options.WebSocket) {
      // A browser hides why a handshake failed: ask with a plain GET.
      diag = await diagnoseHandshake(await this._connectUrl().catch(() => this.url), { fetch: this.options.fetch });
      if (myGen !== this._gen || this._stopped) return;
    }

    let policy = info.fatal ? 'stop' : closePolicy(code);
    let errorCode = diag && diag.code ? diag.code : null;
    if (!opened && diag) {
      if (diag.status === 401) { policy = 'refresh'; errorCode = errorCode || 'unauthorized'; }
      else if (diag.status === 403 || diag.status === 409) policy = 'stop';
      else policy = 'backoff';
    }
    if (policy === 'refresh') {
      const fresh = await this._freshToken(code === 4001 ? 'expired' : 'unauthorized');
      if (myGen !== this._gen || this._stopped) return;
      if (fresh) {
        this._refreshedAt = Date.now();
        policy = 'now';
      } else {
        policy = 'stop';
        errorCode = errorCode || (code === 4001 ? 'expired' : 'unauthorized');
      }
    }
    let delayMs = 0;
    if (policy === 'now') {
      delayMs = Math.floor(Math.random() * this.options.reconnectJitterMs);
    } else if (policy === 'backoff') {
      delayMs = backoffDelay(this._attempt, { baseMs: this.options.backoffBaseMs, maxMs: this.options.backoffMaxMs });
      this._attempt = Math.min(this._attempt + 1, 30);
    }
    const willReconnect = policy !== 'stop';
    const ev = {
      code, reason, wasOpen: welcomed, willReconnect, delayMs,
      status: diag ? diag.status : undefined, errorCode, everConnected: this._everConnected,
    };
    if (!willReconnect) {
      this._stopped = true;
      const err = new RelayError(errorCode || (code === 1008 ? 'policy' : 'closed'), reason || `closed with ${code}`, { status: diag ? diag.status : undefined });
      this._rejectOpenWaiters(err);
      this._setState('stopped');
      this.emit('disconnect', ev);
      return;
    }
    this.retryAt = Date.now() + delayMs;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._open(); }, delayMs);
    this.emit('disconnect', ev);
  }

  /** @param {'expired' | 'unauthorized'} reason @returns {Promise<boolean>} */
  async _freshToken(reason) {
    const get = this.options.getToken;
    if (typeof get !== 'function') return false;
    // A token refused right after a refresh: do not loop on a callback that
    // keeps handing out bad tokens.
    if (reason === 'unauthorized' && this._refreshedAt && Date.now() - this._refreshedAt < 2000) return false;
    try {
      const t = await get({ reason });
      if (!t) return false;
      this.token = String(t);
      return true;
    } catch {
      return false;
    }
  }

  /** @param {any} err */
  _rejectOpenWaiters(err) {
    for (const w of this._openWaiters.splice(0)) w.reject(err);
  }

  /** @param {any} frame @returns {boolean} */
  _write(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== OPEN || !this._codecNow) return false;
    try {
      ws.send(this._codecNow.encode(frame));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Writes a command that has no reply on success (typing, read, the
   * heartbeat ping) with a `ref`, so that an error it causes is told apart:
   * it is emitted as 'error' with `command` set, never taken for another
   * command's.
   * @param {any} frame @returns {boolean}
   */
  _writeQuiet(frame) {
    const ref = ++this._refSeq;
    const now = Date.now();
    this._quiet.set(ref, { command: frame.type, room: frame.room, at: now });
    if (this._quiet.size > 256) {
      for (const [k, v] of this._quiet) { if (now - v.at > 10000 || this._quiet.size > 256) this._quiet.delete(k); else break; }
    }
    return this._write({ ...frame, ref });
  }

  _startHeartbeat() {
    clearInterval(this._hbTimer);
    const every = Math.min(Math.max(this.heartbeatMs, 1000), 30000);
    const gen = this._gen;
    this._pingSentAt = 0;
    this._hbTimer = setInterval(() => {
      if (gen !== this._gen || !this._isOpen()) return;
      const now = Date.now();
      const waiting = this._pingSentAt && this._lastRx < this._pingSentAt;
      if (waiting && now - this._pingSentAt > Math.max(2 * every, 5000)) {
        this._onClosed(gen, 1006, 'heartbeat timeout', {});
        return;
      }
      if (!waiting && now - this._lastRx >= every) {
        this._pingSentAt = now;
        this._writeQuiet({ type: 'ping' });
      }
      this._sweepOutbox(now);
    }, every);
  }

  // ------------------------------------------------------------ internals: frames

  /** @param {any} f */
  _onFrame(f) {
    this.emit('frame', f);
    const pend = f.ref != null ? this._pending.get(Number(f.ref)) : undefined;
    if (pend) {
      this._pending.delete(Number(f.ref));
      clearTimeout(pend.timer);
    }
    switch (f.type) {
      case 'welcome': this._onWelcome(f); return;
      case 'joined': this._onJoined(f, pend); return;
      case 'error': this._onError(f, pend); return;
      case 'ack':
        if (pend && pend.item) this._onAck(pend.item, f);
        else if (pend) pend.resolve(f);
        this.emit('ack', f);
        return;
      case 'message': this._onMessage(f); return;
      case 'user_joined': {
        const r = this.rooms.get(String(f.room));
        if (r) r.presence.add(String(f.user));
        break;
      }
      case 'user_left': {
        const r = this.rooms.get(String(f.room));
        if (r) r.presence.delete(String(f.user));
        break;
      }
      case 'presence': {
        const r = this.rooms.get(String(f.room));
        if (r && Array.isArray(f.users)) {
          r.presence = new Set(f.users.map(String));
          if (this.user && r.joined) r.presence.add(this.user);
        }
        break;
      }
      case 'kicked': {
        // Removed from the room by a moderator: stop re-joining it.
        const r = this.rooms.get(String(f.room));
        if (r) {
          this.rooms.delete(r.name);
          this._clearRoomTimers(r);
          for (const item of this._outbox.filter((i) => i.room === r.name)) this._settle(item, new RelayError('kicked', `kicked from ${r.name}`));
        }
        break;
      }
      default:
        break;
    }
    if (pend) pend.resolve(f);
    if (f.type !== 'pong') this.emit(f.type, f);
  }

  /** @param {any} f */
  _onWelcome(f) {
    clearTimeout(this._connectTimer); this._connectTimer = null;
    const first = !this._everConnected;
    this._welcomed = true;
    this._welcomedAt = Date.now();
    this.welcome = f;
    this.user = f.user != null ? String(f.user) : this.user;
    this.node = f.node != null ? String(f.node) : null;
    this.session = f.session != null ? String(f.session) : null;
    if (f.resume) this.resume = String(f.resume);
    this.heartbeatMs = Number(f.heartbeat_ms) || 25000;
    if (!first) this.reconnects++;
    this._everConnected = true;
    this._startHeartbeat();
    this._setState('open');
    this.emit('welcome', { ...f, reconnect: !first });
    for (const r of this.rooms.values()) this._sendJoin(r);
    this._pumpAll();
    const waiters = this._openWaiters.splice(0);
    for (const w of waiters) w.resolve(f);
  }

  /** @param {string} room */
  _joinInFlight(room) {
    for (const p of this._pending.values()) if (p.type === 'join' && p.room === room) return true;
    return false;
  }

  /** @param {RoomState} r */
  _sendJoin(r) {
    /** @type {any} */ const frame = { type: 'join', room: r.name };
    if (r.epoch != null && !r.plainRetry) { frame.since = r.lastId ?? 0; frame.epoch = r.epoch; }
    r.plainRetry = false;
    this._request(frame, undefined, { type: 'join', room: r.name, keep: true }).catch(() => { /* handled in _onJoined/_onError */ });
  }

  /**
   * @param {any} f
   * @param {any} [pend]
   */
  _onJoined(f, pend) {
    const name = String(f.room);
    const r = this.rooms.get(name);
    if (!r) { if (this._isOpen()) this._write({ type: 'leave', room: name }); return; }
    if (pend) pend.resolve(f);
    const rejoin = r.epoch != null;
    const epoch = f.epoch != null ? String(f.epoch) : null;
    const history = (Array.isArray(f.history) ? f.history : []).slice().sort((a, b) => Number(a.id) - Number(b.id));
    let gap = null;
    if (rejoin && epoch !== r.epoch) {
      gap = { room: name, reason: 'epoch', after: null, before: history.length ? Number(history[0].id) : null };
      r.lastId = null;
      r.buffer.clear();
      r.own.clear();
    } else if (rejoin && f.recovered !== true) {
      const first = history.length ? Number(history[0].id) : null;
      const last = r.lastId ?? 0;
      if (first != null && first > last + 1) {
        gap = { room: name, reason: 'overflow', after: last, before: first };
        r.lastId = first - 1;
      } else if (first == null) {
        gap = { room: name, reason: 'overflow', after: last, before: null };
      }
    }
    if (r.lastId == null) {
      // First join (or a new epoch): the history is the start of the stream.
      r.lastId = history.length ? Number(history[0].id) - 1 : null;
    }
    r.epoch = epoch;
    r.joined = true;
    r.presence = new Set((Array.isArray(f.presence) ? f.presence : []).map(String));
    if (this.user) r.presence.add(this.user);
    const ev = { ...f, rejoin, recovered: f.recovered === true, gap: !!gap, firstJoin: !r.everJoined };
    r.everJoined = true;
    this.emit('joined', ev);
    if (gap) this.emit('gap', gap);
    for (const m of history) this._accept(r, m, true);
    // Sends written before the reconnect go out again (same client_id) before
    // the history is released, so a message of ours that the server stored
    // comes back as our ack, not as a stranger's message.
    let holding = 0;
    for (const item of this._outbox) {
      if (item.room !== name) continue;
      if (item.ambiguous && !item.holding) { item.holding = true; holding++; }
      this._pump(item);
    }
    if (holding) {
      r.hold += holding;
      clearTimeout(r.holdTimer);
      r.holdTimer = setTimeout(() => { r.hold = 0; r.holdTimer = null; this._flush(r); }, this.options.ackTimeoutMs);
    }
    this._flush(r);
    for (const w of r.waiters.splice(0)) w.resolve(ev);
  }

  /** @param {any} f */
  _onMessage(f) {
    const r = this.rooms.get(String(f.room));
    if (!r || !r.joined) return;
    this._accept(r, f, false);
    this._flush(r);
  }

  /**
   * Buffers a room message unless it was delivered already.
   * @param {RoomState} r @param {any} m @param {boolean} replayed
   */
  _accept(r, m, replayed) {
    const id = Number(m.id);
    if (!Number.isFinite(id)) return;
    if (r.lastId != null && id <= r.lastId) return;
    if (r.buffer.has(id)) return;
    /** @type {any} */ const msg = { ...m, type: 'message', room: r.name, id };
    if (replayed) msg.replayed = true;
    r.buffer.set(id, msg);
  }

  /**
   * Delivers buffered messages in id order while there is no hole; a hole
   * (a message still on its way, or our own ack) is waited for `reorderMs`.
   * @param {RoomState} r @param {boolean} [force]
   */
  _flush(r, force = false) {
    if (r.hold > 0 && !force) return;
    const ids = [...r.buffer.keys()].sort((a, b) => a - b);
    if (r.lastId == null) {
      const cands = [...ids, ...r.own];
      if (cands.length === 0) return;
      r.lastId = Math.min(...cands) - 1;
    }
    const skipOwn = () => { while (r.own.has(/** @type {number} */ (r.lastId) + 1)) { r.own.delete(/** @type {number} */ (r.lastId) + 1); r.lastId = /** @type {number} */ (r.lastId) + 1; } };
    skipOwn();
    for (const id of ids) {
      const last = /** @type {number} */ (r.lastId);
      if (id <= last) { r.buffer.delete(id); continue; }
      if (id !== last + 1 && !force) break;
      const m = r.buffer.get(id);
      r.buffer.delete(id);
      r.lastId = id;
      for (const o of r.own) if (o <= id) r.own.delete(o);
      if (this.rooms.get(r.name) !== r) return;
      this.emit('message', m);
      skipOwn();
    }
    if (r.buffer.size === 0) {
      clearTimeout(r.gapTimer); r.gapTimer = null;
      return;
    }
    if (!r.gapTimer) {
      r.gapTimer = setTimeout(() => {
        r.gapTimer = null;
        if (this.rooms.get(r.name) !== r || r.buffer.size === 0) return;
        const before = Math.min(...r.buffer.keys());
        const after = r.lastId;
        const ownBelow = [...r.own].some((o) => o < before);
        if (!ownBelow && after != null && before > after + 1) this.emit('gap', { room: r.name, reason: 'missing', after, before });
        r.hold = 0;
        this._flush(r, true);
      }, this.options.reorderMs);
    }
  }

  /** @param {RoomState} r */
  _clearRoomTimers(r) {
    clearTimeout(r.gapTimer); r.gapTimer = null;
    clearTimeout(r.holdTimer); r.holdTimer = null;
  }

  /**
   * @param {any} f
   * @param {any} [pend]
   */
  _onError(f, pend) {
    const code = String(f.code || 'internal');
    const retryMs = f.retry_ms != null ? Number(f.retry_ms) : undefined;
    const err = new RelayError(code, typeof f.message === 'string' ? f.message : code, { retryMs, frame: f });
    if (pend && pend.item) { this._onSendError(pend.item, err); return; }
    if (pend && pend.type === 'join') {
      const r = pend.room != null ? this.rooms.get(pend.room) : undefined;
      if (r) this._onJoinError(r, err);
      return;
    }
    if (pend) { pend.reject(err); return; }
    const quiet = f.ref != null ? this._quiet.get(Number(f.ref)) : undefined;
    if (quiet) {
      this._quiet.delete(Number(f.ref));
      this.emit('error', { ...f, code, command: quiet.command, room: f.room ?? quiet.room, error: err });
      return;
    }
    this.emit('error', { ...f, code, error: err });
  }

  /** @param {RoomState} r @param {RelayError} err */
  _onJoinError(r, err) {
    if (err.code === 'invalid' && r.epoch != null && !r.plainRetry) {
      // A server that does not take our since/epoch: join plainly.
      r.plainRetry = true;
      this._sendJoin(r);
      return;
    }
    if (err.code === 'rate_limited' || err.code === 'unavailable') {
      const wait = (err.retryMs ?? 1000) + Math.random() * 500;
      setTimeout(() => { if (this._isOpen() && !r.joined && this.rooms.get(r.name) === r && !this._joinInFlight(r.name)) this._sendJoin(r); }, wait);
      return;
    }
    if (!r.everJoined) {
      this.rooms.delete(r.name);
      for (const item of this._outbox.filter((i) => i.room === r.name)) this._settle(item, err);
    }
    for (const w of r.waiters.splice(0)) w.reject(err);
    this.emit('error', { type: 'error', code: err.code, message: err.message, room: r.name, command: 'join', error: err });
  }

  /**
   * @param {any} frame
   * @param {number} [timeoutMs]
   * @param {{type?: string, room?: string, keep?: boolean, item?: any}} [meta]
   * @returns {Promise<any>}
   */
  async _request(frame, timeoutMs, meta = {}) {
    const ms = timeoutMs ?? this.options.requestTimeoutMs;
    if (!this._isOpen()) await this._waitOpen(ms);
    return new Promise((resolve, reject) => {
      const ref = ++this._refSeq;
      const timer = meta.keep ? null : setTimeout(() => {
        if (this._pending.delete(ref)) reject(new RelayError('timeout', `no reply to ${frame.type} within ${ms} ms`));
      }, ms);
      this._pending.set(ref, { type: meta.type || frame.type, room: meta.room, keep: meta.keep, resolve, reject, timer });
      if (!this._write({ ...frame, ref })) {
        this._pending.delete(ref);
        clearTimeout(timer);
        reject(new RelayError('disconnected', 'not connected'));
      }
    });
  }

  /** @param {number} ms */
  _waitOpen(ms) {
    if (this.state === 'closed' || this.state === 'stopped') return Promise.reject(new RelayError(this.state, `the client is ${this.state}`));
    return new Promise((resolve, reject) => {
      const w = { resolve, reject };
      this._openWaiters.push(w);
      setTimeout(() => {
        const i = this._openWaiters.indexOf(w);
        if (i >= 0) { this._openWaiters.splice(i, 1); reject(new RelayError('timeout', `not connected within ${ms} ms`)); }
      }, ms);
    });
  }

  /** @param {string} code @param {string} message */
  _failRequests(code, message) {
    for (const [ref, p] of this._pending) {
      if (p.item) continue; // the outbox handles its own
      this._pending.delete(ref);
      clearTimeout(p.timer);
      p.reject(new RelayError(code, message));
    }
  }

  // ------------------------------------------------------------ internals: outbox

  /** @param {any} item @param {number} [timeoutMs] */
  _enqueue(item, timeoutMs) {
    if (this.state === 'closed') return Promise.reject(new RelayError('closed', 'the client was closed'));
    return new Promise((resolve, reject) => {
      Object.assign(item, { resolve, reject, ref: null, written: false, ambiguous: false, holding: false, retries: 0, sweeps: 0, rejoinTried: false, sentAt: 0 });
      const ms = timeoutMs ?? this.options.sendTimeoutMs;
      if (ms > 0) item.deadline = setTimeout(() => this._settle(item, new RelayError('timeout', `not acknowledged within ${ms} ms`)), ms);
      this._outbox.push(item);
      this._pump(item);
    });
  }

  _pumpAll() { for (const item of [...this._outbox]) this._pump(item); }

  /** Writes an outbox item when the connection (and for rooms the membership) allows. @param {any} item */
  _pump(item) {
    if (item.ref != null || !this._isOpen() || !this._outbox.includes(item)) return;
    if (Date.now() < this._outboxPausedUntil) return;
    let frame;
    if (item.kind === 'send') {
      const r = this.rooms.get(item.room);
      if (!r || !r.joined) return;
      frame = { type: 'send', room: item.room, text: item.text, client_id: item.clientId };
    } else {
      frame = { type: 'dm', to: item.to, text: item.text };
    }
    const ref = ++this._refSeq;
    this._pending.set(ref, { type: frame.type, item, resolve: () => {}, reject: () => {}, timer: null });
    if (this._write({ ...frame, ref })) {
      item.ref = ref;
      item.written = true;
      item.sentAt = Date.now();
    } else {
      this._pending.delete(ref);
    }
  }

  /** @param {any} item @param {any} ack */
  _onAck(item, ack) {
    if (item.kind === 'send') {
      const r = this.rooms.get(item.room);
      const id = Number(ack.id);
      if (r && Number.isFinite(id) && (r.lastId == null || id > r.lastId)) r.own.add(id);
      if (r && item.holding) {
        item.holding = false;
        r.hold = Math.max(0, r.hold - 1);
        if (r.hold === 0) { clearTimeout(r.holdTimer); r.holdTimer = null; }
      }
      this._settle(item, null, ack);
      if (r) this._flush(r);
      return;
    }
    this._settle(item, null, ack);
  }

  /** @param {any} item @param {RelayError} err */
  _onSendError(item, err) {
    item.ref = null;
    const code = err.code;
    if ((code === 'rate_limited' || code === 'unavailable') && item.retries < this.options.maxSendRetries) {
      item.retries++;
      const wait = code === 'rate_limited' ? (err.retryMs ?? 1000) + 50 : Math.min(8000, 500 * 2 ** item.retries);
      // Pause the whole outbox, so retries keep the order the sends were made in.
      this._outboxPausedUntil = Math.max(this._outboxPausedUntil, Date.now() + wait);
      clearTimeout(this._pauseTimer);
      this._pauseTimer = setTimeout(() => { this._pauseTimer = null; this._pumpAll(); }, this._outboxPausedUntil - Date.now());
      return;
    }
    if (code === 'not_member' && item.kind === 'send' && !item.rejoinTried) {
      const r = this.rooms.get(item.room);
      if (r) {
        item.rejoinTried = true;
        r.joined = false;
        if (!this._joinInFlight(r.name)) this._sendJoin(r);
        return;
      }
    }
    this._releaseHold(item);
    this._settle(item, err);
  }

  /** @param {any} item */
  _releaseHold(item) {
    if (!item.holding) return;
    item.holding = false;
    const r = this.rooms.get(item.room);
    if (r) { r.hold = Math.max(0, r.hold - 1); this._flush(r); }
  }

  /** @param {number} code */
  _outboxOnDisconnect(code) {
    for (const item of [...this._outbox]) {
      if (item.ref != null) this._pending.delete(item.ref);
      const wasInFlight = item.ref != null;
      item.ref = null;
      if (item.kind === 'dm' && wasInFlight) {
        this._settle(item, new RelayError('disconnected', 'the connection dropped before the direct message was acknowledged; it may or may not have been delivered'));
        continue;
      }
      if (code === 1009 && wasInFlight) {
        this._settle(item, new RelayError('too_large', 'a frame was larger than the server accepts'));
        continue;
      }
      if (item.written) item.ambiguous = true;
      if (item.holding) { item.holding = false; }
    }
    for (const r of this.rooms.values()) { r.hold = 0; clearTimeout(r.holdTimer); r.holdTimer = null; }
  }

  /**
   * Room messages whose ack is overdue on an open connection are sent again
   * (same client_id), at most `maxSendRetries` times, then rejected with
   * `timeout`; an overdue DM (no idempotency key) is rejected after two
   * ack timeouts. Time spent disconnected does not count.
   * @param {number} now
   */
  _sweepOutbox(now) {
    for (const item of [...this._outbox]) {
      if (item.ref == null || now - item.sentAt < this.options.ackTimeoutMs) continue;
      if (item.kind === 'send' && item.sweeps < this.options.maxSendRetries) {
        item.sweeps++;
        this._pending.delete(item.ref);
        item.ref = null;
        this._pump(item);
      } else if (item.kind === 'send' || now - item.sentAt >= 2 * this.options.ackTimeoutMs) {
        this._settle(item, new RelayError('timeout', 'the server did not acknowledge the message'));
      }
    }
  }

  /** @param {any} item @param {RelayError | null} err @param {any} [ack] */
  _settle(item, err, ack) {
    const i = this._outbox.indexOf(item);
    if (i < 0) return;
    this._outbox.splice(i, 1);
    if (item.ref != null) this._pending.delete(item.ref);
    item.ref = null;
    clearTimeout(item.deadline);
    if (item.holding) this._releaseHold(item);
    if (err) item.reject(err); else item.resolve(ack);
  }
}
