// Reconnect delays: exponential backoff with full jitter
// (delay = random(0, min(max, base * 2^attempt))), and the policy of each
// WebSocket close code of the relay protocol (PROTOCOL.md §4).

/**
 * The delay before reconnect attempt number `attempt` (0 = first retry).
 * @param {number} attempt
 * @param {{baseMs: number, maxMs: number}} opts
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random = Math.random) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/**
 * What to do after the socket closed with `code`:
 * - 'now': reconnect at once (small jitter only): 1001 draining, 4000 slow consumer;
 * - 'stop': do not reconnect: 1008 policy violation;
 * - 'refresh': ask the application for a new token, then reconnect: 4001;
 * - 'backoff': reconnect with exponential backoff: anything else (1006, 1011, ...).
 * @param {number} code
 * @returns {'now' | 'stop' | 'refresh' | 'backoff'}
 */
export function closePolicy(code) {
  switch (code) {
    case 1001:
    case 4000:
      return 'now';
    case 1008:
      return 'stop';
    case 4001:
      return 'refresh';
    default:
      return 'backoff';
  }
}
