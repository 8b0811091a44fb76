// Browser end-to-end tests of the web chat against a relay node in token mode
// (`relay serve --auth token`): register / log in, chat, reload, refused
// tokens. The node (run.sh's nodeT) has its own redis prefix, so its accounts
// and rooms are separate from the guest-mode nodes. Run through ./run.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { env, launch, scenario, uniqueName, sleep } from './lib/harness.mjs';

let browser;
before(async () => {
  assert.ok(env.tokenNode, 'RELAY_TOKEN_NODE_URL is not set: run the tests through tests/browser/run.sh');
  browser = await launch();
});
after(async () => { if (browser) await browser.close(); });

const T = { timeout: 90000 };
const PASSWORD = 'correct horse battery';

/** Creates an account through the HTTP API (not the page). */
async function registerByApi(username, password = PASSWORD) {
  const res = await fetch(`${env.tokenNode}/api/register`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password }),
    signal: AbortSignal.timeout(10000),
  });
  assert.equal(res.status, 201, `register ${username}: HTTP ${res.status} ${await res.text()}`);
}

/** The login token the page keeps in localStorage (null when none). */
function storedToken(chat) {
  return chat.page.evaluate(() => JSON.parse(localStorage.getItem('relay.token') || 'null'));
}

/** Counts the WebSocket connections a page opens from now on. */
function countSockets(chat) {
  const seen = { n: 0 };
  chat.page.on('websocket', () => { seen.n += 1; });
  return seen;
}

async function onLoginForm(chat) {
  await chat.tid('login-view').waitFor({ state: 'visible' });
  assert.equal(await chat.tid('token-form').isVisible(), true, 'the register / log in form is shown');
  assert.equal(await chat.tid('chat-view').isVisible(), false, 'the chat is not shown');
}

test('token mode: register and log in from the page, then two users talk in a room', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `tok-room-${process.pid}`;

    // The page asks GET /api/config and shows the account form, not the guest form.
    const alice = await s.open(env.tokenNode, null);
    alice.name = uniqueName('alice');
    await alice.page.waitForFunction(() => document.body.dataset.auth === 'token');
    await onLoginForm(alice);
    assert.equal(await alice.tid('guest-form').isVisible(), false, 'no guest name form');
    await alice.page.waitForFunction(() => document.activeElement && document.activeElement.dataset.testid === 'username-input');

    // alice creates her account on the page ("Create account" registers, then logs in).
    await alice.register(alice.name, PASSWORD);
    await alice.waitInChat();
    assert.equal(await alice.tid('me-name').textContent(), alice.name);
    assert.equal(await alice.node(), 'nodeT');
    assert.equal(await alice.tid('login-view').isVisible(), false);
    const saved = await storedToken(alice);
    assert.ok(saved && typeof saved.token === 'string' && saved.token.length > 20, 'the token is kept in localStorage');
    assert.ok(saved.expires_at > Date.now() + 3600e3 && saved.expires_at < Date.now() + 2 * 86400e3,
      `expires_at ${saved.expires_at} is Unix milliseconds about a day ahead`);
    const cookie = (await alice.page.context().cookies()).find((c) => c.name === 'relay_token');
    assert.ok(cookie && cookie.httpOnly, 'the login also set the HttpOnly relay_token cookie');
    assert.equal(await alice.page.evaluate(() => document.cookie.includes('relay_token')), false, 'the cookie is out of reach of scripts');

    // bob's account exists already; he uses "Log in" on a second page.
    const bob = await s.open(env.tokenNode, null);
    bob.name = uniqueName('bob');
    await registerByApi(bob.name);
    await bob.logIn(bob.name, PASSWORD);
    await bob.waitInChat();
    assert.equal(await bob.tid('me-name').textContent(), bob.name);

    await alice.joinRoom(room);
    await bob.joinRoom(room);
    await alice.waitOnline(bob.name, true);
    await bob.waitOnline(alice.name, true);

    const hello = `hello bob, token alice here ${Date.now()}`;
    await alice.send(hello);
    const id = await alice.waitMessage(hello);
    assert.equal(await bob.waitMessage(hello), id, 'same server id on both pages');
    assert.equal(await bob.messages(hello).getAttribute('data-from'), alice.name, 'sender is the account name');
    assert.equal(await alice.messages(hello).getAttribute('data-status'), 'sent');

    const reply = `hi alice ${Date.now()}`;
    await bob.send(reply);
    assert.ok(await alice.waitMessage(reply) > id, 'ids increase');
    assert.equal(await bob.countText(reply), 1, 'no echo duplicate');
    assert.equal(await alice.countText(hello), 1);
    for (const chat of [alice, bob]) assert.deepEqual(chat.errors, [], `${chat.name}: no page errors`);
  })(t);
});

