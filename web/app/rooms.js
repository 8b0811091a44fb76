// Rooms as the page shows them: joining and leaving through the client, and
// what the client reports about them (joined with its recovery or gap,
// messages in id order, presence, typing) turned into the room's items.
import { D, h, timeEl } from './dom.js';
import { S, NAME_RE, newRoom, isActiveRoom, peopleRoomName, isOpen, TYPING_EXPIRE_MS } from './state.js';
import { store, K } from './storage.js';
import { toast, updateTitle } from './status.js';
import { msgItem, pushItem, renderRoomList, renderRoomPane, renderRoomHead, renderPeople, renderDmHead, renderTyping, renderAll } from './render.js';
import { setActive } from './nav.js';
import { stopTyping } from './typing.js';

export function saveRooms() {
  store.set('sessionStorage', K.rooms, JSON.stringify([...S.rooms.keys()]));
}

export function ensureRoom(name) {
  let room = S.rooms.get(name);
  if (!room) { room = newRoom(name); S.rooms.set(name, room); saveRooms(); }
  return room;
}

/** Asks the client to join (it keeps the room joined across reconnects). */
export function joinRoom(room) {
  if (!S.client) return;
  const client = S.client;
  client.join(room.name).catch((err) => {
    if (client !== S.client || S.rooms.get(room.name) !== room) return;
    const text = err && err.message ? err.message : String(err);
    if (!room.everJoined) {
      removeRoom(room.name);
      D.joinError.textContent = text;
    }
    toast(`Could not join #${room.name}: ${text}`, { tone: 'error', code: err && err.code });
  });
}

