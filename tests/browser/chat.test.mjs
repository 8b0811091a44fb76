// Browser end-to-end tests of the relay web chat (web/): real Chromium, two
// relay nodes sharing one Redis, nginx in front. Run through ./run.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  env, launch, scenario, uniqueName, until, sleep, httpStatus, readPid,
} from './lib/harness.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { if (browser) await browser.close(); });

const T = { timeout: 90000 };

test('messages travel both ways between a user on node A and a user on node B', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const alice = await s.open(env.nodeA, uniqueName('alice'));
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    assert.equal(await alice.node(), 'nodeA');
    assert.equal(await bob.node(), 'nodeB');

    const hello = `hello from alice ${Date.now()}`;
    await alice.send(hello);
    // The sender's copy is shown at once, then confirmed by the ack (gets the server id).
    const idOnAlice = await alice.waitMessage(hello);
    const idOnBob = await bob.waitMessage(hello);
    assert.equal(idOnBob, idOnAlice, 'both pages show the same server id');
    assert.equal(await alice.messages(hello).getAttribute('data-status'), 'sent');
    assert.equal(await bob.messages(hello).getAttribute('data-from'), alice.name);

    const reply = `hi alice, bob here ${Date.now()}`;
    await bob.send(reply);
    const replyId = await alice.waitMessage(reply);
    assert.ok(replyId > idOnAlice, 'ids increase');
    assert.equal(await alice.countText(reply), 1);
    assert.equal(await bob.countText(reply), 1, 'own message shown once (no echo duplicate)');
    assert.equal(await alice.countText(hello), 1);

    // Timestamps are rendered as <time> in local time.
    const dt = await bob.messages(hello).locator('time').getAttribute('datetime');
    assert.ok(Math.abs(Date.parse(dt) - Date.now()) < 120000, `timestamp ${dt} is recent`);
  })(t);
});

test('typing indicator shows while alice types and goes away when she sends or stops', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `typing-${process.pid}`;
    const alice = await s.open(env.nodeA, uniqueName('alice'));
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    await alice.joinRoom(room);
    await bob.joinRoom(room);
    const indicator = bob.tid('typing-indicator');

    // 1. typing, then Enter: the indicator must go away promptly (typing active:false
    //    / the message itself), well before the 5 s receiver-side expiry.
    await alice.tid('message-input').pressSequentially('hello b', { delay: 40 });
    await bob.page.waitForFunction(() => document.querySelector('[data-testid="typing-indicator"]').dataset.active === 'true');
    assert.equal(await indicator.textContent(), `${alice.name} is typing…`);
    const sentAt = Date.now();
    await alice.tid('message-input').pressSequentially('ob', { delay: 40 });
    await alice.tid('message-input').press('Enter');
    await bob.waitMessage('hello bob');
    await bob.page.waitForFunction(() => document.querySelector('[data-testid="typing-indicator"]').dataset.active === 'false', null, { timeout: 3000 });
    assert.ok(Date.now() - sentAt < 3000, 'indicator cleared on send, not by expiry');
    assert.equal((await indicator.textContent()).trim(), '');

    // 2. typing, then stopping: it must not stay on (idle stop after ~3 s, expiry after ~5 s).
    await sleep(800); // a human pause (the page sends active:true at most every 0.6 s after a stop)
    await alice.tid('message-input').pressSequentially('another thou', { delay: 40 });
    await bob.page.waitForFunction(() => document.querySelector('[data-testid="typing-indicator"]').dataset.active === 'true');
    const stoppedAt = Date.now();
    await bob.page.waitForFunction(() => document.querySelector('[data-testid="typing-indicator"]').dataset.active === 'false', null, { timeout: 7000 });
    const gone = Date.now() - stoppedAt;
    assert.ok(gone >= 1500 && gone < 6500, `indicator went away ${gone} ms after typing stopped`);
    // The text was not sent.
    assert.equal(await bob.countText('another thou'), 0);
  })(t);
});