test('token mode: a wrong password and a taken name are shown on the form', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const carol = await s.open(env.tokenNode, null);
    carol.name = uniqueName('carol');
    await registerByApi(carol.name);
    const sockets = countSockets(carol);
    await onLoginForm(carol);

    // Wrong password: an error, still on the form, no token, no socket.
    await carol.logIn(carol.name, 'not the password');
    await carol.page.waitForFunction(() => document.querySelector('[data-testid="login-error"]').textContent !== '');
    assert.match(await carol.tid('login-error').textContent(), /wrong user name or password/i);
    await onLoginForm(carol);
    assert.equal(await carol.tid('login-button').isEnabled(), true, 'the form can be used again');
    assert.equal(await storedToken(carol), null);

    // An unknown user gets the same answer (no hint that the name does not exist).
    await carol.logIn(uniqueName('nobody'), PASSWORD);
    await carol.page.waitForFunction(() => /wrong user name or password/i.test(document.querySelector('[data-testid="login-error"]').textContent)
      && !document.querySelector('[data-testid="login-button"]').disabled);
    await onLoginForm(carol);

    // Registering a name that exists: "taken".
    await carol.register(carol.name, 'some other password');
    await carol.page.waitForFunction(() => /taken/i.test(document.querySelector('[data-testid="login-error"]').textContent));
    assert.match(await carol.tid('login-error').textContent(), /user name is taken/i);
    await onLoginForm(carol);

    // A password under 8 characters: the server's reason is shown.
    await carol.register(uniqueName('dora'), 'short');
    await carol.page.waitForFunction(() => /8 to 128/.test(document.querySelector('[data-testid="login-error"]').textContent));
    await onLoginForm(carol);
    assert.equal(sockets.n, 0, 'no WebSocket was opened by failed attempts');
    assert.equal(await storedToken(carol), null);

    // And the right password still gets in, clearing the error.
    await carol.logIn(carol.name, PASSWORD);
    await carol.waitInChat();
    assert.equal(await carol.tid('me-name').textContent(), carol.name);
    assert.equal(sockets.n, 1);
  })(t);
});

test('token mode: reloading keeps the session, logging out forgets it', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const room = `tok-reload-${process.pid}`;
    const dave = await s.open(env.tokenNode, null);
    dave.name = uniqueName('dave');
    await dave.register(dave.name, PASSWORD);
    await dave.waitInChat();
    await dave.joinRoom(room);
    const text = `before the reload ${Date.now()}`;
    await dave.send(text);
    const id = await dave.waitMessage(text);
    const sessionBefore = await dave.tid('connection-state').getAttribute('data-session');

    // Reload: straight back into the chat with the stored token, no form to fill.
    await dave.page.reload();
    await dave.waitInChat();
    await dave.waitJoined(room);
    assert.equal(await dave.tid('me-name').textContent(), dave.name);
    assert.notEqual(await dave.tid('connection-state').getAttribute('data-session'), sessionBefore, 'a new connection');
    await dave.page.waitForFunction((r) => document.querySelector('[data-testid="room-pane"]').dataset.room === r, room);
    assert.equal(await dave.waitMessage(text), id, 'the room and its history are back');
    assert.equal(await dave.tid('username-input').inputValue(), '', 'the form was not used');

    // Another tab of the same browser shares the stored token: signed in too.
    const tab = await dave.page.context().newPage();
    await tab.goto(env.tokenNode);
    await tab.waitForFunction(() => document.body.dataset.connection === 'open');
    assert.equal(await tab.getByTestId('me-name').textContent(), dave.name);
    await tab.close();

    // Log out: back to the form, the stored token is gone, and a reload stays on the form.
    await dave.tid('logout-button').click();
    await onLoginForm(dave);
    assert.equal(await storedToken(dave), null);
    await dave.page.reload();
    await dave.page.waitForFunction(() => document.body.dataset.auth === 'token');
    await onLoginForm(dave);
    await sleep(1000);
    assert.notEqual(await dave.page.evaluate(() => document.body.dataset.connection), 'open', 'not signed in again after the reload');
    assert.equal(await dave.tid('login-error').textContent(), '');
  })(t);
});

