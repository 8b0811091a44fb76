// What the page says about itself: toasts, the status banner (reconnecting,
// reconnected, errors with a retry button), the connection indicator and the
// document title's unread count.
import { D, h } from './dom.js';
import { S, TOAST_MS } from './state.js';

export function toast(text, opts = {}) {
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

export function setBanner(state, text, withRetry) {
  clearTimeout(bannerHideTimer);
  D.banner.dataset.state = state;
  D.bannerText.textContent = text || '';
  D.banner.hidden = state === 'hidden';
  D.bannerRetry.hidden = !withRetry;
}

/** "Reconnected." for two seconds. */
export function flashReconnected() {
  setBanner('reconnected', 'Reconnected.');
  bannerHideTimer = setTimeout(() => { if (S.phase === 'open') setBanner('hidden'); }, 2000);
}

export function updateReconnectBanner() {
  if (S.phase !== 'reconnecting') { clearInterval(bannerTick); bannerTick = null; return; }
  const c = S.client;
  const waiting = c && c.retryAt > Date.now();
  const secs = waiting ? Math.ceil((c.retryAt - Date.now()) / 1000) : 0;
  const text = waiting && secs >= 1 ? `Connection lost. Reconnecting in ${secs} s…` : 'Connection lost. Reconnecting…';
  setBanner('reconnecting', text, waiting && secs >= 2);
}

export function setPhase(phase) {
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

export function updateTitle() {
  let n = 0;
  for (const r of S.rooms.values()) n += r.unread;
  for (const d of S.dms.values()) n += d.unread;
  document.title = n > 0 ? `(${n}) relay chat` : 'relay chat';
  D.toggleRooms.dataset.unread = String(n);
}
