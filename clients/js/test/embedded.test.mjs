// The client against one relay node with its state in memory (no Redis):
// both subprotocols, requests, typing, presence, DMs, history paging,
// recovery after a cut network (within and beyond the 50 kept messages), a
// burst of sends across a reconnect, drain and kill of the node, handshake
// refusals, and token refresh on close 4001 in token mode.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, client, uniq, until, texts, ids, increasing } from './helpers.mjs';
import { RelayError, register, login, getConfig } from '../index.js';

let cluster;
let node;
const clients = [];
const track = (c) => { clients.push(c); return c; };
let failed = false;

before(async () => {
  cluster = new Cluster('relay-js-embedded');
  node = await cluster.relay('solo', ['--heartbeat-ms', '1000', '--drain-secs', '1', '--rate', '200']);
});
after(async () => {
  for (const c of clients) c.close();
  await cluster.stop({ failed });
});
const T = { timeout: 60000 };
const guard = (fn) => async (t) => { try { await fn(t); } catch (e) { failed = true; throw e; } };

for (const [fa, fb] of [['json', 'msgpack'], ['msgpack', 'json'], ['msgpack', 'msgpack']]) {
  test(`${fa} and ${fb}: send/ack, delivery to others only, typing, presence, DMs`, T, guard(async () => {
    const room = uniq('room');
    const alice = track(client(node.url, { user: uniq('alice'), format: fa }));
    const bob = track(client(node.url, { user: uniq('bob'), format: fb }));
    const wa = await alice.connect();
    const wb = await bob.connect();
    assert.equal(wa.user, alice.user);
    assert.equal(wa.protocol, 1);
    assert.equal(wb.node, 'solo');
    assert.equal(typeof wb.resume, 'string');
    const ja = await alice.join(room);
    assert.equal(ja.firstJoin, true);
    assert.equal(ja.rejoin, false);
    const jb = await bob.join(room);
    assert.deepEqual([...jb.presence].sort(), [alice.user, bob.user].sort());
    await until(() => alice.presence(room).includes(bob.user), { message: 'user_joined of bob' });
    assert.ok(alice.seen.user_joined.some((e) => e.room === room && e.user === bob.user));

    const acks = [];
    for (let i = 0; i < 5; i++) acks.push(await alice.send(room, `m${i} ü ✓`));
    assert.ok(increasing(acks.map((a) => a.id)), 'ack ids increase');
    assert.ok(acks.every((a) => a.room === room && a.ts > 0));
    await until(() => texts(bob, room).length === 5, { message: 'bob has 5 messages' });
    assert.deepEqual(texts(bob, room), [0, 1, 2, 3, 4].map((i) => `m${i} ü ✓`));
    assert.deepEqual(ids(bob, room), acks.map((a) => a.id), 'same ids as the acks');
    assert.equal(bob.seen.message[0].from, alice.user);
    assert.equal(texts(alice, room).length, 0, 'no echo to the sender');

    // typing, throttled by the helper: many keystrokes, few commands
    const typist = alice.typist(room, { throttleMs: 2000, restartMs: 300, idleMs: 500 });
    for (let i = 0; i < 10; i++) { typist.input(); await sleep(20); }
    await until(() => bob.seen.typing.some((e) => e.room === room && e.active === true && e.user === alice.user), { message: 'typing active' });
    await until(() => bob.seen.typing.some((e) => e.room === room && e.active === false), { timeout: 3000, message: 'typing stop after idle' });
    assert.equal(bob.seen.typing.filter((e) => e.room === room && e.active).length, 1, 'ten keystrokes: one typing command');

    // requests with ref correlation
    const who = await bob.who(room);
    assert.deepEqual([...who.users].sort(), [alice.user, bob.user].sort());
    await bob.ping();

    // direct messages: id of the ack equals the delivered id
    const ack = await alice.dm(bob.user, 'psst');
    await until(() => bob.seen.direct.length === 1, { message: 'direct' });
    assert.equal(bob.seen.direct[0].id, ack.id);
    assert.equal(bob.seen.direct[0].from, alice.user);
    await assert.rejects(alice.dm(uniq('nobody'), 'hello?'), (e) => e instanceof RelayError && e.code === 'user_offline');

    // errors by ref reject the request, and the connection stays up
    await assert.rejects(alice.request('history', { room, limit: 500 }), (e) => e.code === 'invalid');
    await assert.rejects(alice.send(uniq('notjoined'), 'x'), (e) => e.code === 'not_member');
    assert.equal(alice.state, 'open');

    await bob.leave(room);
    await until(() => !alice.presence(room).includes(bob.user), { message: 'user_left of bob' });
    assert.equal(alice.seen.user_left.at(-1).reason, 'leave');
    alice.close();
    bob.close();
    assert.equal(alice.state, 'closed');
  }));
}

