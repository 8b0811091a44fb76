// The client against two relay nodes sharing one redis-server, behind nginx
// (config from docker/nginx.conf, as in production): a client that came in
// through the load balancer survives its node being drained (SIGTERM, close
// 1001) and killed (SIGKILL), lands on the other node, and recovers what it
// missed with since/epoch: every message exactly once, in id order, no gap;
// and a burst it sent across the reconnect is stored and delivered once each.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster, client, uniq, until, texts, ids, increasing } from './helpers.mjs';

let cluster;
let nodes;
let lb;
const clients = [];
const track = (c) => { clients.push(c); return c; };
let failed = false;

before(async () => {
  cluster = new Cluster('relay-js-cluster');
  const redis = await cluster.redis();
  const args = ['--redis', redis, '--heartbeat-ms', '1000', '--drain-secs', '1', '--rate', '200'];
  nodes = { nodeA: await cluster.relay('nodeA', args), nodeB: await cluster.relay('nodeB', args) };
  lb = await cluster.nginx(Object.values(nodes));
});
after(async () => {
  for (const c of clients) c.close();
  await cluster.stop({ failed });
});
const guard = (fn) => async (t) => { try { await fn(t); } catch (e) { failed = true; throw e; } };

/** A client through the load balancer that landed on `nodeId` (new clients until one does). */
async function landOn(nodeId, opts) {
  // nginx may keep a node it saw fail out of rotation for a while: keep trying (bounded).
  const deadline = Date.now() + 30000;
  for (let i = 0; i < 200 && Date.now() < deadline; i++) {
    const c = client(lb, { user: uniq('alice'), ...opts });
    await c.connect();
    if (c.node === nodeId) return track(c);
    c.close();
    await sleep(100);
  }
  throw new Error(`the load balancer never sent a client to ${nodeId}`);
}

for (const [how, format] of [['drained', 'json'], ['killed', 'msgpack']]) {
  test(`node ${how} under a client (${format}): it reconnects through the LB and loses nothing, doubles nothing`, { timeout: 90000 }, guard(async () => {
    const room = uniq(`lb-${how}`);
    const victim = nodes.nodeA;
    const alice = await landOn('nodeA', { format });
    const bob = track(client(nodes.nodeB.url, { user: uniq('bob') }));
    await bob.connect();
    await alice.join(room);
    await bob.join(room);
    await bob.send(room, 'before');
    await until(() => texts(alice, room).length === 1);
    const epoch = alice.position(room).epoch;

    // bob talks all along; alice sends a burst that straddles the node's end.
    const bobSent = [];
    let talking = true;
    const talker = (async () => {
      for (let i = 0; talking && i < 400; i++) {
        bobSent.push(`bob ${i}`);
        await bob.send(room, `bob ${i}`);
        await sleep(20);
      }
    })();
    const aliceSends = [];
    for (let i = 0; i < 30; i++) {
      aliceSends.push(alice.send(room, `alice ${i}`));
      if (i === 10) { if (how === 'drained') victim.drain(); else victim.kill(); }
      await sleep(10);
    }
    const acks = await Promise.all(aliceSends);
    await until(() => alice.state === 'open' && alice.node === 'nodeB' && alice.rooms.get(room)?.joined, { timeout: 20000, message: 'alice back on node B' });
    await sleep(500);
    talking = false;
    await talker;

    const d = alice.seen.disconnect[0];
    assert.equal(d.code, how === 'drained' ? 1001 : 1006);
    assert.equal(d.willReconnect, true);
    assert.ok(alice.reconnects >= 1);
    assert.equal(alice.position(room).epoch, epoch, 'same epoch across nodes (shared redis)');
    assert.equal(alice.seen.gap.length, 0, 'no gap: recovered');
    assert.ok(alice.seen.joined.filter((j) => j.rejoin).every((j) => j.recovered === true), 'every re-join recovered');

    // alice saw every message of bob exactly once, in order.
    await until(() => texts(alice, room).length === 1 + bobSent.length, { timeout: 15000, message: 'alice has all of bob\'s messages' });
    assert.deepEqual(texts(alice, room), ['before', ...bobSent]);
    assert.ok(increasing(ids(alice, room)), 'in id order');

    // alice's burst: acked once each, in order; bob got each once, in order.
    assert.ok(increasing(acks.map((a) => a.id)));
    const fromAlice = bob.seen.message.filter((m) => m.room === room && m.from === alice.user).map((m) => m.text);
    await until(() => bob.seen.message.filter((m) => m.room === room && m.from === alice.user).length >= 30, { timeout: 10000 });
    assert.deepEqual(bob.seen.message.filter((m) => m.room === room && m.from === alice.user).map((m) => m.text),
      Array.from({ length: 30 }, (_, i) => `alice ${i}`), `bob saw alice's burst once each, in order (${fromAlice.length})`);
    assert.ok(increasing(ids(bob, room)));

    alice.close();
    bob.close();
    await victim.restart();
  }));
}
