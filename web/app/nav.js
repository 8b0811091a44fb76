// Navigation: which conversation is open (a room or a DM), and the drawers
// of narrow screens.
import { D } from './dom.js';
import { S } from './state.js';
import { store, K } from './storage.js';
import { updateTitle } from './status.js';
import { renderAll } from './render.js';
import { ensureDm } from './dms.js';
import { refreshPresence } from './rooms.js';
import { stopTyping } from './typing.js';

export function setActive(target, focus) {
  if (S.active && S.active.kind === 'room' && !(target.kind === 'room' && target.id === S.active.id)) stopTyping(S.active.id);
  S.active = target;
  if (target.kind === 'room') {
    S.lastRoom = target.id;
    const room = S.rooms.get(target.id);
    if (room) {
      room.unread = 0;
      refreshPresence(room.name);
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

export function openDm(peer) {
  if (!peer || peer === S.user) return;
  ensureDm(peer);
  setActive({ kind: 'dm', id: peer }, true);
}

/** The room to go back to from a DM. */
export function backToRoom() {
  const target = S.lastRoom && S.rooms.has(S.lastRoom) ? S.lastRoom : S.rooms.keys().next().value;
  if (target) setActive({ kind: 'room', id: target }, true);
  else { S.active = null; renderAll(); }
}

export function toggleDrawer(which) {
  const open = document.body.dataset.drawer === which ? '' : which;
  document.body.dataset.drawer = open;
  D.toggleRooms.setAttribute('aria-expanded', String(open === 'rooms'));
  D.togglePeople.setAttribute('aria-expanded', String(open === 'people'));
  D.scrim.hidden = !open;
  if (open === 'rooms') D.roomsPanel.querySelector('input, button')?.focus();
  if (open === 'people') D.peoplePanel.querySelector('button')?.focus();
}

export function closeDrawers() {
  if (!document.body.dataset.drawer) return;
  document.body.dataset.drawer = '';
  D.toggleRooms.setAttribute('aria-expanded', 'false');
  D.togglePeople.setAttribute('aria-expanded', 'false');
  D.scrim.hidden = true;
}
