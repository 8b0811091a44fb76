// relay web chat: entry point. Binds the page's elements, wires its
// controls, loads the server's config and resumes the tab's session (guest
// name or stored token). The protocol work (connection, reconnect, recovery,
// outbox) is done by the client library in web/lib/relay.
import { D, bindDom, scrollToBottom, nearBottom } from './dom.js';
import { S, NAME_RE, newRoom } from './state.js';
import { store, K } from './storage.js';
import { setPhase, setBanner } from './status.js';
import { joinRoomByName, leaveRoom } from './rooms.js';
import { ensureDm, closeDm } from './dms.js';
import { submitRoom, submitDm, autoGrow, updateCounter } from './outbox.js';
import { onComposerInput, stopTyping, stopAllTyping } from './typing.js';
import { backToRoom, toggleDrawer, closeDrawers } from './nav.js';
import { startSession, endSession, reconnectNow } from './connection.js';
import { showLogin, onLoginSubmit, onRegister, onGuestSubmit, loadConfig } from './login.js';

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
  D.logout.addEventListener('click', () => { stopAllTyping(); endSession(''); });
  D.bannerRetry.addEventListener('click', reconnectNow);

  D.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    if (joinRoomByName(D.roomInput.value)) D.roomInput.value = '';
  });
  D.leaveButton.addEventListener('click', () => { if (S.active && S.active.kind === 'room') leaveRoom(S.active.id); });
  D.roomComposer.addEventListener('submit', (ev) => { ev.preventDefault(); submitRoom(); D.messageInput.focus(); });
  composerKeys(D.messageInput, submitRoom);
  D.messageInput.addEventListener('input', () => {
    updateCounter(D.messageInput, D.roomCounter, D.sendButton);
    autoGrow(D.messageInput);
    onComposerInput();
  });
  D.messageInput.addEventListener('blur', () => { if (S.active && S.active.kind === 'room') stopTyping(S.active.id); });

  D.dmComposer.addEventListener('submit', (ev) => { ev.preventDefault(); submitDm(); D.dmInput.focus(); });
  composerKeys(D.dmInput, submitDm);
  D.dmInput.addEventListener('input', () => { autoGrow(D.dmInput); updateCounter(D.dmInput, D.dmCounter, D.dmSend); });
  D.dmBack.addEventListener('click', backToRoom);
  D.dmClose.addEventListener('click', () => {
    if (!S.active || S.active.kind !== 'dm') return;
    closeDm(S.active.id);
    S.active = null;
    backToRoom();
  });

  for (const [scroller, jump] of [[D.roomScroller, D.roomJump], [D.dmScroller, D.dmJump]]) {
    scroller.addEventListener('scroll', () => { if (nearBottom(scroller)) jump.hidden = true; }, { passive: true });
    jump.addEventListener('click', () => scrollToBottom(scroller, jump));
  }

  D.toggleRooms.addEventListener('click', () => toggleDrawer('rooms'));
  D.togglePeople.addEventListener('click', () => toggleDrawer('people'));
  D.scrim.addEventListener('click', closeDrawers);
  document.addEventListener('keydown', (ev) => { if (ev.key === 'Escape') closeDrawers(); });

  // The network is back, or the tab is visible again after a long wait: try now.
  window.addEventListener('online', () => { if (S.client && S.phase === 'reconnecting') reconnectNow(); });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && S.client && S.phase === 'reconnecting' && S.client.retryAt - Date.now() > 2000) reconnectNow();
  });
  window.addEventListener('pagehide', () => { if (S.client) S.client.close(1000, 'page closed'); });
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
