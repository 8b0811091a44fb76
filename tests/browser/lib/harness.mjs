// Shared helpers of the browser tests: Chromium via playwright-core, pages
// signed in to the chat, small waits, screenshots of failing tests.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

export { sleep };

export const env = {
  lb: must('RELAY_LB_URL'),
  nodeA: must('RELAY_NODE_A_URL'),
  nodeB: must('RELAY_NODE_B_URL'),
  nodeAPidFile: process.env.RELAY_NODE_A_PID_FILE || null,
  nodeAPid: Number(process.env.RELAY_NODE_A_PID) || null,
  // The node in token mode (register / log in); its own redis prefix.
  tokenNode: (process.env.RELAY_TOKEN_NODE_URL || '').replace(/\/$/, '') || null,
  redisUrl: process.env.RELAY_REDIS_URL || null,
  tokenPrefix: process.env.RELAY_TOKEN_REDIS_PREFIX || null,
  // The binary embeds an older copy of web/ than the one on disk.
  webStale: process.env.RELAY_WEB_STALE === '1',
  artifacts: process.env.RELAY_ARTIFACTS || path.resolve(import.meta.dirname || '.', '../../../.ci/artifacts/browser'),
};

function must(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the tests through tests/browser/run.sh`);
  return v.replace(/\/$/, '');
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
    headless: true,
    timeout: 30000,
  });
}

let nameSeq = 0;
/** A user name unique to this run: "alice" -> "alice-k3x9-1". */
export function uniqueName(base) {
  nameSeq += 1;
  return `${base}-${process.pid.toString(36)}-${nameSeq}`;
}

/**
 * Runs `body(session)` with a tracker of every page it opens; when the body
 * throws, every open page is screenshotted into the artifacts folder.
 */
export function scenario(browser, title, body) {
  return async (t) => {
    const pages = [];
    const contexts = [];
    const session = {
      t,
      /** Opens a new browser context + page on `url`, signs in as `name` and waits for the chat. */
      async open(url, name, opts = {}) {
        const ctx = await browser.newContext({ viewport: opts.viewport || { width: 1200, height: 800 } });
        contexts.push(ctx);
        const page = await ctx.newPage();
        page.setDefaultTimeout(15000);
        const chat = new ChatPage(page, name);
        pages.push(chat);
        page.on('dialog', (d) => { chat.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
        page.on('pageerror', (e) => chat.errors.push(String(e && e.message || e)));
        page.on('console', (m) => { if (m.type() === 'error') chat.consoleErrors.push(m.text()); });
        if (process.env.RELAY_TEST_TRACE) { // RELAY_TEST_TRACE=1: print every WebSocket frame of every page
          const t0 = Date.now();
          const who = () => chat.name || 'page';
          page.on('websocket', (ws) => {
            console.error(`[${Date.now() - t0}] ${who()} ws open ${ws.url()}`);
            ws.on('framesent', (f) => console.error(`[${Date.now() - t0}] ${who()} >> ${String(f.payload).slice(0, 200)}`));
            ws.on('framereceived', (f) => console.error(`[${Date.now() - t0}] ${who()} << ${String(f.payload).slice(0, 200)}`));
            ws.on('close', () => console.error(`[${Date.now() - t0}] ${who()} ws closed`));
          });
        }
        await page.goto(url);
        if (name) await chat.signIn(name);
        return chat;
      },
      async close(chat) {
        const i = pages.indexOf(chat);
        if (i >= 0) pages.splice(i, 1);
        await chat.page.context().close().catch(() => {});
      },
    };
    try {
      await body(session);
    } catch (err) {
      await screenshotAll(title, pages);
      throw err;
    } finally {
      for (const ctx of contexts) await ctx.close().catch(() => {});
    }
  };
}

async function screenshotAll(title, pages) {
  fs.mkdirSync(env.artifacts, { recursive: true });
  const slug = title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);
  let i = 0;
  for (const chat of pages) {
    i += 1;
    const file = path.join(env.artifacts, `${slug}--${i}-${(chat.name || 'page').replace(/[^A-Za-z0-9_.-]/g, '_')}.png`);
    try {
      await chat.page.screenshot({ path: file, fullPage: true, timeout: 5000 });
      console.error(`screenshot: ${file}`);
    } catch (e) {
      console.error(`screenshot failed for ${file}: ${e.message}`);
    }
  }
}

/** One signed-in chat page, with helpers that speak the page's data-testids. */
export class ChatPage {
  constructor(page, name) {
    this.page = page;
    this.name = name;
    this.dialogs = [];
    this.errors = [];
    this.consoleErrors = [];
  }

  tid(id) { return this.page.getByTestId(id); }

  async signIn(name) {
    await this.tid('name-input').fill(name);
    await this.tid('connect-button').click();
    await this.waitConnected();
    await this.waitJoined('lobby');
  }

  /** Token mode: fills the account form and clicks "Create account" (the page then logs in). */
  async register(username, password) {
    await this.fillAccount(username, password);
    await this.tid('register-button').click();
  }

  /** Token mode: fills the account form and submits it with "Log in". */
  async logIn(username, password) {
    await this.fillAccount(username, password);
    await this.tid('login-button').click();
  }

  async fillAccount(username, password) {
    await this.tid('token-form').waitFor({ state: 'visible' });
    await this.tid('username-input').fill(username);
    await this.tid('password-input').fill(password);
  }

  /** Waits for the chat view, connected and in the lobby (after a token-mode login). */
  async waitInChat(timeout = 15000) {
    await this.waitConnected(timeout);
    await this.waitJoined('lobby', timeout);
    await this.tid('chat-view').waitFor({ state: 'visible', timeout });
  }

  async waitConnected(timeout = 15000) {
    await this.page.waitForFunction(() => document.body.dataset.connection === 'open', null, { timeout });
  }

  async node() { return this.tid('connection-state').getAttribute('data-node'); }

  async waitJoined(room, timeout = 15000) {
    await this.page.locator(`[data-testid="room-item"][data-room="${room}"][data-joined="true"]`).waitFor({ state: 'attached', timeout });
  }

  async joinRoom(room) {
    await this.tid('room-input').fill(room);
    await this.tid('join-button').click();
    await this.waitJoined(room);
    await this.page.waitForFunction((r) => document.querySelector('[data-testid="room-pane"]').dataset.room === r, room);
  }

  async openRoom(room) {
    await this.page.locator(`[data-testid="room-item"][data-room="${room}"] button`).click();
  }

  /** Types `text` into the room composer and presses Enter. */
  async send(text) {
    const input = this.tid('message-input');
    await input.fill(text);
    await input.press('Enter');
  }

  /** Message items of the room pane whose text is exactly `text`. */
  messages(text) {
    const list = this.page.locator('[data-testid="room-pane"] [data-testid="message-item"]');
    if (text == null) return list;
    return list.filter({ has: this.page.getByTestId('message-text').getByText(text, { exact: true }) });
  }

  /** Waits until a confirmed (server id) message with exactly this text is shown; returns its id. */
  async waitMessage(text, timeout = 10000) {
    const item = this.messages(text).and(this.page.locator('[data-id]')).first();
    await item.waitFor({ timeout });
    return Number(await item.getAttribute('data-id'));
  }

  /** Counts message items whose text is exactly `text`, in the page (no waiting). */
  async countText(text) {
    return this.page.evaluate((t) => [...document.querySelectorAll('[data-testid="room-pane"] [data-testid="message-text"]')]
      .filter((n) => n.textContent === t).length, text);
  }

  async onlineUsers() {
    return this.page.locator('[data-testid="online-list"] [data-testid="online-user"]').evaluateAll((els) => els.map((e) => e.dataset.user));
  }

  async waitOnline(user, present, timeout = 10000) {
    await this.page.waitForFunction(([u, p]) => {
      const has = !!document.querySelector(`[data-testid="online-list"] [data-testid="online-user"][data-user="${CSS.escape(u)}"]`);
      return has === p;
    }, [user, present], { timeout });
  }

  async typingText() { return (await this.tid('typing-indicator').textContent()) || ''; }
}

/** Polls `fn` until it returns a truthy value, or throws after `timeout` ms. */
export async function until(fn, { timeout = 10000, interval = 50, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
    await sleep(interval);
  }
}

export async function httpStatus(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return res.status;
  } catch {
    return 0;
  }
}

export function readPid(file, fallback) {
  try { return Number(fs.readFileSync(file, 'utf8').trim()) || fallback; } catch { return fallback; }
}
