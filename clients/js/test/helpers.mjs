// Helpers of the client's test suites: clients with the `ws` package that
// record what they see, and small waits. The servers come from
// tests/harness/cluster.mjs (real relay, redis-server, nginx processes).
import { WebSocket } from 'ws';
import { RelayClient } from '../index.js';

export { until, Cluster } from '../../../tests/harness/cluster.mjs';

let seq = 0;
/** A user or room name unique to this run. */
export function uniq(base) {
  seq += 1;
  return `${base}-${process.pid.toString(36)}-${seq}`;
}

/**
 * A RelayClient (ws package injected) that records its events in `c.seen`.
 * @param {string} url
 * @param {import('../index.js').RelayClientOptions | Record<string, any>} opts
 */
export function client(url, opts = {}) {
  const c = new RelayClient({ url, WebSocket, backoffBaseMs: 200, backoffMaxMs: 2000, ...opts });
  c.seen = { message: [], gap: [], joined: [], disconnect: [], welcome: [], direct: [], typing: [], user_joined: [], user_left: [], error: [], state: [] };
  for (const type of Object.keys(c.seen)) c.on(type, (e) => c.seen[type].push(e));
  return c;
}

/** Texts of the room messages `c` delivered, in delivery order. */
export function texts(c, room) {
  return c.seen.message.filter((m) => m.room === room).map((m) => m.text);
}

/** Ids of the room messages `c` delivered, in delivery order. */
export function ids(c, room) {
  return c.seen.message.filter((m) => m.room === room).map((m) => m.id);
}

/** Asserts-friendly check: strictly increasing. */
export function increasing(xs) {
  return xs.every((x, i) => i === 0 || x > xs[i - 1]);
}
