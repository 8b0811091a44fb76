// Frame codecs of the two subprotocols: `relay.v1.json` (one JSON object per
// text frame) and `relay.v1.msgpack` (one MessagePack map per binary frame).
// MessagePack comes from @msgpack/msgpack, loaded only when asked for (a page
// that speaks JSON never needs it), or injected as `{encode, decode}`.

/** Subprotocol names by format. */
export const SUBPROTOCOLS = Object.freeze({ json: 'relay.v1.json', msgpack: 'relay.v1.msgpack' });

/**
 * @typedef {object} Codec
 * @property {'json' | 'msgpack'} format
 * @property {string} protocol the Sec-WebSocket-Protocol value
 * @property {(frame: object) => string | Uint8Array} encode
 * @property {(data: any) => any} decode returns undefined for an undecodable frame
 */

const textDecoder = typeof TextDecoder === 'function' ? new TextDecoder() : null;

/** @returns {Codec} */
export function jsonCodec() {
  return {
    format: 'json',
    protocol: SUBPROTOCOLS.json,
    encode: (frame) => JSON.stringify(frame),
    decode(data) {
      let text = data;
      if (typeof text !== 'string') {
        if (!textDecoder) return undefined;
        try { text = textDecoder.decode(toBytes(data)); } catch { return undefined; }
      }
      try { return JSON.parse(text); } catch { return undefined; }
    },
  };
}

/**
 * @param {{encode: (v: unknown) => Uint8Array, decode: (b: Uint8Array) => unknown}} msgpack
 * @returns {Codec}
 */
export function msgpackCodec(msgpack) {
  return {
    format: 'msgpack',
    protocol: SUBPROTOCOLS.msgpack,
    encode: (frame) => msgpack.encode(frame),
    decode(data) {
      if (typeof data === 'string') return undefined;
      try { return msgpack.decode(toBytes(data)); } catch { return undefined; }
    },
  };
}

/**
 * The codec of `format`; MessagePack is imported on first use unless given.
 * @param {'json' | 'msgpack'} format
 * @param {{encode: Function, decode: Function}} [msgpack]
 * @returns {Promise<Codec>}
 */
export async function loadCodec(format, msgpack) {
  if (format === 'json' || format == null) return jsonCodec();
  if (format !== 'msgpack') throw new TypeError(`unknown format ${String(format)} (json or msgpack)`);
  const lib = msgpack || (await import('@msgpack/msgpack'));
  return msgpackCodec(/** @type {any} */ (lib));
}

/** @param {any} data ArrayBuffer, typed array, Node Buffer, or an array of Buffers (ws fragments) */
function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (Array.isArray(data)) {
    const total = data.reduce((n, b) => n + b.byteLength, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const b of data) { out.set(toBytes(b), at); at += b.byteLength; }
    return out;
  }
  throw new TypeError('not binary data');
}
