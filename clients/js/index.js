// relay-client: the JavaScript client of the relay wire protocol v1
// (browsers and Node.js 20+). See README.md; types in index.d.ts.
export { RelayClient, newClientId } from './src/client.js';
export { RelayError } from './src/errors.js';
export { Emitter } from './src/emitter.js';
export { Typist } from './src/typing.js';
export { backoffDelay, closePolicy } from './src/backoff.js';
export { SUBPROTOCOLS, jsonCodec, msgpackCodec, loadCodec } from './src/codec.js';
export { wsUrlOf, httpBaseOf, getConfig, register, login, expiryMs, diagnoseHandshake } from './src/http.js';
