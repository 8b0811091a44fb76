// The signed-in session: one RelayClient (web/lib/relay) per sign-in, its
// events wired to the page, and what the page does when the client
// disconnects (reconnecting banner, 1008 manual retry, 4001 and refused
// handshakes back to the sign-in form).
import { RelayClient } from '../lib/relay/index.js';
import { D } from './dom.js';
import { S, DEFAULT_ROOM, INITIAL_ATTEMPTS, REFUSED_ATTEMPTS, ACK_RESEND_MS, MAX_AUTO_RETRIES } from './state.js';
import { store, K } from './storage.js';
import { toast, setBanner, setPhase, updateReconnectBanner, flashReconnected, updateTitle } from './status.js';
import { renderAll } from './render.js';
import { ensureRoom, joinRoom, saveRooms, onJoined, onMessage, onUserJoined, onUserLeft, onTyping, onPresence, onKicked, onDisconnected } from './rooms.js';
import { onDirect } from './dms.js';
import { errorText } from './outbox.js';
import { showLogin, showChat, setLoginBusy } from './login.js';

const PHASE = { idle: 'idle', connecting: 'connecting', open: 'open', reconnecting: 'reconnecting', stopped: 'stopped', closed: 'idle' };

function wsUrl() {
  const u = new URL('ws', document.baseURI);
  u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  u.search = '';
  u.hash = '';
  return u.toString();
}

/** Signs in with `creds` ({user} or {token, expires_at}) and connects. */
export function startSession(creds) {
  if (S.client) S.client.close();
  S.creds = creds;
  S.everConnected = false;
  S.initialFailures = 0;
  S.refusals = 0;
  S.typists.clear();
  setLoginBusy(true);
  D.loginError.textContent = '';
  const opts = {
    url: wsUrl(),
    format: 'json',
    ackTimeoutMs: ACK_RESEND_MS,
    maxSendRetries: MAX_AUTO_RETRIES,
  };
  if (S.mode === 'token') opts.token = creds.token;
  else {
    opts.user = creds.user;
    const resume = store.get('sessionStorage', K.resume(creds.user));
    if (resume) opts.resume = resume;
  }
  const client = new RelayClient(opts);
  S.client = client;
  const on = (type, fn) => client.on(type, (ev) => { if (S.client === client) fn(ev); });
  on('state', ({ state }) => {
    const phase = PHASE[state] || state;
    setPhase(phase === 'reconnecting' && !S.everConnected ? 'connecting' : phase);
  });
  on('welcome', onWelcome);
  on('disconnect', onDisconnect);
  on('joined', onJoined);
  on('message', onMessage);
  on('direct', onDirect);
  on('user_joined', onUserJoined);
  on('user_left', onUserLeft);
  on('typing', onTyping);
  on('presence', onPresence);
  on('kicked', onKicked);
  on('error', (f) => {
    // A join's error is reported by its promise; typing and pings are never worth bothering the user.
    if (f.command === 'join' || f.command === 'typing' || f.command === 'ping') return;
    const text = errorText(f.code);
    toast(f.message && f.code !== 'rate_limited' ? `${text} ${f.message}` : text, { tone: f.code === 'rate_limited' ? 'warn' : 'error', code: f.code });
  });
  for (const room of S.rooms.values()) joinRoom(room);
  client.connect().catch(() => { /* reported by the 'disconnect' event */ });
}

function onWelcome(f) {
  const first = !S.everConnected;
  S.user = String(f.user || (S.creds && S.creds.user) || '');
  S.node = f.node != null ? String(f.node) : null;
  S.session = f.session != null ? String(f.session) : null;
  D.conn.dataset.node = S.node || '';
  D.conn.dataset.session = S.session || '';
  if (S.mode === 'guest') {
    if (f.resume) store.set('sessionStorage', K.resume(S.user), String(f.resume));
    store.set('sessionStorage', K.guest, S.user);
    store.set('localStorage', K.lastName, S.user);
  }
  document.body.dataset.reconnects = String(S.client.reconnects);
  S.everConnected = true;
  S.initialFailures = 0;
  S.refusals = 0;
  setPhase('open');
  if (first) setBanner('hidden'); else flashReconnected();
  if (S.rooms.size === 0) joinRoom(ensureRoom(DEFAULT_ROOM));
  if (first) {
    showChat();
    if (S.active && S.active.kind === 'dm') D.dmInput.focus(); else D.messageInput.focus();
  } else {
    renderAll();
  }
  saveRooms();
}

