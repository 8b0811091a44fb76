// Rendering of the chat view: the room and DM lists with their unread
// badges, the room pane (messages, head, typing line), the DM pane, the
// online list, and one message item.
import { D, h, avatar, timeEl, plural, nearBottom, scrollToBottom } from './dom.js';
import { S, MAX_ITEMS, isActiveRoom, isActiveDm, peopleRoomName } from './state.js';
import { retryItem, discardItem } from './outbox.js';
import { setActive, openDm } from './nav.js';

export function renderAll() {
  renderRoomList();
  renderDmList();
  const kind = S.active ? S.active.kind : 'room';
  D.roomPane.hidden = kind !== 'room';
  D.dmPane.hidden = kind !== 'dm';
  document.body.dataset.pane = kind;
  if (kind === 'room') renderRoomPane(true); else renderDmPane();
  renderPeople();
}

export function renderRoomList() {
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

export function renderDmList() {
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

export function renderRoomHead() {
  const room = S.active && S.active.kind === 'room' ? S.rooms.get(S.active.id) : null;
  D.roomTitle.textContent = room ? `#${room.name}` : 'No room';
  D.roomCount.textContent = room ? (room.joined ? `${plural(room.presence.size, 'person', 'people')} here` : 'joining…') : '';
  D.leaveButton.hidden = !room;
  D.roomPane.dataset.room = room ? room.name : '';
}

export function renderRoomPane(toBottom) {
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

export function renderDmHead() {
  if (!S.active || S.active.kind !== 'dm') return;
  const peer = S.active.id;
  D.dmTitle.textContent = `@${peer}`;
  let online = false;
  for (const room of S.rooms.values()) if (room.presence.has(peer)) { online = true; break; }
  D.dmStatus.textContent = online ? 'online' : '';
  D.dmPane.dataset.peer = peer;
}

export function renderDmPane() {
  const dm = S.dms.get(S.active.id);
  renderDmHead();
  D.dmMessages.replaceChildren(...(dm ? dm.items.map((i) => i.node) : []));
  if (dm && dm.items.length === 0) D.dmMessages.append(h('li', { className: 'empty', text: `This is the start of your conversation with ${dm.peer}.` }));
  scrollToBottom(D.dmScroller, D.dmJump);
}

export function renderPeople() {
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

export function renderTyping() {
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

/** One message item (room or DM). */
export function renderMessage(item) {
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

/** Re-renders an item in place (status change). */
export function refreshItem(item) {
  const fresh = renderMessage(item);
  item.node.replaceWith(fresh);
  item.node = fresh;
}

/** A message item from a server message or a pending own one. */
export function msgItem(m, extra) {
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

/** Appends an item to a conversation (and to the visible list when `list` is given). */
export function pushItem(items, item, list, scroller, jump, quiet) {
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
