// A minimal event emitter with no DOM or Node dependency: on/off/once/emit.
// A listener that throws does not stop the others; the error is reported on
// the 'listenerError' event (or to console.error when nobody listens to it).

/** @typedef {(payload: any) => void} Listener */

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Listener>>} */
    this._listeners = new Map();
  }

  /**
   * Adds a listener; returns a function that removes it.
   * @param {string} type
   * @param {Listener} fn
   * @returns {() => void}
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) { set = new Set(); this._listeners.set(type, set); }
    set.add(fn);
    return () => this.off(type, fn);
  }

  /**
   * Removes a listener.
   * @param {string} type
   * @param {Listener} fn
   */
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set) set.delete(fn);
  }

  /**
   * Adds a listener called at most once.
   * @param {string} type
   * @param {Listener} fn
   * @returns {() => void}
   */
  once(type, fn) {
    const off = this.on(type, (payload) => { off(); fn(payload); });
    return off;
  }

  /**
   * Calls every listener of `type` with `payload`.
   * @param {string} type
   * @param {any} [payload]
   */
  emit(type, payload) {
    const set = this._listeners.get(type);
    if (!set || set.size === 0) return;
    for (const fn of [...set]) {
      try {
        fn(payload);
      } catch (error) {
        if (type !== 'listenerError' && this._listeners.get('listenerError')?.size) {
          this.emit('listenerError', { type, error });
        } else {
          // eslint-disable-next-line no-console
          console.error(`relay client: a '${type}' listener threw`, error);
        }
      }
    }
  }
}