function onDisconnect(d) {
  onDisconnected();
  if (d.code === 4001 && !d.willReconnect) {
    endSession(S.mode === 'token' ? 'Your session has expired. Please log in again.' : 'Your session has expired. Pick a name to chat again.');
    return;
  }
  if (d.code === 1008 && !d.willReconnect) {
    setBanner('error', `Disconnected by the server (policy violation${d.reason ? `: ${d.reason}` : ''}). Too many invalid or too fast commands.`, true);
    return;
  }
  if (d.code === 1009) toast('A message was too large for the server and was not delivered.', { tone: 'error', code: 'too_large' });
  if (d.code === 4000) toast('The connection could not keep up and was reset. Catching up…', { tone: 'info', code: 'slow_consumer' });

  if (!d.wasOpen) {
    // The handshake itself failed: the client asked the server why (a plain GET).
    if (S.mode === 'token' && S.creds.expires_at && S.creds.expires_at <= Date.now()) {
      endSession('Your session has expired. Please log in again.');
      return;
    }
    if (d.status === 409 || d.errorCode === 'name_taken') {
      store.del('sessionStorage', K.resume(S.creds.user));
      endSession(S.everConnected
        ? `The name “${S.creds.user}” was taken while you were away. Pick another one.`
        : `The name “${S.creds.user}” is already taken. Pick another one.`);
      return;
    }
    if (d.status === 401 || d.errorCode === 'unauthorized') {
      endSession(S.mode === 'token' ? 'The server did not accept your session. Please log in again.' : 'The server did not accept this name.');
      return;
    }
    if (d.status === 403) {
      endSession(d.errorCode === 'forbidden_origin'
        ? 'This page is not allowed to connect to the chat server (forbidden origin).'
        : 'The chat server refused the connection.');
      return;
    }
    // A GET claims nothing, so a taken name shows as 400 (not an upgrade): a
    // 4xx other than 429 only says "reachable, and it refused".
    const refused = d.status >= 400 && d.status < 500 && d.status !== 429;
    if (S.mode === 'token') {
      S.refusals = refused ? S.refusals + 1 : 0;
      if (S.refusals >= (S.everConnected ? REFUSED_ATTEMPTS : INITIAL_ATTEMPTS)) {
        endSession('The server did not accept your session. Please log in again.');
        return;
      }
    }
    if (!S.everConnected && d.status !== 429 && d.status !== 503) {
      S.initialFailures++;
      if (S.initialFailures >= INITIAL_ATTEMPTS) {
        endSession(d.status === 0
          ? 'Could not reach the chat server. Please try again.'
          : S.mode === 'token'
            ? 'Could not connect. The server may be busy. Please try again.'
            : `Could not connect as “${S.creds.user}”. The name may already be in use (in another tab or by someone else), or the server is busy. Please try again.`);
        return;
      }
    }
  }
  if (!d.willReconnect) {
    setBanner('error', 'Disconnected from the chat server.', true);
    return;
  }
  if (S.everConnected) updateReconnectBanner();
}

/** Connects again now (banner button, network back, page visible again). */
export function reconnectNow() {
  if (S.client && S.creds) S.client.reconnect();
}

/** Back to the sign-in form (logout, expired session, name taken). */
export function endSession(message) {
  const client = S.client;
  S.client = null;
  if (client) client.close(1000, 'bye');
  if (S.mode === 'token') store.del('localStorage', K.token);
  store.del('sessionStorage', K.guest);
  store.del('sessionStorage', K.rooms);
  store.del('sessionStorage', K.active);
  if (S.creds && S.creds.user) store.del('sessionStorage', K.resume(S.creds.user));
  S.creds = null;
  S.user = null;
  for (const room of S.rooms.values()) for (const t of room.typing.values()) clearTimeout(t);
  S.rooms.clear();
  S.dms.clear();
  S.pending.clear();
  S.typists.clear();
  S.active = null;
  S.lastRoom = null;
  S.everConnected = false;
  setPhase('idle');
  setBanner('hidden');
  updateTitle();
  showLogin(message);
}
