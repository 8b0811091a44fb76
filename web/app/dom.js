// DOM helpers of the web page: element lookup and creation, the page's
// element references (D), time stamps and avatars.
//
// Security rule of the page: user data (names, room names, message text,
// error messages) only ever reaches the DOM through textContent / text nodes
// / attributes set with setAttribute. Never innerHTML.

/** @param {string} id */
export const $ = (id) => document.getElementById(id);

/** Builds an element. props: className, text, attrs, data, on; children: nodes or strings (as text). */
export function h(tag, props, ...children) {
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

/** The page's elements by camel-cased id (filled by bindDom). */
export const D = {};

export function bindDom() {
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

/** Unicode scalar values of a string (the server's length unit). */
export function charCount(s) { let n = 0; for (const _ of s) n++; return n; }
export function hue(name) { let x = 0; for (const ch of String(name)) x = (x * 31 + ch.codePointAt(0)) >>> 0; return x % 360; }
export function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const fmtDayTime = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const fmtFull = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

/** A <time> in local time (hours and minutes today, with the day otherwise). */
export function timeEl(ts) {
  const d = new Date(Number(ts) || Date.now());
  const sameDay = d.toDateString() === new Date().toDateString();
  return h('time', {
    className: 'ts',
    text: sameDay ? fmtTime.format(d) : fmtDayTime.format(d),
    attrs: { datetime: d.toISOString(), title: fmtFull.format(d) },
  });
}

export function avatar(name) {
  const a = h('span', { className: 'avatar', text: (String(name)[0] || '?').toUpperCase(), attrs: { 'aria-hidden': 'true' } });
  a.style.setProperty('--h', String(hue(name)));
  return a;
}

export function nearBottom(scroller) { return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80; }
export function scrollToBottom(scroller, jump) {
  scroller.scrollTop = scroller.scrollHeight;
  if (jump) jump.hidden = true;
}
