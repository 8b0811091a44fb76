// What the page keeps in localStorage / sessionStorage, and under which keys.
// Storage may be unavailable (private mode, quota): every access is guarded.

export const store = {
  get(kind, key) { try { return window[kind].getItem(key); } catch { return null; } },
  set(kind, key, value) { try { window[kind].setItem(key, value); } catch { /* private mode, quota */ } },
  del(kind, key) { try { window[kind].removeItem(key); } catch { /* ignore */ } },
  json(kind, key) { try { return JSON.parse(store.get(kind, key) || 'null'); } catch { return null; } },
};

export const K = {
  lastName: 'relay.lastName',          // localStorage: prefill of the name field
  guest: 'relay.guest',                // sessionStorage: guest name of this tab (auto-reconnect on reload)
  resume: (u) => `relay.resume.${u}`,  // sessionStorage: welcome.resume for that guest name
  token: 'relay.token',                // localStorage: {token, expires_at}
  rooms: 'relay.rooms',                // sessionStorage: [room names], rejoined on reload
  active: 'relay.active',              // sessionStorage: {kind, id}
};
