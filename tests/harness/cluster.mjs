// Real components for Node.js test suites (the JavaScript client's tests):
// free loopback ports, a private redis-server, relay nodes, nginx in front of
// them (its config written by ./nginx-conf.mjs from docker/nginx.conf, as in
// the browser tests), and a TCP proxy that a test can cut to simulate a lost
// network. Everything is started as a child process of the test, stopped by
// its PID, and its logs are kept in a scratch directory (printed on failure).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';

const HERE = path.dirname(new URL(import.meta.url).pathname);
/** The repository root. */
export const ROOT = path.resolve(HERE, '../..');

/** The relay binary: $RELAY_BIN (relative to the repo root, or absolute), default target/debug/relay. */
export function relayBin() {
  const bin = process.env.RELAY_BIN || 'target/debug/relay';
  const abs = path.isAbsolute(bin) ? bin : path.join(ROOT, bin);
  if (!fs.existsSync(abs)) throw new Error(`relay binary not found at ${abs}: build it (cargo build --bin relay) or set RELAY_BIN`);
  return abs;
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export async function freePort() {
  const s = net.createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = /** @type {net.AddressInfo} */ (s.address());
  await new Promise((r) => s.close(r));
  return port;
}

/** Polls `url` until it answers 200, or throws after `timeoutMs`. */
export async function waitHttp(url, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${url}`);
    await sleep(100);
  }
}

/** Polls `fn` until it returns a truthy value, or throws after `timeout` ms. */
export async function until(fn, { timeout = 10000, interval = 50, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message}`);
    await sleep(interval);
  }
}

function alive(pid) {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** A child process with its log file; stop() sends SIGTERM then SIGKILL. */
class Proc {
  constructor(name, cmd, args, logFile, env) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.logFile = logFile;
    this.env = env;
    this.child = null;
    this.exited = null;
  }

  start() {
    const fd = fs.openSync(this.logFile, 'a');
    this.child = spawn(this.cmd, this.args, { stdio: ['ignore', fd, fd], env: { ...process.env, ...this.env } });
    fs.closeSync(fd);
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    return this;
  }

  get pid() { return this.child ? this.child.pid : null; }

  /** Sends `signal` to this process (by its PID). */
  signal(sig) { if (this.child && this.child.exitCode == null && this.child.signalCode == null) process.kill(this.child.pid, sig); }

  async stop(graceMs = 5000) {
    if (!this.child || this.child.exitCode != null || this.child.signalCode != null) return;
    this.signal('SIGTERM');
    const done = await Promise.race([this.exited, sleep(graceMs).then(() => null)]);
    if (!done && alive(this.child.pid)) { this.signal('SIGKILL'); await this.exited; }
  }
}

/** A relay node: `url` (http), `wsUrl`, `pid`; `drain()` (SIGTERM), `kill()` (SIGKILL), `restart()` on the same port. */
export class RelayNode {
  constructor(cluster, id, port, args) {
    this.cluster = cluster;
    this.id = id;
    this.port = port;
    this.args = args;
    this.url = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/ws`;
    this.proc = null;
  }

  get pid() { return this.proc ? this.proc.pid : null; }

  async start() {
    const args = ['serve', '--listen', `127.0.0.1:${this.port}`, '--node-id', this.id, ...this.args];
    this.proc = new Proc(this.id, relayBin(), args, path.join(this.cluster.dir, `${this.id}.log`), { RELAY_LOG_LEVEL: process.env.RELAY_LOG_LEVEL || 'info' });
    this.proc.start();
    this.cluster.procs.push(this.proc);
    await Promise.race([
      waitHttp(`${this.url}/readyz`, 30000),
      this.proc.exited.then((e) => { throw new Error(`${this.id} exited early (${JSON.stringify(e)}): ${this.cluster.tail(this.id)}`); }),
    ]);
    return this;
  }

  /** SIGTERM: the node drains (closes sockets with 1001) and exits; resolves when it has exited. */
  async drain() { this.proc.signal('SIGTERM'); return this.proc.exited; }

  /** SIGKILL: the node dies at once; resolves when it has exited. */
  async kill() { this.proc.signal('SIGKILL'); return this.proc.exited; }

  /** Starts the node again on the same port (after drain/kill). */
  async restart() { return this.start(); }
}

/**
 * A TCP proxy on a free port in front of `target`; `cut()` drops every
 * connection and refuses new ones until `restore()`; `muteReplies()` swallows
 * what the server sends, so commands arrive and their replies are lost.
 */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.sockets = new Set();
    this.blocked = false;
    this.server = net.createServer((client) => {
      if (this.blocked) { client.destroy(); return; }
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      this.sockets.add(client); this.sockets.add(upstream);
      const drop = () => { client.destroy(); upstream.destroy(); this.sockets.delete(client); this.sockets.delete(upstream); };
      client.on('error', drop); upstream.on('error', drop);
      client.on('close', drop); upstream.on('close', drop);
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d) => { if (!this.muted) client.write(d); });
    });
    this.muted = false;
  }

  async listen() {
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = /** @type {net.AddressInfo} */ (this.server.address()).port;
    this.url = `http://127.0.0.1:${this.port}`;
    return this;
  }

