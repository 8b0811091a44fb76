// The page's own messages: shown at once as "sending…", handed to the
// client's outbox (which retries across reconnects with the same client_id),
// then confirmed with the server id from the ack, or marked failed with
// Retry (same client_id: never delivered twice) and Discard.
import { D, charCount, nearBottom, scrollToBottom } from './dom.js';
import { S, maxChars, isActiveRoom } from './state.js';
import { newClientId } from '../lib/relay/index.js';
import { toast } from './status.js';
import { msgItem, pushItem, refreshItem } from './render.js';
import { insertSorted } from './rooms.js';
import { ensureDm } from './dms.js';
import { stopTyping } from './typing.js';

const ERROR_TEXT = {
  bad_frame: 'The server could not read a command.',
  invalid: 'The server rejected a command as invalid.',
  not_member: 'You are not a member of that room.',
  user_offline: 'That user is offline; the message was not delivered.',
  rate_limited: 'You are sending too fast.',
  too_large: 'That message is too long.',
  unavailable: 'The chat service is temporarily unavailable.',
  internal: 'The server had an internal error.',
  forbidden: 'You may not do that here.',
  timeout: 'No confirmation from the server',
  disconnected: 'The connection dropped before the server confirmed it',
};

export function errorText(code) { return ERROR_TEXT[code] || `Error: ${code}`; }

function tooLong(text) {
  if (charCount(text) <= maxChars()) return false;
  toast(`That message is too long (the limit is ${maxChars()} characters).`, { tone: 'error', code: 'too_large' });
  return true;
}

export function submitRoom() {
  if (!S.active || S.active.kind !== 'room') return;
  const text = D.messageInput.value.trim();
  if (!text || tooLong(text)) return;
  const room = S.rooms.get(S.active.id);
  if (!room) return;
  stopTyping(room.name);
  const item = msgItem({ id: null, from: S.user, text, ts: Date.now(), status: 'pending' }, { clientId: newClientId(), room: room.name });
  S.pending.set(item.clientId, item);
  pushItem(room.items, item, D.roomMessages, D.roomScroller, D.roomJump);
  D.messageInput.value = '';
  autoGrow(D.messageInput);
  updateCounter(D.messageInput, D.roomCounter, D.sendButton);
  transmit(item);
}

export function submitDm() {
  if (!S.active || S.active.kind !== 'dm') return;
  const text = D.dmInput.value.trim();
  if (!text || tooLong(text)) return;
  const dm = ensureDm(S.active.id);
  const item = msgItem({ id: null, from: S.user, text, ts: Date.now(), status: 'pending' }, { clientId: newClientId(), peer: dm.peer });
  S.pending.set(item.clientId, item);
  pushItem(dm.items, item, D.dmMessages, D.dmScroller, D.dmJump);
  D.dmInput.value = '';
  autoGrow(D.dmInput);
  updateCounter(D.dmInput, D.dmCounter, D.dmSend);
  transmit(item);
}

/** Hands an item to the client; its promise confirms or fails the item. */
function transmit(item) {
  const client = S.client;
  if (!client) return;
  const p = item.room
    ? client.send(item.room, item.text, { clientId: item.clientId })
    : client.dm(item.peer, item.text);
  p.then((ack) => { if (S.client === client) confirmItem(item, ack); }, (err) => {
    if (S.client !== client || item.status !== 'pending') return;
    const code = (err && err.code) || 'internal';
    if (code === 'left' || code === 'closed') return;
    let text = err && err.message && !ERROR_TEXT[code] ? err.message : errorText(code);
    if (code === 'user_offline') text = `${item.peer} is offline. The message was not delivered.`;
    else if (code === 'too_large') text = `That message is too long (the limit is ${maxChars()} characters).`;
    failItem(item, text);
    if (code !== 'timeout' && code !== 'disconnected') toast(text, { tone: code === 'rate_limited' ? 'warn' : 'error', code });
  });
}

function confirmItem(item, ack) {
  if (!S.pending.has(item.clientId)) return;
  S.pending.delete(item.clientId);
  const id = Number(ack.id);
  item.ts = Number(ack.ts) || item.ts;
  item.status = 'sent';
  if (item.room) {
    const room = S.rooms.get(item.room);
    if (!room) return;
    const idx = room.items.indexOf(item);
    if (idx >= 0) room.items.splice(idx, 1);
    if (Number.isFinite(id) && room.ids.has(id)) { item.node.remove(); return; } // already shown
    item.id = Number.isFinite(id) ? id : null;
    if (item.id != null) room.ids.add(item.id);
    const stick = isActiveRoom(room.name) && nearBottom(D.roomScroller);
    item.node.remove();
    refreshItem(item);
    if (item.id != null) insertSorted(room, item, true);
    else room.items.push(item);
    if (stick) scrollToBottom(D.roomScroller, D.roomJump);
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
    refreshItem(item);
  }
}

function failItem(item, why) {
  S.pending.delete(item.clientId);
  item.status = 'failed';
  item.error = why;
  refreshItem(item);
}

export function retryItem(item) {
  if (item.status !== 'failed') return;
  item.status = 'pending';
  item.error = null;
  if (item.peer) item.clientId = newClientId();
  S.pending.set(item.clientId, item);
  refreshItem(item);
  transmit(item);
}

export function discardItem(item) {
  S.pending.delete(item.clientId);
  const owner = item.room ? S.rooms.get(item.room) : S.dms.get(item.peer);
  if (owner) {
    const idx = owner.items.indexOf(item);
    if (idx >= 0) owner.items.splice(idx, 1);
  }
  item.node.remove();
}

export function updateCounter(input, counter, button) {
  const n = charCount(input.value.trim());
  const max = maxChars();
  counter.textContent = n > max * 0.8 ? `${n}/${max}` : '';
  counter.classList.toggle('over', n > max);
  button.disabled = n > max;
}

export function autoGrow(ta) {
  const scroller = ta === D.dmInput ? D.dmScroller : D.roomScroller;
  const stick = nearBottom(scroller);
  ta.style.height = 'auto';
  ta.style.height = `${Math.min(ta.scrollHeight, 200)}px`;
  if (stick) scroller.scrollTop = scroller.scrollHeight; // the list got shorter: keep the newest in view
}
