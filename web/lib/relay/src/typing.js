// The typing helper: turns keystrokes into few `typing` commands. While the
// user types, one `active: true` every `throttleMs` (which also keeps the
// receivers' expiry from firing); after a stop or a send, typing again sends
// at once but not more often than every `restartMs`; `idleMs` without a
// keystroke sends `active: false`.

/**
 * @typedef {object} TypistOptions
 * @property {number} [throttleMs] at most one active:true per this (default 2500)
 * @property {number} [restartMs] minimum gap after a stop (default 600)
 * @property {number} [idleMs] active:false after this long without input (default 3000)
 */

export class Typist {
  /**
   * @param {(active: boolean) => boolean} sendTyping sends one typing command; false when it could not
   * @param {TypistOptions} [opts]
   */
  constructor(sendTyping, opts = {}) {
    this._send = sendTyping;
    this.throttleMs = opts.throttleMs ?? 2500;
    this.restartMs = opts.restartMs ?? 600;
    this.idleMs = opts.idleMs ?? 3000;
    /** Whether the last command sent said active: true. */
    this.active = false;
    this._lastSent = -Infinity;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this._idle = null;
  }

  /** Call on every keystroke (or input event) of the composer. */
  input() {
    const now = Date.now();
    const gap = this.active ? this.throttleMs : this.restartMs;
    if (now - this._lastSent >= gap) {
      if (this._send(true)) {
        this.active = true;
        this._lastSent = now;
      }
    }
    if (this._idle) clearTimeout(this._idle);
    this._idle = setTimeout(() => this.stop(), this.idleMs);
  }

  /**
   * The user stopped (sent the message, emptied the box, left the field).
   * @param {boolean} [notify] send active:false if active (default true)
   */
  stop(notify = true) {
    if (this._idle) clearTimeout(this._idle);
    this._idle = null;
    if (this.active && notify) this._send(false);
    if (this.active) this._lastSent = Date.now();
    this.active = false;
  }

  /** Forgets the state without sending anything (the connection went away). */
  reset() {
    this.stop(false);
  }
}
