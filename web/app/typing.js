// Outgoing typing indicators: one throttled Typist of the client per room
// (at most one active:true per 2.5 s while typing, at once but not more
// often than every 0.6 s after a stop, active:false after 3 s idle).
import { D } from './dom.js';
import { S, TYPING, isOpen } from './state.js';

function typist(room) {
  let t = S.typists.get(room);
  if (!t && S.client) { t = S.client.typist(room, TYPING); S.typists.set(room, t); }
  return t;
}

/** On each input event of the room composer. */
export function onComposerInput() {
  if (!S.active || S.active.kind !== 'room') return;
  const room = S.rooms.get(S.active.id);
  if (!room || !room.joined || !isOpen()) return;
  if (!D.messageInput.value.trim()) { stopTyping(room.name); return; }
  for (const name of S.typists.keys()) if (name !== room.name) stopTyping(name);
  const t = typist(room.name);
  if (t) t.input();
}

/** The user stopped typing in `room` (sent, left the field, switched rooms). */
export function stopTyping(room) {
  const t = S.typists.get(room);
  if (t) t.stop(true);
}

export function stopAllTyping() { for (const name of S.typists.keys()) stopTyping(name); }
