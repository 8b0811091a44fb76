// The error type of the client: a protocol error code (PROTOCOL.md §2) or a
// client-side one (`timeout`, `disconnected`, `closed`, `network`).

export class RelayError extends Error {
  /**
   * @param {string} code
   * @param {string} [message]
   * @param {{status?: number, retryMs?: number, frame?: any}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'RelayError';
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} HTTP status, for HTTP helpers and refused handshakes */
    this.status = extra.status;
    /** @type {number | undefined} with `rate_limited` */
    this.retryMs = extra.retryMs;
    /** @type {any} the server's error frame, when there is one */
    this.frame = extra.frame;
  }
}