test('presence list updates when a third user joins and leaves', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `presence-${process.pid}`;
    const alice = await s.open(env.nodeA, uniqueName('alice'));
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    await alice.joinRoom(room);
    await bob.joinRoom(room);
    await alice.waitOnline(bob.name, true);
    assert.deepEqual((await alice.onlineUsers()).sort(), [alice.name, bob.name].sort());

    const carol = await s.open(env.nodeA, uniqueName('carol'));
    await carol.joinRoom(room);
    await alice.waitOnline(carol.name, true);
    await bob.waitOnline(carol.name, true);
    assert.deepEqual((await carol.onlineUsers()).sort(), [alice.name, bob.name, carol.name].sort(), 'joiner sees everyone (joined.presence)');
    await alice.page.locator('[data-testid="notice"][data-kind="join"]', { hasText: `${carol.name} joined` }).waitFor();

    // carol leaves the room with the Leave button ...
    await carol.tid('leave-button').click();
    await alice.waitOnline(carol.name, false);
    await bob.waitOnline(carol.name, false);
    await bob.page.locator('[data-testid="notice"][data-kind="leave"]', { hasText: `${carol.name} left` }).waitFor();

    // ... comes back, and then closes her tab (disconnect).
    await carol.joinRoom(room);
    await alice.waitOnline(carol.name, true);
    await s.close(carol);
    await alice.waitOnline(carol.name, false, 15000);
    assert.deepEqual((await bob.onlineUsers()).sort(), [alice.name, bob.name].sort());
  })(t);
});

test('draining node A: alice reconnects through the LB and gets the missed messages exactly once', { timeout: 120000 }, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `drain-${process.pid}`;
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    await bob.joinRoom(room);

    // alice goes through the load balancer; retry until she lands on node A.
    let alice = null;
    for (let i = 0; i < 10 && !alice; i++) {
      const candidate = await s.open(env.lb, uniqueName('alice'));
      if (await candidate.node() === 'nodeA') alice = candidate;
      else await s.close(candidate);
    }
    assert.ok(alice, 'the load balancer sent one of 10 pages to node A');
    await alice.joinRoom(room);

    const before = `before the drain ${Date.now()}`;
    await bob.send(before);
    await alice.waitMessage(before);

    // Record every connection state the page goes through.
    await alice.page.evaluate(() => {
      window.__states = [];
      const note = () => window.__states.push(`${document.body.dataset.connection}/${document.querySelector('[data-testid="status-banner"]').dataset.state}`);
      new MutationObserver(note).observe(document.body, { attributes: true, attributeFilter: ['data-connection'] });
      new MutationObserver(note).observe(document.querySelector('[data-testid="status-banner"]'), { attributes: true, attributeFilter: ['data-state', 'hidden'] });
    });
    const reconnectsBefore = Number(await alice.page.evaluate(() => document.body.dataset.reconnects || '0'));
    const sessionBefore = await alice.tid('connection-state').getAttribute('data-session');

    const pidA = readPid(env.nodeAPidFile, env.nodeAPid);
    assert.ok(pidA > 0, 'node A pid known');
    process.kill(pidA, 'SIGTERM');

    // bob keeps talking (every 150 ms) until alice has been back for a second.
    const sent = [];
    let backSince = 0;
    const deadline = Date.now() + 30000;
    let n = 0;
    while (Date.now() < deadline) {
      n += 1;
      const text = `while draining #${n} ${Date.now()}`;
      await bob.send(text);
      sent.push(text);
      await sleep(150);
      const st = await alice.page.evaluate(() => ({ c: document.body.dataset.connection, r: Number(document.body.dataset.reconnects || '0') }));
      if (st.c === 'open' && st.r > reconnectsBefore) {
        if (!backSince) backSince = Date.now();
        if (Date.now() - backSince > 1000 && n >= 5) break;
      }
    }
    assert.ok(backSince, 'alice reconnected within 30 s');

    const states = await alice.page.evaluate(() => window.__states);
    assert.ok(states.some((x) => x.startsWith('reconnecting/reconnecting')), `the page showed the reconnecting banner: ${states.join(' ')}`);
    assert.notEqual(await alice.tid('connection-state').getAttribute('data-session'), sessionBefore, 'a new session');

    // Every message bob got acked shows up on alice's page exactly once, in id order.
    for (const text of sent) await bob.waitMessage(text, 15000);
    for (const text of sent) await alice.waitMessage(text, 15000);
    for (const text of sent) assert.equal(await alice.countText(text), 1, `"${text}" shown exactly once`);
    assert.equal(await alice.countText(before), 1);
    const ids = await alice.messages().evaluateAll((els) => els.map((e) => Number(e.dataset.id)));
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'messages in id order');
    assert.equal(new Set(ids).size, ids.length, 'no duplicate ids');
    const bobIds = await bob.messages().evaluateAll((els) => els.map((e) => Number(e.dataset.id)));
    assert.deepEqual(ids.filter((id) => bobIds.includes(id)), bobIds, 'alice has every message bob has, no gap');
    // Fewer than 50 missed: recovery worked, so no "may have been missed" notice.
    assert.equal(await alice.page.locator('[data-testid="notice"][data-kind="gap"]').count(), 0, 'recovered without a gap notice');

    // alice can still talk.
    const after = `alice is back ${Date.now()}`;
    await alice.send(after);
    await bob.waitMessage(after);

    // node A comes back (run.sh restarts it) for the tests that follow.
    await until(async () => readPid(env.nodeAPidFile, 0) !== pidA && await httpStatus(`${env.nodeA}/readyz`) === 200,
      { timeout: 30000, interval: 200, message: 'node A restarted and ready' });
  })(t);
});