test('history pages back, oldest first, and historyPages walks them', T, guard(async () => {
  const room = uniq('hist');
  const alice = track(client(node.url, { user: uniq('alice') }));
  await alice.connect();
  await alice.join(room);
  const acks = await Promise.all(Array.from({ length: 30 }, (_, i) => alice.send(room, `h${i}`)));
  assert.deepEqual(acks.map((a) => a.id), Array.from({ length: 30 }, (_, i) => acks[0].id + i), 'in order');
  const page = await alice.history(room, { limit: 10 });
  assert.deepEqual(page.messages.map((m) => m.text), Array.from({ length: 10 }, (_, i) => `h${20 + i}`));
  const older = await alice.history(room, { before: page.messages[0].id, limit: 10 });
  assert.deepEqual(older.messages.map((m) => m.text), Array.from({ length: 10 }, (_, i) => `h${10 + i}`));
  const all = [];
  for await (const p of alice.historyPages(room, { limit: 7 })) all.unshift(...p);
  assert.deepEqual(all.map((m) => m.text), Array.from({ length: 30 }, (_, i) => `h${i}`));
  // A second client sees the history as replayed messages on its first join, once.
  const bob = track(client(node.url, { user: uniq('bob') }));
  await bob.connect();
  const j = await bob.join(room);
  assert.equal(j.history.length, 30);
  assert.deepEqual(texts(bob, room), Array.from({ length: 30 }, (_, i) => `h${i}`));
  assert.ok(bob.seen.message.every((m) => m.replayed === true));
  alice.close(); bob.close();
}));

test('a cut network: bob reconnects, re-joins and gets exactly the missed messages (recovered, no gap)', T, guard(async () => {
  const room = uniq('recover');
  const proxy = await cluster.proxy(node);
  const alice = track(client(node.url, { user: uniq('alice') }));
  const bob = track(client(proxy.url, { user: uniq('bob'), format: 'msgpack' }));
  await alice.connect(); await bob.connect();
  await alice.join(room); await bob.join(room);
  await alice.send(room, 'before');
  await until(() => texts(bob, room).length === 1);
  proxy.cut();
  await until(() => bob.seen.disconnect.length >= 1, { message: 'bob noticed the cut' });
  assert.equal(bob.seen.disconnect[0].willReconnect, true);
  assert.equal(bob.state, 'reconnecting');
  const sent = [];
  for (let i = 0; i < 20; i++) { sent.push(`missed ${i}`); await alice.send(room, `missed ${i}`); }
  proxy.restore();
  await until(() => texts(bob, room).length === 21, { timeout: 15000, message: 'bob caught up' });
  await sleep(300);
  assert.deepEqual(texts(bob, room), ['before', ...sent], 'each message once, in order');
  assert.ok(increasing(ids(bob, room)));
  const rejoin = bob.seen.joined.filter((j) => j.room === room).at(-1);
  assert.equal(rejoin.rejoin, true);
  assert.equal(rejoin.recovered, true);
  assert.equal(rejoin.gap, false);
  assert.equal(bob.seen.gap.length, 0);
  assert.equal(bob.reconnects, 1);
  alice.close(); bob.close();
}));