export function removeRoom(name) {
  const room = S.rooms.get(name);
  if (!room) return;
  stopTyping(name);
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

export function joinRoomByName(raw) {
  const name = raw.trim().replace(/^#/, '');
  D.joinError.textContent = '';
  if (!NAME_RE.test(name)) {
    D.joinError.textContent = 'Room names are 1-32 letters, digits, _ . - (starting with a letter or digit).';
    return false;
  }
  if (!S.rooms.has(name)) joinRoom(ensureRoom(name));
  setActive({ kind: 'room', id: name }, true);
  return true;
}

export function leaveRoom(name) {
  if (!S.rooms.has(name)) return;
  if (S.client) S.client.leave(name).catch(() => { /* gone with the connection: not re-joined either */ });
  removeRoom(name);
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
export { insertSorted };

export function addNotice(room, text, kind, ts) {
  const item = { kind: 'notice', text, noticeKind: kind, ts: Number(ts) || Date.now(), node: null };
  item.node = h('li', { className: `notice notice-${kind}`, data: { testid: 'notice', kind } },
    h('span', { className: 'notice-text', text }), ' ', timeEl(item.ts));
  pushItem(room.items, item, isActiveRoom(room.name) ? D.roomMessages : null, D.roomScroller, D.roomJump, true);
}

/**
 * After a gap: a button that pages back through the room's history
 * (`history {before}`) and fills in what the server still has.
 */
function addOlderButton(room, before) {
  const notice = room.items[room.items.length - 1];
  if (!notice || notice.kind !== 'notice' || before == null || !(before > 1)) return;
  let oldest = before;
  const btn = h('button', { className: 'link-btn', text: 'Load earlier messages', attrs: { type: 'button' }, data: { testid: 'load-older' } });
  btn.addEventListener('click', async () => {
    if (!S.client) return;
    btn.disabled = true;
    try {
      const page = await S.client.history(room.name, { before: oldest, limit: 50 });
      const msgs = Array.isArray(page.messages) ? page.messages : [];
      for (const m of msgs) {
        const id = Number(m.id);
        if (!Number.isFinite(id) || room.ids.has(id)) continue;
        room.ids.add(id);
        insertSorted(room, msgItem({ ...m, id, status: 'sent' }), true);
      }
      if (msgs.length) oldest = Math.min(oldest, ...msgs.map((m) => Number(m.id)));
      const more = page.has_more === true || (page.has_more == null && msgs.length === 50 && oldest > 1);
      if (!more) btn.replaceWith(h('span', { className: 'muted small', text: msgs.length ? ' That is all the server keeps.' : ' No earlier messages are available.', data: { testid: 'no-older' } }));
      else btn.disabled = false;
    } catch (e) {
      btn.disabled = false;
      toast(`Could not load earlier messages: ${e && e.message ? e.message : e}`, { tone: 'error', code: e && e.code });
    }
  });
  notice.node.append(' ', btn);
}

function clearTyping(room, user) {
  if (!room.typing.has(user)) return;
  clearTimeout(room.typing.get(user));
  room.typing.delete(user);
  if (isActiveRoom(room.name)) renderTyping();
}

/** Keeps only the own messages not yet acked (the history is shown anew). */
function clearHistory(room) {
  const keep = room.items.filter((i) => i.kind === 'msg' && i.id == null);
  room.items = keep;
  room.ids = new Set();
}

// ------------------------------------------------------------ client events

export function onJoined(ev) {
  const room = S.rooms.get(String(ev.room));
  if (!room) return;
  room.joined = true;
  room.everJoined = true;
  room.presence = new Set((Array.isArray(ev.presence) ? ev.presence : []).map(String));
  if (S.user) room.presence.add(S.user);
  if (ev.gap) {
    // The server could not send everything missed: show its latest messages
    // (they follow as 'message' events) after a notice.
    clearHistory(room);
    if (isActiveRoom(room.name)) renderRoomPane(true);
    addNotice(room, 'Some messages may have been missed while you were away. Showing the latest messages.', 'gap');
    addOlderButton(room, ev.history && ev.history.length ? Number(ev.history[0].id) : null);
  }
  if (isActiveRoom(room.name)) renderRoomHead();
  if (peopleRoomName() === room.name) renderPeople();
  renderRoomList();
  renderDmHead();
  updateTitle();
}

export function onMessage(m) {
  const room = S.rooms.get(String(m.room));
  if (!room) return;
  const id = Number(m.id);
  if (!Number.isFinite(id) || room.ids.has(id)) return;
  room.ids.add(id);
  insertSorted(room, msgItem({ ...m, id, status: 'sent' }), m.replayed);
  clearTyping(room, String(m.from));
  if (!m.replayed && (!isActiveRoom(room.name) || document.hidden)) {
    if (!isActiveRoom(room.name)) room.unread++;
    renderRoomList();
    updateTitle();
  }
}

export function onUserJoined(f) {
  const room = S.rooms.get(String(f.room));
  if (!room) return;
  const user = String(f.user);
  const had = room.presence.has(user);
  room.presence.add(user);
  if (!had && user !== S.user) addNotice(room, `${user} joined`, 'join', f.ts);
  if (isActiveRoom(room.name)) renderRoomHead();
  if (peopleRoomName() === room.name) renderPeople();
  renderDmHead();
}

export function onUserLeft(f) {
  const room = S.rooms.get(String(f.room));
  if (!room) return;
  const user = String(f.user);
  const had = room.presence.delete(user);
  clearTyping(room, user);
  const how = { leave: 'left', disconnect: 'disconnected', timeout: 'lost connection', kicked: 'was removed' }[f.reason] || 'left';
  if (had && user !== S.user) addNotice(room, `${user} ${how}`, 'leave', f.ts);
  if (isActiveRoom(room.name)) renderRoomHead();
  if (peopleRoomName() === room.name) renderPeople();
  renderDmHead();
}

export function onTyping(f) {
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
}

export function onPresence(f) {
  const room = S.rooms.get(String(f.room));
  if (!room) return;
  room.presence = new Set((Array.isArray(f.users) ? f.users : []).map(String));
  if (S.user && room.joined) room.presence.add(S.user);
  if (isActiveRoom(room.name)) renderRoomHead();
  if (peopleRoomName() === room.name) renderPeople();
}

/** Removed by a moderator (second edition): the room goes away with a toast. */
export function onKicked(f) {
  const name = String(f.room);
  if (!S.rooms.has(name)) return;
  removeRoom(name);
  toast(`You were removed from #${name}${f.by ? ` by ${f.by}` : ''}.`, { tone: 'warn', code: 'kicked' });
}

/** The connection dropped: nobody is typing, the rooms are re-joined by the client. */
export function onDisconnected() {
  for (const room of S.rooms.values()) {
    room.joined = false;
    for (const t of room.typing.values()) clearTimeout(t);
    room.typing.clear();
  }
  renderTyping();
}

/** Who is in the room now (on opening it). */
export function refreshPresence(name) {
  const room = S.rooms.get(name);
  if (room && room.joined && isOpen()) S.client.who(name).catch(() => { /* the presence event updates; errors are harmless */ });
}