test('HTML in a message is shown as text, never interpreted', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `xss-${process.pid}`;
    const alice = await s.open(env.nodeA, uniqueName('alice'));
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    await alice.joinRoom(room);
    await bob.joinRoom(room);

    const evil = '<img src=x onerror=alert(1)>';
    await alice.send(evil);
    await bob.waitMessage(evil);
    await alice.waitMessage(evil);
    const bolder = '<b>bold?</b> <script>alert(2)</script>';
    await alice.send(bolder);
    await bob.waitMessage(bolder);
    await sleep(500); // give an injected handler time to fire

    for (const chat of [alice, bob]) {
      const texts = await chat.page.locator('[data-testid="room-pane"] [data-testid="message-text"]').allTextContents();
      assert.ok(texts.includes(evil), `${chat.name} shows the markup literally`);
      assert.ok(texts.includes(bolder));
      assert.equal(await chat.page.locator('[data-testid="message-list"] img').count(), 0, 'no img element');
      assert.equal(await chat.page.locator('[data-testid="message-list"] b, [data-testid="message-list"] script').count(), 0);
      assert.deepEqual(chat.dialogs, [], 'no dialog fired');
      assert.deepEqual(chat.errors, [], 'no page errors');
    }
  })(t);
});

test('direct messages open in their own pane from the online list', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const alice = await s.open(env.nodeA, uniqueName('alice'));
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    await alice.waitOnline(bob.name, true);
    await alice.page.locator(`[data-testid="online-user"][data-user="${bob.name}"] button`).click();
    const pane = alice.tid('dm-pane');
    await pane.waitFor({ state: 'visible' });
    assert.equal(await alice.tid('dm-title').textContent(), `@${bob.name}`);
    const text = `psst ${Date.now()}`;
    await alice.tid('dm-input').fill(text);
    await alice.tid('dm-input').press('Enter');
    await pane.locator('[data-testid="message-item"][data-status="sent"]', { hasText: text }).waitFor();

    // bob: unread badge on the conversation, the message in the DM pane when opened.
    const item = bob.page.locator(`[data-testid="dm-item"][data-peer="${alice.name}"]`);
    await item.locator('[data-testid="unread-count"]').waitFor();
    await item.locator('button').click();
    await bob.tid('dm-pane').locator('[data-testid="message-item"]', { hasText: text }).waitFor();
    assert.equal(await bob.page.locator('[data-testid="room-pane"] [data-testid="message-item"]', { hasText: text }).count(), 0, 'not in the room pane');

    // bob goes away: a DM to him fails visibly (error user_offline), without blocking the page.
    await s.close(bob);
    await alice.waitOnline(bob.name, false, 15000);
    const late = `still there? ${Date.now()}`;
    await alice.tid('dm-input').fill(late);
    await alice.tid('dm-input').press('Enter');
    await pane.locator('[data-testid="message-item"][data-status="failed"]', { hasText: late }).waitFor();
    await alice.page.locator('[data-testid="toast"][data-code="user_offline"]').waitFor();
    assert.equal(await alice.tid('dm-input').isEditable(), true);
  })(t);
});