test('token mode: a token the server refuses sends the page back to the login form', T, async (t) => {
  await scenario(browser, t.name, async (s) => {
    const wording = async (chat) => {
      const msg = await chat.tid('login-error').textContent();
      if (env.webStale) t.diagnostic(`the binary embeds an older web/: message "${msg}" not checked (rebuild, or RELAY_WEB_FROM_DISK=1)`);
      else assert.match(msg, /did not accept your session.*log in again/i);
    };

    // 1. A forged token in storage, then a reload: the handshake is refused
    //    (HTTP 401 before the upgrade) and the page goes back to the form.
    const eve = await s.open(env.tokenNode, null);
    eve.name = 'eve (forged token)';
    await onLoginForm(eve);
    await eve.page.evaluate(() => localStorage.setItem('relay.token', JSON.stringify({ token: 'forged.token.value', expires_at: Date.now() + 3600e3 })));
    const sockets = countSockets(eve);
    await eve.page.reload();
    await eve.page.waitForFunction(() => document.body.dataset.view === 'login' && document.querySelector('[data-testid="login-error"]').textContent !== '',
      null, { timeout: 20000 });
    await onLoginForm(eve);
    await wording(eve);
    assert.equal(await storedToken(eve), null, 'the refused token is forgotten');
    const attempts = sockets.n;
    assert.ok(attempts >= 1, 'the page tried the token');
    await sleep(2500);
    assert.equal(sockets.n, attempts, 'no more attempts once back on the form');

    // 2. Signed in, then the account goes away (removed from the backplane):
    //    the next handshake is refused; the page must not retry forever.
    const fred = await s.open(env.tokenNode, null);
    fred.name = uniqueName('fred');
    const live = [];
    await fred.page.routeWebSocket(/\/ws(\?|$)/, (ws) => { live.push(ws); ws.connectToServer(); });
    await fred.register(fred.name, PASSWORD);
    await fred.waitInChat();
    assert.ok(env.redisUrl && env.tokenPrefix, 'run.sh exports RELAY_REDIS_URL and RELAY_TOKEN_REDIS_PREFIX');
    const removed = execFileSync('redis-cli', ['-u', env.redisUrl, 'HDEL', `${env.tokenPrefix}:accounts`, fred.name]).toString().trim();
    assert.equal(removed, '1', `account ${fred.name} removed from ${env.tokenPrefix}:accounts`);
    // A network-level drop (as when a node drains): the page reconnects.
    for (const ws of live.splice(0)) await ws.close({ code: 1001, reason: 'going away (test)' });
    await fred.page.waitForFunction(() => document.body.dataset.connection === 'reconnecting');
    if (env.webStale) {
      t.diagnostic('the binary embeds an older web/: the give-up after refused reconnects is not checked (rebuild, or RELAY_WEB_FROM_DISK=1)');
      return;
    }
    await fred.page.waitForFunction(() => document.body.dataset.view === 'login', null, { timeout: 45000 });
    await onLoginForm(fred);
    await wording(fred);
    assert.equal(await storedToken(fred), null);
    const n = live.length;
    await sleep(2500);
    assert.equal(live.length, n, 'no more attempts once back on the form');
  })(t);
});