test('missing more than 50 messages: a gap is reported, the latest 50 follow, history pages back', T, guard(async () => {
  const room = uniq('gap');
  const proxy = await cluster.proxy(node);
  const alice = track(client(node.url, { user: uniq('alice') }));
  const bob = track(client(proxy.url, { user: uniq('bob') }));
  await alice.connect(); await bob.connect();
  await alice.join(room); await bob.join(room);
  const first = await alice.send(room, 'seen');
  await until(() => texts(bob, room).length === 1);
  proxy.cut();
  await until(() => bob.state === 'reconnecting');
  const acks = [];
  for (let i = 1; i <= 55; i++) acks.push(await alice.send(room, `missed ${i}`));
  proxy.restore();
  await until(() => bob.seen.gap.length === 1, { timeout: 15000, message: 'gap event' });
  const gap = bob.seen.gap[0];
  assert.equal(gap.room, room);
  assert.equal(gap.reason, 'overflow');
  assert.equal(gap.after, first.id);
  assert.equal(gap.before, acks[5].id, 'the first message after the hole is the 6th missed one');
  const j = bob.seen.joined.at(-1);
  assert.equal(j.recovered, false);
  assert.equal(j.gap, true);
  await until(() => texts(bob, room).length === 51, { timeout: 10000 });
  assert.deepEqual(texts(bob, room), ['seen', ...acks.slice(5).map((_, i) => `missed ${i + 6}`)]);
  // Paging back from the gap: only messages older than gap.before (this node keeps 50, so none are left).
  const older = await bob.history(room, { before: gap.before });
  assert.ok(older.messages.every((m) => m.id < gap.before));
  alice.close(); bob.close();
}));

test('a burst of sends across a reconnect arrives exactly once, in order', T, guard(async () => {
  const room = uniq('burst');
  const proxy = await cluster.proxy(node);
  const alice = track(client(node.url, { user: uniq('alice') }));
  const bob = track(client(proxy.url, { user: uniq('bob'), format: 'msgpack' }));
  await alice.connect(); await bob.connect();
  await alice.join(room); await bob.join(room);
  const N = 40;
  const promises = [];
  for (let i = 0; i < N; i++) {
    // 0..9 acked; 10..19 reach the server but their acks are lost (the
    // proxy swallows replies, then the connection drops); 20..29 are sent
    // while disconnected; 30..39 after the network is back.
    if (i === 10) proxy.muteReplies();
    if (i === 20) { await sleep(200); proxy.cut(); }
    if (i === 30) { proxy.restore(); await sleep(50); }
    promises.push(bob.send(room, `burst ${i}`));
    await sleep(5);
  }
  const acks = await Promise.all(promises);
  assert.ok(bob.reconnects >= 1, 'bob reconnected during the burst');
  assert.ok(increasing(acks.map((a) => a.id)), 'ack ids follow the send order');
  assert.equal(new Set(acks.map((a) => a.id)).size, N);
  const want = Array.from({ length: N }, (_, i) => `burst ${i}`);
  await until(() => texts(alice, room).length >= N, { timeout: 15000, message: 'alice has the burst' });
  await sleep(300);
  assert.deepEqual(texts(alice, room), want, 'each once, in order');
  const hist = await alice.history(room);
  assert.deepEqual(hist.messages.map((m) => m.text), want, 'stored once each');
  assert.equal(texts(bob, room).length, 0, 'none of its own came back to bob as a stranger\'s message');
  alice.close(); bob.close();
}));

test('handshake refusals: a taken guest name stops with name_taken (409)', T, guard(async () => {
  const name = uniq('carol');
  const c1 = track(client(node.url, { user: name }));
  await c1.connect();
  const c2 = track(client(node.url, { user: name }));
  await assert.rejects(c2.connect(), (e) => e instanceof RelayError && e.status === 409 && e.code === 'name_taken');
  assert.equal(c2.state, 'stopped');
  assert.equal(c2.seen.disconnect.at(-1).willReconnect, false);
  // With the resume token of the claim, a second client shares the name.
  const c3 = track(client(node.url, { user: name, resume: c1.resume }));
  const w = await c3.connect();
  assert.equal(w.user, name);
  c1.close(); c3.close();
}));