test('after missing more than 50 messages the page says so and shows the latest history', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `gap-${process.pid}`;
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    await bob.joinRoom(room);
    const alice = await s.open(env.nodeA, null);
    alice.name = uniqueName('alice');
    // The test stands between alice's page and the server, to cut her off at will.
    let blocked = false;
    const live = [];
    await alice.page.routeWebSocket(/\/ws(\?|$)/, (ws) => {
      if (blocked) { ws.close({ code: 1011, reason: 'cut off by the test' }); return; }
      live.push(ws);
      ws.connectToServer();
    });
    await alice.signIn(alice.name);
    await alice.joinRoom(room);
    const first = `first ${Date.now()}`;
    await bob.send(first);
    await alice.waitMessage(first);

    blocked = true;
    for (const ws of live.splice(0)) await ws.close({ code: 1001, reason: 'network lost (test)' });
    await alice.page.waitForFunction(() => document.body.dataset.connection === 'reconnecting');
    await alice.tid('status-banner').waitFor({ state: 'visible' });

    // 55 messages while alice is away: more than the 50 a room keeps.
    const texts = [];
    for (let i = 1; i <= 55; i++) {
      const text = `missed ${i}`;
      texts.push(text);
      await bob.send(text);
      await sleep(60); // stay under the default rate limit
    }
    await bob.waitMessage('missed 55', 20000);
    await bob.page.waitForFunction(() => !document.querySelector('[data-testid="room-pane"] [data-status="pending"]'), null, { timeout: 20000 });

    blocked = false;
    await alice.page.evaluate(() => window.dispatchEvent(new Event('online'))); // "the network is back"
    await alice.waitConnected(20000);
    await alice.page.locator('[data-testid="notice"][data-kind="gap"]', { hasText: 'Some messages may have been missed' }).waitFor();
    await alice.waitMessage('missed 55');
    const shown = await alice.messages().evaluateAll((els) => els.map((e) => e.querySelector('[data-testid="message-text"]').textContent));
    assert.deepEqual(shown, texts.slice(-50), 'the room history was replaced by the latest 50 messages');
    // The gap offers paging back (history {before}); the server keeps 50 here, so nothing older is left.
    await alice.page.locator('[data-testid="notice"][data-kind="gap"] [data-testid="load-older"]').click();
    await alice.page.locator('[data-testid="notice"][data-kind="gap"] [data-testid="no-older"]').waitFor();
    const after = await alice.messages().evaluateAll((els) => els.map((e) => e.querySelector('[data-testid="message-text"]').textContent));
    assert.deepEqual(after, texts.slice(-50), 'paging back added nothing twice');

    // Written while away: shown as pending, sent once the page is back (the
    // client library's outbox), received exactly once.
    blocked = true;
    for (const ws of live.splice(0)) await ws.close({ code: 1001, reason: 'network lost again (test)' });
    await alice.page.waitForFunction(() => document.body.dataset.connection === 'reconnecting');
    const away = `written while away ${Date.now()}`;
    await alice.send(away);
    await alice.messages(away).and(alice.page.locator('[data-status="pending"]')).waitFor();
    blocked = false;
    await alice.page.evaluate(() => window.dispatchEvent(new Event('online')));
    await alice.waitConnected(20000);
    const awayId = await alice.waitMessage(away, 15000);
    assert.equal(await bob.waitMessage(away, 15000), awayId, 'bob got it with the same id');
    await sleep(500);
    assert.equal(await bob.countText(away), 1, 'delivered once');
    assert.equal(await alice.countText(away), 1, 'shown once');
  })(t);
});

