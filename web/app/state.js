// The page's state: settings, the signed-in session, rooms and direct
// conversations as shown (the connection itself lives in the RelayClient of
// web/lib/relay, S.client).

export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
export const DEFAULT_ROOM = 'lobby';
export const INITIAL_ATTEMPTS = 3;           // first sign-in: give up (back to the form) after this many
export const REFUSED_ATTEMPTS = 5;           // token mode, reconnecting: handshakes refused in a row before asking to log in again
export const TYPING = { throttleMs: 2500, restartMs: 600, idleMs: 3000 }; // outgoing typing commands
export const TYPING_EXPIRE_MS = 5000;        // a received indicator disappears after 5 s
export const ACK_RESEND_MS = 8000;           // a room message unconfirmed this long (connected) is sent again, same client_id; failed after MAX_AUTO_RETRIES of those
export const MAX_AUTO_RETRIES = 3;           // rate_limited / unavailable retries per message
export const MAX_ITEMS = 500;                // messages + notices kept per conversation
export const TOAST_MS = 6000;

export const S = {
  config: { auth: 'guest', node: '', max_text_chars: 4000 },
  mode: 'guest',            // 'guest' | 'token'
  creds: null,              // {user} (guest) or {token, expires_at} (token)
  client: null,             // the RelayClient of this session
  user: null,               // welcome.user
  node: null,
  session: null,
  phase: 'idle',            // idle | connecting | open | reconnecting | stopped
  everConnected: false,     // got a welcome since the user signed in
  initialFailures: 0,
  refusals: 0,              // token mode: handshakes in a row the (reachable) server refused
  rooms: new Map(),         // name -> Room (insertion order = list order)
  dms: new Map(),           // peer -> Dm
  active: null,             // {kind: 'room'|'dm', id}
  lastRoom: null,
  pending: new Map(),       // client_id -> message item not yet acked
  typists: new Map(),       // room -> Typist (outgoing typing of this page)
};

export function newRoom(name) {
  return {
    name, ids: new Set(), items: [],
    presence: new Set(), typing: new Map(), unread: 0,
    joined: false, everJoined: false,
  };
}
export function newDm(peer) { return { peer, ids: new Set(), items: [], unread: 0 }; }
export const maxChars = () => Number(S.config.max_text_chars) || 4000;

export function isActiveRoom(name) { return !!S.active && S.active.kind === 'room' && S.active.id === name; }
export function isActiveDm(peer) { return !!S.active && S.active.kind === 'dm' && S.active.id === peer; }
/** The room whose online list is shown: the open room, or the last one while a DM is open. */
export function peopleRoomName() { return S.active && S.active.kind === 'room' ? S.active.id : S.lastRoom; }
/** Connected and welcomed. */
export function isOpen() { return !!S.client && S.client.state === 'open'; }
