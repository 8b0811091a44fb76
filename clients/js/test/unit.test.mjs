// Pure parts of the client, without a server: backoff windows and the close
// code policy, URL mapping, codecs, and the typing helper's throttle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelay, closePolicy, wsUrlOf, httpBaseOf, jsonCodec, loadCodec, Typist, expiryMs } from '../index.js';

test('full jitter: delays stay within min(max, base * 2^attempt)', () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = Math.min(15000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, { baseMs: 500, maxMs: 15000 }, () => 0), 0);
    assert.equal(backoffDelay(attempt, { baseMs: 500, maxMs: 15000 }, () => 0.999999), cap - 1);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, { baseMs: 500, maxMs: 15000 });
      assert.ok(d >= 0 && d < cap, `attempt ${attempt}: ${d} < ${cap}`);
    }
  }
});

test('close codes: 1001/4000 at once, 1008 stops, 4001 asks for a token, the rest back off', () => {
  assert.equal(closePolicy(1001), 'now');
  assert.equal(closePolicy(4000), 'now');
  assert.equal(closePolicy(1008), 'stop');
  assert.equal(closePolicy(4001), 'refresh');
  for (const c of [1000, 1006, 1009, 1011]) assert.equal(closePolicy(c), 'backoff');
});

test('URLs: http base to /ws and back', () => {
  assert.equal(wsUrlOf('http://127.0.0.1:8080'), 'ws://127.0.0.1:8080/ws');
  assert.equal(wsUrlOf('https://chat.example/relay/'), 'wss://chat.example/relay/ws');
  assert.equal(wsUrlOf('ws://h:1/ws'), 'ws://h:1/ws');
  assert.equal(httpBaseOf('wss://chat.example/relay/ws'), 'https://chat.example/relay/');
  assert.equal(expiryMs(1700000000), 1700000000000);
  assert.equal(expiryMs(1700000000000), 1700000000000);
});

test('codecs: JSON text frames and MessagePack binary frames round-trip', async () => {
  const f = { type: 'send', room: 'r', text: 'héllo ✓', client_id: 'c1', ref: 7 };
  const j = jsonCodec();
  assert.equal(j.protocol, 'relay.v1.json');
  assert.deepEqual(j.decode(j.encode(f)), f);
  assert.equal(j.decode('not json'), undefined);
  const m = await loadCodec('msgpack');
  assert.equal(m.protocol, 'relay.v1.msgpack');
  const bytes = m.encode(f);
  assert.ok(bytes instanceof Uint8Array);
  assert.deepEqual(m.decode(bytes), f);
  assert.deepEqual(m.decode(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)), f, 'ArrayBuffer too');
  assert.equal(m.decode('text frame'), undefined);
});

test('typing helper: one command per throttle window, a stop after idle, a restart gap', async () => {
  const sent = [];
  const t = new Typist((a) => { sent.push(a); return true; }, { throttleMs: 5000, restartMs: 5000, idleMs: 100 });
  for (let i = 0; i < 5; i++) { t.input(); await sleep(10); }
  assert.deepEqual(sent, [true], 'five keystrokes: one command');
  await sleep(400);
  assert.deepEqual(sent, [true, false], 'idle: active false');
  t.input();
  assert.deepEqual(sent, [true, false], 'typing again within the restart gap: nothing yet');
  t.stop();
  assert.deepEqual(sent, [true, false], 'not active: no stop sent');

  const sent2 = [];
  const u = new Typist((a) => { sent2.push(a); return true; }, { throttleMs: 5000, restartMs: 0, idleMs: 5000 });
  u.input();
  u.stop();
  u.input();
  u.stop();
  assert.deepEqual(sent2, [true, false, true, false], 'send, then typing again: at once when the gap is 0');
});