test('node drained (SIGTERM) and killed (SIGKILL): the client reconnects, re-joins and its queued sends go out', { timeout: 90000 }, guard(async () => {
  const room = uniq('restart');
  const alice = track(client(node.url, { user: uniq('alice') }));
  await alice.connect();
  await alice.join(room);
  await alice.send(room, 'one');

  await node.drain();
  await until(() => alice.seen.disconnect.length >= 1, { message: 'disconnect' });
  const d = alice.seen.disconnect[0];
  assert.equal(d.code, 1001, 'drain closes with 1001');
  assert.equal(d.willReconnect, true);
  assert.ok(d.delayMs < 500, `1001: reconnect at once with jitter (delay ${d.delayMs})`);
  const queued = alice.send(room, 'sent while the node was down');
  await sleep(300);
  await node.restart();
  const ack = await queued;
  assert.equal(ack.room, room);
  await until(() => alice.state === 'open' && alice.rooms.get(room)?.joined);
  // The node kept its state in memory: the room came back with a new epoch, which is a gap.
  assert.ok(alice.seen.gap.some((g) => g.room === room && g.reason === 'epoch'), 'epoch change reported as a gap');

  const before = alice.seen.disconnect.length;
  await node.kill();
  await until(() => alice.seen.disconnect.length > before, { message: 'disconnect after kill' });
  assert.equal(alice.seen.disconnect.at(-1).code, 1006, 'a killed node: abnormal closure');
  assert.equal(alice.seen.disconnect.at(-1).willReconnect, true);
  const queued2 = alice.send(room, 'after the kill');
  await sleep(500);
  await node.restart();
  await queued2;
  assert.ok(alice.reconnects >= 2);
  const watcher = track(client(node.url, { user: uniq('watcher') }));
  await watcher.connect();
  const j = await watcher.join(room);
  assert.deepEqual(j.history.map((m) => m.text), ['after the kill'], 'stored once after the restart');
  alice.close(); watcher.close();
}));

test('token mode: register and log in over HTTP, 401 refusal, and a fresh token on close 4001', { timeout: 90000 }, guard(async () => {
  const secret = 'js-client-test-secret-0123456789abcdef';
  const tnode = await cluster.relay('tok', ['--auth', 'token', '--secret', secret, '--token-ttl-secs', '3', '--heartbeat-ms', '1000', '--login-rate', '600']);
  const cfg = await getConfig(tnode.url);
  assert.equal(cfg.auth, 'token');
  const user = uniq('tina');
  const password = 'correct horse battery';
  await register(tnode.url, user, password);
  await assert.rejects(register(tnode.url, user, password), (e) => e.code === 'name_taken' && e.status === 409);
  await assert.rejects(login(tnode.url, user, 'wrong password'), (e) => e.status === 401);
  const first = await login(tnode.url, user, password);
  assert.ok(first.expires_at > Date.now() && first.expires_at < Date.now() + 10000, 'expires_at in Unix ms');

  // A forged token: refused before the upgrade, no token callback: stop.
  const forged = track(client(tnode.url, { token: `${first.token}x` }));
  await assert.rejects(forged.connect(), (e) => e.code === 'unauthorized' && e.status === 401);

  let refreshes = 0;
  const tina = track(client(tnode.url, {
    token: first.token,
    tokenIn: 'header',
    format: 'msgpack',
    getToken: async ({ reason }) => { refreshes += 1; assert.equal(reason, 'expired'); return (await login(tnode.url, user, password)).token; },
  }));
  const w = await tina.connect();
  assert.equal(w.user, user);
  const room = uniq('troom');
  await tina.join(room);
  await tina.send(room, 'before expiry');
  await until(() => tina.seen.disconnect.some((d) => d.code === 4001), { timeout: 10000, message: 'close 4001 at token expiry' });
  await until(() => tina.reconnects >= 1 && tina.state === 'open' && tina.rooms.get(room)?.joined, { timeout: 10000, message: 'reconnected with a fresh token' });
  assert.ok(refreshes >= 1);
  assert.notEqual(tina.token, first.token);
  const d = tina.seen.disconnect.find((x) => x.code === 4001);
  assert.equal(d.willReconnect, true);
  await tina.send(room, 'after refresh');
  // The token lives 3 s, so the socket may close again under a request: ask again then.
  let h;
  for (let i = 0; i < 5 && !h; i++) {
    h = await tina.history(room).catch((e) => { if (e.code !== 'disconnected' && e.code !== 'timeout') throw e; return null; });
  }
  assert.deepEqual(h.messages.map((m) => m.text), ['before expiry', 'after refresh']);
  tina.close();

  // Without a callback, 4001 stops the client.
  const once = await login(tnode.url, user, password);
  const plain = track(client(tnode.url, { token: once.token }));
  await plain.connect();
  await until(() => plain.state === 'stopped', { timeout: 10000, message: 'stopped after 4001' });
  assert.equal(plain.seen.disconnect.at(-1).code, 4001);
  assert.equal(plain.seen.disconnect.at(-1).willReconnect, false);
  assert.equal(plain.seen.disconnect.at(-1).errorCode, 'expired');
  await tnode.drain();
}));
