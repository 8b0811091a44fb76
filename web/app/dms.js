// Direct conversations as the page shows them: one per peer, fed by the
// client's 'direct' events (our own messages from our other tabs included).
import { D } from './dom.js';
import { S, newDm, isActiveDm } from './state.js';
import { toast, updateTitle } from './status.js';
import { msgItem, pushItem, renderDmList } from './render.js';

export function ensureDm(peer) {
  let dm = S.dms.get(peer);
  if (!dm) { dm = newDm(peer); S.dms.set(peer, dm); renderDmList(); }
  return dm;
}

export function onDirect(f) {
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
}

export function closeDm(peer) {
  for (const [cid, item] of S.pending) if (item.peer === peer) S.pending.delete(cid);
  S.dms.delete(peer);
}
