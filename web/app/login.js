// The sign-in view: a guest name (guest mode) or register / log in (token
// mode, through the client library's HTTP helpers), chosen by GET /api/config.
import { register, login, getConfig } from '../lib/relay/index.js';
import { D } from './dom.js';
import { S, NAME_RE } from './state.js';
import { store, K } from './storage.js';
import { renderAll } from './render.js';
import { setActive } from './nav.js';
import { startSession } from './connection.js';

const base = () => new URL('.', document.baseURI).toString();

export function showLogin(errorText) {
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

export function setLoginBusy(busy) {
  D.connectButton.disabled = busy;
  D.loginButton.disabled = busy;
  D.registerButton.disabled = busy;
  D.connectButton.textContent = busy ? 'Connecting…' : 'Start chatting';
  D.loginButton.textContent = busy ? 'Connecting…' : 'Log in';
}

export function showChat() {
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

/** Logs in; null on success (the session starts), else the text to show. */
async function doLogin(username, password) {
  try {
    const creds = await login(base(), username, password);
    store.set('localStorage', K.token, JSON.stringify(creds));
    store.set('localStorage', K.lastName, username);
    startSession(creds);
    return null;
  } catch (e) {
    if (e.status === 401) return 'Wrong user name or password.';
    if (e.status === 429) return 'Too many attempts. Please wait a moment.';
    if (!e.status) throw e;
    return e.message || `Login failed (HTTP ${e.status}).`;
  }
}

export async function onLoginSubmit(ev) {
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

export async function onRegister() {
  const username = D.usernameInput.value.trim();
  const password = D.passwordInput.value;
  if (!NAME_RE.test(username)) { D.loginError.textContent = 'User names are 1-32 letters, digits, _ . - (starting with a letter or digit).'; D.usernameInput.focus(); return; }
  if (!password) { D.loginError.textContent = 'Choose a password.'; D.passwordInput.focus(); return; }
  setLoginBusy(true);
  D.loginError.textContent = '';
  try {
    await register(base(), username, password);
  } catch (e) {
    setLoginBusy(false);
    if (!e.status) D.loginError.textContent = 'Could not reach the server. Please try again.';
    else if (e.status === 409) D.loginError.textContent = 'That user name is taken. Log in, or pick another name.';
    else if (e.status === 400) D.loginError.textContent = e.message || 'That user name or password is not accepted.';
    else D.loginError.textContent = e.message || `Registration failed (HTTP ${e.status}).`;
    return;
  }
  try {
    const err = await doLogin(username, password);
    if (err) { setLoginBusy(false); D.loginError.textContent = err; }
  } catch {
    setLoginBusy(false);
    D.loginError.textContent = 'Could not reach the server. Please try again.';
  }
}

export function onGuestSubmit(ev) {
  ev.preventDefault();
  const name = D.nameInput.value.trim();
  if (!NAME_RE.test(name)) {
    D.loginError.textContent = 'Names are 1-32 letters, digits, _ . - (starting with a letter or digit).';
    D.nameInput.focus();
    return;
  }
  startSession({ user: name });
}

/** GET /api/config: the auth mode and limits (guest mode with the protocol's defaults when absent). */
export async function loadConfig() {
  try {
    const cfg = await getConfig(base());
    if (cfg && typeof cfg === 'object') S.config = { ...S.config, ...cfg };
  } catch {
    // Older server or static preview: guest mode with the protocol's defaults.
  }
  S.mode = S.config.auth === 'token' ? 'token' : 'guest';
  document.body.dataset.auth = S.mode;
}