test('close codes: 4000 reconnects, 1008 stays disconnected, 4001 goes back to sign-in', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const alice = await s.open(env.nodeA, null);
    alice.name = uniqueName('alice');
    const live = [];
    await alice.page.routeWebSocket(/\/ws(\?|$)/, (ws) => { live.push(ws); ws.connectToServer(); });
    await alice.signIn(alice.name);
    const closeWith = async (code) => { for (const ws of live.splice(0)) await ws.close({ code, reason: `test ${code}` }); };
    const reconnects = () => alice.page.evaluate(() => Number(document.body.dataset.reconnects || '0'));

    // 4000 slow consumer: the page reconnects by itself (and says why).
    const r0 = await reconnects();
    await closeWith(4000);
    await until(async () => (await reconnects()) > r0 && await alice.page.evaluate(() => document.body.dataset.connection === 'open'),
      { timeout: 20000, message: 'reconnect after 4000' });
    await alice.page.locator('[data-testid="toast"][data-code="slow_consumer"]').waitFor({ state: 'attached' });
    await alice.waitJoined('lobby');

    // 1008 policy violation: no automatic reconnect, an error banner with a manual retry.
    await closeWith(1008);
    await alice.page.waitForFunction(() => document.body.dataset.connection === 'stopped');
    assert.equal(await alice.tid('status-banner').getAttribute('data-state'), 'error');
    await sleep(2500);
    assert.equal(live.length, 0, 'no new connection attempt after 1008');
    await alice.tid('retry-now').click();
    await alice.waitConnected();

    // 4001 session expired: back to the sign-in form, no reconnect.
    await closeWith(4001);
    await alice.tid('login-view').waitFor({ state: 'visible' });
    assert.match(await alice.tid('login-error').textContent(), /session has expired/i);
    await sleep(2000);
    assert.equal(live.length, 0, 'no new connection attempt after 4001');
  })(t);
});

test('keyboard only: sign in, send with Enter, new line with Shift+Enter', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const bob = await s.open(env.nodeB, uniqueName('bob'));
    const alice = await s.open(env.nodeA, null);
    alice.name = uniqueName('alice');
    const kb = alice.page.keyboard;
    // The name field has focus on load; Enter submits the form.
    await alice.page.waitForFunction(() => document.activeElement && document.activeElement.dataset.testid === 'name-input');
    await kb.type(alice.name);
    await kb.press('Enter');
    await alice.waitConnected();
    await alice.waitJoined('lobby');
    // Focus lands in the message box.
    await alice.page.waitForFunction(() => document.activeElement && document.activeElement.dataset.testid === 'message-input');
    await kb.type('first line');
    await kb.press('Shift+Enter');
    await kb.type('second line');
    await kb.press('Enter');
    await bob.waitMessage('first line\nsecond line');
    assert.equal(await alice.tid('message-input').inputValue(), '', 'the box is cleared after sending');
    // Tab from the message box reaches the Send button, a real <button>.
    await kb.press('Tab');
    assert.equal(await alice.page.evaluate(() => `${document.activeElement.tagName}/${document.activeElement.dataset.testid}`), 'BUTTON/send-button');
  })(t);
});

test('the layout works on a phone-sized screen', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const alice = await s.open(env.lb, uniqueName('alice'), { viewport: { width: 390, height: 760 } });
    const long = `${'x'.repeat(300)} ${'averyveryverylongwordwithoutanyspaces'.repeat(6)}`;
    await alice.send(long);
    await alice.waitMessage(long);
    // Nothing overflows horizontally; the sidebars are drawers.
    const overflow = await alice.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `no horizontal scroll (overflow ${overflow}px)`);
    assert.equal(await alice.page.locator('#rooms-panel').isVisible(), false, 'rooms drawer closed');
    await alice.tid('toggle-rooms').click();
    await alice.page.locator('[data-testid="room-item"][data-room="lobby"]').waitFor({ state: 'visible' });
    await alice.page.keyboard.press('Escape');
    await alice.page.locator('#rooms-panel').waitFor({ state: 'hidden' });
  })(t);
});
