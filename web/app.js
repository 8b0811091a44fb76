// relay web chat: a single-page client for the relay wire protocol v1
// (see PROTOCOL.md). Plain modern JavaScript, no build step, no dependencies.
//
// Security rule of this file: user data (names, room names, message text,
// error messages) only ever reaches the DOM through textContent / text nodes
// / attributes set with setAttribute. Never innerHTML.
'use strict';

(() => {
  // ---------------------------------------------------------------- constants
  const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
  const SUBPROTOCOL = 'relay.v1.json';
  const DEFAULT_ROOM = 'lobby';
  const BACKOFF_BASE_MS = 500;          // first retry within 0..0.5 s
  const BACKOFF_MAX_MS = 15000;         // doubling up to 15 s, full jitter
  const STABLE_CONNECTION_MS = 5000;    // a connection that lived this long resets the backoff
  const CONNECT_TIMEOUT_MS = 10000;     // no welcome within this: give up on the attempt
  const INITIAL_ATTEMPTS = 3;           // first sign-in: give up (back to the form) after this many
  const REFUSED_ATTEMPTS = 5;           // token mode, reconnecting: handshakes refused in a row before asking to log in again
  const TYPING_THROTTLE_MS = 2500;      // at most one typing{active:true} per 2.5 s
  const TYPING_RESTART_MS = 600;        // ... and at least this long after the previous one
  const TYPING_IDLE_MS = 3000;          // typing{active:false} after 3 s without a keystroke
  const TYPING_EXPIRE_MS = 5000;        // a received indicator disappears after 5 s
  const ACK_RESEND_MS = 8000;           // a room message unconfirmed this long is sent again (same client_id)
  const ACK_TIMEOUT_MS = 20000;         // pending this long while connected: show as failed
  const MAX_AUTO_RETRIES = 3;           // rate_limited / unavailable retries per message
  const MAX_ITEMS = 500;                // messages + notices kept per conversation
  const TOAST_MS = 6000;

  // ---------------------------------------------------------------- helpers
  const $ = (id) => document.getElementById(id);

  /** Builds an element. props: className, text, attrs, data, on; children: nodes or strings (as text). */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      if (props.className) node.className = props.className;
      if (props.text != null) node.textContent = String(props.text);
      if (props.attrs) for (const [k, v] of Object.entries(props.attrs)) if (v != null && v !== false) node.setAttribute(k, v === true ? '' : String(v));
      if (props.data) for (const [k, v] of Object.entries(props.data)) if (v != null) node.dataset[k] = String(v);
      if (props.on) for (const [k, v] of Object.entries(props.on)) node.addEventListener(k, v);
    }
    for (const c of children) {
      if (c == null || c === false) continue;
      node.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return node;
  }

  const store = {
    get(kind, key) { try { return window[kind].getItem(key); } catch { return null; } },
    set(kind, key, value) { try { window[kind].setItem(key, value); } catch { /* private mode, quota */ } },
    del(kind, key) { try { window[kind].removeItem(key); } catch { /* ignore */ } },
    json(kind, key) { try { return JSON.parse(store.get(kind, key) || 'null'); } catch { return null; } },
  };
  const K = {
    lastName: 'relay.lastName',          // localStorage: prefill of the name field
    guest: 'relay.guest',                // sessionStorage: guest name of this tab (auto-reconnect on reload)
    resume: (u) => `relay.resume.${u}`,  // sessionStorage: welcome.resume for that guest name
    token: 'relay.token',                // localStorage: {token, expires_at}
    rooms: 'relay.rooms',                // sessionStorage: [room names], rejoined on reload
    active: 'relay.active',              // sessionStorage: {kind, id}
  };

  function charCount(s) { let n = 0; for (const _ of s) n++; return n; } // Unicode scalar values
  function clientId() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = new Uint8Array(16); crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  function hue(name) { let x = 0; for (const ch of String(name)) x = (x * 31 + ch.codePointAt(0)) >>> 0; return x % 360; }
  function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }

  const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const fmtDayTime = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  function timeEl(ts) {
    const d = new Date(Number(ts) || Date.now());
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return h('time', {
      className: 'ts',
      text: sameDay ? fmtTime.format(d) : fmtDayTime.format(d),
      attrs: { datetime: d.toISOString(), title: fmtFull.format(d) },
    });
  }

  // ---------------------------------------------------------------- state
  const S = {
    config: { auth: 'guest', node: '', max_text_chars: 4000 },
    mode: 'guest',            // 'guest' | 'token'
    creds: null,              // {user} (guest) or {token, expires_at} (token)
    user: null,               // welcome.user
    node: null,
    session: null,
    phase: 'idle',            // idle | connecting | open | reconnecting | stopped
    everConnected: false,     // got a welcome since the user signed in
    ws: null,
    gen: 0,                   // generation of the current socket; stale events are ignored
    opened: false,
    welcomed: false,
    welcomedAt: 0,
    attempt: 0,
    initialFailures: 0,
    refusals: 0,              // token mode: handshakes in a row the (reachable) server refused
    retryTimer: null,
    retryAt: 0,
    connectTimer: null,
    hbTimer: null,
    heartbeatMs: 25000,
    lastRx: 0,
    pingSentAt: 0,
    refSeq: 0,
    refs: new Map(),          // ref -> {kind, ...}
    rooms: new Map(),         // name -> Room (insertion order = list order)
    dms: new Map(),           // peer -> Dm
    active: null,             // {kind: 'room'|'dm', id}
    lastRoom: null,
    pending: new Map(),       // client_id -> message item not yet acked
    typingOut: { room: null, active: false, lastSent: 0, idle: null },
    reconnects: 0,
  };

  function newRoom(name) {
    return {
      name, epoch: null, lastId: 0, ids: new Set(), items: [],
      presence: new Set(), typing: new Map(), unread: 0,
      joined: false, joining: false, rejoin: false, joinRef: null, everJoined: false,
    };
  }
  function newDm(peer) { return { peer, ids: new Set(), items: [], unread: 0 }; }
  const maxChars = () => Number(S.config.max_text_chars) || 4000;

  // ---------------------------------------------------------------- DOM refs
  const D = {};
  function bindDom() {
    for (const id of ['conn', 'conn-text', 'me', 'me-name', 'logout', 'banner', 'banner-text', 'banner-retry',
      'login-view', 'guest-form', 'token-form', 'name-input', 'connect-button', 'username-input', 'password-input',
      'login-button', 'register-button', 'login-error', 'login-node', 'chat-view', 'join-form', 'room-input',
      'join-error', 'room-list', 'dm-list', 'dm-empty', 'room-pane', 'room-title', 'room-count', 'leave-button',
      'room-scroller', 'room-messages', 'room-jump', 'typing-indicator', 'room-composer',
      'message-input', 'send-button', 'room-counter', 'dm-pane', 'dm-back', 'dm-title', 'dm-status', 'dm-close',
      'dm-scroller', 'dm-messages', 'dm-jump', 'dm-composer', 'dm-input', 'dm-send', 'dm-counter',
      'people-panel', 'people-title', 'online-list', 'rooms-panel', 'toggle-rooms', 'toggle-people', 'scrim',
      'toasts']) {
      D[id.replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = $(id);
    }
  }

  // ---------------------------------------------------------------- toasts and banner
  function toast(text, opts = {}) {
    const tone = opts.tone || 'info';
    const node = h('div', {
      className: `toast toast-${tone}`,
      attrs: { role: tone === 'error' ? 'alert' : 'status' },
      data: { testid: 'toast', code: opts.code || null },
    }, h('span', { className: 'toast-text', text }));
    const close = h('button', { className: 'toast-close', text: '×', attrs: { type: 'button', 'aria-label': 'Dismiss' } });
    close.addEventListener('click', () => node.remove());
    node.append(close);
    D.toasts.append(node);
    while (D.toasts.children.length > 4) D.toasts.firstElementChild.remove();
    setTimeout(() => node.remove(), opts.ms || TOAST_MS);
  }

  let bannerTick = null;
  let bannerHideTimer = null;
  function setBanner(state, text, withRetry) {
    clearTimeout(bannerHideTimer);
    D.banner.dataset.state = state;
    D.bannerText.textContent = text || '';
    D.banner.hidden = state === 'hidden';
    D.bannerRetry.hidden = !withRetry;
  }
  function updateReconnectBanner() {
    if (S.phase !== 'reconnecting') { clearInterval(bannerTick); bannerTick = null; return; }
    const secs = Math.ceil((S.retryAt - Date.now()) / 1000);
    const text = S.retryTimer && secs >= 1
      ? `Connection lost. Reconnecting in ${secs} s…`
      : 'Connection lost. Reconnecting…';
    setBanner('reconnecting', text, S.retryTimer != null && secs >= 2);
  }

  function setPhase(phase) {
    S.phase = phase;
    document.body.dataset.connection = phase;
    D.conn.dataset.state = phase;
    const label = {
      idle: 'Not connected', connecting: 'Connecting…', open: S.node ? `Connected · ${S.node}` : 'Connected',
      reconnecting: 'Reconnecting…', stopped: 'Disconnected',
    }[phase] || phase;
    D.connText.textContent = label;
    if (phase === 'reconnecting') {
      updateReconnectBanner();
      if (!bannerTick) bannerTick = setInterval(updateReconnectBanner, 1000);
    } else {
      clearInterval(bannerTick); bannerTick = null;
    }
  }

  // ---------------------------------------------------------------- views
  function showLogin(errorText) {
    document.body.dataset.view = 'login';
    D.loginView.hidden = false;
    D.chatView.hidden = true;
    D.me.hidden = true;
    D.toggleRooms.hidden = true;
    D.togglePeople.hidden = true;
    const token = S.mode === 'token';
    D.guestForm.hidden = token;
    D.tokenForm.hidden = !token;
    D.loginError.textContent = errorText || '';
    setLoginBusy(false);
    const last = store.get('localStorage', K.lastName);
    if (!token && last && !D.nameInput.value) D.nameInput.value = last;
    D.loginNode.textContent = S.config.node ? `Server node: ${S.config.node}` : '';
    (token ? D.usernameInput : D.nameInput).focus();
  }
  function setLoginBusy(busy) {
    D.connectButton.disabled = busy;
    D.loginButton.disabled = busy;
    D.registerButton.disabled = busy;
    D.connectButton.textContent = busy ? 'Connecting…' : 'Start chatting';
    D.loginButton.textContent = busy ? 'Connecting…' : 'Log in';
  }
  function showChat() {
    document.body.dataset.view = 'chat';
    D.loginView.hidden = true;
    D.chatView.hidden = false;
    D.me.hidden = false;
    D.toggleRooms.hidden = false;
    D.togglePeople.hidden = false;
    D.meName.textContent = S.user || '';
    D.logout.textContent = S.mode === 'token' ? 'Log out' : 'Change name';
    if (!S.active) {
      const first = S.rooms.keys().next();
      if (!first.done) setActive({ kind: 'room', id: first.value }, false);
    }
    renderAll();
  }

  // ---------------------------------------------------------------- connection
  function wsUrl() {
    const u = new URL('ws', document.baseURI);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    u.search = '';
    u.hash = '';
    if (S.mode === 'token') {
      u.searchParams.set('token', S.creds.token);
    } else {
      u.searchParams.set('user', S.creds.user);
      const resume = store.get('sessionStorage', K.resume(S.creds.user));
      if (resume) u.searchParams.set('resume', resume);
    }
    return u.toString();
  }

  function startSession(creds) {
    S.creds = creds;
    S.everConnected = false;
    S.attempt = 0;
    S.initialFailures = 0;
    S.refusals = 0;
    setLoginBusy(true);
    D.loginError.textContent = '';
    connect();
  }

  function connect() {
    clearTimeout(S.retryTimer); S.retryTimer = null;
    clearTimeout(S.connectTimer);
    dropSocket();
    if (!S.creds) return;
    const gen = ++S.gen;
    S.opened = false;
    S.welcomed = false;
    setPhase(S.everConnected ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(wsUrl(), SUBPROTOCOL);
    } catch (e) {
      onSocketClosed(gen, 1006, String(e && e.message || e));
      return;
    }
    S.ws = ws;
    ws.onopen = () => { if (gen === S.gen) { S.opened = true; S.lastRx = Date.now(); } };
    ws.onmessage = (ev) => { if (gen === S.gen) { S.lastRx = Date.now(); onFrameText(ev.data); } };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (ev) => { if (gen === S.gen) onSocketClosed(gen, ev.code, ev.reason); };
    S.connectTimer = setTimeout(() => {
      if (gen === S.gen && !S.welcomed) onSocketClosed(gen, 1006, 'connect timeout');
    }, CONNECT_TIMEOUT_MS);
  }

  /** Detaches and closes the current socket without triggering our close handling. */
  function dropSocket(code = 1000, reason = '') {
    const ws = S.ws;
    S.ws = null;
    S.gen++;
    stopHeartbeat();
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code, reason); } catch { /* already closing */ }
  }

  function isOpen() { return S.ws && S.ws.readyState === WebSocket.OPEN && S.welcomed; }

  function send(frame, meta) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return null;
    const ref = ++S.refSeq;
    frame.ref = ref;
    if (meta) S.refs.set(ref, meta);
    try {
      S.ws.send(JSON.stringify(frame));
    } catch {
      S.refs.delete(ref);
      return null;
    }
    return ref;
  }

  function startHeartbeat(ms) {
    stopHeartbeat();
    const every = Math.min(Math.max(Number(ms) || 25000, 1000), 30000);
    S.heartbeatMs = every;
    S.pingSentAt = 0;
    S.hbTimer = setInterval(() => {
      if (!isOpen()) return;
      const now = Date.now();
      // A ping that got no answer at all for 2 intervals (and at least 5 s): the link is dead.
      if (S.pingSentAt && S.lastRx < S.pingSentAt && now - S.pingSentAt > Math.max(2 * every, 5000)) {
        onSocketClosed(S.gen, 1006, 'heartbeat timeout');
        return;
      }
      if (now - S.lastRx >= every && !(S.pingSentAt && S.lastRx < S.pingSentAt)) {
        S.pingSentAt = now;
        send({ type: 'ping' });
      }
      sweepPending(now);
    }, every);
  }
  function stopHeartbeat() { clearInterval(S.hbTimer); S.hbTimer = null; }

  async function onSocketClosed(gen, code, reason) {
    if (gen !== S.gen) return;
    const opened = S.opened;
    const lived = S.welcomed ? Date.now() - S.welcomedAt : 0;
    clearTimeout(S.connectTimer);
    dropSocket();
    S.refs.clear();
    S.welcomed = false;
    for (const item of S.pending.values()) item.inFlight = false; // resent after the rejoin
    stopTypingOut(false);
    for (const room of S.rooms.values()) {
      room.joined = false; room.joining = false;
      for (const t of room.typing.values()) clearTimeout(t);
      room.typing.clear();
    }
    renderTyping();
    if (S.phase === 'stopped' || !S.creds) return;
    if (lived >= STABLE_CONNECTION_MS) S.attempt = 0;

    switch (code) {
      case 4001:
        endSession(S.mode === 'token' ? 'Your session has expired. Please log in again.' : 'Your session has expired. Pick a name to chat again.');
        return;
      case 1008:
        setPhase('stopped');
        setBanner('error', `Disconnected by the server (policy violation${reason ? `: ${reason}` : ''}). Too many invalid or too fast commands.`, true);
        return;
      case 1009:
        for (const item of S.pending.values()) failItem(item, 'Too large for the server');
        toast('A message was too large for the server and was not delivered.', { tone: 'error', code: 'too_large' });
        break;
      case 4000:
        toast('The connection could not keep up and was reset. Catching up…', { tone: 'info', code: 'slow_consumer' });
        break;
      default:
        break;
    }

    if (!opened && S.mode === 'token' && S.creds.expires_at && S.creds.expires_at <= Date.now()) {
      endSession('Your session has expired. Please log in again.');
      return;
    }
    if (!opened) {
      // The handshake itself was refused (or the server is unreachable). The
      // browser hides the HTTP status, so ask for it with a plain GET.
      const diag = await diagnoseHandshake();
      if (gen + 1 !== S.gen || S.phase === 'stopped' || !S.creds) return; // something else happened meanwhile
      if (diag.status === 409 || diag.code === 'name_taken') {
        store.del('sessionStorage', K.resume(S.creds.user));
        endSession(S.everConnected
          ? `The name “${S.creds.user}” was taken while you were away. Pick another one.`
          : `The name “${S.creds.user}” is already taken. Pick another one.`);
        return;
      }
      if (diag.status === 401 || diag.code === 'unauthorized') {
        // (A token past its expiry was handled above: this one is forged,
        // signed with a retired secret, or its account is gone.)
        endSession(S.mode === 'token' ? 'The server did not accept your session. Please log in again.' : 'The server did not accept this name.');
        return;
      }
      if (diag.status === 403 && diag.code === 'forbidden_origin') {
        endSession('This page is not allowed to connect to the chat server (forbidden origin).');
        return;
      }
      // The server answers a plain GET with the origin, name and token
      // verdicts (403, 400, 401 above) but, since a GET claims nothing, not
      // with 409 name_taken: a taken name shows as 400 (not an upgrade). So
      // a 4xx other than 429 here only says "reachable, and it refused".
      const refused = diag.status >= 400 && diag.status < 500 && diag.status !== 429;
      if (S.mode === 'token') {
        // A token the server no longer accepts (forged, signed with a rotated
        // secret, account removed) would otherwise be retried forever.
        S.refusals = refused ? S.refusals + 1 : 0;
        if (S.refusals >= (S.everConnected ? REFUSED_ATTEMPTS : INITIAL_ATTEMPTS)) {
          endSession('The server did not accept your session. Please log in again.');
          return;
        }
      }
      if (!S.everConnected && diag.status !== 429 && diag.status !== 503) {
        S.initialFailures++;
        if (S.initialFailures >= INITIAL_ATTEMPTS) {
          endSession(diag.status === 0
            ? 'Could not reach the chat server. Please try again.'
            : S.mode === 'token'
              ? 'Could not connect. The server may be busy. Please try again.'
              : `Could not connect as “${S.creds.user}”. The name may already be in use (in another tab or by someone else), or the server is busy. Please try again.`);
          return;
        }
      }
    }
    scheduleReconnect();
  }

  async function diagnoseHandshake() {
    try {
      const u = new URL(wsUrl());
      u.protocol = location.protocol;
      const res = await fetch(u.toString(), { cache: 'no-store', credentials: 'same-origin' });
      let body = null;
      try { body = await res.json(); } catch { /* not JSON */ }
      return { status: res.status, code: body && body.error, message: body && typeof body.message === 'string' ? body.message : null };
    } catch {
      return { status: 0 };
    }
  }

  function scheduleReconnect() {
    clearTimeout(S.retryTimer);
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** S.attempt);
    const delay = Math.floor(Math.random() * cap); // full jitter
    S.attempt = Math.min(S.attempt + 1, 30);
    S.retryAt = Date.now() + delay;
    S.retryTimer = setTimeout(() => { S.retryTimer = null; connect(); }, delay);
    setPhase(S.everConnected ? 'reconnecting' : 'connecting');
    if (S.everConnected) updateReconnectBanner();
  }

  function reconnectNow() {
    if (!S.creds) return;
    if (S.phase === 'stopped') S.attempt = 0;
    connect();
  }

  /** Back to the sign-in form (logout, expired session, name taken). */
  function endSession(message) {
    dropSocket(1000, 'bye');
    clearTimeout(S.retryTimer); S.retryTimer = null;
    clearTimeout(S.connectTimer);
    if (S.mode === 'token') store.del('localStorage', K.token);
    store.del('sessionStorage', K.guest);
    store.del('sessionStorage', K.rooms);
    store.del('sessionStorage', K.active);
    if (S.creds && S.creds.user) store.del('sessionStorage', K.resume(S.creds.user));
    S.creds = null;
    S.user = null;
    S.rooms.clear();
    S.dms.clear();
    S.pending.clear();
    S.refs.clear();
    S.active = null;
    S.lastRoom = null;
    S.everConnected = false;
    setPhase('idle');
    setBanner('hidden');
    updateTitle();
    showLogin(message);
  }

  // ---------------------------------------------------------------- frames in
  function onFrameText(data) {
    if (typeof data !== 'string') return; // JSON subprotocol: text frames only
    let f;
    try { f = JSON.parse(data); } catch { return; }
    if (!f || typeof f !== 'object' || typeof f.type !== 'string') return;
    const handler = HANDLERS[f.type];
    if (handler) handler(f);
  }

  const HANDLERS = {
    welcome(f) {
      clearTimeout(S.connectTimer);
      const first = !S.everConnected;
      S.welcomed = true;
      S.welcomedAt = Date.now();
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
      startHeartbeat(f.heartbeat_ms);
      if (!first) S.reconnects++;
      document.body.dataset.reconnects = String(S.reconnects);
      S.everConnected = true;
      S.initialFailures = 0;
      S.refusals = 0;
      setPhase('open');
      if (first) {
        setBanner('hidden');
      } else {
        setBanner('reconnected', 'Reconnected.');
        bannerHideTimer = setTimeout(() => { if (S.phase === 'open') setBanner('hidden'); }, 2000);
      }
      if (S.rooms.size === 0) S.rooms.set(DEFAULT_ROOM, newRoom(DEFAULT_ROOM));
      for (const room of S.rooms.values()) sendJoin(room);
      // Un-acked direct messages go out again (rooms resend theirs once re-joined).
      for (const item of S.pending.values()) if (item.peer && item.status === 'pending') transmit(item);
      if (first) {
        showChat();
        if (S.active && S.active.kind === 'dm') D.dmInput.focus(); else D.messageInput.focus();
      } else {
        renderAll();
      }
      saveRooms();
    },

    joined(f) {
      const name = String(f.room);
      const room = S.rooms.get(name);
      if (!room) { send({ type: 'leave', room: name }); return; } // left while the join was in flight
      const history = Array.isArray(f.history) ? f.history : [];
      const wasRejoin = room.rejoin;
      room.joined = true;
      room.joining = false;
      room.rejoin = false;
      room.everJoined = true;
      room.epoch = f.epoch != null ? f.epoch : room.epoch;
      room.presence = new Set((Array.isArray(f.presence) ? f.presence : []).map(String));
      if (S.user) room.presence.add(S.user);
      if (wasRejoin && f.recovered === true) {
        for (const m of history) addRoomMessage(room, m, { quiet: true });
      } else {
        replaceHistory(room, history);
        if (wasRejoin) addNotice(room, 'Some messages may have been missed while you were away. Showing the latest messages.', 'gap');
      }
      // Messages written while away go out now, in the order they were written.
      for (const item of S.pending.values()) if (item.room === name && item.status === 'pending') transmit(item);
      if (isActiveRoom(name)) renderRoomPane(true);
      if (peopleRoomName() === name) renderPeople();
      renderRoomList();
      renderDmHead();
      updateTitle();
    },

    left() { /* the room was already removed from the UI when the user left it */ },

    ack(f) {
      const meta = f.ref != null ? S.refs.get(f.ref) : null;
      if (f.ref != null) S.refs.delete(f.ref);
      let item = meta && meta.clientId ? S.pending.get(meta.clientId) : null;
      if (!item) item = oldestInFlight(f.room != null ? String(f.room) : null);
      if (!item) return;
      confirmItem(item, f);
    },

    message(f) {
      const room = S.rooms.get(String(f.room));
      if (!room) return;
      const added = addRoomMessage(room, f, {});
      if (!added) return;
      clearTyping(room, String(f.from));
      if (!isActiveRoom(room.name) || document.hidden) {
        if (!isActiveRoom(room.name)) room.unread++;
        renderRoomList();
        updateTitle();
      }
    },

    direct(f) {
      const from = String(f.from);
      const to = String(f.to);
      const peer = from === S.user ? to : from;
      const dm = ensureDm(peer);
      if (f.id != null && dm.ids.has(String(f.id))) return;
      if (f.id != null) dm.ids.add(String(f.id));
      const item = msgItem({ id: f.id, from, text: f.text, ts: f.ts, status: 'sent' });
      pushItem(dm.items, item, isActiveDm(peer) ? D.dmMessages : null, D.dmScroller, D.dmJump);
      if (!isActiveDm(peer)) {
        dm.unread++;
        if (from !== S.user) toast(`New direct message from ${from}`, { code: 'direct' });
      }
      renderDmList();
      updateTitle();
    },

    user_joined(f) {
      const room = S.rooms.get(String(f.room));
      if (!room) return;
      const user = String(f.user);
      const had = room.presence.has(user);
      room.presence.add(user);
      if (!had && user !== S.user) addNotice(room, `${user} joined`, 'join', f.ts);
      if (isActiveRoom(room.name)) renderRoomHead();
      if (peopleRoomName() === room.name) renderPeople();
      renderDmHead();
    },

    user_left(f) {
      const room = S.rooms.get(String(f.room));
      if (!room) return;
      const user = String(f.user);
      const had = room.presence.delete(user);
      clearTyping(room, user);
      const how = { leave: 'left', disconnect: 'disconnected', timeout: 'lost connection' }[f.reason] || 'left';
      if (had && user !== S.user) addNotice(room, `${user} ${how}`, 'leave', f.ts);
      if (isActiveRoom(room.name)) renderRoomHead();
      if (peopleRoomName() === room.name) renderPeople();
      renderDmHead();
    },

    typing(f) {
      const room = S.rooms.get(String(f.room));
      if (!room) return;
      const user = String(f.user);
      if (user === S.user) return; // our own other tab
      clearTimeout(room.typing.get(user));
      if (f.active === true) {
        room.typing.set(user, setTimeout(() => { room.typing.delete(user); if (isActiveRoom(room.name)) renderTyping(); }, TYPING_EXPIRE_MS));
      } else {
        room.typing.delete(user);
      }
      if (isActiveRoom(room.name)) renderTyping();
    },

    presence(f) {
      const room = S.rooms.get(String(f.room));
      if (!room) return;
      room.presence = new Set((Array.isArray(f.users) ? f.users : []).map(String));
      if (S.user && room.joined) room.presence.add(S.user);
      if (isActiveRoom(room.name)) renderRoomHead();
      if (peopleRoomName() === room.name) renderPeople();
    },

    pong() { /* lastRx was updated on receipt */ },

    error(f) {
      const meta = f.ref != null ? S.refs.get(f.ref) : null;
      if (f.ref != null) S.refs.delete(f.ref);
      handleError(String(f.code || 'internal'), typeof f.message === 'string' ? f.message : '', f, meta);
    },
  };

  let lastRateToast = 0;
  const ERROR_TEXT = {
    bad_frame: 'The server could not read a command.',
    invalid: 'The server rejected a command as invalid.',
    not_member: 'You are not a member of that room.',
    user_offline: 'That user is offline; the message was not delivered.',
    rate_limited: 'You are sending too fast.',
    too_large: 'That message is too long.',
    unavailable: 'The chat service is temporarily unavailable.',
    internal: 'The server had an internal error.',
  };

  function handleError(code, message, f, meta) {
    const retryMs = Math.max(Number(f.retry_ms) || 1000, 200);
    let text = ERROR_TEXT[code] || `Error: ${code}`;
    if (code === 'rate_limited') text = `You are sending too fast. Retrying in ${(retryMs / 1000).toFixed(1)} s.`;
    if (code === 'rate_limited' && !meta) {
      // We cannot tell which command was refused: send every unconfirmed room
      // message again a bit later (client_id makes that safe).
      const now = Date.now();
      for (const item of S.pending.values()) {
        if (item.room && item.inFlight && item.status === 'pending' && item.sentAt <= now) {
          item.inFlight = false;
          item.autoRetries++;
          setTimeout(() => { if (item.status === 'pending' && !item.inFlight) transmit(item); }, retryMs + Math.random() * 250);
        }
      }
      if (now - lastRateToast > 3000) { lastRateToast = now; toast('You are sending too fast; slowing down.', { tone: 'warn', code }); }
      return;
    }
    if (meta && (meta.kind === 'send' || meta.kind === 'dm')) {
      const item = S.pending.get(meta.clientId);
      if (item) {
        if ((code === 'rate_limited' || code === 'unavailable') && item.autoRetries < MAX_AUTO_RETRIES) {
          item.autoRetries++;
          const wait = code === 'rate_limited' ? retryMs + Math.random() * 250 : 1000 * 2 ** item.autoRetries * Math.random() + 500;
          item.inFlight = false;
          setTimeout(() => { if (item.status === 'pending' && !item.inFlight) transmit(item); }, wait);
          if (code === 'unavailable') text = 'The chat service is temporarily unavailable. Retrying…';
        } else if (code === 'not_member' && item.room && !item.rejoinTried) {
          item.rejoinTried = true;
          item.inFlight = false;
          const room = S.rooms.get(item.room);
          if (room) { room.joined = false; sendJoin(room); }
          return;
        } else {
          if (code === 'user_offline') text = `${item.peer} is offline. The message was not delivered.`;
          else if (code === 'too_large') text = `That message is too long (the limit is ${maxChars()} characters).`;
          failItem(item, message || text);
        }
      }
      toast(text, { tone: code === 'rate_limited' ? 'warn' : 'error', code });
      return;
    }
    if (meta && meta.kind === 'join') {
      const room = S.rooms.get(meta.room);
      if (room && code === 'invalid' && meta.withSince) {
        // A server that does not take our since/epoch: join plainly (history is replaced).
        room.epoch = null;
        sendJoin(room);
        return;
      }
      if (room && (code === 'rate_limited' || code === 'unavailable')) {
        setTimeout(() => { if (isOpen() && !room.joined && S.rooms.get(room.name) === room) sendJoin(room); }, retryMs + Math.random() * 500);
        return;
      }
      if (room && !room.everJoined) {
        removeRoom(room.name);
        D.joinError.textContent = message || text;
      }
      toast(`Could not join #${meta.room}: ${message || text}`, { tone: 'error', code });
      return;
    }
    if (meta && meta.kind === 'typing') return; // never worth bothering the user
    if (code === 'not_member' && meta && meta.kind === 'who') return;
    toast(message && code !== 'rate_limited' ? `${text} ${message}` : text, { tone: code === 'rate_limited' ? 'warn' : 'error', code });
  }

  // ---------------------------------------------------------------- rooms: model
  function ensureRoom(name) {
    let room = S.rooms.get(name);
    if (!room) { room = newRoom(name); S.rooms.set(name, room); saveRooms(); }
    return room;
  }
  function removeRoom(name) {
    const room = S.rooms.get(name);
    if (!room) return;
    for (const t of room.typing.values()) clearTimeout(t);
    for (const [cid, item] of S.pending) if (item.room === name) S.pending.delete(cid);
    S.rooms.delete(name);
    saveRooms();
    if (isActiveRoom(name)) {
      const next = S.rooms.keys().next();
      S.active = null;
      if (!next.done) setActive({ kind: 'room', id: next.value }, false);
      else { S.lastRoom = null; renderAll(); }
    } else {
      if (S.lastRoom === name) S.lastRoom = null;
      renderRoomList();
    }
    updateTitle();
  }
  function saveRooms() {
    store.set('sessionStorage', K.rooms, JSON.stringify([...S.rooms.keys()]));
  }

  function sendJoin(room) {
    const frame = { type: 'join', room: room.name };
    const withSince = room.epoch != null;
    if (withSince) { frame.since = room.lastId; frame.epoch = room.epoch; }
    room.rejoin = withSince;
    room.joining = true;
    room.joinRef = send(frame, { kind: 'join', room: room.name, withSince });
  }

  function msgItem(m, extra) {
    const item = {
      kind: 'msg',
      id: m.id != null ? Number(m.id) : null,
      from: String(m.from != null ? m.from : ''),
      text: String(m.text != null ? m.text : ''),
      ts: Number(m.ts) || Date.now(),
      status: m.status || 'sent',
      node: null,
      ...extra,
    };
    item.node = renderMessage(item);
    return item;
  }

  /** Adds a server message to a room unless its id was seen. Returns true when added. */
  function addRoomMessage(room, m, opts) {
    const id = Number(m.id);
    if (!Number.isFinite(id) || room.ids.has(id)) return false;
    room.ids.add(id);
    if (id > room.lastId) room.lastId = id;
    const item = msgItem({ ...m, id, status: 'sent' });
    insertSorted(room, item, opts && opts.quiet);
    return true;
  }

  /** Inserts an item with an id after the last item that has a smaller id; pending items stay last. */
  function insertSorted(room, item, quiet) {
    let i = room.items.length;
    while (i > 0) {
      const prev = room.items[i - 1];
      if (prev.kind === 'msg' && (prev.id == null || prev.id > item.id)) { i--; continue; }
      break;
    }
    const active = isActiveRoom(room.name);
    if (i === room.items.length) {
      pushItem(room.items, item, active ? D.roomMessages : null, D.roomScroller, D.roomJump, quiet);
    } else {
      const next = room.items[i];
      room.items.splice(i, 0, item);
      if (active) D.roomMessages.insertBefore(item.node, next.node);
    }
  }

  function pushItem(items, item, list, scroller, jump, quiet) {
    items.push(item);
    while (items.length > MAX_ITEMS) {
      const old = items.shift();
      if (old.node) old.node.remove();
    }
    if (!list) return;
    const stick = nearBottom(scroller) || (item.kind === 'msg' && item.from === S.user && item.status === 'pending');
    list.append(item.node);
    if (stick) scrollToBottom(scroller, jump);
    else if (!quiet && jump) jump.hidden = false;
  }

  function replaceHistory(room, history) {
    const keep = room.items.filter((i) => i.kind === 'msg' && i.id == null); // own, not yet acked
    room.items = [];
    room.ids = new Set();
    room.lastId = 0;
    for (const m of history) {
      const id = Number(m.id);
      if (!Number.isFinite(id) || room.ids.has(id)) continue;
      room.ids.add(id);
      if (id > room.lastId) room.lastId = id;
      room.items.push(msgItem({ ...m, id, status: 'sent' }));
    }
    room.items.push(...keep);
    if (isActiveRoom(room.name)) renderRoomPane(true);
  }

  function addNotice(room, text, kind, ts) {
    const item = { kind: 'notice', text, noticeKind: kind, ts: Number(ts) || Date.now(), node: null };
    item.node = h('li', { className: `notice notice-${kind}`, data: { testid: 'notice', kind } },
      h('span', { className: 'notice-text', text }), ' ', timeEl(item.ts));
    pushItem(room.items, item, isActiveRoom(room.name) ? D.roomMessages : null, D.roomScroller, D.roomJump, true);
  }

  function clearTyping(room, user) {
    if (!room.typing.has(user)) return;
    clearTimeout(room.typing.get(user));
    room.typing.delete(user);
    if (isActiveRoom(room.name)) renderTyping();
  }

  // ---------------------------------------------------------------- DMs: model
  function ensureDm(peer) {
    let dm = S.dms.get(peer);
    if (!dm) { dm = newDm(peer); S.dms.set(peer, dm); renderDmList(); }
    return dm;
  }

  // ---------------------------------------------------------------- sending
  function submitRoom() {
    if (!S.active || S.active.kind !== 'room') return;
    const raw = D.messageInput.value;
    const text = raw.trim();
    if (!text) return;
    if (charCount(text) > maxChars()) { toast(`That message is too long (the limit is ${maxChars()} characters).`, { tone: 'error', code: 'too_large' }); return; }
    stopTypingOut(true);
    const room = S.rooms.get(S.active.id);
    if (!room) return;
    const item = msgItem({ id: null, from: S.user, text, ts: Date.now(), status: 'pending' },
      { clientId: clientId(), room: room.name, autoRetries: 0, inFlight: false, sentAt: 0 });
    S.pending.set(item.clientId, item);
    pushItem(room.items, item, D.roomMessages, D.roomScroller, D.roomJump);
    D.messageInput.value = '';
    autoGrow(D.messageInput);
    updateCounter(D.messageInput, D.roomCounter, D.sendButton);
    transmit(item);
  }

  function submitDm() {
    if (!S.active || S.active.kind !== 'dm') return;
    const text = D.dmInput.value.trim();
    if (!text) return;
    if (charCount(text) > maxChars()) { toast(`That message is too long (the limit is ${maxChars()} characters).`, { tone: 'error', code: 'too_large' }); return; }
    const dm = ensureDm(S.active.id);
    const item = msgItem({ id: null, from: S.user, text, ts: Date.now(), status: 'pending' },
      { clientId: clientId(), peer: dm.peer, autoRetries: 0, inFlight: false, sentAt: 0 });
    S.pending.set(item.clientId, item);
    pushItem(dm.items, item, D.dmMessages, D.dmScroller, D.dmJump);
    D.dmInput.value = '';
    autoGrow(D.dmInput);
    updateCounter(D.dmInput, D.dmCounter, D.dmSend);
    transmit(item);
  }

  /** Sends a pending item if the connection (and for rooms the membership) allows; else it waits. */
  function transmit(item) {
    if (!isOpen()) return;
    let frame;
    if (item.room) {
      const room = S.rooms.get(item.room);
      if (!room || !room.joined) return;
      frame = { type: 'send', room: item.room, text: item.text, client_id: item.clientId };
    } else {
      frame = { type: 'dm', to: item.peer, text: item.text };
    }
    const ref = send(frame, { kind: item.room ? 'send' : 'dm', clientId: item.clientId });
    if (ref != null) { item.inFlight = true; item.sentAt = Date.now(); }
  }

  function oldestInFlight(room) {
    for (const item of S.pending.values()) {
      if (!item.inFlight) continue;
      if (room != null ? item.room === room : item.peer != null) return item;
    }
    return null;
  }

  function confirmItem(item, ack) {
    S.pending.delete(item.clientId);
    item.inFlight = false;
    const id = Number(ack.id);
    if (item.room) {
      const room = S.rooms.get(item.room);
      if (!room) return;
      const idx = room.items.indexOf(item);
      if (idx >= 0) room.items.splice(idx, 1);
      if (Number.isFinite(id) && room.ids.has(id)) {
        // Already shown (it came back in a recovered history): drop the duplicate.
        item.node.remove();
        return;
      }
      item.id = Number.isFinite(id) ? id : null;
      item.ts = Number(ack.ts) || item.ts;
      item.status = 'sent';
      if (item.id != null) {
        room.ids.add(item.id);
        if (item.id > room.lastId) room.lastId = item.id;
      }
      const fresh = renderMessage(item);
      item.node.replaceWith(fresh);
      item.node = fresh;
      if (item.id != null) {
        if (isActiveRoom(room.name)) item.node.remove();
        insertSorted(room, item, true);
      } else {
        room.items.push(item);
      }
    } else {
      const dm = S.dms.get(item.peer);
      if (dm && ack.id != null) {
        if (dm.ids.has(String(ack.id))) {
          const idx = dm.items.indexOf(item);
          if (idx >= 0) dm.items.splice(idx, 1);
          item.node.remove();
          return;
        }
        dm.ids.add(String(ack.id));
      }
      item.id = Number.isFinite(id) ? id : null;
      item.ts = Number(ack.ts) || item.ts;
      item.status = 'sent';
      const fresh = renderMessage(item);
      item.node.replaceWith(fresh);
      item.node = fresh;
    }
  }

  function failItem(item, why) {
    item.status = 'failed';
    item.inFlight = false;
    item.error = why;
    const fresh = renderMessage(item);
    item.node.replaceWith(fresh);
    item.node = fresh;
  }

  function retryItem(item) {
    if (item.status !== 'failed') return;
    item.status = 'pending';
    item.autoRetries = 0;
    item.rejoinTried = false;
    item.error = null;
    S.pending.set(item.clientId, item);
    const fresh = renderMessage(item);
    item.node.replaceWith(fresh);
    item.node = fresh;
    transmit(item);
  }

  function discardItem(item) {
    S.pending.delete(item.clientId);
    const owner = item.room ? S.rooms.get(item.room) : S.dms.get(item.peer);
    if (owner) {
      const idx = owner.items.indexOf(item);
      if (idx >= 0) owner.items.splice(idx, 1);
    }
    item.node.remove();
  }

  function sweepPending(now) {
    for (const item of S.pending.values()) {
      if (item.status !== 'pending' || !item.inFlight) continue;
      const waited = now - item.sentAt;
      if (item.room && waited > ACK_RESEND_MS && item.autoRetries < MAX_AUTO_RETRIES) {
        item.autoRetries++;
        item.inFlight = false;
        transmit(item); // same client_id: never delivered twice
      } else if (waited > ACK_TIMEOUT_MS) {
        failItem(item, 'No confirmation from the server');
      }
    }
  }

  // typing, outgoing
  function onRoomTyping() {
    updateCounter(D.messageInput, D.roomCounter, D.sendButton);
    autoGrow(D.messageInput);
    if (!S.active || S.active.kind !== 'room') return;
    const room = S.rooms.get(S.active.id);
    if (!room || !room.joined || !isOpen()) return;
    const T = S.typingOut;
    if (!D.messageInput.value.trim()) { stopTypingOut(true); return; }
    const now = Date.now();
    if (T.active && T.room !== room.name) stopTypingOut(true);
    // While typing: one active:true every 2.5 s (it also keeps the receivers'
    // 5 s expiry from firing). Typing again after a send/stop: at once, but
    // not more often than every 0.6 s (fast senders would hit the rate limit).
    const gap = T.active ? TYPING_THROTTLE_MS : TYPING_RESTART_MS;
    if (now - T.lastSent >= gap || T.room !== room.name) {
      send({ type: 'typing', room: room.name, active: true }, { kind: 'typing' });
      T.active = true;
      T.room = room.name;
      T.lastSent = now;
    }
    clearTimeout(T.idle);
    T.idle = setTimeout(() => stopTypingOut(true), TYPING_IDLE_MS);
  }
  function stopTypingOut(notify) {
    const T = S.typingOut;
    clearTimeout(T.idle);
    T.idle = null;
    if (T.active && notify && isOpen() && S.rooms.get(T.room)?.joined) {
      send({ type: 'typing', room: T.room, active: false }, { kind: 'typing' });
    }
    T.active = false;
  }

  // ---------------------------------------------------------------- navigation
  function isActiveRoom(name) { return !!S.active && S.active.kind === 'room' && S.active.id === name; }
  function isActiveDm(peer) { return !!S.active && S.active.kind === 'dm' && S.active.id === peer; }

  function setActive(target, focus) {
    if (S.active && S.active.kind === 'room' && !(target.kind === 'room' && target.id === S.active.id)) stopTypingOut(true);
    S.active = target;
    if (target.kind === 'room') {
      S.lastRoom = target.id;
      const room = S.rooms.get(target.id);
      if (room) {
        room.unread = 0;
        if (room.joined) send({ type: 'who', room: room.name }, { kind: 'who', room: room.name });
      }
    } else {
      const dm = ensureDm(target.id);
      dm.unread = 0;
    }
    store.set('sessionStorage', K.active, JSON.stringify(target));
    closeDrawers();
    renderAll();
    updateTitle();
    if (focus) (target.kind === 'room' ? D.messageInput : D.dmInput).focus();
  }

  function openDm(peer) {
    if (!peer || peer === S.user) return;
    ensureDm(peer);
    setActive({ kind: 'dm', id: peer }, true);
  }

  function joinRoomByName(raw) {
    const name = raw.trim().replace(/^#/, '');
    D.joinError.textContent = '';
    if (!NAME_RE.test(name)) {
      D.joinError.textContent = 'Room names are 1-32 letters, digits, _ . - (starting with a letter or digit).';
      return false;
    }
    if (!S.rooms.has(name)) {
      const room = ensureRoom(name);
      if (isOpen()) sendJoin(room);
    }
    setActive({ kind: 'room', id: name }, true);
    return true;
  }

  function leaveRoom(name) {
    const room = S.rooms.get(name);
    if (!room) return;
    if (room.joined || room.joining) send({ type: 'leave', room: name }, { kind: 'leave', room: name });
    removeRoom(name);
  }

  // ---------------------------------------------------------------- rendering
  function renderAll() {
    renderRoomList();
    renderDmList();
    const kind = S.active ? S.active.kind : 'room';
    D.roomPane.hidden = kind !== 'room';
    D.dmPane.hidden = kind !== 'dm';
    document.body.dataset.pane = kind;
    if (kind === 'room') renderRoomPane(true); else renderDmPane();
    renderPeople();
  }

  function renderRoomList() {
    const frag = document.createDocumentFragment();
    for (const room of S.rooms.values()) {
      const active = isActiveRoom(room.name);
      const btn = h('button', {
        className: 'nav-btn',
        attrs: { type: 'button', 'aria-current': active ? 'true' : null, title: `#${room.name}` },
        on: { click: () => setActive({ kind: 'room', id: room.name }, true) },
      }, h('span', { className: 'nav-hash', text: '#', attrs: { 'aria-hidden': 'true' } }),
      h('span', { className: 'nav-name', text: room.name }));
      if (room.unread > 0) {
        btn.append(h('span', { className: 'badge', text: room.unread > 99 ? '99+' : String(room.unread), data: { testid: 'unread-count' }, attrs: { 'aria-label': `${plural(room.unread, 'unread message', 'unread messages')}` } }));
      }
      frag.append(h('li', { className: active ? 'active' : '', data: { testid: 'room-item', room: room.name, unread: room.unread, joined: room.joined } }, btn));
    }
    D.roomList.replaceChildren(frag);
  }

  function renderDmList() {
    const frag = document.createDocumentFragment();
    for (const dm of S.dms.values()) {
      const active = isActiveDm(dm.peer);
      const btn = h('button', {
        className: 'nav-btn',
        attrs: { type: 'button', 'aria-current': active ? 'true' : null, title: `Direct messages with ${dm.peer}` },
        on: { click: () => setActive({ kind: 'dm', id: dm.peer }, true) },
      }, avatar(dm.peer), h('span', { className: 'nav-name', text: dm.peer }));
      if (dm.unread > 0) btn.append(h('span', { className: 'badge', text: String(dm.unread), data: { testid: 'unread-count' } }));
      frag.append(h('li', { className: active ? 'active' : '', data: { testid: 'dm-item', peer: dm.peer, unread: dm.unread } }, btn));
    }
    D.dmList.replaceChildren(frag);
    D.dmEmpty.hidden = S.dms.size > 0;
  }

  function renderRoomHead() {
    const room = S.active && S.active.kind === 'room' ? S.rooms.get(S.active.id) : null;
    D.roomTitle.textContent = room ? `#${room.name}` : 'No room';
    D.roomCount.textContent = room ? (room.joined ? `${plural(room.presence.size, 'person', 'people')} here` : 'joining…') : '';
    D.leaveButton.hidden = !room;
    D.roomPane.dataset.room = room ? room.name : '';
  }

  function renderRoomPane(toBottom) {
    const room = S.active && S.active.kind === 'room' ? S.rooms.get(S.active.id) : null;
    renderRoomHead();
    D.roomComposer.hidden = !room;
    if (!room) {
      D.roomMessages.replaceChildren(h('li', { className: 'empty', text: 'Join a room to start chatting.' }));
      renderTyping();
      return;
    }
    D.roomMessages.replaceChildren(...room.items.map((i) => i.node));
    renderTyping();
    if (toBottom) scrollToBottom(D.roomScroller, D.roomJump);
  }

  function renderDmHead() {
    if (!S.active || S.active.kind !== 'dm') return;
    const peer = S.active.id;
    D.dmTitle.textContent = `@${peer}`;
    let online = false;
    for (const room of S.rooms.values()) if (room.presence.has(peer)) { online = true; break; }
    D.dmStatus.textContent = online ? 'online' : '';
    D.dmPane.dataset.peer = peer;
  }

  function renderDmPane() {
    const dm = S.dms.get(S.active.id);
    renderDmHead();
    D.dmMessages.replaceChildren(...(dm ? dm.items.map((i) => i.node) : []));
    if (dm && dm.items.length === 0) D.dmMessages.append(h('li', { className: 'empty', text: `This is the start of your conversation with ${dm.peer}.` }));
    scrollToBottom(D.dmScroller, D.dmJump);
  }

  /** The room whose online list is shown: the open room, or the last one while a DM is open. */
  function peopleRoomName() { return S.active && S.active.kind === 'room' ? S.active.id : S.lastRoom; }

  function renderPeople() {
    const roomName = peopleRoomName();
    const room = roomName ? S.rooms.get(roomName) : null;
    D.peopleTitle.textContent = room ? `Online in #${room.name}` : 'Online';
    const users = room ? [...room.presence].sort((a, b) => (a === S.user ? -1 : b === S.user ? 1 : a.localeCompare(b))) : [];
    const frag = document.createDocumentFragment();
    for (const user of users) {
      const me = user === S.user;
      const inner = me
        ? h('span', { className: 'person me-person' }, avatar(user), h('span', { className: 'person-name', text: user }), h('span', { className: 'muted small', text: ' (you)' }))
        : h('button', {
          className: 'person',
          attrs: { type: 'button', title: `Send a direct message to ${user}` },
          on: { click: () => openDm(user) },
        }, avatar(user), h('span', { className: 'person-name', text: user }));
      frag.append(h('li', { data: { testid: 'online-user', user } }, inner));
    }
    D.onlineList.replaceChildren(frag);
    D.togglePeople.setAttribute('aria-label', `People online: ${users.length}`);
  }

  function renderTyping() {
    const room = S.active && S.active.kind === 'room' ? S.rooms.get(S.active.id) : null;
    const users = room ? [...room.typing.keys()].sort() : [];
    let text = '';
    if (users.length === 1) text = `${users[0]} is typing…`;
    else if (users.length === 2) text = `${users[0]} and ${users[1]} are typing…`;
    else if (users.length === 3) text = `${users[0]}, ${users[1]} and ${users[2]} are typing…`;
    else if (users.length > 3) text = `${users[0]}, ${users[1]} and ${users.length - 2} others are typing…`;
    D.typingIndicator.textContent = text;
    D.typingIndicator.dataset.active = String(users.length > 0);
    D.typingIndicator.dataset.users = users.join(',');
  }

  function avatar(name) {
    const a = h('span', { className: 'avatar', text: (String(name)[0] || '?').toUpperCase(), attrs: { 'aria-hidden': 'true' } });
    a.style.setProperty('--h', String(hue(name)));
    return a;
  }

  function renderMessage(item) {
    const mine = item.from === S.user;
    const li = h('li', {
      className: `msg${mine ? ' mine' : ''} status-${item.status}`,
      data: { testid: 'message-item', id: item.id != null ? item.id : null, from: item.from, status: item.status, mine: String(mine) },
    });
    const meta = h('div', { className: 'msg-meta' },
      avatar(item.from),
      h('span', { className: 'msg-from', text: item.from }),
      ' ',
      timeEl(item.ts));
    if (item.status === 'pending') meta.append(h('span', { className: 'msg-state', text: 'sending…', data: { testid: 'message-pending' } }));
    if (item.status === 'failed') meta.append(h('span', { className: 'msg-state msg-failed', text: `not sent${item.error ? `: ${item.error}` : ''}` }));
    li.append(meta, h('div', { className: 'msg-text', text: item.text, data: { testid: 'message-text' } }));
    if (item.status === 'failed') {
      li.append(h('div', { className: 'msg-actions' },
        h('button', { className: 'link-btn', text: 'Retry', attrs: { type: 'button' }, data: { testid: 'retry-message' }, on: { click: () => retryItem(item) } }),
        h('button', { className: 'link-btn', text: 'Discard', attrs: { type: 'button' }, on: { click: () => discardItem(item) } })));
    }
    return li;
  }

  function nearBottom(scroller) { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80; }
  function scrollToBottom(scroller, jump) {
    scroller.scrollTop = scroller.scrollHeight;
    if (jump) jump.hidden = true;
  }

  function updateTitle() {
    let n = 0;
    for (const r of S.rooms.values()) n += r.unread;
    for (const d of S.dms.values()) n += d.unread;
    document.title = n > 0 ? `(${n}) relay chat` : 'relay chat';
    D.toggleRooms.dataset.unread = String(n);
  }

  function updateCounter(input, counter, button) {
    const n = charCount(input.value.trim());
    const max = maxChars();
    const over = n > max;
    counter.textContent = n > max * 0.8 ? `${n}/${max}` : '';
    counter.classList.toggle('over', over);
    button.disabled = over;
  }

  function autoGrow(ta) {
    const scroller = ta === D.dmInput ? D.dmScroller : D.roomScroller;
    const stick = nearBottom(scroller);
    ta.style.height = 'auto';
    ta.style.height = `${Math.min(ta.scrollHeight, 200)}px`;
    if (stick) scroller.scrollTop = scroller.scrollHeight; // the list got shorter: keep the newest in view
  }

  // ---------------------------------------------------------------- drawers (narrow screens)
  function toggleDrawer(which) {
    const open = document.body.dataset.drawer === which ? '' : which;
    document.body.dataset.drawer = open;
    D.toggleRooms.setAttribute('aria-expanded', String(open === 'rooms'));
    D.togglePeople.setAttribute('aria-expanded', String(open === 'people'));
    D.scrim.hidden = !open;
    if (open === 'rooms') D.roomsPanel.querySelector('input, button')?.focus();
    if (open === 'people') D.peoplePanel.querySelector('button')?.focus();
  }
  function closeDrawers() {
    if (!document.body.dataset.drawer) return;
    document.body.dataset.drawer = '';
    D.toggleRooms.setAttribute('aria-expanded', 'false');
    D.togglePeople.setAttribute('aria-expanded', 'false');
    D.scrim.hidden = true;
  }

  // ---------------------------------------------------------------- HTTP API (token mode)
  function apiUrl(path) { return new URL(path, document.baseURI).toString(); }
  async function postJson(path, body) {
    const res = await fetch(apiUrl(path), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify(body),
      credentials: 'same-origin',
    });
    let data = null;
    try { data = await res.json(); } catch { /* empty body */ }
    return { status: res.status, data: data || {} };
  }
  function expiryMs(v) {
    if (v == null) return null;
    if (typeof v === 'number') return v < 1e12 ? v * 1000 : v;
    const n = Number(v);
    if (Number.isFinite(n)) return n < 1e12 ? n * 1000 : n;
    const t = Date.parse(v);
    return Number.isFinite(t) ? t : null;
  }

  async function doLogin(username, password) {
    const r = await postJson('api/login', { username, password });
    if (r.status === 200 && r.data.token) {
      const creds = { token: String(r.data.token), expires_at: expiryMs(r.data.expires_at) };
      store.set('localStorage', K.token, JSON.stringify(creds));
      store.set('localStorage', K.lastName, username);
      startSession(creds);
      return null;
    }
    if (r.status === 401) return 'Wrong user name or password.';
    if (r.status === 429) return 'Too many attempts. Please wait a moment.';
    return r.data.message || `Login failed (HTTP ${r.status}).`;
  }

  async function onLoginSubmit(ev) {
    ev.preventDefault();
    const username = D.usernameInput.value.trim();
    const password = D.passwordInput.value;
    if (!username || !password) { D.loginError.textContent = 'Enter your user name and password.'; return; }
    setLoginBusy(true);
    D.loginError.textContent = '';
    try {
      const err = await doLogin(username, password);
      if (err) { setLoginBusy(false); D.loginError.textContent = err; }
    } catch {
      setLoginBusy(false);
      D.loginError.textContent = 'Could not reach the server. Please try again.';
    }
  }

  async function onRegister() {
    const username = D.usernameInput.value.trim();
    const password = D.passwordInput.value;
    if (!NAME_RE.test(username)) { D.loginError.textContent = 'User names are 1-32 letters, digits, _ . - (starting with a letter or digit).'; D.usernameInput.focus(); return; }
    if (!password) { D.loginError.textContent = 'Choose a password.'; D.passwordInput.focus(); return; }
    setLoginBusy(true);
    D.loginError.textContent = '';
    try {
      const r = await postJson('api/register', { username, password });
      if (r.status === 201 || r.status === 200) {
        const err = await doLogin(username, password);
        if (err) { setLoginBusy(false); D.loginError.textContent = err; }
        return;
      }
      setLoginBusy(false);
      if (r.status === 409) D.loginError.textContent = 'That user name is taken. Log in, or pick another name.';
      else if (r.status === 400) D.loginError.textContent = r.data.message || 'That user name or password is not accepted.';
      else D.loginError.textContent = r.data.message || `Registration failed (HTTP ${r.status}).`;
    } catch {
      setLoginBusy(false);
      D.loginError.textContent = 'Could not reach the server. Please try again.';
    }
  }

  function onGuestSubmit(ev) {
    ev.preventDefault();
    const name = D.nameInput.value.trim();
    if (!NAME_RE.test(name)) {
      D.loginError.textContent = 'Names are 1-32 letters, digits, _ . - (starting with a letter or digit).';
      D.nameInput.focus();
      return;
    }
    startSession({ user: name });
  }

  // ---------------------------------------------------------------- wiring
  function composerKeys(input, submit) {
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.altKey && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        submit();
      }
    });
  }

  function wire() {
    D.guestForm.addEventListener('submit', onGuestSubmit);
    D.tokenForm.addEventListener('submit', onLoginSubmit);
    D.registerButton.addEventListener('click', onRegister);
    D.logout.addEventListener('click', () => {
      if (S.ws && S.welcomed) stopTypingOut(true);
      endSession('');
    });
    D.bannerRetry.addEventListener('click', reconnectNow);

    D.joinForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (joinRoomByName(D.roomInput.value)) D.roomInput.value = '';
    });
    D.leaveButton.addEventListener('click', () => { if (S.active && S.active.kind === 'room') leaveRoom(S.active.id); });
    D.roomComposer.addEventListener('submit', (ev) => { ev.preventDefault(); submitRoom(); D.messageInput.focus(); });
    composerKeys(D.messageInput, submitRoom);
    D.messageInput.addEventListener('input', onRoomTyping);
    D.messageInput.addEventListener('blur', () => stopTypingOut(true));

    D.dmComposer.addEventListener('submit', (ev) => { ev.preventDefault(); submitDm(); D.dmInput.focus(); });
    composerKeys(D.dmInput, submitDm);
    D.dmInput.addEventListener('input', () => { autoGrow(D.dmInput); updateCounter(D.dmInput, D.dmCounter, D.dmSend); });
    D.dmBack.addEventListener('click', () => {
      const target = S.lastRoom && S.rooms.has(S.lastRoom) ? S.lastRoom : S.rooms.keys().next().value;
      if (target) setActive({ kind: 'room', id: target }, true);
    });
    D.dmClose.addEventListener('click', () => {
      if (!S.active || S.active.kind !== 'dm') return;
      const peer = S.active.id;
      for (const [cid, item] of S.pending) if (item.peer === peer) S.pending.delete(cid);
      S.dms.delete(peer);
      const target = S.lastRoom && S.rooms.has(S.lastRoom) ? S.lastRoom : S.rooms.keys().next().value;
      S.active = null;
      if (target) setActive({ kind: 'room', id: target }, true); else renderAll();
    });

    for (const [scroller, jump] of [[D.roomScroller, D.roomJump], [D.dmScroller, D.dmJump]]) {
      scroller.addEventListener('scroll', () => { if (nearBottom(scroller)) jump.hidden = true; }, { passive: true });
      jump.addEventListener('click', () => scrollToBottom(scroller, jump));
    }

    D.toggleRooms.addEventListener('click', () => toggleDrawer('rooms'));
    D.togglePeople.addEventListener('click', () => toggleDrawer('people'));
    D.scrim.addEventListener('click', closeDrawers);
    document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeDrawers(); });

    window.addEventListener('online', () => { if (S.creds && S.retryTimer) reconnectNow(); });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && S.creds && S.retryTimer && S.attempt > 2) reconnectNow();
    });
    window.addEventListener('pagehide', () => { if (S.ws) try { S.ws.close(1000, 'page closed'); } catch { /* ignore */ } });
  }

  async function loadConfig() {
    try {
      const res = await fetch(apiUrl('api/config'), { cache: 'no-store', headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const cfg = await res.json();
      if (cfg && typeof cfg === 'object') {
        S.config = { ...S.config, ...cfg };
      }
    } catch {
      // Older server or static preview: guest mode with the protocol's defaults.
    }
    S.mode = S.config.auth === 'token' ? 'token' : 'guest';
    document.body.dataset.auth = S.mode;
  }

  async function boot() {
    bindDom();
    wire();
    setPhase('idle');
    setBanner('hidden');
    await loadConfig();
    // Same tab, page reloaded: carry on where we were.
    const rooms = store.json('sessionStorage', K.rooms);
    if (Array.isArray(rooms)) for (const r of rooms) if (typeof r === 'string' && NAME_RE.test(r)) S.rooms.set(r, newRoom(r));
    const active = store.json('sessionStorage', K.active);
    if (active && (active.kind === 'room' ? S.rooms.has(active.id) : active.kind === 'dm' && NAME_RE.test(String(active.id)))) {
      S.active = { kind: active.kind, id: String(active.id) };
      if (active.kind === 'dm') ensureDm(S.active.id);
      else S.lastRoom = S.active.id;
    }
    if (S.mode === 'token') {
      const saved = store.json('localStorage', K.token);
      const exp = saved && saved.expires_at;
      if (saved && saved.token && (!exp || exp > Date.now() + 5000)) {
        showLogin('');
        startSession({ token: saved.token, expires_at: exp });
        return;
      }
      store.del('localStorage', K.token);
      showLogin(saved ? 'Your session has expired. Please log in again.' : '');
      return;
    }
    const guest = store.get('sessionStorage', K.guest);
    showLogin('');
    if (guest && NAME_RE.test(guest)) {
      D.nameInput.value = guest;
      startSession({ user: guest });
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