  /** Drops every connection (no close frame: the client sees 1006) and refuses new ones. */
  cut() {
    this.blocked = true;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Drops what the server sends (acks included) while the client's frames still reach it. */
  muteReplies() { this.muted = true; }

  /** Lets connections in again (and replies through). */
  restore() { this.blocked = false; this.muted = false; }

  close() { this.cut(); return new Promise((r) => this.server.close(r)); }
}

/** One test run's processes and scratch directory. */
export class Cluster {
  constructor(name = 'relay-js') {
    this.dir = fs.mkdtempSync(path.join(process.env.TMPDIR || os.tmpdir(), `${name}.`));
    this.procs = [];
    this.proxies = [];
    this.redisUrl = null;
  }

  /** The last lines of a process's log. */
  tail(name, lines = 30) {
    try { return fs.readFileSync(path.join(this.dir, `${name}.log`), 'utf8').split('\n').slice(-lines).join('\n'); } catch { return ''; }
  }

  /** Starts a private redis-server; returns its URL. */
  async redis() {
    const port = await freePort();
    const dir = path.join(this.dir, 'redis');
    fs.mkdirSync(dir, { recursive: true });
    const p = new Proc('redis', 'redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no',
      '--dir', dir, '--logfile', path.join(dir, 'redis.log'), '--daemonize', 'no'], path.join(this.dir, 'redis.log'));
    p.start();
    this.procs.push(p);
    await until(() => {
      try { return execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), 'ping'], { encoding: 'utf8' }).includes('PONG'); } catch { return false; }
    }, { timeout: 10000, message: 'redis' });
    this.redisUrl = `redis://127.0.0.1:${port}`;
    return this.redisUrl;
  }

  /**
   * Starts a relay node on a free port.
   * @param {string} id node id
   * @param {string[]} [args] extra `relay serve` flags
   */
  async relay(id, args = []) {
    const node = new RelayNode(this, id, await freePort(), args);
    return node.start();
  }

  /** Starts nginx in front of `nodes` (config from docker/nginx.conf via nginx-conf.mjs); returns its http URL. */
  async nginx(nodes) {
    const port = await freePort();
    const prefix = path.join(this.dir, 'nginx');
    fs.mkdirSync(prefix, { recursive: true });
    const template = path.join(ROOT, 'docker/nginx.conf');
    const args = [path.join(HERE, 'nginx-conf.mjs'), '--prefix', prefix, '--listen', String(port),
      ...nodes.flatMap((n) => ['--upstream', `127.0.0.1:${n.port}`]), ...(fs.existsSync(template) ? ['--template', template] : [])];
    execFileSync(process.execPath, args, { stdio: 'ignore' });
    const nginx = fs.existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : 'nginx';
    const p = new Proc('nginx', nginx, ['-p', prefix, '-c', path.join(prefix, 'nginx.conf'), '-e', path.join(prefix, 'error.log'), '-g', 'daemon off;'],
      path.join(this.dir, 'nginx.log'));
    p.start();
    this.procs.push(p);
    const url = `http://127.0.0.1:${port}`;
    await waitHttp(`${url}/healthz`, 10000);
    return url;
  }

  /** A TCP proxy in front of a node (cut it to simulate a lost network). */
  async proxy(node) {
    const p = await new TcpProxy(node.port).listen();
    this.proxies.push(p);
    return p;
  }

  /** Stops everything this cluster started (by PID) and removes the scratch dir unless KEEP_TMP=1. */
  async stop({ failed = false } = {}) {
    for (const p of this.proxies) await p.close().catch(() => {});
    await Promise.all([...this.procs].reverse().map((p) => p.stop()));
    if (failed || process.env.KEEP_TMP === '1') {
      console.error(`[harness] logs kept in ${this.dir}`);
      return;
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
